"""SVD, LibFM and LibFM + TransE: learn the planted signal, save/load, TransE trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kgnnls import KGNNLS, Config
from kgnnls.baselines.fm import LibFM
from kgnnls.baselines.transe import corrupt, train_transe

TINY = dict(dim=8, lr=0.02, batch_size=32, epochs=8, patience=8, l2_weight=1e-5)
TRANSE = dict(transe_dim=8, transe_epochs=10, transe_batch_size=64)
MODELS = [("svd", {}), ("svd", {"biased": False}), ("libfm", {}), ("libfm-transe", TRANSE)]


@pytest.fixture(scope="module")
def trained(planted):
    return {(name, tuple(extra)): KGNNLS(Config(model=name, extra=dict(extra), **TINY)).fit(planted)
            for name, extra in MODELS}


@pytest.mark.parametrize(("name", "extra"), MODELS)
def test_learns_planted_signal(trained, name, extra):
    metrics = trained[name, tuple(extra)].evaluate()
    # broken scores (constant, or random) give ~0.5; these models reach ~0.8
    assert metrics["val"]["auc"] > 0.7
    assert metrics["test"]["auc"] > 0.7
    assert metrics["test"]["auc"] > metrics["reference"]["popularity"]["test"]["auc"] + 0.1
    assert metrics["model"] == name
    if name == "libfm-transe":  # the frozen TransE rows of the 80 items, unit-norm
        features = trained[name, tuple(extra)].network.item_features
        assert features.shape == (80, TRANSE["transe_dim"])
        torch.testing.assert_close(features.norm(dim=1), torch.ones(80))


@pytest.mark.parametrize(("name", "extra"), MODELS)
def test_save_load_roundtrip(tmp_path, trained, name, extra):
    model = trained[name, tuple(extra)]
    loaded = KGNNLS.load(model.save(tmp_path / "model.pt"))
    users, items = ["u1", "u2", "u3", "u4"], ["i5", "i6", "i7", "i0"]
    np.testing.assert_allclose(loaded.score(users, items), model.score(users, items))
    assert loaded.recommend("u1", k=5) == model.recommend("u1", k=5)
    net = loaded.network
    u, v = torch.arange(5), torch.arange(7)
    matrix = net.score_matrix(u, v)
    pairs = net.score_pairs(u.repeat_interleave(7), v.repeat(5)).reshape(5, 7)
    torch.testing.assert_close(matrix, pairs, rtol=1e-5, atol=1e-5)


def test_fm_matches_explicit_pairwise_sum():
    """The factorised logit equals sum_{j<k} <v_j, v_k> x_j x_k over the full feature vector."""
    g = torch.Generator().manual_seed(0)
    n_users, n_items, f = 3, 4, 5
    features = torch.randn(n_items, f, generator=g)
    net = LibFM(Config(dim=6), n_users, n_items, item_features=features, generator=g)
    with torch.no_grad():
        for p in (net.global_bias, net.user_bias, net.item_bias, net.feature_weights):
            p.normal_(generator=g)
    users, items = torch.tensor([0, 1, 2, 2]), torch.tensor([3, 0, 1, 2])
    x = torch.zeros(len(users), n_users + n_items + f)
    x[torch.arange(len(users)), users] = 1
    x[torch.arange(len(users)), n_users + items] = 1
    x[:, n_users + n_items:] = features[items]
    w = torch.cat([net.user_bias, net.item_bias, net.feature_weights])
    v = torch.cat([net.user_factors, net.item_factors, net.feature_factors])
    gram = v @ v.T
    pairwise = torch.einsum("bj,jk,bk->b", x, torch.triu(gram, diagonal=1), x)
    expected = net.global_bias + x @ w + pairwise
    torch.testing.assert_close(net.score_pairs(users, items), expected.detach())


def test_transe_margin_loss_drops(planted):
    args = (planted.kg, planted.n_entities, planted.n_relations)
    model, losses = train_transe(*args, seed=0, dim=16, epochs=15, lr=0.03, batch_size=64)
    assert len(losses) == 15
    assert losses[-1] < 0.5 * losses[0]
    kg = torch.from_numpy(planted.kg)
    neg = torch.from_numpy(corrupt(planted.kg, planted.n_entities, np.random.default_rng(1)))
    with torch.no_grad():
        assert (model.energy(kg) < model.energy(neg)).float().mean() > 0.8
    again = train_transe(*args, seed=0, dim=16, epochs=2, lr=0.03, batch_size=64)
    assert again[1] == losses[:2]  # seeded


def test_corrupt_changes_head_or_tail_only():
    triples = np.column_stack([np.arange(1000), np.full(1000, 7), np.arange(1000, 2000)])
    neg = corrupt(triples, 5000, np.random.default_rng(0))
    assert (neg[:, 1] == 7).all()
    head, tail = neg[:, 0] != triples[:, 0], neg[:, 2] != triples[:, 2]
    assert not (head & tail).any() and (head | tail).mean() > 0.99
    assert 0.4 < head.mean() < 0.6


def test_models_without_entity_vectors_refuse_new_items_clearly(trained, planted):
    from kgnnls import DataError

    model = trained["svd", ()]
    user, item = model.user_ids[0], model.item_ids[0]
    entity = model.entity_ids[planted.n_items]  # a KG entity that is not an item
    with pytest.raises(DataError, match="cannot score new items"):
        model.recommend(user, k=2, candidates=[item], new_items={"fresh": entity})
