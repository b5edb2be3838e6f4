"""Last.FM test AUC/F1 over seeds for both variants and both negative modes.

The foundation's acceptance check: paper preset, 10 epochs, global test AUC
averaged over seeds 0, 1, 2, beside the item-popularity reference. Writes
benchmarks/results/lastfm_accuracy.json.

    python benchmarks/lastfm_accuracy.py [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

from common import Timer, machine, write_result
from kgnnls import KGNNLS, Config, RunOptions, load_dataset
from kgnnls.config import split_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--paths", nargs="+", default=["auto", "autograd"],
                    choices=["auto", "fused", "autograd"],
                    help="training paths to run each cell on (accuracy must not move)")
    args = ap.parse_args()
    overrides, run_overrides = split_settings(dict(s.split("=", 1) for s in args.sets))
    cells = []
    with Timer() as total:
        for variant, negatives, seed, requested in itertools.product(
            ("paper", "authors"), ("fixed", "resample"), args.seeds, args.paths):
            cfg = Config.preset("lastfm", variant=variant, negatives=negatives,
                                seed=seed).with_overrides(overrides)
            options = RunOptions(training_path=requested).with_overrides(run_overrides)
            metrics = KGNNLS(cfg, options).fit(load_dataset("lastfm", seed=seed)).evaluate()
            cells.append({"variant": variant, "negatives": negatives, "seed": seed,
                          "requested_path": requested,
                          "test_auc": metrics["test"]["auc"],
                          "test_f1": metrics["test"]["f1"],
                          "best_epoch": metrics["best_epoch"],
                          "training_path": metrics["training_path"],
                          "popularity_test_auc":
                              metrics["reference"]["popularity"]["test"]["auc"]})
            print(f"{variant:8} {negatives:9} seed {seed} {cells[-1]['training_path']:8}: "
                  f"test AUC "
                  f"{cells[-1]['test_auc']:.4f}  F1 {cells[-1]['test_f1']:.4f}  "
                  f"(popularity {cells[-1]['popularity_test_auc']:.4f})", flush=True)
    print(f"\n{'variant':8} {'negatives':9} {'path':8} {'test AUC mean +- std':>22} "
          f"{'F1 mean':>8} {'popularity':>10}")
    summary = []
    for variant, negatives, requested in itertools.product(
            ("paper", "authors"), ("fixed", "resample"), args.paths):
        rows = [c for c in cells if (c["variant"], c["negatives"], c["requested_path"])
                == (variant, negatives, requested)]
        aucs = [c["test_auc"] for c in rows]
        row = {"variant": variant, "negatives": negatives, "path": rows[0]["training_path"],
               "auc_mean": statistics.mean(aucs), "auc_std": statistics.pstdev(aucs),
               "f1_mean": statistics.mean(c["test_f1"] for c in rows),
               "popularity_mean": statistics.mean(c["popularity_test_auc"] for c in rows)}
        summary.append(row)
        print(f"{variant:8} {negatives:9} {row['path']:8} {row['auc_mean']:>13.4f} +- "
              f"{row['auc_std']:.4f} {row['f1_mean']:>8.4f} {row['popularity_mean']:>10.4f}")
    # accuracy must not move between paths: |mean AUC(path) - mean AUC(autograd)| per cell
    path_check = []
    for variant, negatives in itertools.product(("paper", "authors"), ("fixed", "resample")):
        by_path = {r["path"]: r["auc_mean"] for r in summary
                   if (r["variant"], r["negatives"]) == (variant, negatives)}
        if "autograd" in by_path and len(by_path) > 1:
            for name, auc in by_path.items():
                if name != "autograd":
                    path_check.append({"variant": variant, "negatives": negatives, "path": name,
                                       "auc_minus_autograd": auc - by_path["autograd"]})
    for c in path_check:
        print(f"{c['variant']:8} {c['negatives']:9} {c['path']} - autograd: "
              f"{c['auc_minus_autograd']:+.5f} AUC")
    path = write_result("lastfm_accuracy", {"machine": machine(), "seeds": args.seeds,
                                            "overrides": overrides, "cells": cells,
                                            "summary": summary, "path_check": path_check,
                                            "wall_seconds": total.seconds})
    print(f"wrote {path} ({total.seconds:.0f} s)")


if __name__ == "__main__":
    main()
