"""Training time per epoch vs KG size on Last.FM (the paper's Figure 6 question).

Grows Last.FM's KG to x1..x5 its triples with the same function as
``kgnnls reproduce fig6`` (:func:`kgnnls.data.synthetic.grow_kg`: copies of
existing heads and relations, tails by frequency or new entities), trains a
few epochs of the KGNN-LS paper preset on each, and takes the median epoch
seconds (training steps only). Records the other processes' load per size,
fits seconds = a + b * triples by least squares (with R^2) and writes
benchmarks/results/kg_size.json and kg_size.png.

    python benchmarks/kg_size.py [--factors 1 2 3 4 5] [--epochs 3] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from common import RESULTS, Timer, machine, write_result
from kgnnls import Config, RunOptions, load_dataset
from kgnnls.data.synthetic import grow_kg
from kgnnls.train import fit


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares ``y = intercept + slope * x`` and its R^2."""
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * np.asarray(x, dtype=float)
    ss_res = float(((np.asarray(y) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(y) - np.mean(y)) ** 2).sum())
    return {"slope_seconds_per_triple": float(slope), "intercept_seconds": float(intercept),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")}


def plot(rows: list[dict], lin: dict[str, float], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["triples"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, [r["median_epoch_seconds"] for r in rows], "o", label="median epoch")
    xs = np.linspace(min(x), max(x), 10)
    ax.plot(xs, lin["intercept_seconds"] + lin["slope_seconds_per_triple"] * xs, "--",
            label=f"linear fit (R$^2$ = {lin['r2']:.3f})")
    for r in rows:
        ax.annotate(f"x{r['factor']}", (r["triples"], r["median_epoch_seconds"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -8))
    ax.set_xlabel("KG triples")
    ax.set_ylabel("seconds per training epoch")
    ax.set_title("Last.FM, KGNN-LS paper preset", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    data = load_dataset("lastfm", seed=args.seed)
    cfg = Config.preset("lastfm", seed=args.seed, epochs=args.epochs, patience=args.epochs)
    options = RunOptions(threads=args.threads)
    rows = []
    for k in args.factors:
        grown = grow_kg(data, k, args.seed)
        with Timer() as t:
            fitted = fit(grown, cfg, progress=False, options=options)
        epochs = [h["seconds"] for h in fitted.history]
        rows.append({"factor": k, "triples": len(grown.kg), "entities": grown.n_entities,
                     "epoch_seconds": epochs, "median_epoch_seconds": statistics.median(epochs),
                     "fit_wall_seconds": t.seconds, "other_load": t.other_load,
                     "best_val_auc": max(h["val_auc"] for h in fitted.history),
                     "training_path": fitted.training_path})
        print(f"x{k}: {len(grown.kg):,} triples, median epoch "
              f"{rows[-1]['median_epoch_seconds']:.3f} s (other load {t.other_load:.0%})",
              flush=True)
    lin = linear_fit([r["triples"] for r in rows], [r["median_epoch_seconds"] for r in rows])
    base = rows[0]["median_epoch_seconds"]
    result = {"benchmark": "kg_size", "dataset": "lastfm", "machine": machine(),
              "config": cfg.to_dict(), "run": options.to_dict(),
              "grow": "kgnnls.data.synthetic.grow_kg (as fig6)",
              "rows": rows, "linear_fit": lin,
              "ratio_last_to_first": rows[-1]["median_epoch_seconds"] / base}
    path = write_result("kg_size", result)
    png = RESULTS / "kg_size.png"
    plot(rows, lin, png)
    print(f"{'KG':>4} {'triples':>8} {'entities':>8} {'median s':>9} {'vs x1':>6} {'load':>5}")
    for r in rows:
        print(f"x{r['factor']:<3} {r['triples']:>8,} {r['entities']:>8,} "
              f"{r['median_epoch_seconds']:>9.3f} {r['median_epoch_seconds'] / base:>6.2f} "
              f"{r['other_load']:>5.0%}")
    print(f"linear fit: {lin['intercept_seconds']:.3f} s + "
          f"{lin['slope_seconds_per_triple'] * 1e6:.3f} s per million triples, "
          f"R^2 = {lin['r2']:.3f}; wrote {path} and {png}")


if __name__ == "__main__":
    main()
