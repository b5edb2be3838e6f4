"""Knowledge-graph ablations: how much of a KG-aware model's quality is the KG's?

``Config.kg`` names one mode, applied by :func:`kgnnls.train.build` after the
split (``ui`` needs the training rows), so every KG-aware model trains on the
same ablated graph for a given seed:

* ``full``: the dataset's KG (the paper's protocol);
* ``none``: no triples at all; the entity set shrinks to the items (entity
  ``i`` is still item ``i``) and there are no relations, so nothing but the
  items carries an embedding (KGNN-LS then sees each item as an isolated
  entity: ``kgnnls.graph`` gives it itself as neighbour through the
  ``[self]`` pseudo-relation);
* ``shuffle:P``: a seeded ``round(P * n)`` of the triples get a uniformly
  random tail entity (any entity, the old one included), heads and relations
  kept, so the count per relation is unchanged;
* ``keep:P``: a seeded ``round(P * n)`` of the triples kept, in file order
  (the entity and relation sets are unchanged);
* ``ui``: the KG is replaced by the user-item graph of the *training*
  positives, as KG4RecEval does: entities are the items followed by one new
  entity per user (``user:ID``), one relation ``interacted``, triples
  ``(item, interacted, user entity)``. Validation and test rows never enter.

The ablated dataset is a new :class:`Dataset` (``dataclasses.replace``): the
ratings, users and items are untouched, so the split and the evaluation are
those of the full-KG run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from kgnnls.data.dataset import Dataset
from kgnnls.errors import ConfigError
from kgnnls.seeding import rng

KGKind = Literal["full", "none", "shuffle", "keep", "ui"]

#: modes with a fraction (``shuffle:P``, ``keep:P``) and those without
_WITH_FRACTION = ("shuffle", "keep")
_PLAIN = ("full", "none", "ui")

#: name of the one relation of ``kg=ui``, and the prefix of its user entities' ids
UI_RELATION = "interacted"
UI_USER_PREFIX = "user:"


@dataclass(frozen=True)
class KGMode:
    """A parsed ``Config.kg``: the kind of ablation and its fraction (``shuffle``, ``keep``)."""

    kind: KGKind
    fraction: float | None = None

    def __str__(self) -> str:
        return self.kind if self.fraction is None else f"{self.kind}:{self.fraction:g}"


def parse_kg_mode(text: str) -> KGMode:
    """``full``, ``none``, ``ui``, ``shuffle:P`` or ``keep:P`` (P in [0, 1]); ConfigError else."""
    known = "full, none, ui, shuffle:P or keep:P (P in [0, 1])"
    kind, sep, value = str(text).strip().partition(":")
    if kind in _PLAIN and not sep:
        return KGMode(kind)  # type: ignore[arg-type]
    if kind not in _WITH_FRACTION or not sep:
        raise ConfigError(f"bad kg mode {text!r}: expected {known}")
    try:
        fraction = float(value)
    except ValueError:
        raise ConfigError(f"bad kg mode {text!r}: {value!r} is not a number") from None
    if not 0 <= fraction <= 1:  # also refuses nan
        raise ConfigError(f"bad kg mode {text!r}: the fraction must be in [0, 1]")
    return KGMode(kind, fraction)  # type: ignore[arg-type]


def ablate_kg(dataset: Dataset, mode: KGMode | str, seed: int,
              train_rows: np.ndarray | None = None) -> Dataset:
    """``dataset`` with its KG replaced as ``mode`` says (``full``: ``dataset`` itself).

    ``seed`` drives the random modes through their own stream (the split and
    the model's init do not move with the ablation); ``train_rows`` (``user,
    item, label``) are the training rows of the split, required by ``ui``.
    """
    mode = parse_kg_mode(mode) if isinstance(mode, str) else mode
    if mode.kind == "full":
        return dataset
    if mode.kind == "none":
        out = replace(dataset, entity_ids=dataset.entity_ids[:dataset.n_items],
                      relation_names=dataset.relation_names[:0], kg=_no_triples())
    elif mode.kind == "ui":
        out = _user_item_graph(dataset, train_rows)
    else:
        kg = np.asarray(dataset.kg, np.int64)
        generator = rng(seed, f"kg-{mode.kind}")
        chosen = generator.permutation(len(kg))[:round(mode.fraction * len(kg))]
        if mode.kind == "keep":
            kg = kg[np.sort(chosen)]  # file order: the paper variant keeps a pair's first triple
        else:
            kg = kg.copy()
            kg[chosen, 2] = generator.integers(0, dataset.n_entities, len(chosen))
        out = replace(dataset, kg=kg)
    out.validate(allow_empty_kg=True)
    return out


def _no_triples() -> np.ndarray:
    return np.zeros((0, 3), dtype=np.int64)


def _user_item_graph(dataset: Dataset, train_rows: np.ndarray | None) -> Dataset:
    """``kg=ui``: items, then one entity per user; ``(item, interacted, user)`` per
    training positive."""
    if train_rows is None:
        raise ConfigError("kg=ui needs the training rows of the split (train_rows)")
    rows = np.asarray(train_rows, np.int64)
    pos = np.unique(rows[rows[:, 2] == 1][:, :2], axis=0)  # a repeated row is one edge
    users = np.array([f"{UI_USER_PREFIX}{u}" for u in dataset.user_ids], dtype=object)
    entity_ids = np.concatenate([dataset.entity_ids[:dataset.n_items].astype(object), users])
    kg = np.column_stack([pos[:, 1], np.zeros(len(pos), np.int64), dataset.n_items + pos[:, 0]])
    return replace(dataset, entity_ids=entity_ids.astype(str),
                   relation_names=np.array([UI_RELATION]), kg=kg.reshape(-1, 3))


__all__ = ["UI_RELATION", "UI_USER_PREFIX", "KGMode", "ablate_kg", "parse_kg_mode"]
