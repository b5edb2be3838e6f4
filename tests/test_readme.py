"""The README's examples run exactly as written."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = [b for b in _blocks("python") if 'load_dataset("lastfm")' in b]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    auc, pop = map(float, lines[0].split())
    assert 0.5 < auc < 1 and 0.75 < pop < 0.85
    assert len(lines) == 6 and (tmp_path / "runs" / "api" / "model.pt").is_file()


def test_in_memory_data_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = [b for b in _blocks("python") if "Dataset.from_frames" in b]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    recs, similar = capsys.readouterr().out.splitlines()
    assert recs.startswith("(3, 5) [('i") and recs.count("('i") == 2
    assert similar.startswith("[('i") and similar.count("('i") == 3


def test_readme_error_example_is_what_the_cli_prints(tmp_path, monkeypatch, capsys):
    from kgnnls.cli import main

    (text,) = [b for b in _blocks("text") if "kgnnls: error:" in b]
    command, expected = text.strip().splitlines()
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "ratings_final.txt").write_text("0\t1\t1\n0\t2\t7\n")
    (data / "kg.txt").write_text("1\t0\t3\n")
    monkeypatch.chdir(tmp_path)
    assert main(command.removeprefix("$ kgnnls ").split()) == 2
    assert capsys.readouterr().err.strip() == expected


def test_code_is_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    root = README.parent
    proc = subprocess.run([ruff, "check", "src", "tests", "benchmarks"], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
