"""The command line: a thin layer, clear one-line errors, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kgnnls.cli import main
from kgnnls.data.writers import write_recbole

TINY = ["--set", "dim=8", "--set", "n_neighbors=4", "--set", "lr=0.02", "--set", "batch_size=32",
        "--set", "epochs=3", "--set", "l2_weight=1e-5", "--quiet"]


def test_data_stats_prints_table2_row(capsys):
    assert main(["data", "stats", "--dataset", "lastfm"]) == 0
    out = capsys.readouterr().out
    for text in ("users         1,872", "items         3,846", "interactions  42,346",
                 "entities      9,366", "relations     60", "triples       15,518"):
        assert text in out


def test_train_evaluate_recommend_on_a_directory(tmp_path, planted, capsys):
    data = write_recbole(planted, tmp_path / "data", name="planted")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--out", str(run), "--seed", "3", *TINY]) == 0
    out = capsys.readouterr().out
    assert "popularity" in out and "user u" in out
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("dataset", "variant", "seed", "config", "epochs_trained", "train_seconds",
                "ls_coverage", "history", "val", "test", "reference"):
        assert key in metrics
    assert metrics["seed"] == 3 and metrics["config"]["dim"] == 8
    assert set(metrics["test"]) >= {"auc", "f1", "recall@10", "ndcg@10", "precision@10",
                                    "hit@10"}
    assert "auc" in metrics["reference"]["popularity"]["test"]

    assert main(["evaluate", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test"] == metrics["test"]

    assert main(["recommend", str(run), "--user", "u4", "-k", "3", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 3 and all(r["item"].startswith("i") for r in recs)


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["train", "--dataset", "lastfm", "--set", "dim=abc"], "bad value 'abc' for dim"),
    (["train", "--dataset", "lastfm", "--set", "bogus"], "--set expects key=value"),
    (["recommend", "/nonexistent/run", "--user", "2"], "no checkpoint found"),
])
def test_errors_are_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kgnnls: error:") and message in err and "\n" not in err


def test_malformed_file_names_file_and_line(tmp_path, capsys):
    (tmp_path / "ratings_final.txt").write_text("0\t1\t1\n0\t2\tx\n")
    (tmp_path / "kg.txt").write_text("1\t0\t3\n")
    assert main(["data", "stats", "--dataset", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ratings_final.txt:2: label must be an integer (64-bit), got 'x'" in err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "KGNNLS_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "kgnnls", "train", "--dataset", "nope"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown dataset" in proc.stderr
