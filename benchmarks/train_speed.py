"""Training speed on Last.FM with the paper preset (10 epochs, batch 128): target 1.

Trains the same seed on the fused compiled step (kgnnls.fused, the path the
loop picks) and on the autograd reference path, in this one invocation, and
prints seconds per epoch, samples per second and the ratio. Timing covers
the training steps only (the per-epoch validation is reported separately),
with 1 thread unless --threads says otherwise. A one-epoch warm-up first
loads (or compiles) the compiled kernels; its seconds are reported apart,
since a process pays them once.

``--repeats N`` trains the fused path N times (the autograd reference once,
after the first): this host's speed drifts by up to 2x within minutes, so one
run is weak evidence. The headline fields are then those of the run with the
median total, and ``repeat_totals`` lists every run's total; the same seed
must give the same test AUC in every run (checked). Writes
benchmarks/results/train_speed_VARIANT.json (train_speed_VARIANT_tN.json with
--threads N > 1).

    python benchmarks/train_speed.py [--variant paper|authors] [--seed 0] [--threads 1]
                                     [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from common import Timer, machine, write_result
from kgnnls import Config, RunOptions, load_dataset
from kgnnls.evaluate import ctr_metrics
from kgnnls.scoring import Scorer
from kgnnls.train import fit


def _timed(ds, cfg: Config, options: RunOptions) -> dict:
    with Timer() as total:
        fitted = fit(ds, cfg, progress=False, options=options)
    epochs = [h["seconds"] for h in fitted.history]
    n_rows = len(fitted.split.train)
    return {
        "training_path": fitted.training_path, "epochs": len(epochs), "train_rows": n_rows,
        "seconds_per_epoch": epochs, "train_seconds_total": sum(epochs),
        "median_seconds_per_epoch": statistics.median(epochs),
        "samples_per_second": n_rows / statistics.median(epochs),
        "wall_seconds_including_eval": total.seconds, "other_load": total.other_load,
        "best_val_auc": max(h["val_auc"] for h in fitted.history),
        "test_auc": ctr_metrics(Scorer(fitted.network, threads=options.threads,
                                       compiled=options.training_path != "autograd"),
                                fitted.split.test, options.eval_batch_size)["auc"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="paper", choices=["paper", "authors"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1,
                    help="fused runs (the autograd reference runs once)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    ds = load_dataset("lastfm", seed=args.seed)
    cfg = Config.preset("lastfm", variant=args.variant, seed=args.seed, epochs=args.epochs,
                        patience=args.epochs)
    options = RunOptions(threads=args.threads)
    with Timer() as warm:
        fit(ds, replace(cfg, epochs=1), progress=False, options=options)
    repeats, ref = [], None
    for r in range(args.repeats):
        repeats.append(_timed(ds, cfg, replace(options, training_path="fused")))
        if r == 0:
            ref = _timed(ds, cfg, replace(options, training_path="autograd"))
    if len({run["test_auc"] for run in repeats}) != 1:
        raise SystemExit(f"same seed, different test AUCs: {[r['test_auc'] for r in repeats]}")
    totals = [run["train_seconds_total"] for run in repeats]
    fused = sorted(repeats, key=lambda run: run["train_seconds_total"])[(len(repeats) - 1) // 2]
    runs = {"fused": fused, "autograd": ref}
    result = {
        "benchmark": "train_speed", "dataset": "lastfm", "variant": args.variant,
        "config": cfg.to_dict(), "run": options.to_dict(), "machine": machine(),
        **fused,  # the headline: the path the training loop picks for this config
        "warmup_seconds": warm.seconds, "paths": runs,
        "repeats": args.repeats, "repeat_totals": totals,
        "repeat_other_load": [run["other_load"] for run in repeats],
        "speedup_vs_autograd": ref["median_seconds_per_epoch"] / fused["median_seconds_per_epoch"],
        "test_auc_difference": fused["test_auc"] - ref["test_auc"],
    }
    # one JSON per thread count: the 1-thread run stays the headline
    suffix = "" if args.threads == 1 else f"_t{args.threads}"
    path = write_result(f"train_speed_{args.variant}{suffix}", result)
    print(f"{'epoch':>5} {'fused s':>8} {'autograd s':>10}")
    for i, (a, b) in enumerate(zip(fused["seconds_per_epoch"], ref["seconds_per_epoch"],
                                   strict=True), 1):
        print(f"{i:>5} {a:>8.3f} {b:>10.3f}")
    for name, r in runs.items():
        print(f"{name:>8}: {r['train_seconds_total']:.2f} s for {r['epochs']} epochs, median "
              f"epoch {r['median_seconds_per_epoch']:.4f} s ({r['samples_per_second']:.0f} "
              f"samples/s), test AUC {r['test_auc']:.4f}, other processes used "
              f"{r['other_load']:.0%} of the machine")
    if args.repeats > 1:
        print(f"   fused: {args.repeats} runs of {args.epochs} epochs: "
              + ", ".join(f"{t:.2f}" for t in totals) + " s; the median run is shown above; "
              "the same test AUC in every run")
    print(f"fused / autograd speed-up {result['speedup_vs_autograd']:.1f}x; warm-up (kernel "
          f"load, 1 epoch) {warm.seconds:.2f} s; wrote {path}")


if __name__ == "__main__":
    main()
