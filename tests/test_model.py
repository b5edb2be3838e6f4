"""KGNN-LS against slow, obviously-correct references on a hand-made graph.

The references work on the whole (sampled) graph with Python loops and
dicts: Eq. (1) as dense per-user matrices, and Theorem 2's label propagation
as plain iteration over all entities. The network computes both on
receptive-field trees with tensor ops; they must agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kgnnls.config import Config
from kgnnls.graph import KnowledgeGraph, LabelTable
from kgnnls.model import KGNNLSNet
from kgnnls.scoring import Scorer

# items 0-3; entities 4 (genre A), 5 (genre B), 6 (country), 7 (label)
TRIPLES = np.array([[0, 0, 4], [1, 0, 4], [2, 0, 5], [3, 0, 5], [0, 1, 6], [2, 1, 6],
                    [3, 1, 6], [1, 2, 7], [7, 1, 6], [4, 2, 5]])
N_USERS, N_ENTITIES, N_RELATIONS, S = 2, 8, 3, 3
TRAIN = np.array([[0, 1, 1], [0, 2, 0], [0, 3, 1], [1, 0, 1], [1, 3, 0]])


def make_net(variant="paper", aggregator="sum", n_layers=1, ls_hops=None, seed=0):
    cfg = Config(variant=variant, aggregator=aggregator, n_layers=n_layers, ls_hops=ls_hops,
                 n_neighbors=S, dim=4, ls_weight=1.0)
    graph = KnowledgeGraph.from_triples(TRIPLES, N_ENTITIES, N_RELATIONS,
                                        dedupe_pairs=variant == "paper")
    adj = graph.sample_neighbors(S, np.random.default_rng(seed))
    net = KGNNLSNet(cfg, N_USERS, N_ENTITIES, graph.n_relations, *adj, graph.degrees,
                    generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # larger weights than Glorot so every term matters
        for p in net.parameters():
            p.normal_(0, 0.7, generator=torch.Generator().manual_seed(seed + 1))
    net.set_labels(LabelTable(TRAIN[:, 0], TRAIN[:, 1], TRAIN[:, 2], N_ENTITIES))
    return net


def slots(net, e):
    return list(zip(net.adj_entity[e].tolist(), net.adj_relation[e].tolist(), strict=True))


def edge_weights(net, u):
    """Per entity: list of (neighbour, weight) and the self weight, as the paper/authors."""
    uvec = net.user_emb[u].detach().double()
    rel = net.relation_emb.detach().double()
    score = {r: float(uvec @ rel[r]) for r in range(rel.shape[0])}
    deg = torch.exp(net.log_slot_weight).double() * S
    out = {}
    for e in range(N_ENTITIES):
        sl = slots(net, e)
        if net.paper:
            w = [(n, float(deg[e]) / S * math.exp(score[r])) for n, r in sl]
            out[e] = (w, 1.0 + sum(x for _, x in w))  # (slots, D_e)
        else:
            s = [score[r] / rel.shape[1] for _, r in sl]
            z = sum(math.exp(x) for x in s)
            out[e] = ([(n, math.exp(x) / z / S) for (n, _), x in zip(sl, s, strict=True)], None)
    return out


def reference_logit(net, u, v):
    """Dense Eq. (1) on the sampled graph, then u . h_v."""
    w = edge_weights(net, u)
    agg = net.config.aggregator
    H = net.entity_emb.detach().double()
    for layer in range(net.n_layers):
        W = net.weights[layer].detach().double()
        d = H.shape[1]
        new = torch.zeros(N_ENTITIES, d, dtype=torch.float64)
        for e in range(N_ENTITIES):
            sl, D = w[e]
            if net.paper:
                own = H[e] / D
                neigh = sum(x / math.sqrt(D * w[n][1]) * H[n] for n, x in sl)
            else:
                own = H[e]
                neigh = sum(x * H[n] for n, x in sl)
            if agg == "sum":
                x = (own + neigh) @ W
            elif agg == "concat":
                x = torch.cat([own, neigh]) @ W
            else:
                x = neigh @ W
            if not net.paper:
                x = x + net.biases[layer].detach().double()
            new[e] = torch.tanh(x) if layer == net.n_layers - 1 else torch.relu(x)
        H = new
    return float(net.user_emb[u].detach().double() @ H[v])


def reference_label(net, u, v):
    """Theorem 2 with y_uv hidden: iterate on all entities, clamp labelled items."""
    w = edge_weights(net, u)
    labels = {(int(a), int(b)): float(c) for a, b, c in TRAIN}
    init = {e: (labels[(u, e)] if (u, e) in labels and e != v else 0.5)
            for e in range(N_ENTITIES)}
    clamped = {e for e in range(N_ENTITIES) if (u, e) in labels and e != v}
    cur = dict(init)
    for _ in range(net.label_hops):
        nxt = {}
        for e in range(N_ENTITIES):
            if e in clamped:
                nxt[e] = init[e]
                continue
            sl, D = w[e]
            if net.paper:
                nxt[e] = (cur[e] + sum(x * cur[n] for n, x in sl)) / D
            else:
                nxt[e] = sum(x * cur[n] for n, x in sl)
        cur = nxt
    return cur[v]


CASES = [(v, a, L) for v in ("paper", "authors") for a in ("sum", "concat", "neighbor")
         for L in (1, 2)]


@pytest.mark.parametrize(("variant", "aggregator", "n_layers"), CASES)
def test_forward_matches_dense_reference(variant, aggregator, n_layers):
    net = make_net(variant, aggregator, n_layers)
    users = torch.tensor([u for u in range(N_USERS) for _ in range(4)])
    items = torch.tensor([v for _ in range(N_USERS) for v in range(4)])
    got = net(users, items).detach().double()
    want = torch.tensor([reference_logit(net, int(u), int(v)) for u, v in zip(users, items,
                                                                             strict=True)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("variant", "aggregator", "n_layers"), CASES)
def test_ranking_path_equals_pair_path(variant, aggregator, n_layers):
    net = make_net(variant, aggregator, n_layers)
    users, items = torch.arange(N_USERS), torch.arange(4)
    pairs = net(users.repeat_interleave(4), items.repeat(N_USERS)).detach().view(N_USERS, 4)
    torch.testing.assert_close(net.score_matrix_reference(users, items), pairs, rtol=1e-5,
                               atol=1e-6)
    # the layer-wise tensor path and the compiled one-layer ranker (kgnnls.scoring) agree too
    scorer = Scorer(net)
    for rank in (net.score_matrix, scorer.score_matrix):
        torch.testing.assert_close(rank(users, items), pairs, rtol=1e-5, atol=1e-5)
        subset = torch.tensor([3, 0, 2])  # any subset, any order
        torch.testing.assert_close(rank(users, subset), pairs[:, subset], rtol=1e-5,
                                   atol=1e-5)
    assert scorer.last_path == ("ranker" if n_layers == 1 else "tensor")


@pytest.mark.parametrize(("variant", "n_layers", "ls_hops"),
                         [("paper", 1, None), ("paper", 1, 3), ("paper", 2, None),
                          ("authors", 1, None), ("authors", 2, None), ("authors", 1, 2)])
def test_label_propagation_matches_reference(variant, n_layers, ls_hops):
    net = make_net(variant, n_layers=n_layers, ls_hops=ls_hops)
    users = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    items = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    _, got = net._propagate(users, items, ranking=False, with_labels=True)
    want = torch.tensor([reference_label(net, int(u), int(v)) for u, v in zip(users, items,
                                                                              strict=True)])
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-6)
    # the held-out label never leaks: flipping y_uv itself leaves l_u(v) as is,
    # while flipping every label moves the rows whose tree reaches one
    original = net.labels.values.clone()
    net.labels.values = 1 - original
    _, flipped_all = net._propagate(users, items, ranking=False, with_labels=True)
    reached = net.label_coverage(users, items)
    assert reached.any() == (not torch.allclose(flipped_all, got))
    for i in range(len(users)):
        net.labels.values = original.clone()
        key = int(users[i]) * N_ENTITIES + int(items[i])
        pos = int(torch.searchsorted(net.labels.keys, torch.tensor([key])))
        if pos < len(net.labels.keys) and net.labels.keys[pos] == key:
            net.labels.values[pos] = 1 - net.labels.values[pos]
            _, one = net._propagate(users[i:i + 1], items[i:i + 1], False, True)
            torch.testing.assert_close(one, got[i:i + 1])
    net.labels.values = original


def test_paper_propagation_depth_defaults_to_two_hops():
    assert Config(variant="paper", n_layers=1).label_hops == 2
    assert Config(variant="authors", n_layers=1).label_hops == 1
    assert Config(variant="paper", n_layers=3).label_hops == 3


def test_ls_term_has_no_gradient_where_no_label_is_reached():
    # item 1's one-hop tree {4, 7} holds no item: with 1 hop its label is the
    # constant 0.5 and the LS term cannot move the relation embeddings
    net = make_net("authors", ls_hops=1)
    users, items = torch.tensor([1]), torch.tensor([1])
    assert not net.label_coverage(users, items).any()
    _, pred = net._propagate(users, items, ranking=False, with_labels=True)
    pred.sum().backward()
    assert net.relation_emb.grad is None or torch.count_nonzero(net.relation_emb.grad) == 0


def test_kgcn_has_no_ls_term():
    net = make_net()
    net.config = Config(ls_weight=0.0, n_neighbors=S, dim=4)
    net.set_labels(None)  # LS would need labels: it must not be computed
    loss, parts = net.loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]))
    assert "ls" not in parts and torch.isfinite(loss)


def test_neighbour_sampling_rules():
    graph = KnowledgeGraph.from_triples(TRIPLES, N_ENTITIES, N_RELATIONS, dedupe_pairs=True)
    ents, rels = graph.sample_neighbors(S, np.random.default_rng(0))
    deg = graph.degrees
    for e in range(N_ENTITIES):
        edges = set(zip(graph.neighbors[graph.indptr[e]:graph.indptr[e + 1]].tolist(),
                        graph.relations[graph.indptr[e]:graph.indptr[e + 1]].tolist(),
                        strict=True))
        sampled = list(zip(ents[e].tolist(), rels[e].tolist(), strict=True))
        assert set(sampled) <= edges
        if deg[e] >= S:  # without replacement
            assert len(set(sampled)) == S
    again = graph.sample_neighbors(S, np.random.default_rng(0))
    np.testing.assert_array_equal(ents, again[0])


def test_paper_graph_keeps_one_relation_per_entity_pair():
    kg = np.array([[0, 0, 1], [1, 1, 0], [0, 2, 2]])
    paper = KnowledgeGraph.from_triples(kg, 3, 3, dedupe_pairs=True)
    authors = KnowledgeGraph.from_triples(kg, 3, 3, dedupe_pairs=False)
    assert paper.degrees.tolist() == [2, 1, 1]
    assert authors.degrees.tolist() == [3, 2, 1]


def test_isolated_entities_get_a_self_relation():
    graph = KnowledgeGraph.from_triples(np.array([[0, 0, 2]]), 4, 1)
    assert graph.self_relation == 1 and graph.n_relations == 2
    ents, rels = graph.sample_neighbors(2, np.random.default_rng(0))
    assert ents[1].tolist() == [1, 1] and rels[1].tolist() == [1, 1]


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_compiled_ranker_matches_reference_on_lastfm(lastfm, variant):
    from kgnnls.train import build

    _, net = build(lastfm, Config.preset("lastfm", variant=variant))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    users, items = torch.arange(40), torch.arange(lastfm.n_items)
    scorer = Scorer(net)
    torch.testing.assert_close(scorer.score_matrix(users, items),
                               net.score_matrix_reference(users, items), rtol=1e-5, atol=1e-5)
    assert scorer.last_path == "ranker"


def test_label_table_dense_and_sorted_lookups_agree():
    rng = np.random.default_rng(3)
    users, items = rng.integers(0, 40, 300), rng.integers(0, 25, 300)
    labels = rng.integers(0, 2, 300)
    dense = LabelTable(users, items, labels, 70)
    sparse = LabelTable(users, items, labels, 70)
    sparse.dense = None  # force the searchsorted path
    assert dense.dense is not None
    qu = torch.from_numpy(rng.integers(0, 45, (50, 1)))  # users past the table too
    qe = torch.from_numpy(rng.integers(0, 70, (50, 16)))  # entities, mostly not items
    for a, b in zip(dense.lookup(qu, qe), sparse.lookup(qu, qe), strict=True):
        assert torch.equal(a, b)
    assert dense.lookup(qu, qe)[1].any()


def test_score_pairs_chunks_without_changing_scores():
    net = make_net(n_layers=2)
    users = torch.tensor([0, 1] * 20)
    items = torch.arange(40) % 4
    whole = net.score_pairs(users, items)
    torch.testing.assert_close(net.score_pairs(users, items, budget_bytes=1), whole)
    torch.testing.assert_close(whole, net.forward(users, items).detach())
