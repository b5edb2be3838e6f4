"""Tuning: Optuna over the paper's grid, resumable from storage, importance plot."""

from __future__ import annotations

import json

from kgnnls import Config
from kgnnls.cli import main
from kgnnls.data.writers import write_recbole
from kgnnls.tune import PAPER_SPACE, tune

FAST = dict(epochs=2, batch_size=64, n_neighbors=4, l2_weight=1e-5)
SPACE = {"dim": [4, 8], "n_layers": [1], "n_neighbors": [2, 4], "lr": [0.01, 0.05],
         "ls_weight": [0.0, 0.5], "l2_weight": [1e-5]}


def test_paper_space_is_appendix_b():
    assert PAPER_SPACE["n_neighbors"] == [2, 4, 8, 16, 32]
    assert PAPER_SPACE["dim"] == [4, 8, 16, 32, 64, 128]
    assert PAPER_SPACE["ls_weight"] == [0.0, 0.01, 0.1, 0.5, 1.0, 5.0]
    assert len(PAPER_SPACE["l2_weight"]) == 15 and len(PAPER_SPACE["lr"]) == 13


def test_study_resumes_from_storage(tmp_path, planted):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    first = tune(planted, Config(**FAST), trials=3, storage=storage, space=SPACE, out=tmp_path)
    assert len(first["trials"]) == 3
    again = tune(planted, Config(**FAST), trials=5, storage=storage, space=SPACE, out=tmp_path)
    assert len(again["trials"]) == 5  # two more, not five more
    assert again["best_value"] >= first["best_value"]
    assert again["set_line"].startswith("--set ")
    assert (tmp_path / "tune-importance.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["best_params"] == again["best_params"]


def test_cli_prints_a_ready_train_line(tmp_path, planted, capsys):
    data = write_recbole(planted, tmp_path / "data", name="planted")
    args = ["tune", "--dataset", str(data), "--trials", "2", "--out", str(tmp_path / "t")]
    for key, values in SPACE.items():
        args += ["--space", f"{key}={','.join(map(str, values))}"]
    for key, value in FAST.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best validation AUC" in out and f"kgnnls train --dataset {data}" in out
