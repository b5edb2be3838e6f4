"""Optional extras: the base install trains, evaluates, recommends and explains
without them; a command whose extra is missing says which one to install and exits 2;
pyproject.toml and kgnnls.extras name the same packages."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from kgnnls.cli import main
from kgnnls.errors import ConfigError
from kgnnls.extras import EXTRAS, require_extra

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

#: a command of each extra, with the arguments it needs to reach its first line
COMMANDS = {
    "serve": ["serve", "no-such-run"],
    "tune": ["tune", "--dataset", "lastfm", "--trials", "1"],
    "benchmark": ["benchmark", "--dataset", "lastfm"],
    "reproduce": ["reproduce", "table3"],
}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_pyproject_extras_match_the_modules_kgnnls_checks():
    optional = PYPROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert _names(optional[extra]) == set(modules), extra  # import name = distribution
    assert set(EXTRAS) == set(optional) - {"all", "test"}
    assert optional["all"] == [f"kgnnls[{','.join(e for e in optional if e in EXTRAS)}]"]
    assert "kgnnls[all]" in optional["test"]  # the suite runs every command
    base = _names(PYPROJECT["dependencies"])
    assert not base & set().union(*EXTRAS.values())  # the extras keep the base install light


@pytest.mark.parametrize("extra", sorted(COMMANDS))
def test_a_command_without_its_extra_names_it_in_one_line(extra, monkeypatch, capsys):
    for module in EXTRAS[extra]:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # `import module` raises ImportError
            assert main(COMMANDS[extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"pip install 'kgnnls[{extra}]'" in err and f"{module} is not" in err
        assert err.startswith(f"kgnnls: error: kgnnls {extra} needs the '{extra}' extra")


def test_require_extra_passes_when_installed_and_names_the_feature(monkeypatch):
    require_extra("serve")  # the test extra installs every extra
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigError, match=r"^Dataset.from_frames needs the 'pandas' extra"):
        require_extra("pandas", "Dataset.from_frames")


def test_the_base_install_runs_the_main_commands_without_any_extra(tmp_path, planted):
    """train, evaluate, recommend and explain import nothing an extra provides
    (the README's `pip install -e . && kgnnls train ...` on a base install)."""
    from conftest import write_final_layout

    data = write_final_layout(planted, tmp_path / "data")
    blocked = sorted(set().union(*EXTRAS.values()) | {"starlette", "sqlalchemy", "PIL"})
    script = textwrap.dedent(f"""
        import sys
        BLOCKED = {blocked!r}
        for name in BLOCKED:  # as if not installed: import fails, find_spec gives None
            sys.modules[name] = None
        from kgnnls.cli import main
        run = {str(tmp_path / "run")!r}
        tiny = ["--set", "dim=8", "--set", "n_neighbors=4", "--set", "epochs=2", "--quiet"]
        assert main(["train", "--dataset", {str(data)!r}, "--out", run, *tiny]) == 0
        assert main(["evaluate", run]) == 0
        assert main(["recommend", run, "--user", "1", "-k", "3"]) == 0
        assert main(["explain", run, "--user", "1", "--item", "2"]) == 0
        assert main(["serve", run]) == 2
        print("loaded:", sorted(m for m, v in sys.modules.items()
                                if v is not None and m.split(".")[0] in BLOCKED))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded: []" in proc.stdout
    assert "needs the 'serve' extra" in proc.stderr


def _env() -> dict[str, str]:
    import os

    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])])}
