"""Settings: :class:`Config` defines a result, :class:`RunOptions` says how to run it.

``Config`` holds the model and optimization settings (with the dataset and
the seed they determine the numbers): it is a checkpoint's identity, what a
resume checks and what keys the reproduction cache. ``RunOptions`` holds how
a run executes and what evaluation reports: threads, training path, device,
evaluation batch size and the top-K lists. Training's numbers do not depend
on them (the training paths and devices agree up to float rounding), so a run
may resume with other run options.

Both are validated from their declarations: a ``Literal`` field accepts the
values it lists, a numeric field carries its bounds (``Annotated[int,
Min(1)]``), and :func:`check_declared` checks every field generically; rules
that tie several fields together stay explicit in :meth:`Config.validate`.

Field names are spelled out; the paper's symbols work as aliases in
``--set`` (``S``, ``d``, ``L``, ``lambda``, ``gamma``, ``eta``), which routes
each key to the class that has the field (:func:`split_settings`). The
paper's Table 8 is :meth:`Config.preset` (:mod:`kgnnls.presets`).
"""

from __future__ import annotations

import functools
import numbers
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from kgnnls.errors import ConfigError

Variant = Literal["paper", "authors"]
Aggregator = Literal["sum", "concat", "neighbor"]
Negatives = Literal["fixed", "resample"]
Updates = Literal["dense", "rows"]
TrainingPath = Literal["auto", "fused", "autograd"]
Device = Literal["auto", "cpu", "cuda"]
Loss = Literal["bce", "bpr"]
Ratings = Literal["positives-only", "threshold-labels"]
Unlinked = Literal["entity", "error"]

#: models trained only on the pointwise objective: ``loss=bpr`` is refused for them
POINTWISE_MODELS = ("svd", "libfm", "libfm-transe", "per", "cke", "ripplenet")
#: models that never read the knowledge graph: a ``kg`` ablation is refused for them
KG_FREE_MODELS = ("svd", "libfm")


# ---------------------------------------------------------------------- declared bounds
@dataclass(frozen=True)
class Min:
    """Lower bound of a numeric field (``exclusive``: the bound itself is refused)."""

    value: float
    exclusive: bool = False

    def holds(self, x: Any) -> bool:
        return x > self.value if self.exclusive else x >= self.value

    def __str__(self) -> str:
        return f"{'>' if self.exclusive else '>='} {self.value:g}"


@dataclass(frozen=True)
class Max:
    """Upper bound of a numeric field."""

    value: float

    def holds(self, x: Any) -> bool:
        return x <= self.value

    def __str__(self) -> str:
        return f"<= {self.value:g}"


@dataclass(frozen=True)
class NonEmpty:
    """A sequence field needs at least one element."""

    def holds(self, x: Any) -> bool:
        return len(x) > 0

    def __str__(self) -> str:
        return "non-empty"


PositiveInt = Annotated[int, Min(1)]
NonNegativeFloat = Annotated[float, Min(0)]
PositiveFloat = Annotated[float, Min(0, exclusive=True)]

#: The paper's symbols, accepted by ``--set``.
ALIASES: dict[str, str] = {"S": "n_neighbors", "d": "dim", "L": "n_layers", "lambda": "ls_weight",
                           "gamma": "l2_weight", "eta": "lr"}
_SYMBOL = {name: alias for alias, name in ALIASES.items()}

SettingsT = TypeVar("SettingsT", bound="_Declared")


