"""Matrix factorisation for implicit feedback, run by the ``implicit`` library (CPU).

* ``ALS`` (Hu, Koren, Volinsky, ICDM 2008, "Collaborative filtering for
  implicit feedback datasets"): with ``p_ui = x_ui`` and confidence
  ``c_ui = 1 + alpha x_ui``,

      min_{U, V} sum_{u,i} c_ui (p_ui - U_u . V_i)^2 + reg (||U||^2 + ||V||^2)

  solved by alternating least squares (conjugate-gradient steps, Takács et
  al. 2011). implicit's own ``alpha`` multiplies the matrix (its ``c_ui`` is
  ``alpha x_ui``); we pass ``1 + alpha`` as the value of each positive so
  that ``alpha`` means what it means in the paper.
* ``BPR`` (Rendle et al., UAI 2009, "BPR: Bayesian personalized ranking from
  implicit feedback"): SGD on ``-ln sigmoid(U_u . (V_i - V_j))`` + L2 over
  sampled (user, positive, negative) triples, with a learned item bias (the
  last factor column; users carry a constant 1 there). implicit samples the
  positive uniformly among training positives and the negative among their
  items (popularity-weighted), rejecting negatives the user has.

Why implicit: mature, compiled (Cython/OpenMP) versions of both models; one
ALS iteration on Last.FM takes milliseconds. Determinism: ``num_threads=1``
(implicit's BPR is Hogwild across threads, so threads change its numbers), and
since BPR seeds its samplers from ``random_state`` at every ``fit`` call, each
epoch gets its own seed drawn from a :mod:`kgnnls.seeding` stream (a fixed
seed would replay the same samples every epoch). ``fit`` keeps existing
factors (it initialises only missing ones), so ``run_epoch`` is one
``fit`` with ``iterations=1``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from threadpoolctl import threadpool_limits

from kgnnls.rankers.base import RankData, Ranker
from kgnnls.seeding import rng
from kgnnls.space import Float, Int, Space


class _ImplicitMF(Ranker):
    """Shared verbs: an implicit model trained one iteration per epoch."""

    iterative = True

    def _make_model(self, seed: int) -> Any:
        raise NotImplementedError

    def _matrix(self, data: RankData) -> sp.csr_matrix:
        return data.user_items.astype(np.float32).tocsr()

    def start(self, data: RankData) -> None:
        self._rng = rng(self.seed, f"{self.name}-epochs")
        self._n_items = data.n_items
        self._X = self._matrix(data)
        self._X.sort_indices()  # BPR's negative check binary-searches each row
        # implicit warns once, at construction, when BLAS runs threads: limit them here too
        with threadpool_limits(1, "blas"):
            self.model = self._make_model(int(rng(self.seed, f"{self.name}-init").integers(2**31)))
        self._scores_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def run_epoch(self) -> float:
        self.model.random_state = int(self._rng.integers(2**31))  # fresh samples per epoch
        with threadpool_limits(1, "blas"):
            self.model.fit(self._X, show_progress=False)
        self._scores_cache = None
        return float("nan")  # implicit reports no loss unless asked to compute it

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.model.user_factors.copy(), self.model.item_factors.copy()

    def restore(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        self.model.user_factors, self.model.item_factors = (s.copy() for s in state)
        self._scores_cache = None

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._scores_cache is None:
            self._scores_cache = (torch.from_numpy(np.ascontiguousarray(
                self.model.user_factors, np.float32)), torch.from_numpy(
                np.ascontiguousarray(self.model.item_factors, np.float32)))
        return self._scores_cache

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        U, V = self._factors()
        return U[users] @ V[items].T


class ALS(_ImplicitMF):
    """Weighted matrix factorisation by alternating least squares (implicit, CPU)."""

    name = "als"
    space: ClassVar[Space] = {"factors": Int(16, 256, log=True),
                              "regularization": Float(1e-4, 1.0, log=True),
                              "alpha": Float(0.1, 50.0, log=True)}
    defaults: ClassVar[dict] = {"factors": 32, "regularization": 0.01, "alpha": 10.0,
                                "epochs": 15}

    def _matrix(self, data: RankData) -> sp.csr_matrix:
        X = data.user_items.astype(np.float32).tocsr()
        X.data[:] = 1.0 + float(self.params["alpha"])  # c_ui = 1 + alpha (see module doc)
        return X

    def _make_model(self, seed: int) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(
            factors=int(self.params["factors"]),
            regularization=float(self.params["regularization"]), alpha=1.0, iterations=1,
            calculate_training_loss=False, num_threads=1, random_state=seed)


class BPR(_ImplicitMF):
    """Bayesian personalised ranking by SGD (implicit, CPU, one thread)."""

    name = "bpr"
    space: ClassVar[Space] = {"factors": Int(16, 256, log=True),
                              "learning_rate": Float(1e-3, 0.1, log=True),
                              "regularization": Float(1e-4, 1.0, log=True)}
    defaults: ClassVar[dict] = {"factors": 64, "learning_rate": 0.02, "regularization": 0.05,
                                "epochs": 150}

    def _make_model(self, seed: int) -> BayesianPersonalizedRanking:
        return BayesianPersonalizedRanking(
            factors=int(self.params["factors"]), learning_rate=float(self.params["learning_rate"]),
            regularization=float(self.params["regularization"]), iterations=1, num_threads=1,
            verify_negative_samples=True, random_state=seed)


__all__ = ["ALS", "BPR"]
