"""KG-aware baselines (RippleNet, CKE, PER): learn the planted signal, save and load,
rank consistently, and (RippleNet) build ripple sets from training positives only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kgnnls import KGNNLS, Config
from kgnnls.baselines import BASELINES
from kgnnls.graph import KnowledgeGraph
from kgnnls.train import build

SETTINGS = {
    "ripplenet": dict(dim=8, lr=0.02, batch_size=64, epochs=5, patience=5, l2_weight=1e-5,
                      extra=dict(n_hop=2, n_memory=8, kge_weight=0.01)),
    "cke": dict(dim=8, lr=0.05, batch_size=64, epochs=5, patience=5, l2_weight=1e-5),
    "per": dict(dim=4, lr=0.05, batch_size=64, epochs=4, patience=4, l2_weight=1e-5),
}
_FITTED: dict[str, tuple[KGNNLS, dict]] = {}


def fitted(name: str, planted) -> tuple[KGNNLS, dict]:
    if name not in _FITTED:
        model = KGNNLS(Config(model=name, **SETTINGS[name])).fit(planted)
        _FITTED[name] = model, model.evaluate()
    return _FITTED[name]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_registered(name):
    assert name in BASELINES


@pytest.mark.parametrize("name", list(SETTINGS))
def test_learns_planted_signal(planted, name):
    _, metrics = fitted(name, planted)
    assert metrics["val"]["auc"] > 0.65
    assert metrics["test"]["auc"] > 0.65
    assert metrics["reference"]["popularity"]["test"]["auc"] < 0.6


@pytest.mark.parametrize("name", list(SETTINGS))
def test_score_matrix_matches_pairs(planted, name):
    model, _ = fitted(name, planted)
    net = model.network
    users, items = torch.arange(0, 60, 7), torch.arange(0, 80, 3)
    matrix = net.score_matrix(users, items)
    uu, ii = torch.meshgrid(users, items, indexing="ij")
    pairs = net.score_pairs(uu.reshape(-1), ii.reshape(-1)).reshape(matrix.shape)
    torch.testing.assert_close(matrix, pairs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_save_load_roundtrip(tmp_path, planted, name):
    model, _ = fitted(name, planted)
    loaded = KGNNLS.load(model.save(tmp_path / "model.pt"))
    users, items = ["u1", "u2", "u3", "u40"], ["i5", "i6", "i7", "i70"]
    np.testing.assert_allclose(loaded.score(users, items), model.score(users, items), rtol=1e-6)
    assert loaded.recommend("u1", k=5) == model.recommend("u1", k=5)
    assert loaded.evaluate(planted)["test"]["auc"] == pytest.approx(
        _FITTED[name][1]["test"]["auc"])


def test_ripplenet_forward_matches_per_memory_relation_matrices(planted):
    """The attention ``v^T R_r h`` and the KGE term ``h^T R_r t``, written as in the
    paper (one ``d x d`` matrix per memory), give the model's logits and KGE."""
    model, _ = fitted("ripplenet", planted)
    net = model.network
    users, items = torch.arange(0, 60, 3), torch.arange(0, 80, 4)
    logits, kge = net._forward(users, items, with_kge=True)
    v, u, want_kge = net.entity_emb[items], 0.0, 0.0
    for hop in range(net.n_hop):
        h = net.entity_emb[net.mem_heads[users, hop]]
        r = net.relation_emb[net.mem_relations[users, hop]]
        t = net.entity_emb[net.mem_tails[users, hop]]
        p = torch.softmax(torch.einsum("bi,bmij,bmj->bm", v, r, h), dim=-1)
        o = (p.unsqueeze(-1) * t).sum(1)
        u, v = u + o, net._update(v, o)
        want_kge = want_kge + torch.sigmoid(torch.einsum("bmi,bmij,bmj->bm", h, r, t)).mean()
    want = ((u * net.has_memory[users].unsqueeze(-1)) * v).sum(-1)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(kge, want_kge, rtol=1e-6, atol=0)


def test_ripplenet_score_matrix_blocks_give_the_same_scores(planted, monkeypatch):
    from kgnnls.baselines import ripplenet

    model, _ = fitted("ripplenet", planted)
    net = model.network
    users, items = torch.arange(0, 60), torch.arange(0, 80)
    whole = net.score_matrix(users, items)
    monkeypatch.setattr(ripplenet, "BLOCK_BYTES", 4 * len(items) * net.n_memory * 7)
    torch.testing.assert_close(net.score_matrix(users, items), whole, rtol=0, atol=0)


