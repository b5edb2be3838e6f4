"""Every malformed command line is a usage error: exit 2, one line naming the problem.

The commands, sub-commands, options and arguments are read from the Typer app
at test time, so a command or option added later is covered without editing
this file. Each malformed invocation must exit with status 2, print no
traceback, and print one ``kgnnls: error:`` line naming the problem (a usage
hint may follow it), whichever typer/click version is installed. The command
bodies are replaced by a tripwire: a command line that gets past the parser
fails the test instead of training, serving or writing anything.
"""

from __future__ import annotations

import enum
import functools
import os
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from kgnnls.cli import app, main

UNKNOWN = "--no-such-option-xyz"


@dataclass(frozen=True)
class Param:
    """What the test needs to know of one option or argument of a command."""

    name: str
    opts: tuple[str, ...]  # "--out", "-o" ...; empty for an argument
    required: bool
    kind: str  # int, float, bool, choice or text (str, Path and anything else)
    flag: bool
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...]

    @property
    def is_option(self) -> bool:
        return bool(self.opts)

    def names(self) -> list[str]:
        """Spellings an error message may use for this parameter."""
        return [*self.opts, self.name, self.name.upper(), self.name.replace("_", "-")]


def _bare(annotation: Any) -> Any:
    """``int`` for ``int | None`` or ``list[int]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return annotation
    return _bare(args[0]) if args else annotation


def _kind(param: Any) -> tuple[str, tuple[str, ...]]:
    """The parameter's value kind and choices, from typer >= 0.26's type descriptor or
    from click's parameter type (older typer)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        annotation = _bare(descriptor.annotation)
        if typing.get_origin(annotation) is typing.Literal:
            return "choice", tuple(map(str, typing.get_args(annotation)))
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return "choice", tuple(str(m.value) for m in annotation)
        for python_type, kind in ((bool, "bool"), (int, "int"), (float, "float")):
            if annotation is python_type:
                return kind, ()
        return "text", ()
    click_type = param.type
    name = getattr(click_type, "name", "")
    if name == "choice":
        return "choice", tuple(map(str, click_type.choices))
    for prefix, kind in (("boolean", "bool"), ("integer", "int"), ("float", "float")):
        if name.startswith(prefix):
            return kind, ()
    return "text", ()


def _bound(param: Any, which: str) -> float | None:
    value = getattr(param, which, None)  # typer >= 0.26 keeps min/max on the parameter
    if value is None:  # click keeps them on an IntRange / FloatRange type
        value = getattr(getattr(param, "type", None), which, None)
    return value


def _describe(param: Any) -> Param:
    kind, choices = _kind(param)
    is_option = param.param_type_name == "option"
    return Param(name=param.name, opts=tuple(param.opts + param.secondary_opts) if is_option
                 else (), required=bool(param.required), kind=kind,
                 flag=bool(getattr(param, "is_flag", False)), minimum=_bound(param, "min"),
                 maximum=_bound(param, "max"), choices=choices)


