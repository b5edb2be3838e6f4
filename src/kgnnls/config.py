"""Run configuration: one dataclass, the paper's Table 8 as presets.

Field names are spelled out; the paper's symbols work as aliases in
``--set`` (``S``, ``d``, ``L``, ``lambda``, ``gamma``, ``eta``).
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

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


@dataclass(frozen=True)
class Config:
    """Everything that determines a training run (with the dataset and seed).

    Defaults are the paper's Last.FM setting (Table 8) with the authors'
    batch size and epoch count.
    """

    model: str = "kgnn-ls"
    """Model name (``kgnn-ls``; ``kgcn`` is KGNN-LS with ``ls_weight = 0``)."""
    variant: Variant = "paper"
    """``paper``: the paper's equations; ``authors``: the released TF code's."""
    aggregator: Aggregator = "sum"
    n_neighbors: int = 8
    """S: neighbours sampled once per entity."""
    dim: int = 16
    """d: embedding and hidden dimension."""
    n_layers: int = 1
    """L: GNN layers (receptive-field hops)."""
    ls_hops: int | None = None
    """Label-propagation depth; None: max(L, 2) (paper variant) or L (authors)."""
    ls_weight: float = 0.1
    """lambda: weight of the label-smoothness term."""
    l2_weight: float = 1e-4
    """gamma: weight of the L2 term."""
    lr: float = 5e-4
    """eta: Adam learning rate."""
    init_scale: float = 0.1
    """Embedding tables start at Glorot-uniform times this (1.0: the authors'
    init, which stalls near 0.71 AUC in ~15 % of Last.FM runs; see
    docs/faithfulness.md)."""
    updates: Updates = "dense"
    """``dense``: Adam and the L2 term on every embedding row each step (the
    authors' objective); ``rows``: only the rows a batch uses (lazy Adam,
    L2 of the batch's embeddings; much faster on large tables). See
    kgnnls.optim."""
    training_path: TrainingPath = "auto"
    """``auto``: the fused compiled step (kgnnls.fused) where it covers the
    config, else autograd; ``fused``: insist on it (an error names what it
    does not cover); ``autograd``: the reference path."""
    batch_size: int = 128
    epochs: int = 10
    patience: int = 3
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
    train_fraction: float = 1.0
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
    seed: int = 0
    threads: int = 1
    """Threads for torch's intra-op work and the fused step's compiled loops (the
    numbers do not depend on it). 1 suits autograd's small tensors and a shared
    machine; the fused step splits batches of at least
    ``kgnnls.fused.PARALLEL_MIN_ROWS`` rows across threads."""
    device: Device = "auto"
    """Where the autograd training path runs: ``cpu``; ``cuda`` (an error
    without a GPU); ``auto``: the fused CPU step where it covers the config
    (the measured fast path; a GPU is not yet measured against it), else CUDA
    when there is a GPU, else CPU. See kgnnls.device."""
    eval_batch_size: int = 8192
    topk: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    topk_users: int = 0
    """Users ranked for full-ranking top-K: 0 for all users with test positives,
    else a seeded sample of that many (L=2 on large catalogues is costly)."""
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
        checks = [
            (self.variant in ("paper", "authors"), "variant must be 'paper' or 'authors'"),
            (self.aggregator in ("sum", "concat", "neighbor"),
             "aggregator must be sum, concat or neighbor"),
            (self.negatives in ("fixed", "resample"), "negatives must be fixed or resample"),
            (self.updates in ("dense", "rows"), "updates must be dense or rows"),
            (self.training_path in ("auto", "fused", "autograd"),
             "training_path must be auto, fused or autograd"),
            (self.n_neighbors >= 1, "n_neighbors (S) must be >= 1"),
            (self.dim >= 1, "dim (d) must be >= 1"),
            (self.n_layers >= 1, "n_layers (L) must be >= 1"),
            (self.ls_hops is None or self.ls_hops >= 1, "ls_hops must be >= 1"),
            (self.ls_weight >= 0, "ls_weight (lambda) must be >= 0"),
            (self.l2_weight >= 0, "l2_weight (gamma) must be >= 0"),
            (self.lr > 0, "lr (eta) must be > 0"),
            (self.init_scale > 0, "init_scale must be > 0"),
            (0 < self.train_fraction <= 1, "train_fraction must be in (0, 1]"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.threads >= 1, "threads must be >= 1"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.topk_users >= 0, "topk_users must be >= 0 (0: all users)"),
            (len(self.topk) > 0 and all(k >= 1 for k in self.topk), "topk values must be >= 1"),
            (self.loss in ("bce", "bpr"), "loss must be bce or bpr"),
            (self.loss == "bce" or self.model not in POINTWISE_MODELS,
             f"loss=bpr is for kgnn-ls and kgcn; model {self.model!r} trains on bce only"),
            (self.kg == "full" or self.model not in KG_FREE_MODELS,
             f"kg={self.kg} ablates the knowledge graph, which model {self.model!r} does not use"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from kgnnls.data.ablation import parse_kg_mode  # lazy: kgnnls.data imports this module

        parse_kg_mode(self.kg)  # ConfigError naming a bad mode
        return self

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, dataset: str, model: str = "kgnn-ls", **overrides: Any) -> Config:
        """The published setting of ``model`` on ``dataset`` (see ``kgnnls.presets``).

        ``dataset`` may be an alias (``music``, ``book``); KGCN uses KGNN-LS's
        setting (with ``lambda = 0``, applied when training).
        """
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
        entry = dict(entry)
        extra = entry.pop("extra", {})
        return replace(cls(), model=model, extra=dict(extra), **entry).with_overrides(overrides)

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """Copy with fields replaced; values may be strings (from ``--set``)."""
        if not overrides:
            return self.validate()
        types = typing.get_type_hints(Config)
        names = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        extra = dict(self.extra)
        for key, value in overrides.items():
            name = ALIASES.get(key, key)
            if name not in names or name == "extra":
                if name.startswith("extra."):
                    extra[name[6:]] = _auto(value) if isinstance(value, str) else value
                    continue
                raise ConfigError(f"unknown setting {key!r}; settings: "
                                  f"{', '.join(sorted(names - {'extra'}))} "
                                  f"(aliases {', '.join(ALIASES)}; free-form: extra.NAME)")
            changes[name] = _coerce(name, value, types[name])
        return replace(self, extra=extra, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["topk"] = list(self.topk)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if "topk" in d:
            d["topk"] = tuple(d["topk"])
        return cls(**d).validate()

    def as_set_line(self, keys: list[str] | None = None) -> str:
        """``--set k=v ...`` reproducing this config's given (or non-default) fields."""
        default = Config()
        parts = []
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if (keys is not None and f.name in keys) or (keys is None and v != getattr(default,
                                                                                       f.name)):
                if isinstance(v, tuple):
                    v = ",".join(map(str, v))
                parts.append(f"--set {f.name}={v}")
        return " ".join(parts)


#: The paper's symbols, accepted by ``--set``.
ALIASES: dict[str, str] = {"S": "n_neighbors", "d": "dim", "L": "n_layers", "lambda": "ls_weight",
                           "gamma": "l2_weight", "eta": "lr"}


def _auto(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def _coerce(name: str, value: Any, typ: Any) -> Any:
    if not isinstance(value, str):
        return value
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
    if typing.get_origin(typ) is Literal:
        return " | ".join(map(str, typing.get_args(typ)))
    return getattr(typ, "__name__", str(typ))


__all__ = ["ALIASES", "Config"]
