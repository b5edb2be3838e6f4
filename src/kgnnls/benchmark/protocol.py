"""The leaderboard's protocol: one seed's split, validation and test ranking.

For every model alike:

* the seeded 6:2:2 split of the labelled rows (:func:`kgnnls.data.sampling.split_ratings`);
  top-K models see its *training positives* only;
* validation: full ranking of every item for each user with validation
  positives (or a seeded sample of them), training positives masked;
* test: full ranking for each user with test positives, training *and*
  validation positives masked (RecBole's convention), ties broken by item
  index (:func:`kgnnls.evaluate.top_sorted`);
* slices of the test: ``cold_items`` (test positives on items with no training
  positive, the relevant set restricted to them) and ``cold_users`` (users with
  at most :data:`COLD_USER_MAX` training positives).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import Split, split_ratings
from kgnnls.errors import ConfigError
from kgnnls.evaluate import Scorer, list_metrics, top_items
from kgnnls.seeding import rng

#: users with at most this many training positives form the ``cold_users`` slice
COLD_USER_MAX = 3
#: cut-offs every test evaluation reports (the tuning metric's K is added)
REPORT_KS = (10, 20, 50)
_METRIC = re.compile(r"^(recall|precision|ndcg|hit)@([1-9][0-9]*)$")


def parse_metric(text: str) -> tuple[str, int]:
    """``"ndcg@20"`` -> ``("ndcg", 20)``; ConfigError for anything else."""
    m = _METRIC.match(text.strip().lower())
    if m is None:
        raise ConfigError(f"unknown metric {text!r}: use recall@K, precision@K, ndcg@K or hit@K "
                          "(K >= 1), e.g. ndcg@20")
    return m.group(1), int(m.group(2))


@dataclass(frozen=True, eq=False)
class Fold:
    """One seed's dataset and split, with the ranking views the protocol needs."""

    seed: int
    dataset: Dataset
    split: Split

    @classmethod
    def of(cls, dataset: Dataset, seed: int) -> Fold:
        return cls(seed, dataset, split_ratings(dataset.ratings, seed))

    @staticmethod
    def _positives(rows: np.ndarray) -> np.ndarray:
        return rows[rows[:, 2] == 1]

    @cached_property
    def train_pos(self) -> np.ndarray:
        return self._positives(self.split.train)

    @cached_property
    def val_pos(self) -> np.ndarray:
        return self._positives(self.split.val)

    @cached_property
    def test_pos(self) -> np.ndarray:
        return self._positives(self.split.test)

    @cached_property
    def cold_items(self) -> np.ndarray:
        """Boolean ``[n_items]``: items without a training positive."""
        return np.bincount(self.train_pos[:, 1], minlength=self.dataset.n_items) == 0

    @cached_property
    def cold_users(self) -> np.ndarray:
        """Boolean ``[n_users]``: users with at most COLD_USER_MAX training positives."""
        return np.bincount(self.train_pos[:, 0], minlength=self.dataset.n_users) <= COLD_USER_MAX

    def validation_users(self, n: int) -> np.ndarray:
        """Users with validation positives: all (``n = 0``) or a seeded sample of ``n``."""
        users = np.unique(self.val_pos[:, 0])
        if 0 < n < len(users):
            users = np.sort(rng(self.seed, "benchmark-val-users").choice(users, n, replace=False))
        return users

    def validation_score(self, scorer: Scorer, metric: str, users: np.ndarray) -> float:
        """Mean ``metric`` on validation, ranking all items, training positives masked.

        Users are ranked ``scorer.ranking_chunk`` at a time: a KGNN-LS of two layers
        or more keeps per-user hidden vectors of every entity, and its own chunk keeps
        them near the memory budget (docs/performance.md)."""
        name, k = parse_metric(metric)
        n_items = self.dataset.n_items
        top = top_items(scorer, users, n_items, self.train_pos, k, scorer.ranking_chunk(n_items))
        values = list_metrics(top, users, self.val_pos, self.dataset.n_users, (k,))
        return float(values[f"{name}@{k}"].mean()) if len(values["users"]) else 0.0

    def test_lists(self, scorer: Scorer, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(users with test positives, their top-``k`` lists), train + validation masked."""
        users = np.unique(self.test_pos[:, 0])
        exclude = np.concatenate([self.train_pos, self.val_pos])
        n_items = self.dataset.n_items
        return users, top_items(scorer, users, n_items, exclude, k, scorer.ranking_chunk(n_items))

    def test_results(self, scorer: Scorer, metric: str) -> dict[str, dict]:
        """Overall and slice metrics on test: means and the per-user values of ``metric``.

        Returns ``{"overall" | "cold_items" | "cold_users": {"mean": {name: value},
        "users": [...], "per_user": {metric: [...]}}}``.
        """
        _, k = parse_metric(metric)
        ks = tuple(sorted({*REPORT_KS, k}))
        users, top = self.test_lists(scorer, max(ks))
        n_users = self.dataset.n_users
        relevant = {"overall": self.test_pos,
                    "cold_items": self.test_pos[self.cold_items[self.test_pos[:, 1]]],
                    "cold_users": self.test_pos[self.cold_users[self.test_pos[:, 0]]]}
        out = {}
        for part, rows in relevant.items():
            values = list_metrics(top, users, rows, n_users, ks)
            scored = values.pop("users")
            out[part] = {"mean": {m: float(v.mean()) if len(v) else float("nan")
                                  for m, v in values.items()},
                         "users": scored.tolist(),
                         "per_user": {metric: values[metric].tolist()}}
        return out


__all__ = ["COLD_USER_MAX", "REPORT_KS", "Fold", "parse_metric"]
