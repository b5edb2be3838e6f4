"""The in-memory dataset: labelled user-item rows plus a knowledge graph.

Conventions (those of the paper's release, kept everywhere in the package):

* users, items, entities and relations are dense indices ``0..n-1``; the
  original ids live in ``user_ids``, ``item_ids``, ``entity_ids`` and
  ``relation_names`` (index -> original id);
* items come first among entities: item ``i`` is KG entity ``i``;
* ``ratings`` holds the labelled rows ``(user, item, label)`` with label 1 for
  a positive and 0 for a negative (sampled, or given by the source);
* ``excluded`` holds ``(user, item)`` pairs the user touched that are neither
  positive nor a labelled negative (explicit ratings below the threshold):
  they are never drawn as sampled negatives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kgnnls.errors import DataError


@dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled interactions and a knowledge graph, indexed densely."""

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    entity_ids: np.ndarray
    relation_names: np.ndarray
    ratings: np.ndarray
    kg: np.ndarray
    excluded: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    source: str = ""
    negatives: str = "given"

    # ----------------------------------------------------------------- sizes
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_entities(self) -> int:
        return len(self.entity_ids)

    @property
    def n_relations(self) -> int:
        return len(self.relation_names)

    @property
    def n_positives(self) -> int:
        return int(self.ratings[:, 2].sum())

    @property
    def has_negatives(self) -> bool:
        return bool((self.ratings[:, 2] == 0).any())

    def stats(self) -> dict[str, int | str]:
        """The paper's Table 2 row; "interactions" counts labelled rows."""
        return {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": len(self.ratings),
            "positives": self.n_positives,
            "negatives": len(self.ratings) - self.n_positives,
            "entities": self.n_entities,
            "relations": self.n_relations,
            "triples": len(self.kg),
        }

    def fingerprint(self) -> str:
        """SHA-256 over everything a model depends on (rows, KG, sizes)."""
        h = hashlib.sha256()
        h.update(np.array([self.n_users, self.n_items, self.n_entities, self.n_relations],
                          dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.ratings, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.kg, dtype=np.int64).tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------ id mapping
    def user_index(self, user_id: str | int) -> int:
        """Internal index of an original user id; DataError if unknown."""
        return _lookup(self.user_ids, user_id, "user")

    def item_index(self, item_id: str | int) -> int:
        """Internal index of an original item id; DataError if unknown."""
        return _lookup(self.item_ids, item_id, "item")

    def with_ratings(self, ratings: np.ndarray, negatives: str) -> Dataset:
        return replace(self, ratings=ratings, negatives=negatives)

    # ------------------------------------------------------- in-memory input
    # thin entry points; the logic and its rules live in kgnnls.data.frames
    # (imported lazily: it imports this module)
    @classmethod
    def from_frames(cls, interactions: Any, kg: Any = None, item_entities: Any = None,
                    **options: Any) -> Dataset:
        """From pandas DataFrames of original ids (needs pandas); see
        :func:`kgnnls.data.frames.from_frames` for columns, options and checks."""
        from kgnnls.data.frames import from_frames

        return from_frames(interactions, kg, item_entities, **options)

    @classmethod
    def from_arrays(cls, users: Any, items: Any, labels: Any = None, kg_triples: Any = None,
                    **options: Any) -> Dataset:
        """From integer index arrays; see :func:`kgnnls.data.frames.from_arrays`."""
        from kgnnls.data.frames import from_arrays

        return from_arrays(users, items, labels, kg_triples, **options)

    @classmethod
    def from_csr(cls, user_items: Any, kg_triples: Any = None, **options: Any) -> Dataset:
        """From a ``scipy.sparse`` users x items matrix (``implicit``'s input) and integer
        KG triples; see :func:`kgnnls.data.frames.from_csr`."""
        from kgnnls.data.frames import from_csr

        return from_csr(user_items, kg_triples, **options)

    def validate(self, allow_empty_kg: bool = False) -> None:
        """Check index ranges; readers call this before returning.

        A KG without triples is refused (a reader that found none read the
        wrong file) unless ``allow_empty_kg``: ``kgnnls.data.ablation``'s
        ``kg=none`` removes every triple on purpose.
        """
        r, kg = self.ratings, self.kg
        if r.ndim != 2 or r.shape[1] != 3 or len(r) == 0:
            raise DataError("no labelled interactions", self.source or self.name)
        if r[:, 0].min() < 0 or r[:, 0].max() >= self.n_users:
            raise DataError("user index out of range", self.source or self.name)
        if r[:, 1].min() < 0 or r[:, 1].max() >= self.n_items:
            raise DataError("item index out of range", self.source or self.name)
        if not np.isin(r[:, 2], (0, 1)).all():
            raise DataError("labels must be 0 or 1", self.source or self.name)
        if self.n_items > self.n_entities:
            raise DataError("fewer entities than items (items must be entities)", self.source)
        if len(kg) == 0:
            if allow_empty_kg:
                return
            raise DataError("the knowledge graph has no triples", self.source or self.name)
        if kg[:, [0, 2]].min() < 0 or kg[:, [0, 2]].max() >= self.n_entities:
            raise DataError("KG entity index out of range", self.source or self.name)
        if kg[:, 1].min() < 0 or kg[:, 1].max() >= self.n_relations:
            raise DataError("KG relation index out of range", self.source or self.name)


def _lookup(ids: np.ndarray, key: str | int, kind: str) -> int:
    hits = np.flatnonzero(ids == str(key))
    if len(hits) == 0:
        raise DataError(f"unknown {kind} id {key!r}")
    return int(hits[0])
