"""Relation entropy: is KGNN-LS's user-specific relation weighting uniform or peaked?"""

from __future__ import annotations

import math

import pytest
import torch

from kgnnls import Config
from kgnnls.diagnostics import relation_entropy
from kgnnls.train import build


@pytest.fixture(scope="module")
def net():
    from kgnnls.data.synthetic import planted_dataset

    ds = planted_dataset(seed=0)  # 3 relations
    return build(ds, Config())[1], ds


def test_equal_relation_scores_give_entropy_one(net):
    network, ds = net
    with torch.no_grad():  # every relation vector equal: s_u(r) equal for every r
        network.relation_emb.copy_(network.relation_emb[:1].expand_as(network.relation_emb))
    out = relation_entropy(network, n_relations=ds.n_relations)
    assert out["mean"] == pytest.approx(1.0, abs=1e-6)
    assert out["min"] == pytest.approx(1.0, abs=1e-6)
    assert out["top_weight_mean"] == pytest.approx(1 / 3, abs=1e-6)
    assert out["uniform_top_weight"] == pytest.approx(1 / 3)
    assert out["relations"] == 3 and out["users"] == ds.n_users


def test_a_peaked_relation_gives_entropy_below_one(net):
    network, ds = net
    with torch.no_grad():  # s_u(0) = 1.6 for every user, s_u(1) = s_u(2) = 0
        network.user_emb.fill_(0.1)
        network.relation_emb.zero_()
        network.relation_emb[0] = 1.0
    weights = network.relation_weights(torch.arange(ds.n_users), ds.n_relations)
    assert weights.shape == (ds.n_users, 3)
    assert torch.allclose(weights.sum(-1), torch.ones(ds.n_users))
    out = relation_entropy(network, n_relations=ds.n_relations)
    assert out["mean"] < 0.9 and out["min"] <= out["mean"] + 1e-12
    top = math.exp(1.6) / (math.exp(1.6) + 2)
    assert out["top_weight_mean"] == pytest.approx(top, rel=1e-5)
    # the summary matches the per-user definition, H / log R
    w = weights.double()
    h = -(w * w.log()).sum(-1) / math.log(3)
    assert out["mean"] == pytest.approx(float(h.mean()), rel=1e-6)


def test_no_relation_scores_means_no_report(net):
    network, _ = net
    assert relation_entropy(object()) is None
    one = relation_entropy(network, n_relations=1)
    assert one["mean"] is None and one["top_weight_mean"] == pytest.approx(1.0)
    assert relation_entropy(network, n_relations=0)["relations"] == 0
