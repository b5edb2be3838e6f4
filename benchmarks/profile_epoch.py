"""Where one Last.FM training epoch spends its time, on both training paths.

1. cProfile of one epoch of ``fit`` (paper preset, after a warm-up epoch) on
   the fused path and on the autograd path: the top functions by own time.
   On the fused path the per-sample work is inside one compiled call per
   32 batches (gradient and Adam); no Python function runs per sample.
2. The fused step split into its parts, timed by calling the compiled
   kernels directly over one epoch of batches: the gradient with the
   label-smoothness term off (GNN only), with one and two propagation hops,
   the Adam update of every parameter, and the whole step as the training
   loop runs it (``FusedTrainer.steps``).

Writes benchmarks/results/profile_epoch.json.

    python benchmarks/profile_epoch.py [--seed 0] [--top 12]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from dataclasses import replace

import numpy as np
import torch

from common import machine, write_result
from kgnnls import Config, RunOptions, load_dataset
from kgnnls.fused import FusedTrainer, _label_candidates
from kgnnls.fused.kernels import adam as adam_kernel
from kgnnls.fused.kernels import kernels_for
from kgnnls.optim import make_optimizer
from kgnnls.train import build, fit


def _profile(ds, cfg: Config, options: RunOptions, top: int) -> dict:
    # warm-up: kernels loaded, caches hot
    fit(ds, replace(cfg, epochs=1), progress=False, options=options)
    profiler = cProfile.Profile()
    profiler.enable()
    fitted = fit(ds, replace(cfg, epochs=1), progress=False, options=options)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (file, line, name), (_cc, calls, own, cum, _callers) in stats.stats.items():
        rows.append({"function": f"{file.rsplit('/', 1)[-1]}:{line}({name})", "calls": calls,
                     "own_seconds": own, "cumulative_seconds": cum})
    rows.sort(key=lambda r: -r["own_seconds"])
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return {"training_path": fitted.training_path, "epoch_seconds": fitted.history[0]["seconds"],
            "top_own_time": rows[:top], "text": out.getvalue()}


def _kernel_parts(ds, cfg: Config, repeats: int = 5) -> dict:
    torch.set_num_threads(1)
    split, net = build(ds, cfg)
    trainer = FusedTrainer(net, make_optimizer(net, cfg.lr, cfg.l2_weight))
    trainer.pull()
    rows = split.train[np.random.default_rng(cfg.seed).permutation(len(split.train))]
    users, items = np.ascontiguousarray(rows[:, 0]), np.ascontiguousarray(rows[:, 1])
    labels = rows[:, 2].astype(np.float32)
    n, b = len(rows), cfg.batch_size
    none = np.zeros(0, np.uint8)  # no row marks: dense updates

    def best(run) -> float:
        run()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return min(times)

    def grad(hops: int):
        # the per-item label candidates belong to the propagation depth
        cand_ptr, cand_ent = _label_candidates(trainer.graph["adj_e"],
                                               trainer.graph["lab_items"], hops)
        shape, graph, labs = trainer._packed()
        shape = shape._replace(hops=hops)
        labs = labs._replace(cand_ptr=cand_ptr, cand_ent=cand_ent)
        batch_grad = kernels_for(shape).batch_grad
        return lambda: [batch_grad(users, items, labels, s, min(s + b, n), trainer.flat,
                                   trainer.grad, shape, graph, labs, none, True, none, none,
                                   np.zeros((0, 0), np.int64))
                        for s in range(0, n, b)]

    def adam():
        for s in range(0, n, b):
            adam_kernel(trainer.flat, trainer.grad, trainer.m, trainer.v, 1 + s // b,
                        trainer.lr, trainer.beta1, trainer.beta2, trainer.eps, trainer.wd,
                        trainer.wd_until)

    parts = {"gradient, GNN only (no LS term)": best(grad(0)),
             "gradient, LS over 1 hop": best(grad(1)),
             f"gradient, LS over {cfg.label_hops} hops (the preset)": best(grad(cfg.label_hops)),
             f"Adam over all {trainer.flat.size:,} parameters": best(adam),
             "whole step (FusedTrainer.steps: gradient + Adam)": best(
                 lambda: trainer.steps(users, items, labels, 0, n, b))}
    return {"batches": (n + b - 1) // b, "parameters": int(trainer.flat.size),
            "seconds_per_epoch": parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    ds = load_dataset("lastfm", seed=args.seed)
    cfg = Config.preset("lastfm", seed=args.seed)
    result = {"machine": machine(), "config": cfg.to_dict(),
              "profiles": {path: _profile(ds, cfg, RunOptions(threads=1, training_path=path),
                                          args.top)
                           for path in ("fused", "autograd")},
              "fused_parts": _kernel_parts(ds, cfg)}
    for path, prof in result["profiles"].items():
        print(f"== {path} path: one epoch {prof['epoch_seconds']:.3f} s (under cProfile)")
        print(prof["text"])
    print("== fused step by part (seconds per epoch, best of 5)")
    for name, seconds in result["fused_parts"]["seconds_per_epoch"].items():
        print(f"  {name:45} {seconds:.4f}")
    print(f"wrote {write_result('profile_epoch', result)}")


if __name__ == "__main__":
    main()