class _Declared:
    """Validation, overrides and (de)serialisation from a frozen dataclass's declarations."""

    #: what a ``from_dict`` error calls these fields
    kind: ClassVar[str] = "setting"

    def validate(self: SettingsT) -> SettingsT:
        """Check every field against its declared type and bounds (then the class's rules)."""
        check_declared(self)
        return self

    def with_overrides(self: SettingsT, overrides: dict[str, Any]) -> SettingsT:
        """Copy with fields replaced; values may be strings (from ``--set``)."""
        if not overrides:
            return self.validate()
        types = _hints(type(self))
        names = _names(type(self))
        changes: dict[str, Any] = {}
        extra = dict(getattr(self, "extra", {}))
        for key, value in overrides.items():
            name = ALIASES.get(key, key)
            if name.startswith("extra.") and "extra" in types:
                extra[name[6:]] = _auto(value) if isinstance(value, str) else value
            elif name in names:
                changes[name] = _coerce(name, value, types[name])
            else:
                raise ConfigError(self._unknown_message(key))
        if "extra" in types:
            changes["extra"] = extra
        return replace(self, **changes).validate()

    def _unknown_message(self, key: str) -> str:
        return f"unknown setting {key!r}; settings: {', '.join(sorted(_names(type(self))))}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples as lists): what checkpoints, metrics and caches store."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls: type[SettingsT], d: dict[str, Any]) -> SettingsT:
        """The inverse of :meth:`to_dict`; ConfigError naming unknown fields."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.kind} field(s): {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
                   ).validate()

    def as_set_line(self, keys: list[str] | None = None) -> str:
        """``--set k=v ...`` reproducing the given (or the non-default) fields."""
        default = type(self)()
        parts = []
        for name in _names(type(self)):
            v = getattr(self, name)
            if (keys is not None and name in keys) or (keys is None and v != getattr(default,
                                                                                     name)):
                if isinstance(v, tuple):
                    v = ",".join(map(str, v))
                parts.append(f"--set {name}={v}")
        return " ".join(parts)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved annotations, ``Annotated`` bounds kept (once per class)."""
    return typing.get_type_hints(cls, include_extras=True)


def _names(cls: type) -> list[str]:
    """Settable fields of ``cls`` in declaration order (``extra`` is set as ``extra.NAME``)."""
    return [f.name for f in fields(cls) if f.name != "extra"]


