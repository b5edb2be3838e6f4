"""The ranker interface: fit on training positives (and a KG), score every item.

KGNN-LS and the paper's baselines are CTR models trained on labelled rows by
:mod:`kgnnls.train`. The top-K models here (popularity, item kNN, EASE, ALS,
BPR, LightGCN, ...) are fitted on the user-item matrix of *training positives*
alone, as their authors define them, and answer the same question as every
scorer of :mod:`kgnnls.evaluate`: ``score_matrix(users, items)``.

A ranker declares its hyper-parameters and their search space (``space``,
see :mod:`kgnnls.space`) next to its code, its defaults in ``defaults``.
Iterative rankers train epoch by epoch (``start``, ``run_epoch``) so that one
early-stopping rule (:func:`fit_early_stopping`) serves all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from kgnnls.budget import RANKING_CHUNK
from kgnnls.errors import ConfigError
from kgnnls.space import Space


@dataclass(frozen=True)
class RankData:
    """What a ranker trains on, in dense indices.

    ``user_items``: ``[n_users, n_items]`` CSR, 1.0 for each training positive;
    ``kg``: ``[n, 3]`` ``(head, relation, tail)`` triples, items being entities
    ``0..n_items-1`` (KG-aware rankers only).
    """

    user_items: sp.csr_matrix
    kg: np.ndarray
    n_entities: int
    n_relations: int

    @property
    def n_users(self) -> int:
        return self.user_items.shape[0]

    @property
    def n_items(self) -> int:
        return self.user_items.shape[1]

    @classmethod
    def from_rows(cls, rows: np.ndarray, n_users: int, n_items: int, kg: np.ndarray,
                  n_entities: int, n_relations: int) -> RankData:
        """From labelled ``(user, item, label)`` rows: the positives, deduplicated."""
        pos = rows[rows[:, 2] == 1]
        m = sp.csr_matrix((np.ones(len(pos), np.float32), (pos[:, 0], pos[:, 1])),
                          shape=(n_users, n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return cls(m, np.asarray(kg, np.int64).reshape(-1, 3), n_entities, n_relations)


def kg_item_features(data: RankData) -> sp.csr_matrix:
    """``F``: ``[n_items, n_entities]``, 1 where the item and the entity share a triple
    (either direction; relations ignored, self-loops dropped)."""
    head, tail = data.kg[:, 0], data.kg[:, 2]
    keep = head != tail
    head, tail = head[keep], tail[keep]
    n_items = data.n_items
    rows = np.concatenate([head[head < n_items], tail[tail < n_items]])
    cols = np.concatenate([tail[head < n_items], head[tail < n_items]])
    F = sp.csr_matrix((np.ones(len(rows)), (rows, cols)),
                      shape=(n_items, max(data.n_entities, n_items)))
    F.sum_duplicates()
    F.data[:] = 1.0
    return F


class Ranker(ABC):
    """A top-K model: ``fit(data)`` then ``score_matrix(users, items)``.

    Subclasses set ``name`` (as the CLI spells it), ``space`` (the search space
    of their hyper-parameters) and ``defaults`` (a value for every key of
    ``space``); ``uses_kg`` marks KG-aware models. Constructor keywords are
    hyper-parameters; unknown ones raise ConfigError.
    """

    name: ClassVar[str]
    space: ClassVar[Space] = {}
    defaults: ClassVar[dict[str, Any]] = {}
    uses_kg: ClassVar[bool] = False
    iterative: ClassVar[bool] = False

    def __init__(self, seed: int = 0, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ConfigError(f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(self.defaults)) or '(none)'}")
        self.seed = seed
        self.params = {**self.defaults, **params}

    def fit(self, data: RankData, epochs: int | None = None) -> Ranker:
        """Train on ``data``; iterative rankers run ``epochs`` epochs (their default
        ``params["epochs"]``) without early stopping."""
        if not self.iterative:
            raise NotImplementedError  # non-iterative rankers override fit
        self.start(data)
        for _ in range(epochs or int(self.params.get("epochs", 20))):
            self.run_epoch()
        return self

    # ---------------------------------------------------------- iterative rankers
    def start(self, data: RankData) -> None:
        """Initialise parameters for ``data`` (iterative rankers)."""
        raise NotImplementedError

    def run_epoch(self) -> float:
        """One epoch of training; returns its mean loss (iterative rankers)."""
        raise NotImplementedError

    def state(self) -> Any:
        """A copy of the trained parameters (to keep the best epoch)."""
        raise NotImplementedError

    def restore(self, state: Any) -> None:
        """Load parameters saved by :meth:`state`."""
        raise NotImplementedError

    # ---------------------------------------------------------- scoring
    @abstractmethod
    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Float32 scores ``[len(users), len(items)]`` (higher: recommend first)."""

    def ranking_chunk(self, n_items: int) -> int:
        """Users per :meth:`score_matrix` call when ranking all ``n_items`` items."""
        return RANKING_CHUNK

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``(users[i], items[i])``; the generic version goes through rows."""
        out = torch.empty(len(users))
        uniq, inverse = torch.unique(users, return_inverse=True)
        full = self.score_matrix(uniq, torch.arange(self.n_items))
        out[:] = full[inverse, items]
        return out

    @property
    def n_items(self) -> int:
        """Items of the data the ranker was fitted on (``fit``/``start`` set ``_n_items``)."""
        return self._n_items


def fit_early_stopping(ranker: Ranker, data: RankData, validate: Callable[[Ranker], float],
                       max_epochs: int, patience: int,
                       on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """The one early-stopping rule of every iterative ranker.

    Train up to ``max_epochs`` epochs; after each, ``validate`` scores the
    model (higher is better); stop after ``patience`` epochs without a better
    score and restore the best epoch. ``on_epoch(epoch, score)`` may raise to
    stop (Optuna pruning). Returns the per-epoch validation scores.
    """
    ranker.start(data)
    best, best_state, stale, scores = -np.inf, None, 0, []
    for epoch in range(1, max_epochs + 1):
        ranker.run_epoch()
        score = float(validate(ranker))
        scores.append(score)
        if on_epoch is not None:
            on_epoch(epoch, score)
        if score > best:
            best, best_state, stale = score, ranker.state(), 0
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        ranker.restore(best_state)
    return scores


__all__ = ["RankData", "Ranker", "fit_early_stopping", "kg_item_features"]
