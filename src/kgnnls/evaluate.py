"""Honest evaluation: global CTR metrics and top-K over full rankings.

* CTR: AUC and F1 over *every* labelled pair of a split at once (the
  authors' code averages per-batch AUCs and drops the last batch; we don't).
* Top-K, full ranking: every user with test positives, every item, the
  user's training positives masked; Recall, Precision, NDCG, HitRate.
* Top-K, ``paper`` protocol: the authors' ``topk_eval`` (100 sampled users,
  candidates = items not in the user's training rows), labelled as such.
* The item-popularity reference (number of training positives), evaluated on
  the same split with the same code, because on sampled-negative CTR data
  popularity alone scores high (about 0.80 AUC on Last.FM).

A scorer is anything with ``score_pairs(users, items)`` (logits or any
monotone score, ``[n]``) and ``score_matrix(users, items)`` (``[U, I]``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from kgnnls.arrays import concat_ranges, csr_from_pairs
from kgnnls.budget import RANKING_CHUNK
from kgnnls.seeding import rng as make_rng


class Scorer(Protocol):
    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...

    def ranking_chunk(self, n_items: int) -> int: ...


# ------------------------------------------------------------------ CTR
def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    labels = np.asarray(labels)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties given their mean rank: ``scipy.stats.rankdata``'s
    default, the same numbers. Written out because importing ``scipy.stats`` costs
    about half a second of every command's start (docs/performance.md, first run)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def f1_score(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of binary predictions (0 when nothing is predicted positive)."""
    labels, predicted = np.asarray(labels) == 1, np.asarray(predicted).astype(bool)
    tp = int((labels & predicted).sum())
    denom = int(labels.sum()) + int(predicted.sum())
    return 2 * tp / denom if denom else 0.0


