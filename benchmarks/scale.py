"""Scaling to MovieLens-20M size: one epoch, peak memory and ranking vs data size.

For each scale, a child process generates ``synthetic_like("ml-20m", scale)``
(the paper's Table 2 shape times ``scale``, planted signal), trains ONE epoch
with the paper's movie preset (S=16, d=32, L=1, lambda=1, gamma=1e-7,
lr=2e-2, batch 65,536), measures test AUC after it, and ranks every item for
min(10,000, users) users through ``score_matrix`` (the path evaluation,
``recommend`` and serving use). Each scale runs in its own process, so its
peak RSS (``ru_maxrss`` from ``os.wait4``) is its own. Prints a table, fits
the growth exponent of epoch seconds vs labelled rows (log-log least
squares) and writes benchmarks/results/scale.json and scale.png.

Targets (performance issue): one epoch at x1 < 3 min, peak RSS < 6 GiB,
ranking 10k users < 2 min.

    python benchmarks/scale.py [--scales 0.1 0.25 0.5 1] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, Timer, machine, write_result

TARGETS = {"epoch_seconds_x1": 180.0, "peak_rss_gib": 6.0, "rank_10k_seconds": 120.0}
RANK_USERS = 10_000


def child(scale: float, seed: int, threads: int) -> dict:
    import torch

    from kgnnls import Config, RunOptions
    from kgnnls.data.synthetic import synthetic_like
    from kgnnls.evaluate import ctr_metrics
    from kgnnls.scoring import Scorer
    from kgnnls.train import fit

    torch.set_num_threads(threads)
    with Timer() as gen:
        ds = synthetic_like("ml-20m", scale, seed)
    cfg = Config.preset("movielens-20m", seed=seed, epochs=1, patience=1)
    options = RunOptions.preset("movielens-20m", threads=threads)
    with Timer() as total:
        fitted = fit(ds, cfg, progress=False, options=options)
    epoch = fitted.history[0]
    scorer = Scorer(fitted.network, threads=threads)
    with Timer() as test_t:
        test = ctr_metrics(scorer, fitted.split.test, options.eval_batch_size)
    n_rank = min(RANK_USERS, ds.n_users)
    users, items = torch.arange(n_rank), torch.arange(ds.n_items)
    chunk = scorer.ranking_chunk(ds.n_items)
    with torch.no_grad():
        scorer.score_matrix(users[:8], items)  # compile / warm up
        with Timer() as rank_t:
            for s in range(0, n_rank, chunk):
                scorer.score_matrix(users[s:s + chunk], items)
    return {
        "scale": scale, "stats": ds.stats(), "train_rows": len(fitted.split.train),
        "generate_seconds": gen.seconds, "generate_other_load": gen.other_load,
        "epoch_seconds": epoch["seconds"], "fit_wall_seconds": total.seconds,
        "setup_and_validation_seconds": total.seconds - epoch["seconds"],
        "fit_other_load": total.other_load, "training_path": fitted.training_path,
        "val_auc": epoch["val_auc"], "test_auc": test["auc"], "test_f1": test["f1"],
        "test_eval_seconds": test_t.seconds,
        "rank_users": n_rank, "rank_items": ds.n_items, "rank_seconds": rank_t.seconds,
        "rank_other_load": rank_t.other_load,
        "rank_seconds_per_10k_users": rank_t.seconds * RANK_USERS / n_rank,
        "threads": threads, "config": cfg.to_dict(), "run": options.to_dict(),
    }


def run_scale(scale: float, seed: int, threads: int) -> dict:
    """One scale in a fresh process; its own peak RSS from ``os.wait4``."""
    with tempfile.NamedTemporaryFile("w+", suffix=".json") as out:
        cmd = [sys.executable, __file__, "--child", str(scale), "--seed", str(seed),
               "--threads", str(threads), "--child-out", out.name]
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"scale {scale}: child exited with {proc.returncode}")
        result = json.loads(Path(out.name).read_text())
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    return result


def growth_exponent(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares slope and intercept of log(y) vs log(x); None below 2 points."""
    import numpy as np

    if len(xs) < 2:
        return None
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(slope), float(intercept)


