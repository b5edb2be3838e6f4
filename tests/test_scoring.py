"""kgnnls.scoring: which path scores, with the reference's numbers, built once per snapshot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from kgnnls import KGNNLS, Config, fused, scoring
from kgnnls.baselines.mf import SVD
from kgnnls.explain import explain_pair
from kgnnls.serve import create_app
from kgnnls.train import build

FIT = dict(dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=2, l2_weight=1e-5)


def _net(planted, **fields):
    _, net = build(planted, Config(seed=0, **{**FIT, **fields}))
    net.eval()
    with torch.no_grad():  # weights far from the init, so that paths could differ
        for p in net.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return net


@pytest.fixture
def counted(monkeypatch):
    """How often the compiled forward's layout and the ranker are built."""
    built = {"forward": 0, "ranker": 0}

    class Forward(fused.CompiledForward):
        def __init__(self, net, *args, **kwargs):
            built["forward"] += 1
            super().__init__(net, *args, **kwargs)

    class Ranker(scoring.OneLayerRanker):
        def __init__(self, net):
            built["ranker"] += 1
            super().__init__(net)

    monkeypatch.setattr(fused, "CompiledForward", Forward)
    monkeypatch.setattr(scoring, "OneLayerRanker", Ranker)
    return built


@pytest.mark.parametrize(("fields", "pairs", "matrix"), [
    (dict(n_layers=1), "compiled-forward", "ranker"),
    (dict(n_layers=2, variant="authors", aggregator="concat"), "compiled-forward", "tensor"),
    (dict(n_layers=5), "tensor", "tensor"),  # deeper than the compiled forward covers
])
def test_each_path_scores_like_the_tensor_reference(planted, fields, pairs, matrix):
    net = _net(planted, **fields)
    users = torch.arange(20)
    items = torch.from_numpy(np.random.default_rng(0).integers(0, planted.n_items, 20))
    all_items = torch.arange(planted.n_items)
    scorer = scoring.Scorer(net, threads=1)
    got = scorer.score_pairs(users, items)
    assert scorer.last_path == pairs
    torch.testing.assert_close(got, net.forward(users, items).detach(), rtol=1e-5, atol=1e-5)
    ranked = scorer.score_matrix(users, all_items)
    assert scorer.last_path == matrix
    torch.testing.assert_close(ranked, net.score_matrix_reference(users, all_items),
                               rtol=1e-5, atol=1e-5)
    reference = scoring.Scorer(net, compiled=False, ranker=False)
    assert torch.equal(reference.score_pairs(users, items), net.score_pairs(users, items))
    assert reference.last_path == "tensor"
    assert torch.equal(reference.score_matrix(users, all_items),
                       net.score_matrix_layerwise(users, all_items))
    assert reference.last_path == "tensor"


