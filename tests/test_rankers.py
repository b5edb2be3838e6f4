"""The top-K rankers: exact checks against independent dense/loop versions
(EASE, item kNN, popularity), planted-signal learning and determinism for the
trained ones (ALS, BPR, LightGCN, KG LightGCN), early stopping, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from kgnnls.errors import ConfigError
from kgnnls.rankers import RANKERS, RankData, fit_early_stopping, ranker_class
from kgnnls.rankers.base import kg_item_features
from kgnnls.rankers.ease import EASE, KGEASE
from kgnnls.rankers.knn import ItemKNN, KGItemKNN, cosine_knn
from kgnnls.rankers.lightgcn import ColdKGLightGCN, KGLightGCN, propagate
from kgnnls.rankers.popularity import Popularity


def _data(X: np.ndarray, kg: np.ndarray | None = None, n_entities: int | None = None) -> RankData:
    kg = np.zeros((0, 3), np.int64) if kg is None else kg
    return RankData(sp.csr_matrix(X.astype(np.float32)), kg,
                    n_entities or X.shape[1], int(kg[:, 1].max() + 1) if len(kg) else 0)


def _all_scores(ranker, n_users: int, n_items: int) -> np.ndarray:
    return ranker.score_matrix(torch.arange(n_users), torch.arange(n_items)).numpy()


@pytest.fixture(scope="module")
def tiny() -> np.ndarray:
    return (np.random.default_rng(3).random((30, 12)) < 0.35).astype(np.float64)


# ---------------------------------------------------------------- exact models
def test_ease_equals_dense_solve(tiny):
    lam = 7.0
    P = np.linalg.inv(tiny.T @ tiny + lam * np.eye(tiny.shape[1]))
    B = np.zeros_like(P)
    for i in range(P.shape[0]):
        for j in range(P.shape[1]):
            B[i, j] = 0.0 if i == j else -P[i, j] / P[j, j]
    scores = _all_scores(EASE(lam=lam).fit(_data(tiny)), *tiny.shape)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, tiny @ B, atol=1e-5, rtol=0)


def test_kg_item_features_link_items_to_their_kg_neighbours():
    # items 0..2, entities 3..5; item 2 is a head and a tail; a self-loop is dropped
    kg = np.array([(0, 0, 3), (4, 1, 1), (2, 0, 3), (1, 1, 2), (2, 2, 2), (0, 0, 3)])
    F = kg_item_features(_data(np.ones((2, 3)), kg, n_entities=6)).toarray()
    expected = np.zeros((3, 6))
    for item, entity in [(0, 3), (1, 4), (2, 3), (1, 2), (2, 1)]:
        expected[item, entity] = 1.0
    np.testing.assert_array_equal(F, expected)


def test_kg_ease_equals_ease_over_stacked_features(tiny):
    # collective EASE is EASE on [X; alpha F^T]: check against the dense solve of that
    n_items = tiny.shape[1]
    kg = np.array([(i, 0, n_items + i % 3) for i in range(n_items)] + [(0, 1, 5), (7, 1, 2)])
    data = _data(tiny, kg, n_entities=n_items + 3)
    lam, alpha = 5.0, 0.7
    stacked = np.vstack([tiny, alpha * kg_item_features(data).toarray().T])
    P = np.linalg.inv(stacked.T @ stacked + lam * np.eye(n_items))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    scores = _all_scores(KGEASE(lam=lam, alpha=alpha).fit(data), *tiny.shape)
    np.testing.assert_allclose(scores, tiny @ B, atol=1e-5, rtol=0)
    # without triples it is EASE
    np.testing.assert_allclose(_all_scores(KGEASE(lam=lam, alpha=alpha).fit(_data(tiny)),
                                           *tiny.shape),
                               _all_scores(EASE(lam=lam).fit(_data(tiny)), *tiny.shape),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize(("model", "plain"), [(KGEASE(lam=10.0, alpha=1.0), EASE(lam=10.0)),
                                           (KGItemKNN(k=20, alpha=1.0), ItemKNN(k=20))])
def test_kg_closed_forms_score_cold_items_through_shared_entities(model, plain):
    data = _planted_with_cold_items()
    scores = _all_scores(model.fit(data), *data.user_items.shape)
    assert _cold_group_wins(scores) == [1.0, 1.0]
    assert not _all_scores(plain.fit(data), *data.user_items.shape)[:, 40:].any()  # CF cannot


def test_kg_itemknn_is_itemknn_over_stacked_features(tiny):
    n_items = tiny.shape[1]
    kg = np.array([(i, 0, n_items + i % 3) for i in range(n_items)])
    data = _data(tiny, kg, n_entities=n_items + 3)
    stacked = np.vstack([tiny, 0.5 * kg_item_features(data).toarray().T])
    W = KGItemKNN(k=4, shrink=1.0, alpha=0.5).fit(data).W
    np.testing.assert_allclose(W.toarray(), cosine_knn(sp.csr_matrix(stacked), 4, 1.0).toarray(),
                               atol=1e-6, rtol=0)
    assert not np.allclose(W.toarray(), cosine_knn(sp.csr_matrix(tiny), 4, 1.0).toarray())


@pytest.mark.parametrize(("k", "shrink"), [(3, 0.0), (5, 2.0), (50, 0.5)])
def test_itemknn_equals_loop(tiny, k, shrink):
    n_users, n_items = tiny.shape
    W = np.zeros((n_items, n_items))
    for j in range(n_items):  # neighbours of candidate j: top-k positive similarities
        sims = []
        for i in range(n_items):
            if i == j:
                continue
            a, b = tiny[:, i], tiny[:, j]
            s = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + shrink + 1e-12)
            if s > 0:
                sims.append((-s, i, s))
        for _, i, s in sorted(sims)[:k]:  # ties: the lower index first
            W[i, j] = s
    expected = np.zeros((n_users, n_items))
    for u in range(n_users):
        for j in range(n_items):
            expected[u, j] = sum(tiny[u, i] * W[i, j] for i in range(n_items))
    scores = _all_scores(ItemKNN(k=k, shrink=shrink).fit(_data(tiny)), n_users, n_items)
    np.testing.assert_allclose(scores, expected, atol=1e-6, rtol=0)


def test_itemknn_ties_at_kth_neighbour_are_deterministic():
    # items 1, 2, 3 are equally similar to item 0: with k = 2 items 1 and 2 are kept
    X = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], np.float64)
    knn = ItemKNN(k=2).fit(_data(X))
    assert knn.W[:, 0].toarray().ravel().nonzero()[0].tolist() == [1, 2]


def test_popularity_is_bincount(tiny):
    scores = _all_scores(Popularity().fit(_data(tiny)), *tiny.shape)
    counts = np.bincount(np.nonzero(tiny)[1], minlength=tiny.shape[1])
    assert (scores == counts[None, :]).all()


# ---------------------------------------------------------------- trained models
def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two user groups, each liking (most of) its own block of items; one liked
    item per user held out. Returns (train matrix, held-out item per user)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 40
    group = np.arange(n_users) % 2
    X = np.zeros((n_users, n_items))
    held = np.zeros(n_users, np.int64)
    for u in range(n_users):
        block = np.arange(20) + 20 * group[u]
        liked = rng.choice(block, 12, replace=False)
        X[u, liked] = 1
        held[u] = liked[0]
        X[u, held[u]] = 0
    return X, held


def _recall_at(scores: np.ndarray, X: np.ndarray, held: np.ndarray, k: int) -> float:
    masked = np.where(X > 0, -np.inf, scores)
    top = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    return float(np.mean([held[u] in top[u] for u in range(len(held))]))


TRAINED = {"als": {"factors": 8}, "bpr": {"factors": 8, "learning_rate": 0.05},
           "lightgcn": {"dim": 16, "lr": 0.01}, "lightgcn-kg": {"dim": 16, "lr": 0.01}}
EPOCHS = {"als": 5, "bpr": 60, "lightgcn": 30, "lightgcn-kg": 30}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trained_rankers_learn_planted_blocks_and_are_deterministic(name):
    X, held = _planted()
    data = _data(X)
    k = 5
    # chance: k of the 40 - 11 = 29 unmasked candidates
    chance = k / 29
    runs = [ranker_class(name)(seed=4, **TRAINED[name]).fit(data, epochs=EPOCHS[name])
            for _ in range(2)]
    scores = [_all_scores(r, *X.shape) for r in runs]
    assert scores[0].dtype == np.float32
    assert np.array_equal(scores[0], scores[1])  # same seed: identical numbers
    assert _recall_at(scores[0], X, held, k) > 2 * chance
    other = ranker_class(name)(seed=5, **TRAINED[name]).fit(data, epochs=EPOCHS[name])
    assert not np.array_equal(_all_scores(other, *X.shape), scores[0])


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trained_rankers_do_not_depend_on_the_thread_count(name):
    X, _ = _planted()
    data = _data(np.tile(X, (4, 2)))  # batches with repeated rows, tensors past one grain
    before = torch.get_num_threads()
    scores = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ranker = ranker_class(name)(seed=2, **TRAINED[name]).fit(data, epochs=3)
            scores.append(_all_scores(ranker, *data.user_items.shape))
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(scores[0], scores[1])


def test_bpr_draws_fresh_samples_every_epoch():
    # implicit reseeds its samplers from ``random_state`` at every fit call
    ranker = ranker_class("bpr")(seed=0, factors=4)
    ranker.start(_data(_planted()[0]))
    seeds = set()
    for _ in range(3):
        ranker.run_epoch()
        seeds.add(ranker.model.random_state)
    assert len(seeds) == 3


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_early_stopping_restores_best_epoch(name):
    X, _ = _planted()
    data = _data(X)
    fitted = ranker_class(name)(seed=1, **TRAINED[name])
    snapshots: list[np.ndarray] = []
    planned = [0.1, 0.3, 0.9, 0.2, 0.4, 0.5, 0.6]  # best at epoch 3, then 3 stale epochs

    def validate(ranker) -> float:
        snapshots.append(_all_scores(ranker, *X.shape))
        return planned[len(snapshots) - 1]

    scores = fit_early_stopping(fitted, data, validate, max_epochs=7, patience=3)
    assert scores == planned[:6]
    assert np.array_equal(_all_scores(fitted, *X.shape), snapshots[2])
    assert not np.array_equal(snapshots[2], snapshots[5])


def test_warm_negatives_come_from_items_with_a_training_positive():
    X, _ = _planted()
    n_users = X.shape[0]
    X = np.hstack([X, np.zeros((n_users, 8))])  # items 40..47: no training positive
    for mode, cold_drawn in (("warm", False), ("all", True)):
        ranker = KGLightGCN(seed=0, dim=8, negatives=mode)
        ranker.start(_data(X))
        users = np.repeat(np.arange(n_users), 50)
        neg = ranker._negatives(users)
        assert not X[users, neg].any()  # never a training positive of the user
        assert (neg >= 40).any() == cold_drawn, mode


def _planted_with_cold_items(extra: tuple = ()) -> RankData:
    """The planted blocks plus eight cold items (no training positive) and a KG.

    Entity 50 is tied to group 0's block (items 0..19), entity 51 to group 1's
    (20..39); cold items 40-42 hang off 50, 43-45 off 51, 46-47 off entity 52,
    which reaches no item. ``extra`` triples may use entity 53.
    """
    X, _ = _planted()
    X = np.hstack([X, np.zeros((X.shape[0], 8))])
    triples = ([(i, 0, 50 + i // 20) for i in range(40)] + [(i, 1, 50) for i in (40, 41, 42)]
               + [(i, 1, 51) for i in (43, 44, 45)] + [(46, 1, 52), (47, 1, 52), *extra])
    return _data(X, np.array(triples, np.int64), n_entities=54 if extra else 53)


def _cold_group_wins(scores: np.ndarray) -> list[float]:
    """Per group, the share of its users who score every cold item of their group's
    entity above every other cold item."""
    own = {0: [40, 41, 42], 1: [43, 44, 45]}
    wins = []
    for g in (0, 1):
        users = np.arange(g, scores.shape[0], 2)
        others = [i for i in range(40, 48) if i not in own[g]]
        wins.append(float((scores[users][:, own[g]].min(1)
                           > scores[users][:, others].max(1)).mean()))
    return wins


@pytest.mark.parametrize("negatives", ["all", "warm"])
def test_kg_lightgcn_reaches_cold_items_through_the_kg(negatives):
    data = _planted_with_cold_items()
    ranker = KGLightGCN(seed=0, **TRAINED["lightgcn-kg"], negatives=negatives).fit(data, epochs=30)
    assert min(_cold_group_wins(_all_scores(ranker, *data.user_items.shape))) > 0.9


def test_cold_kg_lightgcn_keeps_warm_items_and_places_cold_ones_by_shared_entities():
    # item 40 also shares entity 53 with item 3
    data = _planted_with_cold_items(extra=((40, 2, 53), (3, 2, 53)))
    n_users = data.n_users
    params = {**TRAINED["lightgcn"], "negatives": "warm"}
    cold = ColdKGLightGCN(seed=0, cold_scale=0.5, **params).fit(data, epochs=30)
    scores = _all_scores(cold, *data.user_items.shape)
    # the KG does not touch users or warm items: LightGCN's propagation of the same egos
    lightgcn = propagate(cold.adj, cold.ego.detach(), cold.params["n_layers"]).numpy()
    np.testing.assert_array_equal(cold._final[:n_users + 40].numpy(), lightgcn[:n_users + 40])
    items = cold._final[n_users:].numpy()
    group0 = items[0:20].mean(0)  # each shares entity 50 once with item 41
    np.testing.assert_allclose(items[41], 0.5 * group0, rtol=1e-5, atol=1e-6)
    # item 40 shares entity 50 with items 0..19, and 50 and 53 with item 3: weights 1, 2
    expected = 0.5 * (items[0:20].sum(0) + items[3]) / 21
    np.testing.assert_allclose(items[40], expected, rtol=1e-5, atol=1e-6)
    assert not items[46:48].any()  # entity 52 reaches no warm item
    assert min(_cold_group_wins(scores)) > 0.9


# ---------------------------------------------------------------- registry
def test_unknown_parameter_and_name_raise_config_error():
    with pytest.raises(ConfigError, match="unknown parameter"):
        EASE(lambda_=3.0)
    with pytest.raises(ConfigError, match="itemknn"):
        ranker_class("item-knn")


@pytest.mark.parametrize("name", sorted(RANKERS))
def test_defaults_cover_space_and_name_matches(name):
    cls = ranker_class(name)
    assert cls.name == name
    assert set(cls.space) <= set(cls.defaults)
    for key, param in cls.space.items():
        value = cls.defaults[key]
        if hasattr(param, "options"):
            assert value in param.options
        else:
            assert param.low <= value <= param.high, key
    assert cls.uses_kg == name.endswith("-kg")  # the names say which models read a KG
