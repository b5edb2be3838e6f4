"""EASE: a closed-form linear item-item model (Steck, WWW 2019).

With ``X`` the binary ``[users, items]`` matrix of training positives,

    B = argmin ||X - X B||_F^2 + lambda ||B||_F^2   subject to diag(B) = 0
    P = (X^T X + lambda I)^-1,  B = I - P diag(1 / diag(P)),  i.e.
    B[i, j] = -P[i, j] / P[j, j]  (i != j),  B[j, j] = 0
    score(u, j) = X[u] @ B[:, j]

The Gram matrix is dense ``[items, items]``. It is inverted in float64 by
Cholesky (``X^T X + lambda I`` is symmetric positive definite; Cholesky costs
about half an LU inverse) in place, so Book-Crossing's ~15k items need one
1.8 GB float64 matrix plus the 0.9 GB float32 ``B`` that is kept.

``ease-kg`` (:class:`KGEASE`) adds the KG as item side information to the
same Gram matrix ("collective EASE"; see its docstring and docs/rankers.md).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from scipy.linalg import lapack

from kgnnls.rankers.base import RankData, Ranker, kg_item_features
from kgnnls.space import Float, Space

#: rows per block when symmetrising and scaling (bounds temporaries)
_BLOCK = 2048


def spd_inverse_inplace(G: np.ndarray) -> np.ndarray:
    """Inverse of the symmetric positive definite float64 ``G``, overwriting it."""
    # G is symmetric, so its Fortran-ordered view G.T is the same matrix: no copy
    c, info = lapack.dpotrf(G.T, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky failed (info={info}); raise lambda")
    P, info = lapack.dpotri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse failed (info={info})")
    n = P.shape[0]
    # dpotri fills the upper triangle only: mirror it block by block (no n^2 index arrays)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        P[start:stop, :start] = P[:start, start:stop].T
        tile = P[start:stop, start:stop]
        P[start:stop, start:stop] = np.triu(tile) + np.triu(tile, 1).T
    return P


def ease_weights(user_items: sp.spmatrix, lam: float) -> np.ndarray:
    """``B`` of the module docstring as float32 ``[n_items, n_items]``."""
    return _weights_from_gram(_gram(user_items), lam)


def _gram(user_items: sp.spmatrix) -> np.ndarray:
    """``X^T X`` as a dense float64 ``[n_items, n_items]``."""
    X = sp.csr_matrix(user_items, dtype=np.float64)
    return np.asarray((X.T @ X).todense(), dtype=np.float64)


def _weights_from_gram(G: np.ndarray, lam: float) -> np.ndarray:
    """``B`` from the float64 Gram matrix ``G`` (overwritten)."""
    G[np.diag_indices_from(G)] += lam
    P = spd_inverse_inplace(G)
    diag = np.diag(P).copy()
    B = np.empty(P.shape, np.float32)
    for start in range(0, P.shape[0], _BLOCK):
        stop = min(start + _BLOCK, P.shape[0])
        B[start:stop] = -P[start:stop] / diag  # column j divided by P[j, j]
    np.fill_diagonal(B, 0.0)
    return B


class EASE(Ranker):
    """Embarrassingly shallow autoencoder: one ridge-regression solve."""

    name = "ease"
    space: ClassVar[Space] = {"lam": Float(1.0, 1e4, log=True)}
    defaults: ClassVar[dict] = {"lam": 100.0}

    def fit(self, data: RankData, epochs: int | None = None) -> EASE:
        self.user_items = data.user_items.astype(np.float32).tocsr()
        self.B = self._weights(data)
        self._n_items = data.n_items
        return self

    def _weights(self, data: RankData) -> np.ndarray:
        return ease_weights(data.user_items, float(self.params["lam"]))

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        scores = np.asarray(self.user_items[users.numpy()] @ self.B, dtype=np.float32)
        return torch.from_numpy(scores)[:, items]


def collective_ease_weights(user_items: sp.spmatrix, features: sp.spmatrix, lam: float,
                            alpha: float) -> np.ndarray:
    """EASE on the training matrix stacked over ``alpha`` times the item features.

    ``X~ = [X; alpha F^T]``, so the Gram matrix is ``X^T X + alpha^2 F F^T``:
    two items that share KG entities are treated as co-consumed by ``alpha^2``
    pseudo-users per shared entity.
    """
    F = sp.csr_matrix(features, dtype=np.float64)
    G = _gram(user_items)
    FT = sp.csc_matrix(F.T)
    for start in range(0, G.shape[0], _BLOCK):  # F F^T block by block: it can be dense-ish
        stop = min(start + _BLOCK, G.shape[0])
        G[start:stop] += (alpha * alpha) * (F[start:stop] @ FT).toarray()
    return _weights_from_gram(G, lam)


class KGEASE(EASE):
    """EASE with the KG as side information: collective EASE (Jeunen, Van Balen,
    Goethals, "Closed-Form Models for Collaborative Filtering with Side-Information",
    RecSys 2020), the item features being each item's KG neighbours.

    An item no user trained on has an all-zero column in ``X``, so plain EASE
    scores it 0 for everyone; here its column of ``B`` is regressed on the items
    that share its entities, and a user who consumed those items scores it.
    """

    name = "ease-kg"
    uses_kg = True
    space: ClassVar[Space] = {**EASE.space, "alpha": Float(0.01, 10.0, log=True)}
    defaults: ClassVar[dict] = {**EASE.defaults, "alpha": 1.0}

    def _weights(self, data: RankData) -> np.ndarray:
        return collective_ease_weights(data.user_items, kg_item_features(data),
                                       float(self.params["lam"]), float(self.params["alpha"]))


__all__ = ["EASE", "KGEASE", "collective_ease_weights", "ease_weights", "spd_inverse_inplace"]
