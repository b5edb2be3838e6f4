"""Preflight: an output directory that cannot be written, or a disk without room,
fails with one line and exit code 2 before any training starts.

The tests run as root, where permission bits do not stop writes, so "cannot be
written" is tested two honest ways: a real OS refusal (the --out path lies under
a regular *file*, so creating it fails with ENOTDIR), and a simulated one (the
probe write raises EROFS, as on a read-only mount). The full disk is simulated
by monkeypatching ``shutil.disk_usage``.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

import kgnnls.recommender
from conftest import write_final_layout
from kgnnls.cli import main

TINY = ["--set", "dim=8", "--set", "n_neighbors=4", "--set", "epochs=1", "--quiet"]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training is ever reached."""
    def fit(*args, **kwargs):
        raise AssertionError("training started despite a failed preflight")
    monkeypatch.setattr(kgnnls.recommender, "fit", fit)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kgnnls: error:") and "\n" not in err, err
    return err


def test_out_under_a_regular_file_fails_before_training(tmp_path, planted, capsys, no_training):
    data = write_final_layout(planted, tmp_path / "data")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file, not a directory\n")
    out = blocker / "run"
    assert main(["train", "--dataset", str(data), "--out", str(out), *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"{out}: output directory is not writable (Not a directory)" in err
    assert blocker.read_text() == "a file, not a directory\n"


def test_read_only_directory_fails_before_training(tmp_path, planted, capsys, monkeypatch,
                                                   no_training):
    data = write_final_layout(planted, tmp_path / "data")
    out = tmp_path / "run"
    real = Path.write_bytes

    def write_bytes(self, data):  # simulated read-only file system for the probe only
        if self.name == ".kgnnls-write-test":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert main(["train", "--dataset", str(data), "--out", str(out), *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"{out}: output directory is not writable (Read-only file system)" in err
    assert list(out.iterdir()) == []


def test_full_disk_fails_before_training(tmp_path, planted, capsys, monkeypatch, no_training):
    data = write_final_layout(planted, tmp_path / "data")
    out = tmp_path / "run"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=64 * 1024))
    assert main(["train", "--dataset", str(data), "--out", str(out), *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"{out}: not enough free disk space (0.1 MiB free, about" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()


def test_enough_room_passes_the_preflight(tmp_path, planted, capsys):
    data = write_final_layout(planted, tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    assert not (out / "checkpoint.pt").exists()


def test_atomic_writes_get_the_ordinary_file_mode_not_mkstemps(tmp_path):
    import os

    from kgnnls.storage import atomic_write_text

    mask = os.umask(0)
    os.umask(mask)
    path = atomic_write_text(tmp_path / "metrics.json", "{}")
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask != 0o600
