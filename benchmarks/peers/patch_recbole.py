"""Patch the *installed* RecBole 1.2.1 so that it runs on NumPy 2 and torch >= 2.6.

Run with the peer venv's python (recbole.sh does). Every patch is an exact
string replacement in a named file of site-packages/recbole; a patch whose old
text is missing fails loudly unless its new text is already there (so the
script is idempotent). The list is printed and also kept in README.md.

    python patch_recbole.py            # apply
    python patch_recbole.py --check    # exit 1 if any patch is not applied
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# (file relative to the recbole package, old text, new text, why)
PATCHES: list[tuple[str, str, str, str]] = [
    ("config/configurator.py", "np.float = np.float_", "np.float = np.float64",
     "np.float_ was removed in NumPy 2.0"),
    ("config/configurator.py", "np.complex = np.complex_", "np.complex = np.complex128",
     "np.complex_ was removed in NumPy 2.0"),
    ("config/configurator.py", "np.unicode = np.unicode_", "np.unicode = np.str_",
     "np.unicode_ was removed in NumPy 2.0"),
    ("trainer/trainer.py",
     "checkpoint = torch.load(resume_file, map_location=self.device)",
     "checkpoint = torch.load(resume_file, map_location=self.device, weights_only=False)",
     "torch >= 2.6 loads with weights_only=True; RecBole's checkpoints pickle its Config"),
    ("trainer/trainer.py",
     "checkpoint = torch.load(checkpoint_file, map_location=self.device)",
     "checkpoint = torch.load(checkpoint_file, map_location=self.device, weights_only=False)",
     "same, for evaluate(load_best_model=True), which reloads the best checkpoint"),
]


def package_dir() -> Path:
    # find_spec without importing recbole (importing it needs the patches already)
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        sys.exit("recbole is not installed in this interpreter: " + sys.executable)
    return Path(spec.origin).parent


def main() -> int:
    check = "--check" in sys.argv[1:]
    root = package_dir()
    missing = 0
    for rel, old, new, why in PATCHES:
        path = root / rel
        text = path.read_text()
        if new in text and old not in text:
            state = "already applied"
        elif text.count(old) == 1 and not check:
            path.write_text(text.replace(old, new))
            state = "applied"
        else:
            state = "NOT APPLIED" if check else f"FAILED (old text found {text.count(old)} times)"
            missing += 1
        print(f"{state:16} recbole/{rel}: {old!r} -> {new!r}  ({why})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
