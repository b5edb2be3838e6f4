"""Training: learns a planted signal, is deterministic, saves and loads safely."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import seen_items
from kgnnls import KGNNLS, CheckpointError, Config, DataError
from kgnnls.data.synthetic import planted_dataset

TINY = dict(dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=8, patience=8, l2_weight=1e-5)


@pytest.mark.parametrize(("variant", "n_layers", "negatives"),
                         [("paper", 1, "fixed"), ("paper", 2, "resample"),
                          ("authors", 1, "fixed"), ("authors", 2, "resample")])
def test_learns_planted_signal(planted, variant, n_layers, negatives):
    model = KGNNLS(Config(variant=variant, n_layers=n_layers, negatives=negatives, **TINY))
    metrics = model.fit(planted).evaluate()
    assert metrics["val"]["auc"] > 0.7
    assert metrics["test"]["auc"] > 0.7
    # the planted genres are equally popular: popularity cannot do this
    assert metrics["reference"]["popularity"]["test"]["auc"] < 0.6
    assert metrics["test"]["auc"] > metrics["reference"]["popularity"]["test"]["auc"] + 0.15


def test_same_seed_same_numbers(planted):
    runs = [KGNNLS(Config(seed=5, **TINY)).fit(planted).evaluate() for _ in range(2)]
    assert runs[0]["history"] == [{**h, "seconds": runs[0]["history"][i]["seconds"]}
                                  for i, h in enumerate(runs[1]["history"])]
    assert runs[0]["test"] == runs[1]["test"]
    other = KGNNLS(Config(seed=6, **TINY)).fit(planted).evaluate()
    assert other["test"]["auc"] != runs[0]["test"]["auc"]


def test_best_epoch_is_restored_and_early_stopping_stops(planted):
    model = KGNNLS(Config(**{**TINY, "epochs": 30, "patience": 2, "lr": 0.1}))
    metrics = model.fit(planted).evaluate()
    aucs = [h["val_auc"] for h in metrics["history"]]
    assert metrics["best_epoch"] == int(np.argmax(aucs)) + 1
    assert len(aucs) < 30 and len(aucs) - metrics["best_epoch"] == 2
    assert metrics["val"]["auc"] == pytest.approx(max(aucs))


def test_kgcn_is_kgnnls_without_ls(planted):
    metrics = KGNNLS(Config(model="kgcn", **TINY)).fit(planted).evaluate()
    assert metrics["config"]["ls_weight"] == 0.0
    assert all(h["ls"] == 0.0 for h in metrics["history"])


def test_metrics_carry_ls_coverage_and_reference(planted):
    metrics = KGNNLS(Config(**TINY)).fit(planted).evaluate()
    assert 0 < metrics["ls_coverage"] <= 1
    for key in ("recall@10", "ndcg@10", "precision@10", "hit@10", "auc", "f1"):
        assert key in metrics["test"]
    assert metrics["test_paper_protocol"]["users"] <= 100
    assert metrics["training_path"] == "fused"  # the default config is covered


@pytest.mark.parametrize(("variant", "n_layers"), [("paper", 1), ("authors", 2)])
def test_fused_ls_coverage_is_the_reference_coverage(planted, variant, n_layers):
    """On the fused path the LS coverage comes from the reach codes the fused steps
    take (the label reach is computed once per run): the torch reference's number."""
    from kgnnls.train import fit, ls_coverage

    fitted = fit(planted, Config(**{**TINY, "epochs": 1, "variant": variant,
                                    "n_layers": n_layers}))
    assert fitted.training_path == "fused"
    expected = ls_coverage(fitted.network, fitted.split.train)
    assert 0 < expected < 1
    assert fitted.ls_coverage == expected


def test_save_load_roundtrip(tmp_path, planted):
    model = KGNNLS(Config(**TINY)).fit(planted)
    path = model.save(tmp_path / "model.pt")
    loaded = KGNNLS.load(path)
    users, items = ["u1", "u2", "u3"], ["i5", "i6", "i7"]
    np.testing.assert_allclose(loaded.score(users, items), model.score(users, items))
    assert loaded.recommend("u1", k=5) == model.recommend("u1", k=5)
    seen = set(seen_items(model, "u1"))
    assert seen and not seen & {i for i, _ in model.recommend("u1", k=20)}
    assert seen & {i for i, _ in model.recommend("u1", k=80, exclude_seen=False)}
    with pytest.raises(DataError, match="unknown user id 'nobody'"):
        loaded.recommend("nobody")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_cannot_run_code(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": "kgnnls-checkpoint-1", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        KGNNLS.load(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        KGNNLS.load(path)


def test_evaluate_refuses_a_different_dataset(planted):
    model = KGNNLS(Config(**TINY)).fit(planted)
    other = planted_dataset(seed=1)
    with pytest.raises(CheckpointError, match="fingerprint mismatch"):
        model.evaluate(other)


def test_train_fraction_shrinks_training_rows_only(planted):
    from kgnnls.train import make_split

    full = make_split(planted, Config(seed=1))
    part = make_split(planted, Config(seed=1, train_fraction=0.4))
    assert len(part.train) == round(0.4 * len(full.train))
    np.testing.assert_array_equal(part.val, full.val)
    np.testing.assert_array_equal(part.test, full.test)
    keys = set(map(tuple, full.train.tolist()))
    assert all(tuple(r) in keys for r in part.train.tolist())
