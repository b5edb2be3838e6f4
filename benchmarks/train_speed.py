"""Training speed on Last.FM with the paper preset (10 epochs, batch 128).

Prints seconds per epoch and samples per second, and writes
benchmarks/results/train_speed.json. Timing covers the training steps only
(the per-epoch validation is reported separately), with 1 intra-op thread
unless --threads says otherwise.

    python benchmarks/train_speed.py [--variant paper|authors] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics

from common import Timer, machine, write_result
from kgnnls import Config, load_dataset
from kgnnls.train import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="paper", choices=["paper", "authors"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    ds = load_dataset("lastfm", seed=args.seed)
    cfg = Config.preset("lastfm", variant=args.variant, seed=args.seed, epochs=args.epochs,
                        patience=args.epochs, threads=args.threads)
    with Timer() as total:
        fitted = fit(ds, cfg, progress=False)
    epochs = [h["seconds"] for h in fitted.history]
    n_rows = len(fitted.split.train)
    result = {
        "benchmark": "train_speed", "dataset": "lastfm", "variant": args.variant,
        "config": cfg.to_dict(), "machine": machine(), "training_path": fitted.training_path,
        "epochs": len(epochs), "train_rows": n_rows,
        "seconds_per_epoch": epochs, "train_seconds_total": sum(epochs),
        "median_seconds_per_epoch": statistics.median(epochs),
        "samples_per_second": n_rows / statistics.median(epochs),
        "wall_seconds_including_eval": total.seconds, "other_load": total.other_load,
        "best_val_auc": max(h["val_auc"] for h in fitted.history),
    }
    path = write_result(f"train_speed_{args.variant}", result)
    print(f"{'epoch':>5} {'seconds':>8}")
    for i, s in enumerate(epochs, 1):
        print(f"{i:>5} {s:>8.3f}")
    print(f"total training {sum(epochs):.2f} s for {len(epochs)} epochs "
          f"({result['samples_per_second']:.0f} samples/s, median epoch "
          f"{result['median_seconds_per_epoch']:.3f} s, path {fitted.training_path}); "
          f"other processes used {total.other_load:.0%} of the machine; wrote {path}")


if __name__ == "__main__":
    main()