def predict_pairs(scorer: Scorer, rows: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Scores of every ``(user, item)`` row, in order, no row dropped."""
    users = torch.from_numpy(np.ascontiguousarray(rows[:, 0]))
    items = torch.from_numpy(np.ascontiguousarray(rows[:, 1]))
    out = [scorer.score_pairs(users[i:i + batch_size], items[i:i + batch_size])
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def ctr_metrics(scorer: Scorer, rows: np.ndarray, batch_size: int = 8192,
                probabilistic: bool = True) -> dict[str, float]:
    """Global AUC (and F1 at probability 0.5, i.e. logit 0) over ``rows``."""
    scores = predict_pairs(scorer, rows, batch_size)
    out = {"auc": auc_score(rows[:, 2], scores)}
    if probabilistic:
        out["f1"] = f1_score(rows[:, 2], scores >= 0.0)
    return out


# ------------------------------------------------------------------ top-K
def _csr_rows(indptr: np.ndarray, values: np.ndarray, rows: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(row position, value) of every entry of the CSR rows ``rows``."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    owner = np.repeat(np.arange(len(rows)), lengths)
    return torch.from_numpy(owner), torch.from_numpy(values[concat_ranges(starts, lengths)])


def top_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``k`` highest scores, best first, ties by lower index.

    ``torch.topk`` orders tied scores arbitrarily, so a tied model's metrics
    would move with the largest K asked for. A full stable sort fixes that but
    costs 7-18x a top-k; instead take every item scoring at least the row's
    k-th value (k items plus the ties at the boundary) and order only those
    by (score descending, index ascending).
    """
    k = min(k, scores.shape[1])
    kth = torch.topk(scores, k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    rows, cols = (scores >= kth).nonzero(as_tuple=True)  # row-major: index ascending
    order = torch.sort(-scores[rows, cols], stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    counts = torch.bincount(rows, minlength=scores.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    take = starts[:, None] + torch.arange(k)
    return cols[order][take]


def top_items(scorer: Scorer, users: np.ndarray, n_items: int, exclude: np.ndarray, k: int,
              chunk: int = RANKING_CHUNK) -> np.ndarray:
    """Each user's ``k`` best items ``[len(users), k]``, never an excluded pair.

    ``exclude``: ``(user, item, ...)`` rows masked from the user's candidates
    (training positives; for test, also validation positives). Ties are broken
    by item index (:func:`top_sorted`), so the lists do not depend on ``k``.
    """
    k = min(k, n_items)
    ptr, masked = csr_from_pairs(exclude[:, 0], exclude[:, 1], int(max(users.max(initial=0) + 1,
                                                             exclude[:, 0].max(initial=0) + 1)))
    out = np.empty((len(users), k), dtype=np.int64)
    all_items = torch.arange(n_items)
    for start in range(0, len(users), chunk):
        batch = users[start:start + chunk]
        scores = scorer.score_matrix(torch.from_numpy(batch), all_items).float()
        rows, cols = _csr_rows(ptr, masked, batch)
        scores[rows, cols] = -torch.inf
        out[start:start + len(batch)] = top_sorted(scores, k).numpy()
    return out


def list_metrics(top: np.ndarray, users: np.ndarray, relevant: np.ndarray, n_users: int,
                 ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-user Recall/Precision/NDCG/HitRate@k of ranked lists ``top``.

    ``relevant``: ``(user, item)`` rows; users of ``users`` without a relevant
    item are dropped (``out["users"]`` lists the users scored). The lists must
    be at least ``max(ks)`` long or cover the catalogue.
    """
    ptr, items = csr_from_pairs(relevant[:, 0], relevant[:, 1], n_users)
    n_rel = np.diff(ptr)[users]
    keep = n_rel > 0
    users, top, n_rel = users[keep], top[keep], n_rel[keep]
    rows, cols = _csr_rows(ptr, items, users)
    # item i is relevant to row r: look the pair up among the sorted relevant keys
    n_items = int(max(top.max(initial=0), items.max(initial=0))) + 1
    keys = np.sort(rows.numpy() * n_items + cols.numpy())
    cand = np.arange(len(users))[:, None] * n_items + top
    pos = np.minimum(np.searchsorted(keys, cand), max(len(keys) - 1, 0))
    hits = (keys[pos] == cand).astype(np.float64) if len(keys) else np.zeros(top.shape)
    kmax = top.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    cum_hits, cum_dcg, ideal = hits.cumsum(1), (hits * discounts).cumsum(1), discounts.cumsum()
    out: dict[str, np.ndarray] = {"users": users}
    for k in ks:
        kk = min(k, kmax)
        h = cum_hits[:, kk - 1] if kk else np.zeros(len(users))
        out[f"recall@{k}"] = h / n_rel
        out[f"precision@{k}"] = h / k
        out[f"ndcg@{k}"] = cum_dcg[:, kk - 1] / ideal[np.minimum(n_rel, kk) - 1]
        out[f"hit@{k}"] = (h > 0).astype(np.float64)
    return out


def topk_metrics(scorer: Scorer, train: np.ndarray, test: np.ndarray, n_users: int, n_items: int,
                 ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100), chunk: int = RANKING_CHUNK,
                 users: np.ndarray | None = None, mask: str = "train-positives",
                 also_mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean top-K metrics over users with test positives, ranking all items.

    ``mask`` removes items from a user's candidates: ``train-positives``
    (full-ranking protocol) or ``train-all`` (the authors' protocol, which
    drops every training row, positive or negative). ``also_mask``: more
    ``(user, item, label)`` rows whose positives are masked too (the
    validation split, RecBole's convention for test ranking).
    """
    test_pos = test[test[:, 2] == 1]
    keep = train[:, 2] == 1 if mask == "train-positives" else np.ones(len(train), bool)
    exclude = train[keep]
    if also_mask is not None:
        exclude = np.concatenate([exclude, also_mask[also_mask[:, 2] == 1]])
    if users is None:
        users = np.unique(test_pos[:, 0])
    top = top_items(scorer, users, n_items, exclude, max(ks), chunk)
    per_user = list_metrics(top, users, test_pos, n_users, ks)
    n = max(len(per_user["users"]), 1)
    return {name: float(v.sum()) / n for name, v in per_user.items() if name != "users"
            } | {"users": len(per_user["users"])}


def paper_topk_users(train: np.ndarray, test: np.ndarray, seed: int, n: int = 100) -> np.ndarray:
    """The authors' 100 sampled users: in the training rows and with test positives."""
    candidates = np.intersect1d(np.unique(train[:, 0]), np.unique(test[test[:, 2] == 1, 0]))
    if len(candidates) > n:
        candidates = np.sort(make_rng(seed, "topk-users").choice(candidates, n, replace=False))
    return candidates


def paper_topk_metrics(scorer: Scorer, train: np.ndarray, test: np.ndarray, n_users: int,
                       n_items: int, seed: int, ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
                       ) -> dict[str, float]:
    """The authors' ``topk_eval`` protocol (Recall@K, Precision@K), vectorized."""
    users = paper_topk_users(train, test, seed)
    out = topk_metrics(scorer, train, test, n_users, n_items, ks, users=users, mask="train-all")
    return {k: v for k, v in out.items() if k.split("@")[0] in ("recall", "precision", "users")}


# ------------------------------------------------------------------ popularity
class PopularityScorer:
    """Scores an item by its number of training positives (the reference)."""

    def __init__(self, train: np.ndarray, n_items: int):
        counts = np.bincount(train[train[:, 2] == 1, 1], minlength=n_items)
        self.counts = torch.from_numpy(counts.astype(np.float32))

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.counts[items]

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.counts[items].expand(len(users), -1).clone()


def ranking_users(test: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Users with test positives: all (``n = 0``) or a seeded sample of ``n``."""
    users = np.unique(test[test[:, 2] == 1, 0])
    if 0 < n < len(users):
        users = np.sort(make_rng(seed, "topk-sample").choice(users, n, replace=False))
    return users


def evaluate_scorer(scorer: Scorer, train: np.ndarray, val: np.ndarray, test: np.ndarray,
                    n_users: int, n_items: int, seed: int, ks: tuple[int, ...],
                    probabilistic: bool = True, batch_size: int = 8192, chunk: int = RANKING_CHUNK,
                    topk_users: int = 0) -> dict[str, dict[str, float]]:
    """Validation CTR, test CTR + full-ranking top-K + paper-protocol top-K."""
    test_out = ctr_metrics(scorer, test, batch_size, probabilistic)
    full = topk_metrics(scorer, train, test, n_users, n_items, ks, chunk=chunk,
                        users=ranking_users(test, topk_users, seed))
    test_out |= {k: v for k, v in full.items() if k != "users"}
    test_out["topk_users"] = full["users"]
    paper = paper_topk_metrics(scorer, train, test, n_users, n_items, seed, ks)
    return {"val": ctr_metrics(scorer, val, batch_size, probabilistic), "test": test_out,
            "test_paper_protocol": paper}
