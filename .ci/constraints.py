"""Helpers of .ci/refresh-constraints and .ci/run (standard library only).

``freeze TORCH_PIN < pip-freeze-output > constraints``: the constraints file
CI installs from. Drops the package itself and anything pip cannot fetch again
from an index (editable installs, direct URLs, local paths), strips local
version labels (``torch==2.13.0+cpu`` -> ``torch==2.13.0``, which matches the
local CPU wheel where pip is pointed at one and the index's release
elsewhere), and refuses a torch other than TORCH_PIN (the one pyproject.toml
pins: an unpinned torch pulls a multi-GB CUDA build).

``compare CONSTRAINTS < pip-freeze-output``: one line per package whose
version differs from CONSTRAINTS (tested -> installed), for CI's report.
"""

from __future__ import annotations

import datetime as dt
import platform
import re
import sys

#: Never pinned in the constraints: the project itself.
SELF = {"kgnnls"}


def _name(requirement: str) -> str:
    """The normalized project name of ``name==version`` (PEP 503)."""
    return re.sub(r"[-_.]+", "-", requirement.split("==")[0].strip()).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    """name -> version of the ``name==version`` lines (comments and others ignored)."""
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line and " @ " not in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    return pins


def freeze(torch_pin: str, lines: list[str]) -> str:
    """The constraints file for ``pip freeze`` output ``lines``; SystemExit on a bad torch."""
    kept, dropped = [], []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-") or " @ " in line or "==" not in line:
            dropped.append(line)  # editable, direct URL, local path: not fetchable by name
            continue
        name, version = line.split("==", 1)
        if _name(name) in SELF:
            continue
        kept.append(f"{name}=={version.split('+')[0]}")
    torch = _pins(kept).get("torch")
    if torch != torch_pin:
        sys.exit(f"refresh-constraints: torch {torch} installed, pyproject.toml pins {torch_pin}")
    for line in dropped:
        print(f"refresh-constraints: left out (not fetchable by name): {line}", file=sys.stderr)
    header = [
        "# The exact versions CI installs and tests (.ci/run, pass 1): pip freeze of a",
        "# virtual environment where the whole suite passed. Regenerate with",
        "# .ci/refresh-constraints (README, Development); do not edit by hand.",
        f"# {dt.date.today().isoformat()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}",
    ]
    return "\n".join(header + sorted(kept, key=str.lower)) + "\n"


def compare(tested: dict[str, str], installed: dict[str, str]) -> list[str]:
    """``name tested -> installed`` for every installed package whose version moved or
    that the constraints lack (a pin the install did not need is no news)."""
    out = []
    for name in sorted(installed):
        old, new = tested.get(name, "(not pinned)"), installed[name]
        if old.split("+")[0] != new.split("+")[0]:
            out.append(f"  {name} {old} -> {new}")
    return out or ["  (none)"]


def main(argv: list[str]) -> int:
    """``freeze TORCH_PIN`` or ``compare CONSTRAINTS``, reading pip freeze on stdin."""
    lines = sys.stdin.read().splitlines()
    if len(argv) == 2 and argv[0] == "freeze":
        sys.stdout.write(freeze(argv[1], lines))
        return 0
    if len(argv) == 2 and argv[0] == "compare":
        with open(argv[1], encoding="utf-8") as f:
            tested = _pins(f.read().splitlines())
        print("\n".join(compare(tested, _pins(lines))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