@dataclass(frozen=True)
class Config(_Declared):
    """The model and optimization settings that, with the dataset and seed, define a result.

    Defaults are the paper's Last.FM setting (Table 8) with the authors'
    batch size and epoch count. How the run executes is :class:`RunOptions`.
    """

    kind: ClassVar[str] = "config"

    model: str = "kgnn-ls"
    """Model name (``kgnn-ls``; ``kgcn`` is KGNN-LS with ``ls_weight = 0``)."""
    variant: Variant = "paper"
    """``paper``: the paper's equations; ``authors``: the released TF code's."""
    aggregator: Aggregator = "sum"
    n_neighbors: PositiveInt = 8
    """S: neighbours sampled once per entity."""
    dim: PositiveInt = 16
    """d: embedding and hidden dimension."""
    n_layers: PositiveInt = 1
    """L: GNN layers (receptive-field hops)."""
    ls_hops: PositiveInt | None = None
    """Label-propagation depth; None: max(L, 2) (paper variant) or L (authors)."""
    ls_weight: NonNegativeFloat = 0.1
    """lambda: weight of the label-smoothness term."""
    l2_weight: NonNegativeFloat = 1e-4
    """gamma: weight of the L2 term."""
    lr: PositiveFloat = 5e-4
    """eta: Adam learning rate."""
    init_scale: PositiveFloat = 0.1
    """Embedding tables start at Glorot-uniform times this (1.0: the authors'
    init, which stalls near 0.71 AUC in ~15 % of Last.FM runs; see
    docs/faithfulness.md)."""
    updates: Updates = "dense"
    """``dense``: Adam and the L2 term on every embedding row each step (the
    authors' objective); ``rows``: only the rows a batch uses (lazy Adam,
    L2 of the batch's embeddings; much faster on large tables). See
    kgnnls.optim."""
    batch_size: PositiveInt = 128
    epochs: PositiveInt = 10
    patience: PositiveInt = 3
    """Stop after this many epochs without a better validation AUC."""
    negatives: Negatives = "fixed"
    """``fixed``: the labelled training rows; ``resample``: new negatives each epoch."""
    loss: Loss = "bce"
    """``bce``: the paper's pointwise cross-entropy on labelled rows; ``bpr``:
    pairwise, each training positive against one untouched item drawn afresh
    every epoch (KGNN-LS and KGCN only; see docs/faithfulness.md)."""
    kg: str = "full"
    """Knowledge-graph ablation applied after the split (seeded): ``full``,
    ``none``, ``shuffle:P``, ``keep:P`` or ``ui``; see kgnnls.data.ablation."""
    train_fraction: Annotated[float, Min(0, exclusive=True), Max(1)] = 1.0
    """Share of the training rows kept (seeded); validation and test stay
    fixed. The paper's cold-start study (Table 5) uses 0.2 to 1.0."""
    threshold: float | None = None
    """Ratings at or above it are positives (rating layouts only)."""
    ratings: Ratings = "positives-only"
    """Explicit ratings: ``positives-only`` keeps the rows at or above the
    threshold as positives and samples as many negatives per user from unrated
    items (the paper's Appendix A); ``threshold-labels`` labels every row
    ``rating >= threshold``. See README, Datasets."""
    unlinked: Unlinked = "entity"
    """A RecBole ``.inter`` item with no ``.link`` row: ``entity`` gives it its
    own entity with no KG edge (as RecBole does); ``error`` refuses it."""
    seed: Annotated[int, Min(0)] = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form settings of other models (kept in checkpoints and metrics)."""

    # ------------------------------------------------------------------ derived
    @property
    def label_hops(self) -> int:
        """Depth of the label-propagation tree actually used."""
        if self.ls_hops is not None:
            return self.ls_hops
        return max(self.n_layers, 2) if self.variant == "paper" else self.n_layers

    def validate(self) -> Config:
        """The declared checks, then the rules that tie fields together."""
        check_declared(self)
        if self.loss == "bpr" and self.model in POINTWISE_MODELS:
            raise ConfigError(f"loss=bpr is for kgnn-ls and kgcn; model {self.model!r} trains "
                              "on bce only")
        if self.kg != "full" and self.model in KG_FREE_MODELS:
            raise ConfigError(f"kg={self.kg} ablates the knowledge graph, which model "
                              f"{self.model!r} does not use")
        from kgnnls.data.ablation import parse_kg_mode  # lazy: kgnnls.data imports this module

        parse_kg_mode(self.kg)  # ConfigError naming a bad mode
        return self

    def _unknown_message(self, key: str) -> str:
        return (f"unknown setting {key!r}; settings: {', '.join(sorted(_names(Config)))} "
                f"(aliases {', '.join(ALIASES)}; free-form: extra.NAME; run options: "
                f"{', '.join(_names(RunOptions))})")

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, dataset: str, model: str = "kgnn-ls", **overrides: Any) -> Config:
        """The published setting of ``model`` on ``dataset`` (see ``kgnnls.presets``).

        ``dataset`` may be an alias (``music``, ``book``); KGCN uses KGNN-LS's
        setting (with ``lambda = 0``, applied when training). The preset's run
        options (Book-Crossing's ``topk_users``) are :meth:`RunOptions.preset`'s.
        """
        entry = dict(_preset_entry(dataset, model))
        extra = entry.pop("extra", {})
        settings, _ = split_settings(entry)
        return replace(cls(), model=model, extra=dict(extra), **settings
                       ).with_overrides(overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """The inverse of :meth:`to_dict`. A dict written before the split (a checkpoint,
        ``metrics.json`` or cache entry whose config still holds the run options)
        loads too: the run fields are split off (:meth:`RunOptions.from_config_dict`)."""
        return super().from_dict({k: v for k, v in d.items() if k not in RUN_FIELDS})


@dataclass(frozen=True)
class RunOptions(_Declared):
    """How a run executes and what its evaluation reports; not part of a result's identity.

    Training's numbers do not depend on these (the fused and autograd paths,
    CPU and GPU, agree up to float rounding), so a checkpoint resumes under
    other run options. ``topk`` and ``topk_users`` choose what evaluation
    reports, so cached evaluation results are keyed on them too
    (:data:`REPORT_FIELDS`).
    """

    kind: ClassVar[str] = "run option"

    threads: PositiveInt = 1
    """Threads for torch's intra-op work and the fused step's compiled loops (the
    numbers do not depend on it). 1 suits autograd's small tensors and a shared
    machine; the fused step splits batches of at least
    ``kgnnls.fused.PARALLEL_MIN_ROWS`` rows across threads."""
    training_path: TrainingPath = "auto"
    """``auto``: the fused compiled step (kgnnls.fused) where it covers the
    config, else autograd; ``fused``: insist on it (an error names what it
    does not cover); ``autograd``: the reference path (validation scoring too)."""
    device: Device = "auto"
    """Where the autograd training path runs: ``cpu``; ``cuda`` (an error
    without a GPU); ``auto``: the fused CPU step where it covers the config
    (the measured fast path; a GPU is not yet measured against it), else CUDA
    when there is a GPU, else CPU. See kgnnls.device."""
    eval_batch_size: PositiveInt = 8192
    """Pairs scored at once when computing AUC / F1."""
    topk: Annotated[tuple[PositiveInt, ...], NonEmpty()] = (1, 2, 5, 10, 20, 50, 100)
    """The K of the reported top-K metrics."""
    topk_users: Annotated[int, Min(0)] = 0
    """Users ranked for full-ranking top-K: 0 for all users with test positives,
    else a seeded sample of that many (L=2 on large catalogues is costly)."""

    #: the run options that change what an evaluation reports (cache keys of results)
    REPORT_FIELDS: ClassVar[tuple[str, ...]] = ("topk", "topk_users")

    @classmethod
    def preset(cls, dataset: str, model: str = "kgnn-ls", **overrides: Any) -> RunOptions:
        """The run options a published preset sets (Book-Crossing ranks 500 sampled
        users), with ``overrides`` on top."""
        _, options = split_settings(_preset_entry(dataset, model))
        return replace(cls(), **options).with_overrides(overrides)

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> RunOptions:
        """The run options held by a config dict written before the split (defaults
        for those it lacks); the other fields are ignored."""
        return cls.from_dict({k: v for k, v in d.items() if k in RUN_FIELDS})


#: Fields of :class:`RunOptions`: ``--set`` routes them there, old config dicts shed them.
RUN_FIELDS: frozenset[str] = frozenset(_names(RunOptions))


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config_settings, run_options)``: ``--set``-style keys (aliases allowed) routed
    to the class with that field; keys neither has stay with the config (whose
    ``with_overrides`` names them in its error)."""
    config: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in settings.items():
        (options if ALIASES.get(key, key) in RUN_FIELDS else config)[key] = value
    return config, options


