"""A BPR epoch of KGNN-LS on Last.FM against today's BCE epoch: target at most 3x.

Trains the Last.FM paper preset (batch 128) for ``--epochs`` epochs (no early
stop) three ways, in rounds that alternate them in this one invocation:
``bce-fused`` (the paper's objective on the fused step), ``bpr-fused``
(``loss=bpr`` on the fused step: the compiled forward scores each batch's
positives and negatives, then one fused step) and ``bpr-autograd`` (the
reference). Seconds per epoch count the training steps only (validation and
the epoch's negative draws apart), 1 thread. A warm-up run first loads (or
compiles) the kernels. The same seed must give the same numbers in every round
(checked). Writes benchmarks/results/bpr_speed.json.

    python benchmarks/bpr_speed.py [--epochs 10] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from common import Timer, machine, write_result
from kgnnls import Config, RunOptions, load_dataset
from kgnnls.train import fit

RUNS = {"bce-fused": ("bce", "fused"), "bpr-fused": ("bpr", "fused"),
        "bpr-autograd": ("bpr", "autograd")}


def _run(ds, base: Config, loss: str, path: str) -> tuple[float, list[float], float]:
    """(median seconds per epoch, per-epoch losses, other load while it ran)."""
    cfg = replace(base, loss=loss)
    with Timer() as t:
        fitted = fit(ds, cfg, progress=False,
                     options=RunOptions(threads=1, training_path=path))
    assert fitted.training_path == path, fitted.training_path_reason
    return (statistics.median(h["seconds"] for h in fitted.history),
            [h["loss"] for h in fitted.history], t.other_load)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = load_dataset("lastfm", seed=args.seed)
    base = replace(Config.preset("lastfm"), seed=args.seed, epochs=args.epochs,
                   patience=args.epochs)
    for loss, path in RUNS.values():  # warm-up: load or compile every kernel once
        _run(ds, replace(base, epochs=1), loss, path)
    seconds: dict[str, list[float]] = {name: [] for name in RUNS}
    losses: dict[str, list[float]] = {}
    loads = []
    for _ in range(args.repeats):
        for name, (loss, path) in RUNS.items():
            s, trace, load = _run(ds, base, loss, path)
            assert losses.setdefault(name, trace) == trace, f"{name}: not deterministic"
            seconds[name].append(s)
            loads.append(load)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    ratio = med["bpr-fused"] / med["bce-fused"]
    print(f"{'run':14s} {'s/epoch (median of rounds)':>28s}   rounds")
    for name, v in seconds.items():
        print(f"{name:14s} {med[name]:28.4f}   {', '.join(f'{x:.4f}' for x in v)}")
    print(f"bpr-fused / bce-fused: {ratio:.2f}x (target <= 3x); "
          f"bpr-autograd / bpr-fused: {med['bpr-autograd'] / med['bpr-fused']:.1f}x")
    write_result("bpr_speed", {
        "machine": machine(), "epochs": args.epochs, "repeats": args.repeats,
        "seed": args.seed, "seconds_per_epoch": seconds, "median": med,
        "bpr_over_bce": ratio, "target_ratio": 3.0, "other_load": loads,
        "final_loss": {name: trace[-1] for name, trace in losses.items()}})


if __name__ == "__main__":
    main()
