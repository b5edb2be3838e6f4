"""The compiled paths' allow-list (kgnnls.coverage) against Config and the kernels.

The fused-vs-autograd equivalence grid generated from the same table is in
tests/test_fused.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
import torch

from kgnnls import KGNNLS
from kgnnls.config import Config, RunOptions
from kgnnls.coverage import (
    COVERAGE,
    MAX_DEPTH,
    SCOPES,
    Values,
    covered_values,
    literal_fields,
    undecided,
    unsupported,
)
from kgnnls.errors import ConfigError
from kgnnls.optim import make_optimizer
from kgnnls.scoring import Scorer
from kgnnls.train import _build, _fused_trainer

TINY = dict(dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=1, patience=1)

#: (scope, field, value) of every Literal value a scope does not cover
UNCOVERED = [(scope, name, value) for scope in SCOPES
             for name, values in literal_fields().items() for value in values
             if value not in covered_values(name, scope)]


def test_the_table_declares_every_config_field_and_decides_every_literal_value():
    assert undecided() == []
    assert set(COVERAGE) == {f.name for f in fields(Config)}
    assert all(set(covers) == set(SCOPES) for covers in COVERAGE.values())
    # the Literal fields are found (a vacuous check would pass on none)
    assert {"variant", "aggregator", "updates", "loss"} <= set(literal_fields())


def test_a_field_the_table_does_not_declare_is_a_reason_and_fails_the_check(monkeypatch):
    @dataclass(frozen=True)
    class Grown(Config):
        dropout: float = 0.0

    assert "dropout: not declared in COVERAGE" in undecided(Grown)
    for scope in SCOPES:
        assert unsupported(Grown(), scope=scope).startswith("dropout=0.0 ")
    monkeypatch.delitem(COVERAGE, "aggregator")
    assert "aggregator: not declared in COVERAGE" in undecided()
    assert unsupported(Config()).startswith("aggregator=sum ")
    monkeypatch.setitem(COVERAGE, "no_such_field", COVERAGE["seed"])
    assert any(p.startswith("no_such_field: declared") for p in undecided())


def test_the_kernels_know_exactly_the_covered_aggregators():
    from kgnnls.fast_rank import AGG_CODES

    for scope in SCOPES:
        assert set(covered_values("aggregator", scope)) == set(AGG_CODES)


def test_scopes_differ_where_the_paths_do():
    assert all(unsupported(Config(), scope=s) is None for s in SCOPES)
    deep = Config(n_layers=MAX_DEPTH, ls_hops=MAX_DEPTH)
    assert unsupported(deep) is None and unsupported(deep, scope="forward") is None
    assert unsupported(deep, scope="rank").startswith(f"n_layers={MAX_DEPTH} ")
    too_deep = Config(n_layers=MAX_DEPTH + 1)
    assert all(unsupported(too_deep, scope=s).startswith(f"n_layers={MAX_DEPTH + 1} ")
               for s in SCOPES)
    # the label depth limits training only, and only where the LS term is on
    assert unsupported(Config(ls_hops=MAX_DEPTH + 1)).startswith(f"ls_hops={MAX_DEPTH + 1} ")
    assert unsupported(Config(ls_hops=MAX_DEPTH + 1), scope="forward") is None
    assert unsupported(Config(ls_hops=MAX_DEPTH + 1, ls_weight=0.0)) is None
    assert unsupported(Config(model="svd"), scope="rank").startswith("model=svd ")
    assert "parallel" in unsupported(Config(), parallel=True)
    assert unsupported(Config(), scope="forward", parallel=True) is None
    with pytest.raises(ValueError, match="scope"):
        unsupported(Config(), scope="serve")


@pytest.fixture
def withdrawn(monkeypatch) -> tuple[str, str]:
    """``loss=bpr`` taken out of the training scope's table: since the fused BPR step no
    Literal value falls back to autograd, so the fallback is tested on a withdrawn one."""
    name, value = "loss", "bpr"
    covers = COVERAGE[name]
    kept = tuple(v for v in covers["train"].covered if v != value)
    monkeypatch.setitem(COVERAGE, name, {**covers, "train": Values(
        kept, fallback=(value,), why="withdrawn by a test")})
    return name, value


def test_every_literal_value_is_decided_and_a_withdrawn_one_is_uncovered(withdrawn):
    assert undecided() == []
    assert withdrawn[1] not in covered_values(withdrawn[0], "train")
    assert withdrawn[1] in covered_values(withdrawn[0], "forward")


def test_device_cuda_is_a_run_option_that_trains_on_autograd(planted):
    """Run options are not in the table (they do not change what a kernel computes), but
    device=cuda (autograd on a GPU) keeps training off the CPU-only fused step."""
    assert not set(COVERAGE) & {f.name for f in fields(RunOptions)}
    config = Config(**TINY).validate()
    _, _, network = _build(planted, config, None)
    optimizer = make_optimizer(network, config.lr, config.l2_weight, config.updates)
    fused, reason = _fused_trainer(network, optimizer, config, RunOptions(device="cuda"), False)
    assert fused is None and reason.startswith("device=cuda ")
    with pytest.raises(ConfigError, match="does not cover this run: device=cuda"):
        _fused_trainer(network, optimizer, config,
                       RunOptions(device="cuda", training_path="fused"), False)


def test_an_uncovered_literal_value_is_named(withdrawn):
    name, value = withdrawn
    for scope, field, v in [*UNCOVERED, ("train", name, value)]:
        assert unsupported(Config(**{field: v}), scope=scope).startswith(f"{field}={v} ")


def test_training_an_uncovered_value_falls_back_to_autograd_with_the_reason(planted, withdrawn):
    name, value = withdrawn
    config = Config(**{**TINY, name: value}).validate()
    _, _, network = _build(planted, config, None)
    optimizer = make_optimizer(network, config.lr, config.l2_weight, config.updates)
    fused, reason = _fused_trainer(network, optimizer, config, RunOptions(), parallel=False)
    assert fused is None and reason.startswith(f"{name}={value} ")
    with pytest.raises(ConfigError, match=f"does not cover this run: {name}={value}"):
        _fused_trainer(network, optimizer, config, RunOptions(training_path="fused"), False)
    metrics = KGNNLS(config).fit(planted, progress=False).evaluate()  # metrics.json's content
    assert metrics["training_path"] == "autograd"
    assert metrics["training_path_reason"].startswith(f"{name}={value} ")


def test_score_matrix_picks_the_one_layer_ranker_by_the_table(planted, monkeypatch):
    users, items = torch.arange(4), torch.arange(10)
    scorer = Scorer(KGNNLS(Config(**TINY)).fit(planted, progress=False).network)
    expected = scorer.score_matrix(users, items)
    assert scorer.last_path == "ranker"  # covered: the compiled ranker ran
    monkeypatch.setitem(COVERAGE, "n_layers", {**COVERAGE["n_layers"], "rank": Values(())})
    torch.testing.assert_close(scorer.score_matrix(users, items), expected, rtol=1e-5, atol=1e-5)
    assert scorer.last_path == "tensor"  # not covered: the layerwise reference ranked