def settings_for(preset: str, model: str = "kgnn-ls", overrides: dict[str, Any] | None = None
                 ) -> tuple[Config, RunOptions]:
    """A preset's config and run options with ``overrides`` (``--set`` keys) routed to each."""
    config_part, options_part = split_settings(overrides or {})
    return (Config.preset(preset, model=model).with_overrides(config_part),
            RunOptions.preset(preset, model=model).with_overrides(options_part))


def _preset_entry(dataset: str, model: str) -> dict[str, Any]:
    """``PRESETS``' entry of ``model`` on ``dataset`` (an alias allowed; kgcn: kgnn-ls's)."""
    from kgnnls.data.registry import find_spec
    from kgnnls.presets import PRESETS

    spec = find_spec(dataset)
    key = spec.preset if spec is not None else dataset
    if key not in PRESETS:
        raise ConfigError(f"no preset {dataset!r}; known: {', '.join(PRESETS)}")
    entry = PRESETS[key].get("kgnn-ls" if model == "kgcn" else model)
    if entry is None:
        raise ConfigError(f"no preset for model {model!r} on {key}; known: "
                          f"{', '.join(PRESETS[key])}")
    return entry


# ---------------------------------------------------------------------- declared checks
def check_declared(settings: Any) -> None:
    """ConfigError naming the first field of ``settings`` (a dataclass) whose value its
    declared type refuses: a ``Literal``'s values, a number's type and bounds
    (:class:`Min`, :class:`Max`), a tuple's elements, ``None`` only if optional."""
    for name, label, rule in _rules(type(settings)):
        value = getattr(settings, name)
        problem = rule.problem(value)
        if problem is not None:
            raise ConfigError(f"{label} must be {problem}, got {value!r}")


