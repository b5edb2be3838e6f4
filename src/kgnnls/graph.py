"""The knowledge graph as the model sees it: an undirected adjacency, a fixed
sample of S neighbours per entity, and a label table for label smoothness.

The paper treats the KG as undirected and, when both ``(h, r1, t)`` and
``(t, r2, h)`` exist, keeps only one relation for the pair (footnote 1); the
authors' code keeps every triple in both directions. ``dedupe_pairs``
selects between the two. Entities without any triple (possible in users'
data, never in the paper's) get themselves as neighbours through a
dedicated ``[self]`` pseudo-relation so every entity has S slots.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from kgnnls.arrays import csr_indptr

SELF_RELATION_NAME = "[self]"


@dataclass(frozen=True)
class KnowledgeGraph:
    """Undirected adjacency in CSR form (``indptr``, ``neighbors``, ``relations``)."""

    n_entities: int
    n_relations: int
    indptr: np.ndarray
    neighbors: np.ndarray
    relations: np.ndarray
    self_relation: int | None

    @classmethod
    def from_triples(cls, kg: np.ndarray, n_entities: int, n_relations: int,
                     dedupe_pairs: bool = True) -> KnowledgeGraph:
        """Build the undirected graph of ``(head, relation, tail)`` triples."""
        kg = np.asarray(kg, dtype=np.int64)
        if dedupe_pairs:
            lo, hi = np.minimum(kg[:, 0], kg[:, 2]), np.maximum(kg[:, 0], kg[:, 2])
            _, first = np.unique(lo * np.int64(n_entities) + hi, return_index=True)
            kg = kg[np.sort(first)]  # keep the first triple of each entity pair
            loops = kg[:, 0] == kg[:, 2]
            src = np.concatenate([kg[:, 0], kg[~loops, 2]])
            dst = np.concatenate([kg[:, 2], kg[~loops, 0]])
            rel = np.concatenate([kg[:, 1], kg[~loops, 1]])
        else:  # authors: every triple in both directions
            src = np.concatenate([kg[:, 0], kg[:, 2]])
            dst = np.concatenate([kg[:, 2], kg[:, 0]])
            rel = np.concatenate([kg[:, 1], kg[:, 1]])
        isolated = np.setdiff1d(np.arange(n_entities), src)
        self_relation = None
        if len(isolated):
            self_relation = n_relations
            n_relations += 1
            src = np.concatenate([src, isolated])
            dst = np.concatenate([dst, isolated])
            rel = np.concatenate([rel, np.full(len(isolated), self_relation)])
        order = np.argsort(src, kind="stable")
        return cls(n_entities, n_relations, csr_indptr(src, n_entities), dst[order], rel[order],
                   self_relation)

    @property
    def degrees(self) -> np.ndarray:
        return np.diff(self.indptr)

    def sample_neighbors(self, n_neighbors: int, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray]:
        """S neighbour slots per entity, drawn once (paper, Appendix B).

        Without replacement when the degree is at least S, with replacement
        otherwise, as the authors' ``construct_adj``; vectorized: a random key
        per edge orders each entity's edges, and the first S are kept.
        Returns ``(adj_entity, adj_relation)``, both ``[n_entities, S]``.
        """
        s = int(n_neighbors)
        deg = self.degrees
        starts = self.indptr[:-1]
        # without replacement: rank edges by a random key inside each entity
        keys = rng.random(len(self.neighbors)) + np.repeat(np.arange(self.n_entities), deg)
        by_key = np.argsort(keys, kind="stable")  # entity-major, random within entity
        slots = np.arange(s)
        without = by_key[np.minimum(starts[:, None] + slots, len(by_key) - 1)]
        # with replacement: uniform offsets inside each entity's edge list
        offsets = np.floor(rng.random((self.n_entities, s)) * deg[:, None]).astype(np.int64)
        with_repl = starts[:, None] + np.minimum(offsets, deg[:, None] - 1)
        edge = np.where((deg >= s)[:, None], without, with_repl)
        return self.neighbors[edge], self.relations[edge]


class LabelTable:
    """Training labels of (user, entity) pairs, looked up with tensor ops.

    Keys ``user * n_entities + entity`` are kept sorted with their labels in
    ``values``. Only items carry labels, so where ``users x items`` is small
    (``DENSE_LIMIT`` cells; Last.FM: 7 M) a dense table maps each cell to its
    position in ``values`` and a lookup is one gather (2.5x faster);
    otherwise a lookup is one ``torch.searchsorted``. Entities without a
    label for the user read 0.5, as in the authors' code.
    """

    DENSE_LIMIT = 1 << 24  # int32 cells: 64 MiB at most

    def __init__(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                 n_entities: int):
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        keys = users * np.int64(n_entities) + items
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], np.asarray(labels, np.float32)[order]
        # a pair seen twice keeps one label (readers reject conflicting ones)
        keep = np.ones(len(keys), dtype=bool)
        keep[1:] = keys[1:] != keys[:-1]
        self.n_entities = int(n_entities)
        self.keys = torch.from_numpy(keys[keep])
        self.values = torch.from_numpy(values[keep])
        self.n_users = int(users.max()) + 1 if len(users) else 0
        self.n_items = int(items.max()) + 1 if len(items) else 0
        self.dense: torch.Tensor | None = None  # [n_users * n_items]: position in values, or -1
        if 0 < self.n_users * self.n_items <= self.DENSE_LIMIT:
            dense = np.full(self.n_users * self.n_items, -1, np.int32)
            k = keys[keep]
            dense[(k // n_entities) * self.n_items + k % n_entities] = np.arange(len(k))
            self.dense = torch.from_numpy(dense)

    def to(self, device: torch.device | str) -> LabelTable:
        """This table with its tensors on ``device`` (the autograd path on a GPU)."""
        moved = copy.copy(self)
        moved.keys, moved.values = self.keys.to(device), self.values.to(device)
        moved.dense = None if self.dense is None else self.dense.to(device)
        return moved

    def lookup(self, users: torch.Tensor, entities: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (0.5 where unknown) and a mask of known labels; broadcasting."""
        if self.dense is not None:
            users, entities = torch.broadcast_tensors(users, entities)
            is_item = (entities < self.n_items) & (users < self.n_users)
            cell = torch.where(is_item, users * self.n_items + entities, 0)
            pos = torch.where(is_item, self.dense[cell], -1)
            found = pos >= 0
            return torch.where(found, self.values[pos.clamp(min=0).long()], 0.5), found
        q = users * self.n_entities + entities
        if len(self.keys) == 0:
            return (torch.full(q.shape, 0.5, device=q.device),
                    torch.zeros(q.shape, dtype=torch.bool, device=q.device))
        pos = torch.searchsorted(self.keys, q.reshape(-1)).clamp_(max=len(self.keys) - 1)
        found = (self.keys[pos] == q.reshape(-1)).reshape(q.shape)
        labels = torch.where(found, self.values[pos].reshape(q.shape), 0.5)
        return labels, found
