"""Resume: a run killed mid-training continues from RUN_DIR/checkpoint.pt and ends
with exactly the numbers of an uninterrupted run with the same seed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import write_final_layout
from kgnnls import KGNNLS, CheckpointError, Config, RunOptions
from kgnnls.cli import main
from kgnnls.config import RUN_FIELDS
from kgnnls.data.synthetic import planted_dataset
from kgnnls.recommender import DataSource
from kgnnls.storage import load_checkpoint, save_checkpoint
from kgnnls.train import fit, read_training_state

EPOCHS = 8
TINY = ["--set", "dim=8", "--set", "n_neighbors=4", "--set", "lr=0.02", "--set",
        "batch_size=16", "--set", f"epochs={EPOCHS}", "--set", f"patience={EPOCHS}",
        "--set", "l2_weight=1e-5", "--quiet"]
SAME = ("val", "test", "test_paper_protocol", "best_epoch", "epochs_trained", "ls_coverage")


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _epoch_done(path) -> int:
    """Epochs recorded in ``path`` (0 while it does not exist yet)."""
    if not path.is_file():
        return 0
    return int(read_training_state(path)["epoch"])


def _kill_after_first_epoch(proc: subprocess.Popen, checkpoint, deadline: float, seen: dict
                            ) -> None:
    """Poll checkpoint.pt; SIGKILL the trainer as soon as it shows an epoch done."""
    while time.monotonic() < deadline and proc.poll() is None:
        epoch = _epoch_done(checkpoint)
        if epoch >= 1:
            proc.send_signal(signal.SIGKILL)
            seen["epoch"] = epoch
            return
        time.sleep(0.01)


def test_killed_run_resumes_to_the_same_numbers(tmp_path, capsys):
    data = write_final_layout(planted_dataset(seed=0), tmp_path / "data")
    run, ref = tmp_path / "run", tmp_path / "ref"
    command = [sys.executable, "-m", "kgnnls", "train", "--dataset", str(data), "--out",
               str(run), "--seed", "1", *TINY]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ.copy())
    seen: dict = {}
    watcher = threading.Thread(target=_kill_after_first_epoch, args=(
        proc, run / "checkpoint.pt", time.monotonic() + 60, seen))
    watcher.start()
    try:  # meanwhile, the uninterrupted reference run, in this process
        assert main(["train", "--dataset", str(data), "--out", str(ref), "--seed", "1",
                     *TINY]) == 0
    finally:
        watcher.join()
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=20)
    capsys.readouterr()
    assert proc.returncode == -signal.SIGKILL, (
        f"the trainer was not killed mid-run (exit {proc.returncode}): {err.decode()[-1000:]}")
    done = _epoch_done(run / "checkpoint.pt")
    assert 1 <= seen["epoch"] <= done < EPOCHS  # killed mid-run, the checkpoint intact
    assert not (run / "metrics.json").exists() and not (run / "model.pt").exists()

    # resume through the same CLI entry point, in this process (a second interpreter
    # would add ~10 s of imports on a loaded machine; nothing is shared but imports)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert f"resumed from {run / 'checkpoint.pt'} after epoch {done}" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists()  # removed once the run is complete
    assert not list(run.glob(".*.tmp"))

    got = json.loads((run / "metrics.json").read_text())
    want = json.loads((ref / "metrics.json").read_text())
    for key in SAME:
        assert got[key] == want[key], key
    assert len(got["history"]) == EPOCHS
    assert _without_seconds(got["history"]) == _without_seconds(want["history"])
    model, reference = KGNNLS.load(run), KGNNLS.load(ref)
    for name, tensor in reference.network.state_dict().items():
        assert torch.equal(model.network.state_dict()[name], tensor), name
    assert model.recommend("3", k=5) == reference.recommend("3", k=5)


class _InterruptError(Exception):
    pass


def _stop_at(epoch: int):
    def on_epoch(record: dict) -> None:
        if record["epoch"] == epoch:
            raise _InterruptError  # before that epoch's checkpoint is written
    return on_epoch


@pytest.mark.parametrize(("negatives", "lr", "patience", "stop_at", "model"), [
    ("fixed", 0.05, 8, 3, "kgnn-ls"),      # mid-run
    ("resample", 0.05, 8, 4, "kgnn-ls"),   # fresh negatives every epoch
    ("fixed", 0.2, 1, 3, "kgnn-ls"),       # resumed just before the epoch that stops it early
    ("fixed", 0.2, 1, None, "kgnn-ls"),    # the checkpoint already records the early stop
    ("fixed", 0.05, 8, 3, "cke"),          # draws KG batches from its own stream
    ("fixed", 0.05, 8, 3, "ripplenet"),
])
def test_resumed_fit_equals_uninterrupted_fit(tmp_path, planted, negatives, lr, patience,
                                              stop_at, model):
    """In-process: the exact same history, best epoch and weights after a resume."""
    config = Config(model=model, seed=2, dim=8, n_neighbors=4, lr=lr, batch_size=64, epochs=8,
                    patience=patience, l2_weight=1e-5, negatives=negatives)
    want = fit(planted, config, progress=False)
    assert (len(want.history) < 8) == (patience == 1)  # the early-stop cases do stop
    path = tmp_path / "checkpoint.pt"
    with contextlib.suppress(_InterruptError):
        fit(planted, config, progress=False, checkpoint_path=path,
            on_epoch=None if stop_at is None else _stop_at(stop_at))
    saved = torch.load(path, weights_only=True)
    assert saved["kind"] == "training-state"
    assert saved["epoch"] == (len(want.history) if stop_at is None else stop_at - 1)
    assert saved["stopped"] == (stop_at is None)
    got = fit(planted, config, progress=False, checkpoint_path=path, resume=True)
    assert _without_seconds(got.history) == _without_seconds(want.history)
    assert got.best_epoch == want.best_epoch
    for name, tensor in want.network.state_dict().items():
        assert torch.equal(got.network.state_dict()[name], tensor), name


def test_resume_refuses_another_config_naming_the_field(tmp_path, planted, capsys):
    data = write_final_layout(planted, tmp_path / "data")
    run = tmp_path / "run"
    config = Config(seed=1, dim=8, n_neighbors=4, batch_size=64, epochs=2)
    path = run / "checkpoint.pt"
    with contextlib.suppress(_InterruptError):
        KGNNLS(config).fit(planted, checkpoint_path=path, on_epoch=_stop_at(2))
    with pytest.raises(CheckpointError, match=r"dim: 8 in the checkpoint, 16 given"):
        fit(planted, Config(seed=1, dim=16, n_neighbors=4, batch_size=64, epochs=2),
            checkpoint_path=path, resume=True)
    assert main(["train", "--dataset", str(data), "--out", str(run), "--resume",
                 "--set", "dim=16", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kgnnls: error:") and "\n" not in err
    assert "dim: 8 in the checkpoint, 16 given" in err and "--resume re-uses" in err
    assert main(["train", "--out", str(run), "--resume", "--seed", "7", "--quiet"]) == 2
    assert "seed: 1 in the checkpoint, 7 given" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    assert "does not record its dataset; pass --dataset" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume", "--quiet"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert path.is_file() and load_checkpoint(path)["epoch"] == 1  # left untouched


def test_resume_accepts_other_run_options(tmp_path, planted, monkeypatch):
    """Threads, validation batch size and top-K lists are run options, not a checkpoint's
    identity: 2 epochs on 1 thread, resumed on 2 threads, end with the numbers of an
    uninterrupted run."""
    monkeypatch.setattr("kgnnls.fused.PARALLEL_MIN_ROWS", 0)  # 2 threads really split batches
    config = Config(seed=3, dim=8, n_neighbors=4, lr=0.05, batch_size=64, epochs=5,
                    patience=5, l2_weight=1e-5)
    want = fit(planted, config, progress=False, options=RunOptions(threads=1))
    path = tmp_path / "checkpoint.pt"
    with contextlib.suppress(_InterruptError):
        fit(planted, config, progress=False, checkpoint_path=path, on_epoch=_stop_at(3),
            options=RunOptions(threads=1))
    saved = read_training_state(path)
    assert saved["epoch"] == 2 and saved["run"]["threads"] == 1
    assert "threads" not in saved["config"]
    got = fit(planted, config, progress=False, checkpoint_path=path, resume=True,
              options=RunOptions(threads=2, eval_batch_size=7, topk=(5,)))
    assert got.training_path == "fused" and got.options.threads == 2
    assert _without_seconds(got.history) == _without_seconds(want.history)
    assert got.best_epoch == want.best_epoch
    for name, tensor in want.network.state_dict().items():
        assert torch.equal(got.network.state_dict()[name], tensor), name


def test_a_checkpoint_from_before_the_split_resumes(tmp_path, planted, capsys):
    """An older checkpoint keeps the run options in its config dict: they split off, the
    run resumes (with --set threads=2) and metrics.json records config and run apart."""
    data = write_final_layout(planted, tmp_path / "data")
    run = tmp_path / "run"
    path = run / "checkpoint.pt"
    config = Config(seed=1, dim=8, n_neighbors=4, batch_size=64, epochs=3, patience=3)
    with contextlib.suppress(_InterruptError):
        KGNNLS(config).fit(planted, checkpoint_path=path, on_epoch=_stop_at(2),
                           source=DataSource(str(data)))
    payload = load_checkpoint(path)
    payload["config"] |= {"threads": 1, "training_path": "auto", "device": "auto",
                          "eval_batch_size": 8192, "topk": [1, 2, 5, 10], "topk_users": 0}
    del payload["run"]
    save_checkpoint(path, payload)
    assert main(["train", "--out", str(run), "--resume", "--set", "threads=2", "--set",
                 "topk=5,10", "--quiet", "--show", "0"]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert RUN_FIELDS.isdisjoint(metrics["config"])
    assert (metrics["run"]["threads"], metrics["run"]["topk"]) == (2, [5, 10])
    assert "recall@10" in metrics["test"] and "recall@1" not in metrics["test"]
    assert metrics["epochs_trained"] == 3
