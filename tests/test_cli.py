"""The command line: a thin layer, clear one-line errors, exit code 2."""

from __future__ import annotations

import json
import os
import re
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
    assert (metrics["training_path"], metrics["training_path_reason"]) == ("fused", None)
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


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kgnnls: error:") and "\n" not in err, err
    return err


def test_train_never_writes_over_a_finished_run_without_overwrite(tmp_path, planted, capsys):
    data = write_recbole(planted, tmp_path / "data", name="planted")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--out", str(run), "--seed", "3", *TINY]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert set(before) == {"model.pt", "metrics.json"}

    assert main(["train", "--dataset", str(data), "--out", str(run), "--seed", "4", *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"{run}: holds a finished run (model.pt, metrics.json)" in err
    assert "--overwrite" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # untouched

    assert main(["train", "--out", str(run), "--resume", "--overwrite", "--quiet"]) == 2
    assert "at most one of --resume" in _one_line_error(capsys)

    assert main(["train", "--dataset", str(data), "--out", str(run), "--seed", "4", *TINY,
                 "--overwrite"]) == 0
    capsys.readouterr()
    assert json.loads((run / "metrics.json").read_text())["seed"] == 4  # replaced
    assert not (run / "checkpoint.pt").exists()


def test_train_on_an_interrupted_run_names_resume(tmp_path, planted, capsys, monkeypatch):
    import kgnnls.recommender

    def fit(*args, **kwargs):
        raise AssertionError("training started over an interrupted run")

    monkeypatch.setattr(kgnnls.recommender, "fit", fit)
    data = write_recbole(planted, tmp_path / "data", name="planted")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"the state of an interrupted run")
    assert main(["train", "--dataset", str(data), "--out", str(run), *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"{run}: holds an interrupted run (checkpoint.pt)" in err
    assert "pass --resume to continue it or --overwrite to start over" in err
    assert (run / "checkpoint.pt").read_bytes() == b"the state of an interrupted run"


def test_refuse_to_overwrite_rule(tmp_path):
    from kgnnls.errors import OutputError
    from kgnnls.storage import refuse_to_overwrite

    model, metrics, checkpoint = tmp_path / "model.pt", tmp_path / "metrics.json", \
        tmp_path / "checkpoint.pt"
    refuse_to_overwrite([model, metrics], overwrite=False)  # nothing there
    model.write_text("m")
    refuse_to_overwrite([model, metrics], overwrite=False)  # half an output is not finished
    metrics.write_text("{}")
    with pytest.raises(OutputError, match=r"holds a finished output \(model.pt, metrics.json\)"
                                          r": pass --overwrite to replace it$"):
        refuse_to_overwrite([model, metrics], overwrite=False)
    refuse_to_overwrite([model, metrics], overwrite=True)
    checkpoint.write_text("c")  # a newer interrupted run beside the old files
    with pytest.raises(OutputError, match=r"interrupted run .*pass --resume"):
        refuse_to_overwrite([model, metrics], overwrite=False, what="run", checkpoint=checkpoint)
    single = tmp_path / "recs.tsv"
    single.write_text("u\ti\n")
    expected = "^" + re.escape(f"{tmp_path}: holds a finished list (recs.tsv)")
    with pytest.raises(OutputError, match=expected):
        refuse_to_overwrite([single], overwrite=False, what="list")
    refuse_to_overwrite([], overwrite=False)


def _fake_reports(monkeypatch, partial: set[str] = frozenset()) -> list[str]:
    """Make reproduce write its report files at once (no training); the names it ran."""
    import kgnnls.reproduce

    ran: list[str] = []

    def run_experiment(name, runner, seeds, command):
        ran.append(name)
        mark = "**Partial report** (`--cached-only`)" if name in partial else "done"
        md = runner.out / f"{name}-{runner.dataset}.md"
        md.write_text(f"# {name}\n\n{mark}\n")
        js = md.with_suffix(".json")
        js.write_text("{}\n")
        return [md, js]

    monkeypatch.setattr(kgnnls.reproduce, "run_experiment", run_experiment)
    return ran


def test_reproduce_keeps_finished_reports_and_resumes_the_rest(tmp_path, capsys, monkeypatch):
    from kgnnls.reproduce import EXPERIMENTS

    out = tmp_path / "reports"
    ran = _fake_reports(monkeypatch, partial={"table3"})
    assert main(["reproduce", "table4", "--out", str(out), "--quiet"]) == 0
    assert main(["reproduce", "table3", "--out", str(out), "--quiet"]) == 0
    assert ran == ["table4", "table3"]
    capsys.readouterr()

    assert main(["reproduce", "table4", "--out", str(out), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert f"{out}: holds a finished report (table4-lastfm.md, table4-lastfm.json)" in err
    assert "--overwrite" in err
    assert ran == ["table4", "table3"]

    # a --cached-only (partial) report is not finished: a re-run replaces it
    ran = _fake_reports(monkeypatch)  # reports written from now on are complete
    assert main(["reproduce", "table3", "--out", str(out), "--quiet"]) == 0
    assert ran == ["table3"]
    capsys.readouterr()

    # `all` resumes: the finished reports are kept, the others written
    assert main(["reproduce", "all", "--out", str(out), "--quiet"]) == 0
    assert ran == ["table3", *[n for n in EXPERIMENTS if n not in ("table3", "table4")]]
    assert "kept" in capsys.readouterr().err
    assert main(["reproduce", "all", "--out", str(out), "--quiet"]) == 2  # all finished
    assert "holds a finished set of reports" in _one_line_error(capsys)
    assert main(["reproduce", "table4", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert ran[-1] == "table4"