def test_ripple_sets_reach_only_from_training_positives(planted):
    config = Config(model="ripplenet", **SETTINGS["ripplenet"])
    split, net = build(planted, config)
    heads, rels, tails = net.mem_heads.numpy(), net.mem_relations.numpy(), net.mem_tails.numpy()
    n_users, n_hop, m = heads.shape
    pos = split.train[split.train[:, 2] == 1]
    has = np.bincount(pos[:, 0], minlength=n_users) > 0
    np.testing.assert_array_equal(net.has_memory.numpy(), has)
    users = np.repeat(np.arange(n_users), m)
    # hop 0: heads are the user's training positives (never validation or test items)
    E = planted.n_entities
    pos_keys = set((pos[:, 0] * E + pos[:, 1]).tolist())
    hop0 = users * E + heads[:, 0].reshape(-1)
    assert all(k in pos_keys for k in hop0[np.repeat(has, m)].tolist())
    # hop h: heads are tails of hop h - 1 of the same user
    for hop in range(1, n_hop):
        prev = set((users * E + tails[:, hop - 1].reshape(-1)).tolist())
        cur = users * E + heads[:, hop].reshape(-1)
        assert all(k in prev for k in cur[np.repeat(has, m)].tolist())
    # every memory is an edge of the undirected KG
    graph = KnowledgeGraph.from_triples(planted.kg, E, planted.n_relations, dedupe_pairs=False)
    src = np.repeat(np.arange(E), graph.degrees)
    R = graph.n_relations
    edges = set(((src * R + graph.relations) * E + graph.neighbors).tolist())
    mem = (heads * R + rels) * E + tails
    assert all(k in edges for k in mem[has].reshape(-1).tolist())
    # validation/test positives that are not training positives never seed hop 0
    held = np.concatenate([split.val, split.test])
    held = held[held[:, 2] == 1]
    held_keys = set((held[:, 0] * E + held[:, 1]).tolist()) - pos_keys
    assert not held_keys & set(hop0.tolist())


def test_per_features_are_leave_one_out(planted):
    """A training positive's meta-path scores equal those computed without it."""
    from kgnnls.baselines.per import PER

    config = Config(model="per", **SETTINGS["per"])
    _, net = build(planted, config)
    pos = net.positives.numpy()
    u, i = int(pos[0, 0]), int(pos[0, 1])
    with_it = net._raw_pairs(np.array([u]), np.array([i]))
    rest = np.delete(pos, 0, axis=0)
    without = PER(config, net.n_users, net.n_items, rest, net.path_links, net.n_kg_paths,
                  net.cf_path)._raw_pairs(np.array([u]), np.array([i]))
    # identical up to the user's normaliser |pos(u)| (one more with the pair)
    deg = int((pos[:, 0] == u).sum())
    np.testing.assert_allclose(with_it * deg, without * (deg - 1), rtol=1e-9, atol=1e-12)


def test_per_weights_the_planted_relation(planted):
    """The genre meta-path (relation 0, the planted signal) gets the largest weight."""
    model, _ = fitted("per", planted)
    net = model.network
    kg_paths = list(net.path_relations)
    assert 0 in kg_paths
    with torch.no_grad():
        w = (net.path_weight + net.user_factors @ net.path_factors.T).mean(0)[:net.n_kg_paths]
    assert int(w.argmax()) == kg_paths.index(0)
    assert float(w[kg_paths.index(0)]) > 1.0


def test_cke_transr_distance_matches_per_triple_projections():
    """``||(h - t) M_r + r||^2`` over relation-sorted triples is TransR's
    ``||h M_r + r - t M_r||^2`` with each triple's own ``M_r``, gradients included."""
    from kgnnls.baselines.cke import CKE

    g = torch.Generator().manual_seed(0)
    n_entities, n_relations = 30, 4
    triples = torch.stack([torch.randint(0, n_entities, (60,), generator=g),
                           torch.randint(0, n_relations, (60,), generator=g),
                           torch.randint(0, n_entities, (60,), generator=g)], 1)
    net = CKE(Config(model="cke", dim=8), 5, 10, n_entities, n_relations, triples, generator=g)
    with torch.no_grad():  # projections away from their identity start, distinct per relation
        net.projection.add_(0.3 * torch.randn(net.projection.shape, generator=g))
    h, r, t = triples.unbind(-1)
    params = [net.entity_emb, net.projection, net.relation_emb]
    got = net.transr_distance(h, r, t)
    grads = torch.autograd.grad(got.sum(), params)
    m = net.projection[r]
    want = ((net.entity_emb[h].unsqueeze(1) @ m).squeeze(1) + net.relation_emb[r]
            - (net.entity_emb[t].unsqueeze(1) @ m).squeeze(1)).pow(2).sum(-1)
    want_grads = torch.autograd.grad(want.sum(), params)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got_grad, want_grad in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
