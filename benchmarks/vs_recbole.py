"""Ours vs RecBole 1.2.1's KGNNLS: same split, same hyper-parameters, one run.

Needs the RecBole venv (``bash benchmarks/peers/recbole.sh`` makes it). Runs
with the project's python:

    python benchmarks/vs_recbole.py [--dataset lastfm] [--epochs 10] [--seed 0]
    python benchmarks/vs_recbole.py --dataset book-crossing --data-dir ../shared/data

Steps: (a) split the dataset as our training does and write the split as
RecBole pre-split atomic files (train file: the training positives, since
RecBole's KGNNLS is pairwise and draws one negative per positive each epoch;
valid/test files: the labelled rows); (b) train ours through the public API;
(c) run benchmarks/peers/recbole_run.py in the RecBole venv twice, as installed
(autograd anomaly detection on, which RecBole switches on) and with it off;
(d) print seconds per training epoch (median over undisturbed epochs: those
during which other processes used at most --max-other-load of the machine),
test AUC and the ratios RecBole/ours, and write
benchmarks/results/vs_recbole_<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import Timer, _cpu_jiffies, machine, write_result
from kgnnls import KGNNLS, Config, RunOptions, load_dataset
from kgnnls.config import split_settings
from kgnnls.data import split_ratings
from kgnnls.data.writers import write_recbole

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
DEFAULT_PYTHON = PEERS / ".venv-recbole" / "bin" / "python"


def recbole_params(cfg: Config, options: RunOptions, batch: str) -> dict:
    """Our config in RecBole's KGNNLS names (recbole/properties/model/KGNNLS.yaml).

    RecBole's ``train_batch_size`` counts positives, each paired with one
    sampled negative: ``batch="rows"`` (default) halves our batch size so a
    step sees as many labelled rows as ours (and an epoch has as many steps);
    ``batch="same"`` passes it unchanged.
    """
    return {
        "embedding_size": cfg.dim, "neighbor_sample_size": cfg.n_neighbors,
        "n_iter": cfg.n_layers, "aggregator": cfg.aggregator, "reg_weight": cfg.l2_weight,
        "ls_weight": cfg.ls_weight, "learning_rate": cfg.lr, "epochs": cfg.epochs,
        "train_batch_size": cfg.batch_size // 2 if batch == "rows" else cfg.batch_size,
        "learner": "adam", "weight_decay": 0.0, "metric_decimal_place": 6,
        "eval_batch_size": options.eval_batch_size,
    }


class EpochLoad:
    """Other processes' share of the machine between consecutive log lines of fit()."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int, int]] = []
        self.epochs: list[dict] = []

    def __call__(self, msg: str) -> None:
        busy, mine = _cpu_jiffies()
        now = time.perf_counter()
        if msg.startswith("epoch") and self.marks:
            t0, b0, m0 = self.marks[-1]
            other = max(0, (busy - b0) - (mine - m0)) / os.sysconf("SC_CLK_TCK")
            self.epochs.append({"other_load": other / max(now - t0, 1e-9) / (os.cpu_count() or 1),
                                "span_seconds": now - t0})
        self.marks.append((now, busy, mine))


def summarize(seconds: list[float], loads: list[float], limit: float) -> dict:
    kept = [s for s, ld in zip(seconds, loads, strict=True) if ld <= limit]
    return {"median_seconds_per_epoch": statistics.median(kept or seconds),
            "n_epochs": len(seconds), "discarded": len(seconds) - len(kept),
            "all_disturbed": not kept, "max_other_load": max(loads, default=0.0),
            "mean_other_load": statistics.fmean(loads) if loads else 0.0}


