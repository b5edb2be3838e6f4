"""Search spaces: what a model declares next to its code, what Optuna samples.

A space is a plain ``dict[str, Param]`` keyed by the model's parameter names.
Three kinds of parameter cover every model here: a log- or linear-uniform
float, an integer range, and a categorical choice. :func:`suggest` turns a
space into one trial's values; :func:`check_space` validates user overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kgnnls.errors import ConfigError


@dataclass(frozen=True)
class Float:
    """A float in ``[low, high]``; ``log``: sampled uniformly in log space."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    """An integer in ``[low, high]``; ``log``: sampled uniformly in log space."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (numbers, strings, booleans or None)."""

    options: tuple[Any, ...]


Param = Float | Int | Choice
Space = dict[str, Param]


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """One value per parameter of ``space`` from an ``optuna.Trial``."""
    values: dict[str, Any] = {}
    for name, p in space.items():
        if isinstance(p, Float):
            values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif isinstance(p, Int):
            values[name] = trial.suggest_int(name, p.low, p.high, log=p.log)
        else:
            values[name] = trial.suggest_categorical(name, list(p.options))
    return values


def check_space(model: str, space: Space, keys: list[str]) -> None:
    """ConfigError naming the first of ``keys`` that ``space`` does not have."""
    for key in keys:
        if key not in space:
            raise ConfigError(f"unknown search-space key {key!r} for model {model!r}; its "
                              f"keys: {', '.join(sorted(space)) or '(none)'}")


__all__ = ["Choice", "Float", "Int", "Param", "Space", "check_space", "suggest"]
