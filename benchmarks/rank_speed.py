"""Full ranking speed: every Last.FM user over every item (performance target 3).

Times ``kgnnls.scoring.Scorer.score_matrix`` (the path ``evaluate``, ``recommend`` and serving use:
the compiled one-layer ranker at L = 1, layer-wise tensors at L >= 2) for all
users x all items, chunked as the evaluator chunks, against the broadcast
reference path (``score_matrix_reference``) on the same users in the same
process, and checks that both give the same scores. Writes
benchmarks/results/rank_speed.json.

    python benchmarks/rank_speed.py [--dataset lastfm] [--users 0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from common import Timer, machine, write_result
from kgnnls import Config, load_dataset
from kgnnls.scoring import Scorer
from kgnnls.train import build


def _rank_all(scorer: Scorer, users: torch.Tensor, items: torch.Tensor, reference: bool
              ) -> torch.Tensor:
    chunk = scorer.ranking_chunk(len(items)) if not reference else 64
    score = scorer.model.score_matrix_reference if reference else scorer.score_matrix
    return torch.cat([score(users[s:s + chunk], items) for s in range(0, len(users), chunk)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="lastfm")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--users", type=int, default=0, help="users to rank (0: all)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(args.dataset, seed=0, data_dir=args.data_dir)
    cfg = Config.preset(args.dataset)
    _, net = build(ds, cfg)  # untrained weights rank exactly as fast as trained ones
    net.eval()
    scorer = Scorer(net, threads=1)  # built once: its ranker's layout is reused
    n_users = args.users or ds.n_users
    users, items = torch.arange(n_users), torch.arange(ds.n_items)
    _rank_all(scorer, users[:8], items, reference=False)  # compile / warm up
    fast, loads = [], []
    for _ in range(args.repeats):
        with Timer() as t:
            scores = _rank_all(scorer, users, items, reference=False)
        fast.append(t.seconds)
        loads.append(t.other_load)
    ref_users = users[:min(n_users, 200)]  # the reference path is slow: time a slice
    with Timer() as t_ref:
        ref = _rank_all(scorer, ref_users, items, reference=True)
    ref_per_user = t_ref.seconds / len(ref_users)
    max_diff = float((ref - scores[:len(ref_users)]).abs().max())
    best = min(fast)
    result = {"machine": machine(), "dataset": args.dataset, "users": n_users,
              "items": ds.n_items, "n_layers": cfg.n_layers, "seconds": fast,
              "seconds_best": best, "seconds_median": statistics.median(fast),
              "other_load": loads, "reference_seconds_per_user": ref_per_user,
              "reference_extrapolated_seconds": ref_per_user * n_users,
              "speedup_vs_reference": ref_per_user * n_users / best,
              "max_abs_diff_vs_reference": max_diff}
    print(f"{args.dataset}: {n_users} users x {ds.n_items} items (L={cfg.n_layers})")
    print(f"  score_matrix   best {best:.3f} s  median {statistics.median(fast):.3f} s  "
          f"(other processes: {max(loads):.0%} of the machine at most)")
    print(f"  reference      {ref_per_user * n_users:.3f} s extrapolated from "
          f"{len(ref_users)} users  -> {result['speedup_vs_reference']:.1f}x; "
          f"max |diff| {max_diff:.2e}")
    print(f"wrote {write_result(f'rank_speed_{args.dataset}', result)}")


if __name__ == "__main__":
    main()
