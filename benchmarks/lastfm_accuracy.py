"""Last.FM test AUC/F1 over seeds for both variants and both negative modes.

The foundation's acceptance check: paper preset, 10 epochs, global test AUC
averaged over seeds 0, 1, 2, beside the item-popularity reference. Writes
benchmarks/results/lastfm_accuracy.json.

    python benchmarks/lastfm_accuracy.py [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics

from common import Timer, machine, write_result
from kgnnls import KGNNLS, Config, load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    overrides = dict(s.split("=", 1) for s in args.sets)
    cells = []
    with Timer() as total:
        for variant in ("paper", "authors"):
            for negatives in ("fixed", "resample"):
                for seed in args.seeds:
                    cfg = Config.preset("lastfm", variant=variant, negatives=negatives,
                                        seed=seed).with_overrides(overrides)
                    metrics = KGNNLS(cfg).fit(load_dataset("lastfm", seed=seed)).evaluate()
                    cells.append({"variant": variant, "negatives": negatives, "seed": seed,
                                  "test_auc": metrics["test"]["auc"],
                                  "test_f1": metrics["test"]["f1"],
                                  "best_epoch": metrics["best_epoch"],
                                  "training_path": metrics["training_path"],
                                  "popularity_test_auc":
                                      metrics["reference"]["popularity"]["test"]["auc"]})
                    print(f"{variant:8} {negatives:9} seed {seed}: test AUC "
                          f"{cells[-1]['test_auc']:.4f}  F1 {cells[-1]['test_f1']:.4f}  "
                          f"(popularity {cells[-1]['popularity_test_auc']:.4f})", flush=True)
    print(f"\n{'variant':8} {'negatives':9} {'test AUC mean +- std':>22} {'F1 mean':>8} "
          f"{'popularity':>10}")
    summary = []
    for variant in ("paper", "authors"):
        for negatives in ("fixed", "resample"):
            rows = [c for c in cells if c["variant"] == variant and c["negatives"] == negatives]
            aucs = [c["test_auc"] for c in rows]
            row = {"variant": variant, "negatives": negatives, "auc_mean": statistics.mean(aucs),
                   "auc_std": statistics.pstdev(aucs),
                   "f1_mean": statistics.mean(c["test_f1"] for c in rows),
                   "popularity_mean": statistics.mean(c["popularity_test_auc"] for c in rows)}
            summary.append(row)
            print(f"{variant:8} {negatives:9} {row['auc_mean']:>13.4f} +- {row['auc_std']:.4f} "
                  f"{row['f1_mean']:>8.4f} {row['popularity_mean']:>10.4f}")
    path = write_result("lastfm_accuracy", {"machine": machine(), "seeds": args.seeds,
                                            "overrides": overrides, "cells": cells,
                                            "summary": summary, "wall_seconds": total.seconds})
    print(f"wrote {path} ({total.seconds:.0f} s)")


if __name__ == "__main__":
    main()
