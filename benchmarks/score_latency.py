"""Latency of scoring a few pairs: a Scorer built once against a copy per call.

``KGNNLS.score`` and ``POST /score`` score a handful of pairs per call. The
compiled forward reads the parameters from one flat buffer; before
:mod:`kgnnls.scoring` every call rebuilt it (``kgnnls.fused.logits``: the whole
model copied, 5 M floats on Book-Crossing, plus the graph arguments), while a
:class:`kgnnls.scoring.Scorer` builds it once per parameter snapshot. Both are
timed in one process, alternating, on one thread, with untrained weights
(the same cost as trained ones), and must give identical logits.

    python benchmarks/score_latency.py [--dataset lastfm] [--data-dir DIR] [--pairs 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from common import Timer, machine, write_result
from kgnnls import Config, load_dataset
from kgnnls.fused import logits
from kgnnls.scoring import Scorer
from kgnnls.train import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="lastfm")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--pairs", type=int, default=1, help="pairs per call")
    ap.add_argument("--calls", type=int, default=50, help="calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(args.dataset, seed=0, data_dir=args.data_dir, progress=False)
    cfg = Config.preset(args.dataset)
    _, net = build(ds, cfg)
    net.eval()
    rows = np.random.default_rng(0).integers(0, [ds.n_users, ds.n_items],
                                             size=(args.pairs, 2))
    users, items = torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])
    scorer = Scorer(net, threads=1)

    def per_call() -> torch.Tensor:  # what KGNNLSNet.score_pairs did before kgnnls.scoring
        return torch.from_numpy(logits(net, users.numpy(), items.numpy(), threads=1)).float()

    assert torch.equal(per_call(), scorer.score_pairs(users, items))  # also compiles
    times: dict[str, list[float]] = {"copy_per_call": [], "scorer": []}
    with Timer() as total:
        for _ in range(args.rounds):  # alternating: drift on a shared host hits both
            for name, fn in (("copy_per_call", per_call),
                             ("scorer", lambda: scorer.score_pairs(users, items))):
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                times[name].append((time.perf_counter() - t0) / args.calls * 1e6)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {"machine": machine(), "dataset": args.dataset, "n_layers": cfg.n_layers,
              "dim": cfg.dim, "parameters": sum(p.numel() for p in net.parameters()),
              "pairs_per_call": args.pairs, "us_per_call": times,
              "median_us_per_call": median,
              "speedup": median["copy_per_call"] / median["scorer"],
              "other_load": total.other_load}
    print(f"{args.dataset}: {result['parameters']:,} parameters, {args.pairs} pair(s)/call: "
          f"copy per call {median['copy_per_call']:.0f} us, Scorer {median['scorer']:.0f} us "
          f"({result['speedup']:.1f}x), other load {total.other_load:.2f}")
    write_result(f"score_latency_{args.dataset}", result)


if __name__ == "__main__":
    main()
