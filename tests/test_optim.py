"""Row-wise updates (``updates="rows"``): lazy Adam on the rows a batch uses."""

from __future__ import annotations

import torch

from kgnnls import KGNNLS, Config
from kgnnls.optim import RowAdam, make_optimizer
from kgnnls.train import build

TINY = dict(dim=8, n_neighbors=4, batch_size=64, epochs=6, lr=0.02, l2_weight=1e-3, seed=0)


def _one_step(planted, updates):
    cfg = Config(updates=updates, **TINY)
    split, net = build(planted, cfg)
    opt = make_optimizer(net, cfg.lr, cfg.l2_weight, cfg.updates)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    batch = torch.from_numpy(split.train[:64])
    loss, _ = net.loss(batch[:, 0], batch[:, 1], batch[:, 2].float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return net, opt, before, batch


def test_rows_touches_only_the_batch_rows_and_matches_dense_there(planted):
    dense, dense_opt, before, batch = _one_step(planted, "dense")
    rows, rows_opt, before_rows, _ = _one_step(planted, "rows")
    assert isinstance(rows_opt, RowAdam) and not isinstance(dense_opt, RowAdam)
    assert all(torch.equal(before[n], before_rows[n]) for n in before)  # same seed, same init
    touched_users = torch.unique(batch[:, 0])
    untouched = torch.ones(rows.user_emb.shape[0], dtype=torch.bool)
    untouched[touched_users] = False
    assert untouched.any()
    # rows: untouched users are left exactly as they were; dense decays them (L2)
    assert torch.equal(rows.user_emb[untouched], before["user_emb"][untouched])
    assert not torch.allclose(dense.user_emb[untouched], before["user_emb"][untouched])
    # first step from zero moments on the touched rows: lazy Adam's update
    # lr * g / (|g| + eps / sqrt(1 - beta2)) (SparseAdam's eps convention)
    # with g = dL/dtheta + gamma * theta, the same gradient dense Adam used
    theta = before["user_emb"][touched_users]
    g = dense.user_emb.grad[touched_users] + TINY["l2_weight"] * theta
    expected = theta - TINY["lr"] * g / (g.abs() + 1e-8 / (1 - 0.999) ** 0.5)
    torch.testing.assert_close(rows.user_emb[touched_users], expected)
    # every other parameter is updated by the same fused Adam in both modes
    torch.testing.assert_close(rows.relation_emb, dense.relation_emb)
    torch.testing.assert_close(rows.weights[0], dense.weights[0])


def test_rows_state_dict_round_trips(planted):
    net, opt, _, _ = _one_step(planted, "rows")
    fresh = make_optimizer(net, 0.02, 1e-3, "rows")
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state_dict()["rows"]["state"].keys() == opt.state_dict()["rows"]["state"].keys()


def test_rows_learns_the_planted_signal(planted):
    metrics = KGNNLS(Config(updates="rows", **TINY)).fit(planted).evaluate()
    assert metrics["test"]["auc"] > 0.7

