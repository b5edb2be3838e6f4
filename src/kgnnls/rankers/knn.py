"""Item-based k-nearest-neighbours with (shrunk) cosine similarity.

With ``X`` the binary ``[users, items]`` matrix of training positives and
``x_i`` its column ``i``,

    s(i, j) = x_i . x_j / (||x_i|| ||x_j|| + shrink)      (s(j, j) = 0)
    W[i, j] = s(i, j) if i is among the k most similar items of j, else 0
    score(u, j) = sum_i x_ui W[i, j]                       (= X[u] @ W)

Sarwar, Karypis, Konstan, Riedl, WWW 2001 ("Item-based collaborative
filtering recommendation algorithms"); the shrink term and the
"top-k neighbours of the candidate item" convention are RecBole's
``ItemKNN`` (whose defaults are k = 100, shrink = 0).

Why not ``implicit.nearest_neighbours.CosineRecommender``: it has no shrink,
keeps the top-K neighbours of each *owned* item rather than of each
candidate, and counts an item as its own nearest neighbour (one of its K slots
spent on the diagonal). The sparse products below are a few lines of scipy
and scale to Book-Crossing (~15k items) in bounded memory (``_ROWS`` rows of
similarities at a time).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from kgnnls.rankers.base import RankData, Ranker, kg_item_features
from kgnnls.space import Float, Int, Space

#: similarity rows made dense at once: [_ROWS, n_items] float32 (60 MB at 15k items)
_ROWS = 1024


def top_k_per_row(sim: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of each row's ``k`` largest positive entries.

    Ties at the k-th value go to the lowest column indices, so the result is
    deterministic (``argpartition`` alone is not) and checkable by a loop.
    """
    n = sim.shape[1]
    if k >= n:
        return sim > 0
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1:k]  # the k-th largest value per row
    above = sim > kth
    ties = sim == kth
    room = k - above.sum(1, keepdims=True)
    keep = above | (ties & (np.cumsum(ties, axis=1) <= room))
    return keep & (sim > 0)  # zero similarities add nothing to any score


def cosine_knn(user_items: sp.csr_matrix, k: int, shrink: float) -> sp.csr_matrix:
    """``W`` of the module docstring, ``[n_items, n_items]`` CSR float32."""
    X = sp.csc_matrix(user_items, dtype=np.float32)
    gram = (X.T @ X).tocsr()
    norms = np.sqrt(np.asarray(gram.diagonal(), np.float64))
    n = gram.shape[0]
    rows, cols, vals = [], [], []
    for start in range(0, n, _ROWS):
        stop = min(start + _ROWS, n)
        block = gram[start:stop].toarray().astype(np.float64)
        block /= np.outer(norms[start:stop], norms) + shrink + 1e-12  # 1e-12: empty items
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0
        r, c = np.nonzero(top_k_per_row(block, k))
        # row j of ``block`` holds s(j, .): its kept entries are the neighbours i of j
        rows.append(c)
        cols.append(r + start)
        vals.append(block[r, c].astype(np.float32))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, n))


class ItemKNN(Ranker):
    """Item kNN, cosine similarity with shrink, top-``k`` neighbours per item."""

    name = "itemknn"
    space: ClassVar[Space] = {"k": Int(10, 500, log=True), "shrink": Float(0.0, 100.0)}
    defaults: ClassVar[dict] = {"k": 200, "shrink": 20.0}

    def fit(self, data: RankData, epochs: int | None = None) -> ItemKNN:
        self.user_items = data.user_items.astype(np.float32).tocsr()
        self.W = cosine_knn(self._columns(data), int(self.params["k"]),
                            float(self.params["shrink"]))
        self._n_items = data.n_items
        return self

    def _columns(self, data: RankData) -> sp.spmatrix:
        """The matrix whose item columns are compared."""
        return data.user_items

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        rows = self.user_items[users.numpy()]
        scores = np.asarray((rows @ self.W).todense(), dtype=np.float32)
        return torch.from_numpy(scores)[:, items]


class KGItemKNN(ItemKNN):
    """Item kNN whose similarities also count the KG: the cosine of items' columns in
    ``[X; alpha F^T]`` (``F``: :func:`kg_item_features`), so two items sharing KG
    entities are similar even when no user consumed both, and an item no user
    trained on has neighbours (the same stacking as ``ease-kg``)."""

    name = "itemknn-kg"
    uses_kg = True
    space: ClassVar[Space] = {**ItemKNN.space, "alpha": Float(0.01, 10.0, log=True)}
    defaults: ClassVar[dict] = {**ItemKNN.defaults, "alpha": 1.0}

    def _columns(self, data: RankData) -> sp.spmatrix:
        return sp.vstack([data.user_items, float(self.params["alpha"]) * kg_item_features(data).T])


__all__ = ["ItemKNN", "KGItemKNN", "cosine_knn", "top_k_per_row"]