def run_ours(ds, split, cfg: Config, options: RunOptions, limit: float) -> dict:
    load = EpochLoad()
    with Timer() as wall:
        model = KGNNLS(cfg, options).fit(ds, split=split, log=load)
    test_auc = model.evaluate()["test"]["auc"]
    seconds = [h["seconds"] for h in model.history]
    loads = [e["other_load"] for e in load.epochs]
    return {"epochs": [{"seconds": s, **e, "val_auc": h["val_auc"]}
                       for s, e, h in zip(seconds, load.epochs, model.history, strict=True)],
            "test_auc": float(test_auc), "best_epoch": model.info.get("best_epoch"),
            "training_path": model.info.get("training_path"), "fit_wall_seconds": wall.seconds,
            "max_rss_mib_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **summarize(seconds, loads, limit)}


def run_peer(python: Path, data: Path, params: Path, anomaly: str, threads: int, seed: int,
             limit: float) -> dict:
    out = data.parent / f"recbole_{anomaly}.json"
    cmd = [str(python), "-W", "ignore", str(PEERS / "recbole_run.py"), "--data", str(data),
           "--params", str(params), "--anomaly", anomaly, "--threads", str(threads),
           "--seed", str(seed), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"RecBole run ({anomaly}) failed:\n{proc.stderr[-4000:]}")
    res = json.loads(out.read_text())
    seconds = [e["seconds"] for e in res["epochs"]]
    res.update(summarize(seconds, [e["other_load"] for e in res["epochs"]], limit))
    rss = [e["rss_mib"] for e in res["epochs"]]
    res["rss_growth_mib"] = rss[-1] - rss[0] if rss else 0.0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="lastfm")
    ap.add_argument("--data-dir", default=None, help="where the dataset lies (book-crossing)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-other-load", type=float, default=0.25,
                    help="discard epochs during which other processes used more of the machine")
    ap.add_argument("--recbole-batch", choices=["rows", "same"], default="rows",
                    help="rows: RecBole batch = half ours (same rows per step); same: unchanged")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override our config (e.g. negatives=resample); S, d, L, lambda, "
                         "gamma, eta, batch_size and epochs also reach RecBole's config")
    ap.add_argument("--tag", default="", help="suffix of the result file's name")
    ap.add_argument("--peer-python", type=Path, default=DEFAULT_PYTHON)
    ap.add_argument("--workdir", type=Path, default=PEERS / "work")
    args = ap.parse_args()
    if not args.peer_python.exists():
        sys.exit(f"{args.peer_python} is missing: run  bash benchmarks/peers/recbole.sh  first")

    ds = load_dataset(args.dataset, seed=args.seed, data_dir=args.data_dir)
    overrides, run_overrides = split_settings(dict(kv.split("=", 1) for kv in args.set))
    cfg = Config.preset(args.dataset, seed=args.seed, epochs=args.epochs, patience=args.epochs,
                        **overrides)
    options = RunOptions.preset(args.dataset, threads=args.threads, **run_overrides)
    split = split_ratings(ds.ratings, cfg.seed)  # what fit() does when given no split
    # (a) our split as RecBole benchmark files: WORK/<dataset>/<name>/<name>.{train,...}.inter
    name = ds.name.replace("-", "_")
    data = args.workdir / args.dataset / name
    data.mkdir(parents=True, exist_ok=True)
    write_recbole(ds, data, name=name, parts={
        "train": split.train[split.train[:, 2] == 1], "valid": split.val, "test": split.test})
    params = data.parent / "params.json"
    params.write_text(json.dumps(recbole_params(cfg, options, args.recbole_batch), indent=2) + "\n")

    info = machine()
    lim = args.max_other_load
    print(f"{args.dataset}: {len(split.train)} train rows ({int(split.train[:, 2].sum())} "
          f"positives), {len(split.val)} valid, {len(split.test)} test; {args.epochs} epochs")
    ours = run_ours(ds, split, cfg, options, lim)                                    # (b)
    peers = {mode: run_peer(args.peer_python, data, params, mode, args.threads, args.seed, lim)
             for mode in ("installed", "off")}                              # (c)

    rows = [("ours", ours), ("recbole (as installed: anomaly on)", peers["installed"]),
            ("recbole (anomaly off)", peers["off"])]
    base = ours["median_seconds_per_epoch"]
    print(f"\n{'':36} {'s/epoch':>8} {'x ours':>7} {'test AUC':>9} {'AUC - ours':>10} "
          f"{'discarded':>9} {'other load':>10}")
    for label, r in rows:
        s = r["median_seconds_per_epoch"]
        print(f"{label:36} {s:8.3f} {s / base:7.2f} {r['test_auc']:9.4f} "
              f"{r['test_auc'] - ours['test_auc']:+10.4f} {r['discarded']:>4}/{r['n_epochs']:<4} "
              f"{r['mean_other_load']:9.0%}")
    if any(r["all_disturbed"] for _, r in rows):
        print(f"warning: every epoch of some run had other load > {lim:.0%}: medians use them all")
    print(f"RecBole RSS {peers['installed']['rss_mib_end']['VmRSS']:.0f} MiB at the end "
          f"(+{peers['installed']['rss_growth_mib']:.0f} MiB from epoch 1 to "
          f"{len(peers['installed']['epochs'])}, anomaly on; "
          f"+{peers['off']['rss_growth_mib']:.0f} MiB anomaly off)")

    result = {
        "benchmark": "vs_recbole", "dataset": args.dataset, "machine": info,
        "config": cfg.to_dict(), "run": options.to_dict(),
        "recbole_params": json.loads(params.read_text()),
        "split": {"train": len(split.train), "train_positives": int(split.train[:, 2].sum()),
                  "valid": len(split.val), "test": len(split.test)},
        "max_other_load": lim, "ours": ours, "recbole_installed": peers["installed"],
        "recbole_anomaly_off": peers["off"],
        "ratios_recbole_over_ours": {
            mode: {"seconds_per_epoch": peers[mode]["median_seconds_per_epoch"] / base,
                   "test_auc": peers[mode]["test_auc"] / ours["test_auc"]}
            for mode in ("installed", "off")},
    }
    path = write_result(f"vs_recbole_{args.dataset}" + (f"_{args.tag}" if args.tag else ""),
                        result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
