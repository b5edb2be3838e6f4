"""Popularity: every user gets the items with the most training positives.

    score(u, i) = |{v : x_vi = 1}|

The non-personalised reference every top-K table needs (e.g. Cremonesi,
Koren, Turrin, RecSys 2010, "Performance of recommender algorithms on top-N
recommendation tasks"). Same numbers as
:class:`kgnnls.evaluate.PopularityScorer`, as a :class:`Ranker`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from kgnnls.rankers.base import RankData, Ranker
from kgnnls.space import Space


class Popularity(Ranker):
    """Item popularity among training positives; no hyper-parameters."""

    name = "popularity"
    space: ClassVar[Space] = {}
    defaults: ClassVar[dict] = {}

    def fit(self, data: RankData, epochs: int | None = None) -> Popularity:
        counts = np.bincount(data.user_items.indices, minlength=data.n_items)
        self.counts = torch.from_numpy(counts.astype(np.float32))
        self._n_items = data.n_items
        return self

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.counts[items].expand(len(users), -1).clone()


__all__ = ["Popularity"]
