"""Writing a report: header, tables with the paper's numbers beside ours, PNG, raw JSON."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kgnnls._version import __version__
from kgnnls.storage import atomic_write_bytes, atomic_write_json, atomic_write_text


def paper_numbers() -> dict[str, Any]:
    """The paper's tables, typed in (reference only, never used in computation)."""
    text = (resources.files("kgnnls.reproduce") / "paper_numbers.json").read_text()
    return json.loads(text)


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    if m != m:  # nan
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def paper_fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).parent).stdout.strip()
        return (out.stdout.strip() + ("+dirty" if dirty else "")) or "unknown"
    except OSError:
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


@dataclass
class Report:
    """One experiment's report: markdown sections, an optional figure, raw data."""

    experiment: str
    dataset: str
    title: str
    sections: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    figure: Any = None  # a matplotlib Figure
    notes: list[str] = field(default_factory=list)

    def write(self, out: Path, command: str, wall_seconds: float, runs: int = 0,
              run_seconds: float = 0.0) -> list[Path]:
        """Write ``EXPERIMENT-DATASET.{md,png,json}`` under ``out``.

        ``runs`` and ``run_seconds`` say how many training runs the report
        rests on and how long they took when they ran: the cost of the
        experiment from an empty cache, whatever this invocation reused.
        """
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.experiment}-{self.dataset}"
        header = [
            f"# {self.title}", "",
            f"- command: `{command}`",
            f"- kgnnls {__version__}, commit {_commit()}",
            f"- machine: {machine()}",
            f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
            f"- wall time: {wall_seconds:.0f} s in this invocation; the {runs} training runs "
            f"behind it took {run_seconds:.0f} s when they ran (cached runs are reused)", "",
        ]
        body = "\n\n".join(self.sections)
        if self.figure is not None:
            body += f"\n\n![{self.title}]({stem}.png)"
        if self.notes:
            body += "\n\n## Notes\n\n" + "\n".join(f"- {n}" for n in self.notes)
        written = [atomic_write_text(out / f"{stem}.md", "\n".join(header) + "\n" + body + "\n")]
        if self.figure is not None:
            import io

            buf = io.BytesIO()
            self.figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            written.append(atomic_write_bytes(out / f"{stem}.png", buf.getvalue()))
            import matplotlib.pyplot as plt

            plt.close(self.figure)
        written.append(atomic_write_json(out / f"{stem}.json", {
            "experiment": self.experiment, "dataset": self.dataset, "command": command,
            "version": __version__, "commit": _commit(), "wall_seconds": wall_seconds,
            "runs": runs, "run_seconds": run_seconds,
            **self.raw}))
        return written
