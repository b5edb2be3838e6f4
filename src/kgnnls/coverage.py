"""What the compiled fast paths cover: one table, per ``Config`` field and scope.

Three compiled paths compute what the torch reference (``KGNNLSNet``) computes,
each for part of the configuration space:

* ``train``: the fused training step (``kgnnls.fused.FusedTrainer``);
* ``forward``: the compiled forward (``kgnnls.fused.logits``), which scores
  pairs and does not depend on the training objective;
* ``rank``: the one-layer compiled ranker (``kgnnls.fast_rank.OneLayerRanker``).

:data:`COVERAGE` states, for every field of :class:`~kgnnls.config.Config` and
every scope, which values the path covers: a set of values (:class:`Values`), a
predicate (:class:`Rule`) or any value (:class:`AnyValue`, for fields that do
not reach the kernels). It is an allow-list: :func:`unsupported` reports the
first field whose value is not covered, and a field the table does not declare
is itself a reason, so a new ``Config`` field or ``Literal`` value falls back
to autograd instead of reaching a kernel that does not know it.
The run options (:class:`~kgnnls.config.RunOptions`: threads, training path,
device, ...) are not in the table: they choose a path or where it runs, not
what it computes; ``device=cuda`` (autograd on a GPU) is a rule of
``kgnnls.train``. ``tests/test_coverage.py`` checks the table against
``Config`` (every field declared, every ``Literal`` value decided) and
``tests/test_fused.py`` derives its equivalence grid from it.
docs/performance.md has the recipe for adding a value.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from kgnnls.config import Config

Scope = Literal["train", "forward", "rank"]
#: every scope, in the order of :data:`Scope`
SCOPES: tuple[Scope, ...] = typing.get_args(Scope)

#: the deepest receptive field (GNN layers and label-propagation hops) the fused
#: step and the compiled forward cover
MAX_DEPTH = 4


@dataclass(frozen=True)
class Values:
    """Covered: exactly the values in ``covered``.

    ``fallback``: the values of the field's ``Literal`` type that are knowingly
    left to autograd, ``why`` says why. Together they must be the whole
    ``Literal`` (a test checks it), so that a value added to the type is decided
    here before anything runs it.
    """

    covered: tuple[Any, ...]
    fallback: tuple[Any, ...] = ()
    why: str = ""

    def reason(self, name: str, config: Config) -> str | None:
        """None if ``config.<name>`` is covered, else why not (naming field and value)."""
        value = getattr(config, name)
        if value in self.covered:
            return None
        why = f"; {self.why}" if self.why else ""
        return f"{name}={value} (covered: {', '.join(map(str, self.covered))}{why})"


@dataclass(frozen=True)
class Rule:
    """Covered where ``holds(config)``; ``description`` says which values (it may
    read other fields, as the label depth reads ``ls_weight``)."""

    holds: Callable[[Config], bool]
    description: str

    def reason(self, name: str, config: Config) -> str | None:
        if self.holds(config):
            return None
        return f"{name}={getattr(config, name)} (covered: {self.description})"


@dataclass(frozen=True)
class AnyValue:
    """Covered whatever the value: the field does not reach the kernels (``why``)."""

    why: str

    def reason(self, name: str, config: Config) -> str | None:
        return None


Cover = Values | Rule | AnyValue


def _everywhere(cover: Cover) -> dict[Scope, Cover]:
    return dict.fromkeys(SCOPES, cover)


def _train_only(cover: Cover, why: str = "training only") -> dict[Scope, Cover]:
    """``cover`` for the training step; scoring does not read the field."""
    return {"train": cover, "forward": AnyValue(why), "rank": AnyValue(why)}


_DEPTH = Rule(lambda c: c.n_layers <= MAX_DEPTH, f"n_layers (L) <= {MAX_DEPTH}")
_DATA = AnyValue("shapes the data before the network is built")
_LOOP = AnyValue("a loop setting the kernels never read")
_SIZE = AnyValue("a size the kernels take as an argument")
_NUMBER = AnyValue("a number the kernels take as data")

#: field -> scope -> what the compiled path of that scope covers (the allow-list)
COVERAGE: dict[str, dict[Scope, Cover]] = {
    "model": _everywhere(Values(("kgnn-ls", "kgcn"),
                                why="the kernels compute KGNNLSNet; baselines use autograd")),
    "variant": _everywhere(Values(("paper", "authors"))),
    "aggregator": _everywhere(Values(("sum", "concat", "neighbor"))),
    "n_neighbors": _everywhere(_SIZE),
    "dim": _everywhere(_SIZE),
    "n_layers": {"train": _DEPTH, "forward": _DEPTH,
                 "rank": Values((1,), why="deeper networks rank layer by layer")},
    "ls_hops": _train_only(Rule(
        lambda c: c.ls_weight == 0 or c.label_hops <= MAX_DEPTH,
        f"label propagation depth (Config.label_hops) <= {MAX_DEPTH} where ls_weight > 0")),
    "ls_weight": _train_only(_NUMBER),
    "l2_weight": _train_only(_NUMBER),
    "lr": _train_only(_NUMBER),
    "init_scale": _everywhere(AnyValue("initialization only")),
    "updates": _train_only(Values(("dense", "rows"))),
    "batch_size": _train_only(_SIZE),
    "epochs": _everywhere(_LOOP),
    "patience": _everywhere(_LOOP),
    "negatives": _everywhere(AnyValue("chooses the rows the loop feeds to the same step")),
    "loss": _train_only(Values(("bce", "bpr")), why="scoring does not depend on the objective"),
    "kg": _everywhere(_DATA),
    "train_fraction": _everywhere(_DATA),
    "threshold": _everywhere(_DATA),
    "ratings": _everywhere(_DATA),
    "unlinked": _everywhere(_DATA),
    "seed": _everywhere(AnyValue("seeds the data and the initialization")),
    "extra": _everywhere(AnyValue("settings of other models")),
}


def unsupported(config: Config, *, scope: Scope = "train", parallel: bool = False
                ) -> str | None:
    """Why the compiled path of ``scope`` cannot compute ``config`` (None: it can).

    The reason names the first field (in ``Config``'s order) whose value
    :data:`COVERAGE` does not cover, or a field it does not declare.
    ``parallel``: several processes train data-parallel, which the fused step
    does not (``train`` scope only).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    for f in fields(config):
        covers = COVERAGE.get(f.name)
        if covers is None:
            return (f"{f.name}={getattr(config, f.name)} (a Config field that "
                    "kgnnls.coverage.COVERAGE does not declare)")
        reason = covers[scope].reason(f.name, config)
        if reason is not None:
            return reason
    if parallel and scope == "train":
        return "data-parallel training runs under DistributedDataParallel (autograd)"
    return None


def literal_fields(config_type: type = Config) -> dict[str, tuple[Any, ...]]:
    """The fields of ``config_type`` typed ``Literal[...]`` (or ``Literal | None``)
    and their values."""
    out = {}
    for name, hint in typing.get_type_hints(config_type).items():
        options = [hint, *typing.get_args(hint)]
        literal = next((t for t in options if typing.get_origin(t) is Literal), None)
        if literal is not None:
            out[name] = typing.get_args(literal)
    return out


def covered_values(name: str, scope: Scope, config_type: type = Config) -> tuple[Any, ...]:
    """The values of ``Literal`` field ``name`` the ``scope`` path covers (all of them
    where any value is; the rule-decided ones are not enumerable: none)."""
    cover = COVERAGE[name][scope]
    values = literal_fields(config_type)[name]
    if isinstance(cover, AnyValue):
        return values
    if isinstance(cover, Values):
        return tuple(v for v in values if v in cover.covered)
    return ()


def undecided(config_type: type = Config) -> list[str]:
    """What the table leaves open about ``config_type``: fields it does not declare,
    declared fields ``config_type`` lacks, and ``Literal`` values that a
    :class:`Values` entry neither covers nor names as a fallback. Empty for a
    table in step with ``Config`` (``tests/test_coverage.py``)."""
    names = [f.name for f in fields(config_type)]
    problems = [f"{n}: not declared in COVERAGE" for n in names if n not in COVERAGE]
    problems += [f"{n}: declared in COVERAGE but not a field of {config_type.__name__}"
                 for n in COVERAGE if n not in names]
    for name, values in literal_fields(config_type).items():
        for scope, cover in COVERAGE.get(name, {}).items():
            if isinstance(cover, Values):
                decided = (*cover.covered, *cover.fallback)
                problems += [f"{name}={v} ({scope}): neither covered nor a declared fallback"
                             for v in values if v not in decided]
                problems += [f"{name}={v} ({scope}): declared but not a value of its Literal"
                             for v in decided if v not in values]
    return problems


__all__ = ["COVERAGE", "MAX_DEPTH", "SCOPES", "AnyValue", "Rule", "Scope", "Values",
           "covered_values", "literal_fields", "undecided", "unsupported"]
