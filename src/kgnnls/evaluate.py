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
from scipy.stats import rankdata

from kgnnls.seeding import rng as make_rng


class Scorer(Protocol):
    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------------------ CTR
def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    labels = np.asarray(labels)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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
def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((items, users))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items[order]


def _csr_rows(indptr: np.ndarray, values: np.ndarray, rows: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(row position, value) of every entry of the CSR rows ``rows``."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    owner = np.repeat(np.arange(len(rows)), lengths)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return torch.from_numpy(owner), torch.from_numpy(values[starts[owner] + offset])


def _rank_metrics(scores: torch.Tensor, relevant: torch.Tensor, n_relevant: torch.Tensor,
                  ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-user Recall/Precision/NDCG/HitRate@k from masked scores ``[U, I]``."""
    kmax = min(max(ks), scores.shape[1])
    top = torch.topk(scores, kmax, dim=1, sorted=True).indices
    hits = relevant.gather(1, top).float()  # [U, kmax]
    discounts = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float32))
    cum_hits = hits.cumsum(1)
    cum_dcg = (hits * discounts).cumsum(1)
    ideal = discounts.cumsum(0)
    out = {}
    for k in ks:
        kk = min(k, kmax)
        h = cum_hits[:, kk - 1]
        idcg = ideal[torch.clamp(n_relevant, max=kk) - 1]
        out[f"recall@{k}"] = h / n_relevant
        out[f"precision@{k}"] = h / k
        out[f"ndcg@{k}"] = cum_dcg[:, kk - 1] / idcg
        out[f"hit@{k}"] = (h > 0).float()
    return out


def topk_metrics(scorer: Scorer, train: np.ndarray, test: np.ndarray, n_users: int, n_items: int,
                 ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100), chunk: int = 256,
                 users: np.ndarray | None = None, mask: str = "train-positives"
                 ) -> dict[str, float]:
    """Mean top-K metrics over users with test positives, ranking all items.

    ``mask`` removes items from a user's candidates: ``train-positives``
    (full-ranking protocol) or ``train-all`` (the authors' protocol, which
    drops every training row, positive or negative).
    """
    test_pos = test[test[:, 2] == 1]
    keep = train[:, 2] == 1 if mask == "train-positives" else np.ones(len(train), bool)
    m_ptr, m_items = _csr(train[keep, 0], train[keep, 1], n_users)
    t_ptr, t_items = _csr(test_pos[:, 0], test_pos[:, 1], n_users)
    if users is None:
        users = np.flatnonzero(np.diff(t_ptr) > 0)
    all_items = torch.arange(n_items)
    sums: dict[str, float] = {}
    for start in range(0, len(users), chunk):
        batch = users[start:start + chunk]
        scores = scorer.score_matrix(torch.from_numpy(batch), all_items).float()
        rows_m, cols_m = _csr_rows(m_ptr, m_items, batch)
        scores[rows_m, cols_m] = -torch.inf
        relevant = torch.zeros(len(batch), n_items, dtype=torch.bool)
        rows_t, cols_t = _csr_rows(t_ptr, t_items, batch)
        relevant[rows_t, cols_t] = True
        n_rel = relevant.sum(1)
        for name, values in _rank_metrics(scores, relevant, n_rel, ks).items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
    n = max(len(users), 1)
    return {name: total / n for name, total in sums.items()} | {"users": len(users)}


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
                    probabilistic: bool = True, batch_size: int = 8192, chunk: int = 256,
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
