"""What the whole leaderboard costs: every model tuned and tested by one command.

Runs ``kgnnls benchmark --dataset lastfm --models all --trials 20 --seeds 5
--epochs 50 --patience 5 --jobs 2 --no-ablation`` into a fresh directory in a
child process (nothing cached: every trial and seed runs), or reads the JSON
report such a run wrote (``--report``). Prints the run's wall and compute
minutes, each model's tuning and test-seed seconds, and the target: the whole
Last.FM leaderboard within 30 minutes wall on this 2-core machine (issue 22).
Writes benchmarks/results/leaderboard_cost_DATASET[_valN].json (``_valN``: validation
ranked for a sample of N users, ``--val-users N``).

    python benchmarks/leaderboard_cost.py [--dataset lastfm] [--trials 20] [--seeds 5] [--jobs 2]
                                          [--val-users N]
    python benchmarks/leaderboard_cost.py --report DIR/benchmark-lastfm.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import Timer, machine, write_result

TARGET_WALL_MINUTES = 30.0


def _command(args: argparse.Namespace, out: str) -> list[str]:
    return ["kgnnls", "benchmark", "--dataset", args.dataset, "--models", "all",
            "--trials", str(args.trials), "--seeds", str(args.seeds), "--epochs", "50",
            "--patience", "5", "--jobs", str(args.jobs), "--val-users", str(args.val_users),
            "--no-ablation", "--out", out]


def per_model(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each model's tuning seconds and test-seed seconds (fits and evaluations)."""
    return {name: {"tuning_seconds": float(m["tuning_seconds"]),
                   "seeds_seconds": float(sum(m["fit_seconds"]) + sum(m["eval_seconds"]))}
            for name, m in report["models"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="lastfm")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--val-users", type=int, default=0, help="0: every validation user")
    parser.add_argument("--report", type=Path, help="summarize this report JSON instead of running")
    parser.add_argument("--commit", help="with --report: the commit the report was made at")
    args = parser.parse_args()
    info = machine()
    other_load = None
    if args.report is None:
        with tempfile.TemporaryDirectory() as tmp:
            command = _command(args, tmp)
            with Timer() as timer:
                subprocess.run([sys.executable, "-m", "kgnnls.cli", *command[1:]], check=True)
            report = json.loads((Path(tmp) / f"benchmark-{args.dataset}.json").read_text())
        other_load = timer.other_load
        command[-1] = "DIR"
    else:  # the run's date and commit, not this summary's
        report = json.loads(args.report.read_text())
        command = None
        info["date"] = _dt.datetime.fromtimestamp(args.report.stat().st_mtime).isoformat(
            timespec="seconds")
        info["commit"] = args.commit or "unknown (summarized from a report)"
        for key in ("loadavg_at_start", "torch_threads"):  # this process's, not the run's
            info.pop(key, None)
    models = per_model(report)
    wall = float(report["wall_seconds"]) / 60
    print(f"{'model':>18} {'tuning s':>9} {'seeds s':>8} {'total min':>9}")
    for name, m in sorted(models.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"{name:>18} {m['tuning_seconds']:9.1f} {m['seeds_seconds']:8.1f} "
              f"{sum(m.values()) / 60:9.1f}")
    verdict = "met" if wall <= TARGET_WALL_MINUTES else "not met"
    print(f"{len(models)} models, {report['trials']} trials, {report['seeds']} seeds, "
          f"validation users: {report.get('val_users') or 'all'}: "
          f"{wall:.1f} min wall on {report.get('cpus')} CPUs, "
          f"{float(report['compute_seconds']) / 60:.1f} min of compute; "
          f"target <= {TARGET_WALL_MINUTES:g} min wall: {verdict}")
    val_users = int(report.get("val_users", 0))
    name = f"leaderboard_cost_{report['dataset']}" + (f"_val{val_users}" if val_users else "")
    path = write_result(name, {
        "machine": info, "dataset": report["dataset"], "command": command,
        "val_users": val_users,
        "report": None if args.report is None else str(args.report),
        "trials": report["trials"], "seeds": report["seeds"], "cpus": report.get("cpus"),
        "wall_seconds": report["wall_seconds"], "compute_seconds": report["compute_seconds"],
        "other_load": other_load, "models": models,
        "target_wall_minutes": TARGET_WALL_MINUTES, "verdict": verdict})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
