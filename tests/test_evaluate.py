"""Metrics: cross-checked with scikit-learn and with slow per-user references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score as sk_f1
from sklearn.metrics import roc_auc_score

from kgnnls.evaluate import (
    PopularityScorer,
    auc_score,
    ctr_metrics,
    f1_score,
    paper_topk_users,
    topk_metrics,
)


class TableScorer:
    """A scorer backed by a fixed [users, items] score table."""

    def __init__(self, table: np.ndarray):
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def score_pairs(self, users, items):
        return self.table[users, items]

    def score_matrix(self, users, items):
        return self.table[users][:, items]


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    scores = np.round(rng.normal(labels * 0.5, 1.0), 1)  # many ties
    assert auc_score(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_ctr_metrics_are_global_over_all_rows():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(30, 40))
    rows = np.column_stack([rng.integers(0, 30, 999), rng.integers(0, 40, 999),
                            rng.integers(0, 2, 999)])
    got = ctr_metrics(TableScorer(table), rows, batch_size=128)  # 999 is not a multiple of 128
    scores = table[rows[:, 0], rows[:, 1]]
    assert got["auc"] == pytest.approx(roc_auc_score(rows[:, 2], scores), abs=1e-6)
    assert got["f1"] == pytest.approx(sk_f1(rows[:, 2], scores >= 0), abs=1e-12)
    assert f1_score(np.array([0, 0]), np.array([0, 0])) == 0.0


def slow_topk(table, train, test, k, mask_all=False):
    """Per-user loops: rank all items, drop masked ones, score the top k."""
    out = {"recall": [], "precision": [], "ndcg": [], "hit": []}
    users = sorted({int(u) for u, _, y in test if y == 1})
    for u in users:
        masked = {int(i) for uu, i, y in train if uu == u and (mask_all or y == 1)}
        relevant = {int(i) for uu, i, y in test if uu == u and y == 1}
        ranked = [i for i in np.argsort(-table[u], kind="stable") if i not in masked][:k]
        hits = [1.0 if i in relevant else 0.0 for i in ranked]
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
        out["recall"].append(sum(hits) / len(relevant))
        out["precision"].append(sum(hits) / k)
        out["ndcg"].append(dcg / idcg)
        out["hit"].append(float(sum(hits) > 0))
    return {m: float(np.mean(v)) for m, v in out.items()}


@pytest.mark.parametrize("mask", ["train-positives", "train-all"])
def test_topk_matches_slow_reference(mask):
    rng = np.random.default_rng(2)
    n_users, n_items = 25, 60
    table = rng.permutation(n_users * n_items).reshape(n_users, n_items).astype(float)  # no ties
    train = np.column_stack([rng.integers(0, n_users, 400), rng.integers(0, n_items, 400),
                             rng.integers(0, 2, 400)])
    test = np.column_stack([rng.integers(0, n_users, 150), rng.integers(0, n_items, 150),
                            rng.integers(0, 2, 150)])
    train = train[np.unique(train[:, 0] * n_items + train[:, 1], return_index=True)[1]]
    test_keys = test[:, 0] * n_items + test[:, 1]
    test = test[~np.isin(test_keys, train[:, 0] * n_items + train[:, 1])]
    got = topk_metrics(TableScorer(table), train, test, n_users, n_items, ks=(1, 5, 20),
                       chunk=7, mask=mask)
    for k in (1, 5, 20):
        want = slow_topk(table, train, test, k, mask_all=mask == "train-all")
        for m in ("recall", "precision", "ndcg", "hit"):
            assert got[f"{m}@{k}"] == pytest.approx(want[m], abs=1e-6), (m, k)


def test_paper_protocol_samples_100_eligible_users(lastfm):
    from kgnnls.data import split_ratings

    split = split_ratings(lastfm.ratings, 0)
    users = paper_topk_users(split.train, split.test, seed=0)
    assert len(users) == 100 and len(set(users)) == 100
    assert np.isin(users, split.train[:, 0]).all()
    assert np.isin(users, split.test[split.test[:, 2] == 1, 0]).all()
    np.testing.assert_array_equal(users, paper_topk_users(split.train, split.test, seed=0))


def test_popularity_reference_scores_about_080_auc_on_lastfm(lastfm):
    from kgnnls.data import split_ratings

    split = split_ratings(lastfm.ratings, 0)
    pop = PopularityScorer(split.train, lastfm.n_items)
    auc = ctr_metrics(pop, split.test, probabilistic=False)["auc"]
    assert 0.78 < auc < 0.82  # sampled negatives are mostly unpopular items


def test_top_sorted_equals_a_stable_sort_with_ties():
    from kgnnls.evaluate import top_sorted

    rng = np.random.default_rng(5)
    scores = torch.from_numpy(rng.integers(0, 6, size=(40, 30)).astype(np.float32))  # many ties
    scores[3, :] = 1.0  # a row that is one tie
    scores[4, 10:] = -torch.inf  # fewer finite items than k
    for k in (1, 5, 17, 30):
        want = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(top_sorted(scores, k), want), k


def test_tied_metrics_do_not_depend_on_the_k_list():
    rng = np.random.default_rng(8)
    n_users, n_items = 30, 50
    table = rng.integers(0, 3, size=(n_users, n_items)).astype(float)  # heavy ties
    train = np.column_stack([rng.integers(0, n_users, 300), rng.integers(0, n_items, 300),
                             np.ones(300, np.int64)])
    test = np.column_stack([rng.integers(0, n_users, 200), rng.integers(0, n_items, 200),
                            np.ones(200, np.int64)])
    small = topk_metrics(TableScorer(table), train, test, n_users, n_items, ks=(5,))
    large = topk_metrics(TableScorer(table), train, test, n_users, n_items, ks=(5, 20, 50))
    for m in ("recall@5", "ndcg@5", "precision@5", "hit@5"):
        assert small[m] == large[m], m


def test_also_mask_removes_validation_positives_from_the_candidates():
    n_users, n_items = 1, 4
    table = np.array([[4.0, 3.0, 2.0, 1.0]])
    train = np.array([[0, 0, 1]])
    val = np.array([[0, 1, 1], [0, 3, 0]])
    test = np.array([[0, 2, 1]])
    plain = topk_metrics(TableScorer(table), train, test, n_users, n_items, ks=(1,))
    masked = topk_metrics(TableScorer(table), train, test, n_users, n_items, ks=(1,),
                          also_mask=val)
    assert plain["hit@1"] == 0.0 and masked["hit@1"] == 1.0


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [0, 1, 7, 5000])
def test_average_ranks_are_scipys_rankdata(n, ties):
    """The AUC's ranks (written out to keep scipy.stats off the start-up path) are
    scipy's, ties averaged, to the last bit."""
    from scipy.stats import rankdata

    from kgnnls.evaluate import average_ranks

    rng = np.random.default_rng(n)
    x = rng.integers(0, max(n // 10, 1), n).astype(float) if ties else rng.random(n)
    assert np.array_equal(average_ranks(x), rankdata(x))