def _leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(command path, click command) of every runnable command, groups walked down."""
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name in sorted(subcommands):
        yield from _leaves(subcommands[name], (*path, name))


def _groups(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if getattr(command, "commands", None) is not None:
        yield path
        for name in sorted(command.commands):
            yield from _groups(command.commands[name], (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = {path: [_describe(p) for p in cmd.params if p.name != "help"]
            for path, cmd in _leaves(ROOT)}


def _valid(param: Param) -> str:
    """A value the parser accepts (the command body would reject most of them)."""
    if param.kind == "choice":
        return param.choices[0]
    if param.kind in ("int", "float"):
        low = 1 if param.minimum is None else max(param.minimum, 1)
        return str(int(low) if param.maximum is None else int(min(low, param.maximum)))
    return "/nonexistent/kgnnls-usage-test"


def _bad_values(param: Param) -> list[str]:
    """Malformed values of a value-taking parameter."""
    if param.kind in ("int", "float"):
        bad = ["abc", "1e", "--"] + (["1.5"] if param.kind == "int" else ["nan-ish"])
        if param.minimum is not None:
            below = param.minimum - 1
            bad += [str(int(below) if param.kind == "int" else below)]
            if param.minimum >= 0:
                bad.append("-1")
        if param.maximum is not None:
            above = param.maximum + 1
            bad.append(str(int(above) if param.kind == "int" else above))
        return list(dict.fromkeys(bad))
    if param.kind == "choice":
        return ["no-such-choice", ""]
    return [""]


def _command_line(path: tuple[str, ...], params: list[Param], replace: Param | None = None,
                  value: list[str] | None = None) -> list[str]:
    """``path`` with every required parameter given a valid value; ``replace`` given
    ``value`` instead (``[]``: left out), or added with ``value`` when not required."""
    line, arguments = list(path), []
    for param in params:
        given = value if param is replace else ([_valid(param)] if param.required else None)
        if given is None:
            continue
        if param.is_option:
            line += [param.opts[0], *given] if given else []
        else:
            arguments += given
    return line + arguments


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    names: tuple[str, ...]  # the error line must contain one of these


def _cases() -> Iterator[tuple[str, Case]]:
    """(test id, case) for every command: unknown option, each required parameter
    missing, each value-taking parameter malformed, each flag given a value."""
    for path, params in COMMANDS.items():
        command = " ".join(path)
        yield f"{command}: unknown option", Case(
            (*_command_line(path, params), UNKNOWN), (UNKNOWN,))
        for param in params:
            names = tuple(param.names())
            if param.required:
                yield f"{command}: missing {param.name}", Case(
                    tuple(_command_line(path, params, param, [])), names)
            if param.flag:
                yield f"{command}: {param.opts[0]}=yes", Case(
                    (*_command_line(path, params), f"{param.opts[0]}=yes"), names)
                continue
            for bad in _bad_values(param):
                # an empty value is refused before typer parses, naming the token before it
                expect = (*names, "empty argument after") if bad == "" else names
                yield f"{command}: {param.name}={bad!r}", Case(
                    tuple(_command_line(path, params, param, [bad])), expect)
    for group in _groups(ROOT):
        yield f"{' '.join(group) or 'kgnnls'}: unknown command", Case(
            (*group, "no-such-command"), ("no-such-command",))


CASES = dict(_cases())


def _tripwire(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` with its signature (typer reads it) but a body that fails the test."""
    @functools.wraps(callback)
    def body(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{callback.__name__} ran: a malformed command line was accepted")
    return body


def _typers(root: typer.Typer) -> Iterator[typer.Typer]:
    yield root
    for group in root.registered_groups:
        yield from _typers(group.typer_instance)


@pytest.fixture
def no_command_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Replace every command body by a tripwire, in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    for sub in _typers(app):
        for info in sub.registered_commands:
            monkeypatch.setattr(info, "callback", _tripwire(info.callback))


def test_the_walk_finds_every_command_and_parameter() -> None:
    """The introspection works on the installed typer: a blind walk would test nothing."""
    assert {("train",), ("recommend",), ("reproduce",), ("data", "stats")} <= set(COMMANDS)
    recommend = {p.name: p for p in COMMANDS[("recommend",)]}
    assert recommend["run_dir"].required and not recommend["run_dir"].is_option
    assert (recommend["k"].kind, recommend["k"].minimum, recommend["k"].opts[0]) == ("int", 1, "-k")
    assert recommend["as_json"].flag and recommend["as_json"].kind == "bool"
    params = [p for params in COMMANDS.values() for p in params]
    assert any(p.required and p.is_option for p in params)  # explain --user, data synth --out
    assert {"int", "float", "bool", "text"} <= {p.kind for p in params}
    assert len(CASES) > 100


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_malformed_command_line_is_a_one_line_usage_error(
        case: Case, no_command_runs: None, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(list(case.argv))
    out, err = capsys.readouterr()
    assert status == 2, (case.argv, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err  # the error, then at most a usage hint
    assert lines[0].startswith("kgnnls: error: ")
    assert any(name.lower() in lines[0].lower() for name in case.names), (lines[0], case.names)


def test_reported_examples(no_command_runs: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The invocations of the issue, with the messages a user reads."""
    for argv, message in ((["recommend", "RUN", "--user", "2", "-k", "0"], "'-k' / '--k'"),
                          (["train", "--dataset", "lastfm", "--out", "X", "--seed", "abc"],
                           "'--seed'"),
                          (["nosuchcommand"], "No such command 'nosuchcommand'"),
                          (["explain", "RUN"], "Missing option '--user'"),
                          (["evaluate", "RUN", "--nosuchflag"], "No such option: --nosuchflag"),
                          (["train", "--out", ""], "empty argument after '--out'"),
                          (["train", "--out="], "empty value in '--out='")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err.splitlines()[0], err
        if len(err.splitlines()) == 2:  # the hint names the command's own --help
            assert f"kgnnls {argv[0]} --help" in err or "kgnnls --help" in err


def test_recommend_without_user_is_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`recommend RUN` with neither --user nor --all: refused before loading anything."""
    assert main(["recommend", str(tmp_path / "RUN")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kgnnls: error: ") and "--user" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_help_and_bare_groups_are_not_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Usage: kgnnls" in capsys.readouterr().out
    assert main(["recommend", "--help"]) == 0
    assert "--user" in capsys.readouterr().out


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """The installed ``kgnnls`` script (not only ``main``): usage error, exit 2."""
    script = Path(sys.executable).with_name("kgnnls")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "kgnnls"]
    proc = subprocess.run([*command, "recommend", "RUN", "--user", "2", "-k", "0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "KGNNLS_CACHE": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("kgnnls: error: Invalid value for '-k' / '--k'")