@pytest.mark.parametrize("n_layers", [2, 3])
@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_layerwise_ranking_matches_the_tree_reference(planted, variant, aggregator, n_layers):
    """The layer-wise ranking (per (user, entity) hidden vectors, neighbour sums as
    weighted bags) against Eq. (1) evaluated on every item's own receptive tree."""
    net = _net(planted, variant=variant, aggregator=aggregator, n_layers=n_layers)
    users, items = torch.arange(0, 30, 2), torch.arange(planted.n_items)
    torch.testing.assert_close(net.score_matrix_layerwise(users, items),
                               net.score_matrix_reference(users, items), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_the_ranker_gives_the_same_scores_on_any_thread_count(planted, variant):
    """The one-layer ranker's serial variant (1 thread) and its parallel one agree bit
    for bit: each user's row is computed alike."""
    import numba

    from kgnnls.fast_rank import OneLayerRanker

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here: no parallel variant to compare")
    ranker = OneLayerRanker(_net(planted, n_layers=1, variant=variant))
    users, items = torch.arange(planted.n_users), torch.arange(planted.n_items)
    serial = ranker.score_matrix(users, items, threads=1)
    assert torch.equal(serial, ranker.score_matrix(users, items, threads=2))


def test_a_live_forward_is_kept_across_refresh(planted, counted):
    """Training validation scores from the trainer's buffer: no copy, the latest steps."""
    net = _net(planted, n_layers=1)
    live = fused.CompiledForward(net)
    scorer = scoring.Scorer(net, forward=live)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    first = scorer.score_pairs(users, items)
    live.flat *= 0.5  # what a training step does to the trainer's buffer
    assert not torch.equal(scorer.refresh().score_pairs(users, items), first)
    assert counted["forward"] == 1  # the live one only: never rebuilt from the network


def test_a_scorer_builds_its_compiled_state_once(planted, counted):
    net = _net(planted, n_layers=1)
    scorer = scoring.Scorer(net)
    assert counted == {"forward": 0, "ranker": 0}  # lazily, on first use
    users, items = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    first = scorer.score_pairs(users, items)
    for _ in range(3):
        assert torch.equal(scorer.score_pairs(users[:1], items[:1]), first[:1])
        scorer.score_matrix(users, torch.arange(planted.n_items))
    assert counted == {"forward": 1, "ranker": 1}
    with torch.no_grad():
        net.entity_emb.mul_(0.5)
    assert torch.equal(scorer.score_pairs(users, items), first)  # a snapshot
    halved = net.forward(users, items).detach()
    torch.testing.assert_close(scorer.refresh().score_pairs(users, items), halved, rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(scorer.score_matrix(users, items),
                               net.score_matrix_reference(users, items), rtol=1e-5, atol=1e-5)
    assert counted == {"forward": 2, "ranker": 1}  # the ranker's graph layout is kept


def test_baselines_score_by_their_own_methods(planted):
    config = Config(model="svd", seed=0, dim=8)
    model = SVD.from_data(planted, build(planted, config)[0], config)
    scorer = scoring.Scorer(model)
    users, items = torch.tensor([0, 1]), torch.tensor([2, 3])
    assert torch.equal(scorer.score_pairs(users, items), model.score_pairs(users, items))
    assert scorer.last_path == "model"
    assert torch.equal(scorer.score_matrix(users, items), model.score_matrix(users, items))
    assert scorer.ranking_chunk(planted.n_items) == model.ranking_chunk(planted.n_items)


def test_a_network_off_the_cpu_scores_on_the_tensor_path(planted, monkeypatch):
    net = _net(planted, n_layers=1)
    scorer = scoring.Scorer(net)
    assert (scorer.pairs_path(), scorer.matrix_path()) == ("compiled-forward", "ranker")
    monkeypatch.setattr(scoring, "network_device", lambda _net: torch.device("cuda"))
    assert (scorer.pairs_path(), scorer.matrix_path()) == ("tensor", "tensor")
    assert scorer.ranking_chunk(planted.n_items) == net.ranking_chunk(planted.n_items)


def test_the_recommender_builds_one_scorer_per_network(planted, counted, tmp_path):
    model = KGNNLS(Config(seed=0, **FIT)).fit(planted)
    assert model.config.n_layers == 1
    assert counted == {"forward": 2, "ranker": 0}  # validation: one snapshot per epoch
    counted["forward"] = 0
    scorer = model.scorer
    user, item = model.user_ids[0], model.item_ids[0]
    for _ in range(3):
        model.score([user], [item])
        model.recommend(user, k=3)
    model.explain(user, item)
    assert model.scorer is scorer and counted == {"forward": 1, "ranker": 1}
    assert model.explain(user, item).probability == pytest.approx(
        float(model.score([user], [item])[0]), abs=1e-6)
    model.fit(planted)  # refit: a new network, a new snapshot
    counted["forward"] = 0
    assert model.scorer is not scorer and model.scorer.model is model.network
    model.score([user], [item])
    assert counted["forward"] == 1
    model.save(tmp_path / "model.pt")
    loaded = KGNNLS.load(tmp_path / "model.pt")
    np.testing.assert_allclose(loaded.score([user], [item]), model.score([user], [item]))
    assert loaded.scorer is not model.scorer and counted["forward"] == 2
    del loaded.scorer  # dropped: the next call builds a fresh snapshot
    loaded.score([user], [item])
    assert counted["forward"] == 3


def test_autograd_models_score_pairs_on_the_reference_path(planted):
    model = KGNNLS(Config(seed=0, **FIT), training_path="autograd").fit(planted)
    model.score([model.user_ids[0]], [model.item_ids[0]])
    assert model.scorer.last_path == "tensor"


def test_serving_copies_the_model_once(planted, counted):
    model = KGNNLS(Config(seed=0, **FIT)).fit(planted)
    counted["forward"] = 0
    client = TestClient(create_app(model))
    pairs = [{"user": model.user_ids[0], "item": model.item_ids[i]} for i in range(3)]
    for _ in range(3):
        assert client.post("/score", json={"pairs": pairs}).status_code == 200
        assert client.get("/recommend", params={"user": model.user_ids[1]}).status_code == 200
    assert counted == {"forward": 1, "ranker": 1}


def test_explain_without_a_scorer_uses_the_tensor_forward(planted):
    net = _net(planted, n_layers=2)
    names = {"user_ids": np.arange(planted.n_users).astype(str),
             "item_ids": np.arange(planted.n_items).astype(str),
             "entity_ids": np.arange(net.entity_emb.shape[0]).astype(str),
             "relation_names": np.arange(net.relation_emb.shape[0]).astype(str)}
    plain = explain_pair(net, 1, 2, names)
    scored = explain_pair(net, 1, 2, names, scorer=scoring.Scorer(net))
    assert plain.probability == pytest.approx(
        float(torch.sigmoid(net.forward(torch.tensor([1]), torch.tensor([2])).detach())[0]))
    assert scored.probability == pytest.approx(plain.probability, abs=1e-6)
    assert scored.to_dict() | {"probability": 0} == plain.to_dict() | {"probability": 0}
