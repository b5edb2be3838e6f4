"""``loss=bpr`` (pairwise training of KGNN-LS/KGCN) and ``fit(validate=...)`` (early
stopping on a caller's score)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kgnnls import KGNNLS, Config, RunOptions
from kgnnls.data.sampling import touched_keys
from kgnnls.errors import ConfigError
from kgnnls.evaluate import ctr_metrics
from kgnnls.fused import unsupported
from kgnnls.train import _bpr_rows, build, fit

FAST = {"dim": 8, "n_neighbors": 4, "batch_size": 32, "lr": 0.01}


@pytest.fixture(scope="module")
def planted():
    from kgnnls.data.synthetic import planted_dataset

    return planted_dataset(seed=0)


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("model", ["svd", "libfm", "libfm-transe", "per", "cke", "ripplenet"])
def test_baselines_refuse_bpr_naming_the_model(model):
    with pytest.raises(ConfigError, match=model) as info:
        Config(model=model).with_overrides({"loss": "bpr"})
    assert "\n" not in str(info.value)


def test_bad_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="loss"):
        Config().with_overrides({"loss": "hinge"})


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_fused_bpr_training_follows_autograd(planted, variant):
    """The fused BPR step (compiled forward, the rows' BPR gradients, one fused step with
    the LS term and Adam) trains as autograd does: same losses and validation AUC."""
    assert unsupported(Config(loss="bpr")) is None
    cfg = Config(loss="bpr", variant=variant, ls_weight=0.5, epochs=4, patience=4, **FAST)
    fused = fit(planted, cfg, progress=False, options=RunOptions(training_path="fused"))
    reference = fit(planted, cfg, progress=False, options=RunOptions(training_path="autograd"))
    assert (fused.training_path, reference.training_path) == ("fused", "autograd")
    assert fused.history[-1]["bpr"] < fused.history[0]["bpr"] - 0.05  # it trains
    for a, b in zip(fused.history, reference.history, strict=True):
        for key in ("loss", "bpr", "ls"):
            assert a[key] == pytest.approx(b[key], abs=1e-4)
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=2e-3)


def test_fused_bpr_steps_do_not_depend_on_threads(planted):
    cfg = Config(loss="bpr", ls_weight=0.5, epochs=2, patience=2, **{**FAST, "batch_size": 256})
    one = fit(planted, cfg, progress=False, options=RunOptions(threads=1))
    two = fit(planted, cfg, progress=False, options=RunOptions(threads=2))
    assert [h["loss"] for h in one.history] == [h["loss"] for h in two.history]
    for a, b in zip(one.network.parameters(), two.network.parameters(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- the rows
def test_bpr_rows_pair_each_positive_with_an_untouched_item(planted):
    cfg = Config(loss="bpr")
    split, _ = build(planted, cfg)
    forbidden = touched_keys(planted)
    rows = _bpr_rows(planted, split, cfg, 1, forbidden)
    pos = split.train[split.train[:, 2] == 1]
    assert rows.shape == (len(pos), 4) and (rows[:, 2] == 1).all()
    assert sorted(map(tuple, rows[:, :2].tolist())) == sorted(map(tuple, pos[:, :2].tolist()))
    keys = rows[:, 0] * planted.n_items + rows[:, 3]
    assert not np.isin(keys, forbidden).any()  # validation and test rows are touched too
    held_out = np.concatenate([split.val, split.test])
    assert not np.isin(keys, held_out[:, 0] * planted.n_items + held_out[:, 1]).any()
    again = _bpr_rows(planted, split, cfg, 1, forbidden)
    later = _bpr_rows(planted, split, cfg, 2, forbidden)
    assert np.array_equal(rows, again)  # seeded by seed and epoch
    assert not np.array_equal(rows[:, 3], later[:, 3])  # fresh every epoch
    # a user's negatives are not in item order (the draws come sorted by item)
    first_user = rows[rows[:, 0] == rows[0, 0], 3]
    assert len(first_user) > 3 and not np.array_equal(first_user, np.sort(first_user))


# ---------------------------------------------------------------------- the loss
@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_bpr_loss_is_the_pairwise_objective_plus_ls_on_both_rows(planted, variant):
    cfg = Config(loss="bpr", variant=variant, ls_weight=0.5, init_scale=1.0, **FAST)
    split, net = build(planted, cfg)
    rows = _bpr_rows(planted, split, cfg, 1, touched_keys(planted))[:40]
    u, i, j = (torch.from_numpy(rows[:, c].copy()) for c in (0, 1, 3))
    total, parts = net.loss(u, i, torch.ones(len(u)), j)
    with torch.no_grad():
        expected_bpr = -F.logsigmoid(net(u, i) - net(u, j)).mean()
        # LS: the positives as labelled 1, the sampled negatives as labelled 0
        _, label = net._propagate(torch.cat([u, u]), torch.cat([i, j]), ranking=False,
                                  with_labels=True)
        y = torch.cat([torch.ones(len(u)), torch.zeros(len(u))])
        expected_ls = (F.binary_cross_entropy(label.clamp(1e-7, 1 - 1e-7), y)
                       if variant == "paper" else F.binary_cross_entropy_with_logits(label, y))
    assert parts["bpr"] == pytest.approx(float(expected_bpr), rel=1e-5)
    assert parts["ls"] == pytest.approx(float(expected_ls), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(expected_bpr + 0.5 * expected_ls), rel=1e-5)
    total.backward()
    assert net.relation_emb.grad is not None and net.relation_emb.grad.abs().sum() > 0


@pytest.mark.parametrize("model", ["kgnn-ls", "kgcn"])
def test_bpr_training_lowers_the_pairwise_loss(planted, model):
    kgnn = KGNNLS(Config(model=model, loss="bpr", epochs=6, patience=6, **FAST)).fit(planted)
    assert kgnn.info["training_path"] == "fused"
    losses = [h["bpr"] for h in kgnn.history]
    assert "bce" not in kgnn.history[0]
    assert losses[-1] < losses[0] - 0.05
    assert (kgnn.history[0]["ls"] > 0) == (model == "kgnn-ls")
    assert kgnn.evaluate()["relation_entropy"]["relations"] == planted.n_relations


# ---------------------------------------------------------------------- validate=
def test_validate_replaces_auc_for_early_stopping(planted):
    scores = iter([0.1, 0.5, 0.2, 0.3, 0.9])
    seen = []

    def validate(network):
        seen.append(network.training)
        return next(scores)

    fitted = fit(planted, Config(epochs=5, patience=2, **FAST), progress=False,
                 validate=validate)
    assert [h["val_score"] for h in fitted.history] == [0.1, 0.5, 0.2, 0.3]
    assert all("val_auc" in h for h in fitted.history)
    assert fitted.best_epoch == 2 and seen == [False] * 4  # evaluated in eval mode


def test_validate_keeps_checkpoint_resume_exact(planted, tmp_path):
    cfg = Config(loss="bpr", epochs=4, patience=4, **FAST)
    split, _ = build(planted, cfg)

    def validate(network):  # any deterministic score of the network
        return ctr_metrics(network, split.test, 4096)["auc"]

    full = fit(planted, cfg, progress=False, validate=validate)

    class StopError(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise StopError

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(StopError):
        fit(planted, cfg, progress=False, validate=validate, on_epoch=stop_after_two,
            checkpoint_path=path)
    resumed = fit(planted, cfg, progress=False, validate=validate, checkpoint_path=path,
                  resume=True)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    assert resumed.best_epoch == full.best_epoch
    for name, value in full.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name