def plot(rows: list[dict], fit: tuple[float, float] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = [r["stats"]["interactions"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.loglog(n, [r["epoch_seconds"] for r in rows], "o-", label="one training epoch")
    ax.loglog(n, [r["rank_seconds_per_10k_users"] for r in rows], "s-",
              label="ranking 10k users (all items)")
    ax.loglog(n, [r["generate_seconds"] for r in rows], "^-", label="generation")
    if fit is not None:
        xs = np.geomspace(min(n), 13_501_622, 20)
        ax.loglog(xs, np.exp(fit[1]) * xs ** fit[0], ":", color="C0",
                  label=f"epoch fit ~ n^{fit[0]:.2f} (extrapolated)")
    ax.axvline(13_501_622, color="grey", lw=0.8)
    ax.axhline(TARGETS["epoch_seconds_x1"], color="C0", lw=0.6, ls="--")
    ax.axhline(TARGETS["rank_10k_seconds"], color="C1", lw=0.6, ls="--")
    ax.set_xlabel("labelled interactions (ML-20M = 13.5 M, grey)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        Path(args.child_out).write_text(json.dumps(child(args.child, args.seed, args.threads)))
        return

    rows = []
    for scale in args.scales:
        print(f"scale x{scale:g} ...", flush=True)
        rows.append(run_scale(scale, args.seed, args.threads))
    n = [r["stats"]["interactions"] for r in rows]
    fit = growth_exponent(n, [r["epoch_seconds"] for r in rows])
    x1 = next((r for r in rows if r["scale"] == 1.0), None)
    extrapolated = None if fit is None else math.exp(fit[1] + fit[0] * math.log(13_501_622))
    verdict = {
        "epoch_seconds_x1_measured": None if x1 is None else x1["epoch_seconds"],
        "epoch_seconds_x1_extrapolated": extrapolated,
        "peak_rss_gib_max": max(r["peak_rss_gib"] for r in rows),
        "rank_10k_seconds_max": max(r["rank_seconds_per_10k_users"] for r in rows),
    }
    result = {"benchmark": "scale", "machine": machine(), "targets": TARGETS,
              "scales": args.scales, "rows": rows,
              "epoch_growth_exponent": None if fit is None else fit[0],
              "epoch_fit_log_intercept": None if fit is None else fit[1], "verdict": verdict}
    path = write_result("scale", result)
    png = RESULTS / "scale.png"
    plot(rows, fit, png)

    head = (f"{'scale':>6} {'users':>8} {'items':>6} {'rows':>11} {'gen s':>7} {'epoch s':>8} "
            f"{'setup+val s':>11} {'peak GiB':>8} {'rank users':>10} {'rank s':>7} "
            f"{'test AUC':>8} {'load':>5}")
    print(head)
    for r in rows:
        st = r["stats"]
        print(f"{r['scale']:>6g} {st['users']:>8,} {st['items']:>6,} {st['interactions']:>11,} "
              f"{r['generate_seconds']:>7.2f} {r['epoch_seconds']:>8.2f} "
              f"{r['setup_and_validation_seconds']:>11.2f} {r['peak_rss_gib']:>8.2f} "
              f"{r['rank_users']:>10,} {r['rank_seconds']:>7.2f} {r['test_auc']:>8.4f} "
              f"{r['fit_other_load']:>5.0%}")
    if fit is not None:
        print(f"epoch seconds ~ rows^{fit[0]:.3f}; extrapolated to x1 (13,501,622 rows): "
              f"{verdict['epoch_seconds_x1_extrapolated']:.1f} s "
              f"(target < {TARGETS['epoch_seconds_x1']:.0f} s)")
    if x1 is not None:
        print(f"x1 measured: epoch {x1['epoch_seconds']:.1f} s, peak {x1['peak_rss_gib']:.2f} GiB, "
              f"ranking {x1['rank_users']:,} users {x1['rank_seconds']:.1f} s")
    print(f"targets: epoch x1 < 3 min, peak < 6 GiB (max here {verdict['peak_rss_gib_max']:.2f}),"
          f" ranking 10k users < 2 min (max here {verdict['rank_10k_seconds_max']:.1f} s)")
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
