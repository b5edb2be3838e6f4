"""Training step time vs depth L = 1..4 (Table 6's sweep), fused against autograd.

For each L the dataset's preset (L changed, label propagation at its default
depth max(L, 2)) trains the same shuffled batches on the fused compiled step
and on the autograd path, in this one invocation, and the script prints
milliseconds per step, the implied seconds per epoch and the ratio. Book-
Crossing (d = 64) is where deep fields cost: S^L leaves per pair, 4,096 at
L = 4. Timing covers optimizer steps only, after one warm-up step per path;
1 thread. Writes benchmarks/results/deep_speed_DATASET.json.

    python benchmarks/deep_speed.py [--dataset book-crossing] [--data-dir ../../shared/data]
                                    [--layers 1 2 3 4] [--steps 8] [--autograd-steps 3]
                                    [--updates dense|rows]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import Timer, machine, write_result
from kgnnls import Config, load_dataset
from kgnnls.fused import FusedTrainer
from kgnnls.optim import make_optimizer
from kgnnls.train import build


def _fused_ms(net, cfg: Config, rows: np.ndarray, steps: int) -> tuple[float, float]:
    users = np.ascontiguousarray(rows[:, 0], np.int64)
    items = np.ascontiguousarray(rows[:, 1], np.int64)
    labels = np.ascontiguousarray(rows[:, 2], np.float32)
    trainer = FusedTrainer(net, make_optimizer(net, cfg.lr, cfg.l2_weight, cfg.updates))
    trainer.pull()
    bs = cfg.batch_size
    trainer.step(users, items, labels, 0, bs)  # loads (or compiles) the kernels
    with Timer() as t:
        for s in range(bs, (steps + 1) * bs, bs):
            trainer.step(users, items, labels, s, s + bs)
    return t.seconds / steps * 1e3, t.other_load


def _autograd_ms(net, cfg: Config, rows: np.ndarray, steps: int) -> tuple[float, float]:
    opt = make_optimizer(net, cfg.lr, cfg.l2_weight, cfg.updates)
    tensors = [torch.from_numpy(np.ascontiguousarray(rows[:, k])) for k in range(3)]
    users, items, labels = tensors[0], tensors[1], tensors[2].float()
    bs = cfg.batch_size

    def step(s: int) -> None:
        loss, _ = net.loss(users[s:s + bs], items[s:s + bs], labels[s:s + bs])
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)
    with Timer() as t:
        for s in range(bs, (steps + 1) * bs, bs):
            step(s)
    return t.seconds / steps * 1e3, t.other_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="book-crossing")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=8, help="timed fused steps per depth")
    ap.add_argument("--autograd-steps", type=int, default=3,
                    help="timed autograd steps per depth (slow at L = 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--updates", default="dense", choices=["dense", "rows"],
                    help="dense Adam (the paper's objective) or lazy Adam on the rows read")
    args = ap.parse_args()
    torch.set_num_threads(1)

    base = Config.preset(args.dataset, seed=args.seed, updates=args.updates)
    data = load_dataset(args.dataset, seed=args.seed, data_dir=args.data_dir,
                        threshold=base.threshold, progress=False)
    results = []
    for L in args.layers:
        cfg = base.with_overrides({"n_layers": L})
        split, net = build(data, cfg)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        rows = split.train[np.random.default_rng(args.seed).permutation(len(split.train))]
        fused_ms, fused_load = _fused_ms(net, cfg, rows, args.steps)
        net.load_state_dict(state)  # the same start for the reference path
        auto_ms, auto_load = _autograd_ms(net, cfg, rows, args.autograd_steps)
        steps_per_epoch = -(-len(rows) // cfg.batch_size)
        results.append({
            "n_layers": L, "label_hops": cfg.label_hops, "dim": cfg.dim,
            "batch_size": cfg.batch_size, "tree_nodes": sum(cfg.n_neighbors ** h
                                                           for h in range(L + 1)),
            "fused_ms_per_step": fused_ms, "autograd_ms_per_step": auto_ms,
            "speedup": auto_ms / fused_ms, "steps_per_epoch": steps_per_epoch,
            "fused_seconds_per_epoch": fused_ms * steps_per_epoch / 1e3,
            "autograd_seconds_per_epoch": auto_ms * steps_per_epoch / 1e3,
            "other_load": max(fused_load, auto_load)})
        r = results[-1]
        print(f"L = {L} ({r['tree_nodes']:,} nodes/pair): fused {fused_ms:8.1f} ms/step "
              f"({r['fused_seconds_per_epoch']:6.1f} s/epoch), autograd {auto_ms:8.1f} ms/step "
              f"({r['autograd_seconds_per_epoch']:7.1f} s/epoch): {r['speedup']:.1f}x; other "
              f"load {r['other_load']:.0%}", flush=True)
    suffix = "" if args.updates == "dense" else f"_{args.updates}"
    path = write_result(f"deep_speed_{args.dataset}{suffix}", {
        "benchmark": "deep_speed", "dataset": args.dataset, "config": base.to_dict(),
        "machine": machine(), "steps": args.steps, "autograd_steps": args.autograd_steps,
        "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
