"""Time to first result: the README's main job on an empty numba cache, then warm.

Runs ``kgnnls train --dataset lastfm --out DIR --overwrite`` in a subprocess
with ``NUMBA_CACHE_DIR`` pointed at a fresh empty directory (every compiled
kernel is compiled, as on a fresh install), then again on the cache that run
filled. Prints wall seconds, the run's ``compile_seconds`` (the fused kernels,
compiled before training) and ``train_seconds`` (training only) from its
metrics.json, and the CPU seconds of the child (wall time on a shared machine
mostly measures the neighbours). Target: cold wall <= 20 s. Writes
benchmarks/results/first_run.json.

    python benchmarks/first_run.py [--dataset lastfm] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_result

TARGET_COLD_S = 20.0


def _run(dataset: str, cache: str, out: Path) -> dict:
    """One ``kgnnls train`` in a child process with ``NUMBA_CACHE_DIR=cache``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kgnnls.cli", "train", "--dataset", dataset,
                    "--out", str(out), "--overwrite"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_seconds": wall,
            "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "compile_seconds": metrics.get("compile_seconds"),
            "train_seconds": metrics["train_seconds"], "test_auc": metrics["test"]["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="lastfm")
    parser.add_argument("--repeats", type=int, default=1, help="cold/warm pairs to run")
    args = parser.parse_args()
    info = machine()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            cache = tempfile.mkdtemp(dir=tmp, prefix="numba-cache-")
            cold = _run(args.dataset, cache, Path(tmp) / f"cold{i}")
            warm = _run(args.dataset, cache, Path(tmp) / f"warm{i}")
            runs.append({"cold": cold, "warm": warm})
    print(f"{'run':>6} {'wall s':>8} {'cpu s':>8} {'compile s':>10} {'train s':>8} {'test AUC':>9}")
    for pair in runs:
        for name, r in pair.items():
            compile_s = r["compile_seconds"]
            print(f"{name:>6} {r['wall_seconds']:8.1f} {r['cpu_seconds']:8.1f} "
                  f"{'-' if compile_s is None else f'{compile_s:10.1f}':>10} "
                  f"{r['train_seconds']:8.2f} {r['test_auc']:9.4f}")
    cold_wall = min(pair["cold"]["wall_seconds"] for pair in runs)
    verdict = "met" if cold_wall <= TARGET_COLD_S else "not met"
    print(f"target: cold wall <= {TARGET_COLD_S:.0f} s; best cold {cold_wall:.1f} s: {verdict}")
    path = write_result("first_run", {
        "machine": info, "dataset": args.dataset,
        "command": f"kgnnls train --dataset {args.dataset} --out DIR --overwrite",
        "runs": runs, "target_cold_wall_seconds": TARGET_COLD_S, "verdict": verdict})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
