"""Atomic file output and checkpoints.

Every file the package writes goes through :func:`atomic_write_bytes`: a
temporary file in the destination directory, fsync, then ``os.replace``. A
crash leaves either the old file or the new one, never half of one.
Checkpoints are read with ``torch.load(weights_only=True)``, so a checkpoint
file cannot run code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from kgnnls.errors import CheckpointError, OutputError

CHECKPOINT_FORMAT = "kgnnls-checkpoint-1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def check_output_dir(path: str | Path, need_bytes: int = 0) -> Path:
    """Create ``path`` if needed, prove it writable with a probe file, and check
    that its file system has ``need_bytes`` free; OutputError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".kgnnls-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{path}: output directory is not writable "
                          f"({e.strerror or type(e).__name__})") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise OutputError(f"{path}: not enough free disk space ({free / 2**20:.1f} MiB free, "
                          f"about {need_bytes / 2**20:.1f} MiB needed)")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), _FILE_MODE)  # mkstemp makes 0600; ordinary is 0666 - umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
                             + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Serialize ``payload`` with ``torch.save`` and write it atomically."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (no code execution); CheckpointError if unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a kgnnls checkpoint (format "
                              f"{payload.get('format') if isinstance(payload, dict) else '?'})")
    return payload


def refuse_to_overwrite(outputs: Iterable[str | Path], *, overwrite: bool,
                        where: str | Path | None = None, what: str = "output",
                        checkpoint: str | Path | None = None) -> None:
    """Refuse to replace a finished output unless the user passed ``--overwrite``.

    The one rule for every command that writes results (``train``,
    ``reproduce``, ``benchmark``, ``recommend --all --out FILE``, ...): call it
    before any work, with the files the command is about to write.

    - ``outputs``: the files that make up one finished output. The output is
      finished when *every* one of them exists (a run written as several files
      counts only once its last file is there); pass a single path for a
      one-file output. An empty list never refuses.
    - ``overwrite``: the command's ``--overwrite`` flag; True never refuses.
    - ``where``: what the message names first (default: the first output's
      directory), e.g. the run directory.
    - ``what``: the noun in the message ("run", "report", "benchmark").
    - ``checkpoint``: for resumable commands, the file an interrupted run
      leaves behind. When it exists the output is *interrupted*, not finished
      (it wins over finished files: an ``--overwrite`` run that was stopped
      leaves the old files beside its new checkpoint), and the message names
      ``--resume``. Do not call this when the user passed ``--resume``.

    Raises :class:`OutputError` with one line naming the files and the flag(s)
    to pass, e.g. ``runs/x: holds a finished run (model.pt, metrics.json):
    pass --overwrite to replace it (--resume only continues an interrupted
    run)``. Example for a one-file output::

        refuse_to_overwrite([out_file], overwrite=overwrite, what="recommendation list")
    """
    paths = [Path(p) for p in outputs]
    label = str(where if where is not None else (paths[0].parent if paths else "."))
    if overwrite:
        return
    if checkpoint is not None and Path(checkpoint).is_file():
        raise OutputError(f"{label}: holds an interrupted {what} ({Path(checkpoint).name}): "
                          "pass --resume to continue it or --overwrite to start over")
    if not paths or not all(p.exists() for p in paths):
        return
    names = [p.name if p.parent == Path(label) else str(p) for p in paths]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    resume = " (--resume only continues an interrupted run)" if checkpoint is not None else ""
    raise OutputError(f"{label}: holds a finished {what} ({shown}): pass --overwrite to "
                      f"replace it{resume}")