@functools.cache
def _rules(cls: type) -> tuple[tuple[str, str, _Rule], ...]:
    """``(field, label in errors, rule)`` of every field of ``cls``, parsed once."""
    types = _hints(cls)
    return tuple((f.name, f"{f.name} ({_SYMBOL[f.name]})" if f.name in _SYMBOL else f.name,
                  _rule(types[f.name])) for f in fields(cls))


@dataclass(frozen=True)
class _Rule:
    """A declared field type, parsed once (:func:`_rule`): what a value must be."""

    choices: tuple[Any, ...] | None = None
    """A ``Literal``'s values."""
    optional: _Rule | None = None
    """``X | None``: the rule of ``X``."""
    kinds: tuple[type, ...] = ()
    """The Python types a value may have (empty: any); ``bool`` is not a number."""
    kind_name: str = ""
    element: _Rule | None = None
    """The rule of each element of a tuple."""
    constraints: tuple[Any, ...] = ()
    """Declared bounds (:class:`Min`, :class:`Max`, :class:`NonEmpty`)."""

    def problem(self, value: Any) -> str | None:
        """What ``value`` should be to fit (None: it fits)."""
        if self.optional is not None:
            if value is None:
                return None
            problem = self.optional.problem(value)
            return None if problem is None else f"None or {problem}"
        if self.choices is not None:
            return None if value in self.choices else "one of " + ", ".join(map(str,
                                                                                 self.choices))
        if self.kinds and (not isinstance(value, self.kinds) or (
                isinstance(value, bool) and bool not in self.kinds)):
            return self.kind_name
        if self.element is not None:
            bad = next((p for p in map(self.element.problem, value) if p is not None), None)
            if bad is not None:
                return f"a list of values each {bad}"
        if not all(c.holds(value) for c in self.constraints):
            return " and ".join(map(str, self.constraints))
        return None


#: Python types a declared base type admits, and how an error names it
_KINDS: dict[Any, tuple[tuple[type, ...], str]] = {
    int: ((numbers.Integral,), "an integer"), float: ((numbers.Real,), "a number"),
    str: ((str,), "a string"), tuple: ((tuple,), "a tuple"), dict: ((dict,), "a dict")}


@functools.cache
def _rule(typ: Any) -> _Rule:
    """The :class:`_Rule` of a declared type: ``Annotated`` bounds, ``Literal`` choices,
    ``X | None``, ``tuple[X, ...]`` elements, the base type's Python types."""
    constraints: tuple[Any, ...] = ()
    if typing.get_origin(typ) is Annotated:
        typ, *rest = typing.get_args(typ)
        constraints = tuple(rest)
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is Literal:
        return _Rule(choices=args)
    if type(None) in args:  # Optional[...]
        inner = next(a for a in args if a is not type(None))
        return _Rule(optional=_rule(inner))
    kinds, name = _KINDS.get(origin or typ, ((), ""))
    element = _rule(args[0]) if origin is tuple else None
    return _Rule(kinds=kinds, kind_name=name, element=element, constraints=constraints)


# ---------------------------------------------------------------------- --set strings
def _auto(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """``value`` (a ``--set`` string) as ``typ``; other values pass to the declared checks."""
    if not isinstance(value, str):
        return value
    if typing.get_origin(typ) is Annotated:
        typ = typing.get_args(typ)[0]
    text = value.strip()
    args = typing.get_args(typ)
    try:
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typing.get_origin(typ) is Literal:
            if text not in args:
                raise ValueError
            return text
        if typ is str:
            return text
        if args and type(None) in args:  # Optional[...]
            if text.lower() in ("none", "null", ""):
                return None
            inner = next(a for a in args if a is not type(None))
            return _coerce(name, text, inner)
        if typing.get_origin(typ) is tuple:
            return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        pass
    raise ConfigError(f"bad value {value!r} for {name} (expected {_type_name(typ)})")


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is Annotated:
        typ = typing.get_args(typ)[0]
    if typing.get_origin(typ) is Literal:
        return " | ".join(map(str, typing.get_args(typ)))
    return getattr(typ, "__name__", str(typ))


__all__ = ["ALIASES", "RUN_FIELDS", "Config", "Max", "Min", "NonEmpty", "RunOptions",
           "check_declared", "settings_for", "split_settings"]
