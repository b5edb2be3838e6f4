"""Shared helpers of the benchmark scripts: machine facts, load, JSON output.

The machines we run on are shared and noisy. Every timed section records how
busy the *rest* of the machine was while it ran (CPU time of other processes
from /proc/stat, as a fraction of all cores), so disturbed measurements can
be seen and discarded.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies of this process)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    busy = sum(fields[:8]) - idle
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    mine = int(own[11]) + int(own[12]) + int(own[13]) + int(own[14])  # utime stime cutime cstime
    return busy, mine


class Timer:
    """Wall time of a block plus the other processes' share of the machine."""

    def __enter__(self) -> Timer:
        self._b0, self._m0 = _cpu_jiffies()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        b1, m1 = _cpu_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        other = max(0, (b1 - self._b0) - (m1 - self._m0)) / hz
        self.other_load = other / max(self.seconds, 1e-9) / (os.cpu_count() or 1)


def machine() -> dict:
    import torch

    info = {"date": _dt.datetime.now().isoformat(timespec="seconds"),
            "host_cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in f
                                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with contextlib.suppress(OSError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True, timeout=5,
                                        cwd=Path(__file__).parent).stdout.strip()
    with open("/proc/loadavg") as f:
        info["loadavg_at_start"] = f.read().split()[:3]
    return info


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path
