"""The fused training step against autograd: same loss, same gradients, same Adam."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pytest
import torch

from kgnnls.config import Config, RunOptions
from kgnnls.coverage import covered_values, literal_fields
from kgnnls.errors import ConfigError
from kgnnls.fused import CHUNK, SINGLE_MIN_DIM, FusedTrainer, unsupported
from kgnnls.graph import KnowledgeGraph, LabelTable
from kgnnls.model import KGNNLSNet
from kgnnls.optim import make_optimizer
from kgnnls.scoring import Scorer

N_USERS, N_ITEMS, N_ENTITIES, N_RELATIONS = 12, 25, 60, 5
AUTOGRAD = RunOptions(training_path="autograd")


def random_net(seed: int, **fields) -> tuple[KGNNLSNet, np.ndarray]:
    """A network on a random KG whose training labels cover many of its items."""
    gen = np.random.default_rng(seed)
    heads = gen.integers(0, N_ENTITIES, 240)
    tails = gen.integers(0, N_ENTITIES, 240)
    keep = heads != tails
    triples = np.column_stack([heads, gen.integers(0, N_RELATIONS, 240), tails])[keep]
    cfg = Config(**{"n_neighbors": 4, "dim": 5, "ls_weight": 0.7, "l2_weight": 1e-3,
                    "lr": 1e-2, **fields}).validate()
    graph = KnowledgeGraph.from_triples(triples, N_ENTITIES, N_RELATIONS,
                                        dedupe_pairs=cfg.variant == "paper")
    adj = graph.sample_neighbors(cfg.n_neighbors, gen)
    net = KGNNLSNet(cfg, N_USERS, N_ENTITIES, graph.n_relations, *adj, graph.degrees,
                    generator=torch.Generator().manual_seed(seed))
    # larger than the init so that every term matters; wider fields get a smaller spread,
    # else their saturated scores cost float32 autograd, the reference, its precision
    std = 0.6 * (5 / cfg.dim) ** 0.25
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std, generator=torch.Generator().manual_seed(seed + 1))
    pairs = np.unique(np.column_stack([gen.integers(0, N_USERS, 200),
                                       gen.integers(0, N_ITEMS, 200)]), axis=0)
    rows = np.column_stack([pairs, gen.integers(0, 2, len(pairs))])
    net.set_labels(LabelTable(rows[:, 0], rows[:, 1], rows[:, 2], N_ENTITIES))
    return net, rows


# The hand-chosen shapes: both variants and every aggregator at depths and widths
# where the kernels take different branches, with and without the LS term.
SHAPES = [dict(variant=v, aggregator=a, n_layers=L, ls_hops=H, ls_weight=w)
          for v, a, L, H, w in itertools.product(
              ["paper", "authors"], ["sum", "concat", "neighbor"], [1, 2], [1, 2], [0.7])]
SHAPES += [dict(variant=v, n_layers=L, ls_weight=0.0) for v in ["paper", "authors"]
           for L in [1, 2]]
# deeper receptive fields (Table 6's L = 3, 4): the same loops over more levels
SHAPES += [dict(variant=v, aggregator=a, n_layers=L, ls_hops=H, ls_weight=0.7)
           for v, a, (L, H) in itertools.product(
               ["paper", "authors"], ["sum", "concat", "neighbor"],
               [(3, 3), (4, 4), (1, 4), (4, 2), (3, 1)])]
# wide fields (Book-Crossing's d = 64): the per-node W products in single precision
SHAPES += [dict(variant=v, aggregator=a, n_layers=L, ls_hops=2, ls_weight=0.7,
                dim=SINGLE_MIN_DIM)
           for v, a, L in itertools.product(["paper", "authors"], ["sum", "concat", "neighbor"],
                                            [1, 2])]
# ... and their levels' matrix products (L = 4 at S = 4: the first layer's 85 nodes)
SHAPES += [dict(variant=v, aggregator="concat", n_layers=4, ls_hops=2, ls_weight=0.7,
                dim=SINGLE_MIN_DIM) for v in ["paper", "authors"]]
# loss="bpr": the base term's gradient given per row, the LS term on both rows
SHAPES += [dict(variant=v, n_layers=L, ls_hops=2, ls_weight=w, loss="bpr")
           for v, L, w in itertools.product(["paper", "authors"], [1, 2], [0.7, 0.0])]


def _exercises(fields: dict, name: str, value: object, config_type: type = Config) -> bool:
    return getattr(config_type(**fields), name) == value


def literal_grid(shapes: list[dict], config_type: type = Config) -> list[dict]:
    """``shapes`` plus, for each value of a ``Literal`` field of ``config_type`` that
    the fused step covers (kgnnls.coverage) and no configuration exercises yet, one
    configuration that does: the grid follows ``Config`` and the allow-list."""
    grid = list(shapes)
    for name in literal_fields(config_type):
        for value in covered_values(name, "train", config_type):
            if not any(_exercises(f, name, value, config_type) for f in grid):
                grid.append(dict(variant="paper", n_layers=2, ls_hops=2, **{name: value}))
    return grid


#: the equivalence grid: the shapes and every covered value of every Literal field
COVERED = literal_grid(SHAPES)


def _name(fields: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in fields.items())


@pytest.mark.parametrize("fields", COVERED, ids=_name)
def test_loss_and_gradients_equal_autograd(fields):
    _check_against_autograd(fields)


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_label_search_path_equals_autograd(variant, monkeypatch):
    """Labels of large catalogues are searched per user instead of read from bit rows."""
    monkeypatch.setattr("kgnnls.fused.BIT_TABLE_LIMIT", 0)
    trainer = _check_against_autograd(dict(variant=variant, n_layers=2, ls_hops=2))
    assert trainer.graph["known_bits"].size == 0


def _batch(rows: np.ndarray) -> np.ndarray:
    return rows[np.random.default_rng(0).permutation(len(rows))[:64]]


def _check_against_autograd(fields: dict, net: KGNNLSNet | None = None,
                            rows: np.ndarray | None = None) -> FusedTrainer:
    if net is None:
        net, rows = random_net(3, **fields)
    batch = _batch(rows)
    users, items = torch.from_numpy(batch[:, 0]), torch.from_numpy(batch[:, 1])
    labels = torch.from_numpy(batch[:, 2]).float()
    # loss="bpr": each row's item a positive, with a drawn negative (any item will do here)
    negatives = (np.random.default_rng(1).integers(0, N_ITEMS, len(batch))
                 if net.config.loss == "bpr" else None)
    loss, parts = net.loss(users, items, labels,
                           None if negatives is None else torch.from_numpy(negatives))
    net.zero_grad()
    loss.backward()
    trainer = FusedTrainer(net, make_optimizer(net, net.config.lr, net.config.l2_weight))
    trainer.pull()
    (total, base, ls), grads = trainer.loss_and_grad(batch[:, 0], batch[:, 1], batch[:, 2],
                                                     negatives)
    assert total == pytest.approx(float(loss.detach()), abs=1e-5)
    assert base == pytest.approx(float(parts[net.config.loss]), abs=1e-5)
    if "ls" in parts:
        assert ls == pytest.approx(float(parts["ls"]), abs=1e-5)
        assert float(parts["ls"]) > 0
    for p, g in zip(trainer.params, grads, strict=True):
        assert p.grad is not None
        # updates=rows: the tables' gradients are sparse tensors (kgnnls.optim)
        grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
        torch.testing.assert_close(torch.from_numpy(g), grad, atol=1e-5, rtol=1e-5)
    # the check is not vacuous: the LS term reached labels and moved the relation scores
    assert float(net.relation_emb.grad.abs().sum()) > 1e-3
    return trainer


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_label_candidates_are_the_items_of_each_tree(hops):
    from kgnnls.fused import _label_candidates

    adj = np.random.default_rng(hops).integers(0, N_ENTITIES, (N_ENTITIES, 3))
    ptr, ents = _label_candidates(adj, N_ITEMS, hops)
    for v in range(N_ITEMS):
        tree, level = [], np.array([v])
        for _ in range(hops):
            level = adj[level].ravel()
            tree += level.tolist()
        expected = {e for e in tree if e < N_ITEMS and e != v}
        got = ents[ptr[v]:ptr[v + 1]].tolist()
        assert len(got) == len(set(got)) and set(got) == expected, v
    assert len(_label_candidates(adj, N_ITEMS, 0)[0]) == 1  # no propagation term


def test_pairs_walk_their_whole_tree_without_candidate_lists(monkeypatch):
    """Past CANDIDATE_LIMIT no item has a list: every pair walks its tree, as exact."""
    monkeypatch.setattr("kgnnls.fused.CANDIDATE_LIMIT", 0)
    trainer = _check_against_autograd(dict(variant="paper", n_layers=1, ls_hops=2))
    assert len(trainer.graph["cand_ptr"]) == 1


@pytest.mark.parametrize("variant", ["paper", "authors"])
@pytest.mark.parametrize(("n_layers", "ls_hops"), [(1, 2), (2, 3), (2, 2)])
def test_pairs_that_reach_no_label_equal_autograd(variant, n_layers, ls_hops):
    """Pairs whose tree holds no labelled entity skip the deeper levels; with sparse
    labels a batch mixes them with pairs that reach one, and both equal autograd."""
    net, rows = random_net(3, variant=variant, n_layers=n_layers, ls_hops=ls_hops)
    keep = rows[np.random.default_rng(1).random(len(rows)) < 0.08]  # few labels
    net.set_labels(LabelTable(keep[:, 0], keep[:, 1], keep[:, 2], N_ENTITIES))
    trainer = _check_against_autograd(dict(variant=variant, n_layers=n_layers,
                                           ls_hops=ls_hops), net=net, rows=rows)
    ptr, ents = trainer.graph["cand_ptr"], trainer.graph["cand_ent"]
    labelled = set(map(tuple, keep[:, :2].tolist()))
    # items past the last labelled one have no list: their pairs walk the whole tree
    listed = [(u, v) for u, v in _batch(rows)[:, :2].tolist() if v + 1 < len(ptr)]
    reached = [any((u, e) in labelled for e in ents[ptr[v]:ptr[v + 1]]) for u, v in listed]
    assert 0 < sum(reached) < len(reached)


@pytest.mark.parametrize("updates", ["dense", "rows"])
def test_reach_codes_name_the_trees_with_labels_and_keep_the_numbers(updates):
    """``reach_codes`` (computed once per run by the training loop) says which pairs'
    trees hold one of the user's labelled items; steps given them equal steps that
    look the labels up batch by batch, bit for bit."""
    from kgnnls.fused import REACHED, UNLISTED, UNREACHED

    out = []
    for precomputed in (False, True):
        net, rows = random_net(4, n_layers=1, ls_hops=2, updates=updates)
        keep = rows[np.random.default_rng(2).random(len(rows)) < 0.1]  # sparse labels
        net.set_labels(LabelTable(keep[:, 0], keep[:, 1], keep[:, 2], N_ENTITIES))
        trainer = FusedTrainer(net, make_optimizer(net, net.config.lr, net.config.l2_weight,
                                                   updates))
        trainer.pull()
        users, items = rows[:, 0].copy(), rows[:, 1].copy()
        labels = rows[:, 2].astype(np.float32)
        codes = trainer.reach_codes(users, items)
        trainer.steps(users, items, labels, 0, len(rows), 32, codes if precomputed else None)
        out.append((trainer.flat.copy(), trainer.m.copy(), trainer.v.copy()))
    assert all(np.array_equal(a, b) for a, b in zip(*out, strict=True))
    labelled = set(map(tuple, keep[:, :2].tolist()))
    adj = net.adj_entity.numpy()
    n_listed = len(trainer.graph["cand_ptr"]) - 1
    for (u, v), code in zip(rows[:, :2].tolist(), codes.tolist(), strict=True):
        tree, level = [], np.array([v])
        for _ in range(2):
            level = adj[level].ravel()
            tree += level.tolist()
        expected = (UNLISTED if v >= n_listed else
                    REACHED if any((u, e) in labelled for e in tree if e != v) else UNREACHED)
        assert code == expected, (u, v)
    assert {UNREACHED, REACHED} <= set(codes.tolist())
    with pytest.raises(ValueError, match="reach_codes"):
        trainer.steps(users, items, labels, 0, len(rows), 32, codes[:-1])


@pytest.mark.parametrize(("variant", "updates"), [("paper", "dense"), ("authors", "dense"),
                                                   ("paper", "rows"), ("authors", "rows")])
def test_fused_steps_follow_torch_adam(variant, updates):
    """Five fused steps (gradient + Adam) land where autograd + torch Adam land; with
    updates=rows, where autograd + RowAdam (lazy Adam on the rows a batch reads) land."""
    net, rows = random_net(5, variant=variant, n_layers=2, updates=updates)
    ref, _ = random_net(5, variant=variant, n_layers=2, updates=updates)
    ref.load_state_dict(net.state_dict())
    ref_opt = make_optimizer(ref, ref.config.lr, ref.config.l2_weight, updates)
    trainer = FusedTrainer(net, make_optimizer(net, net.config.lr, net.config.l2_weight,
                                               updates))
    adj = net.adj_entity.numpy()
    items_read = rows[:5 * 24, 1]  # and their neighbours up to L = 2 hops
    read = np.concatenate([items_read, adj[items_read].ravel(), adj[adj[items_read]].ravel()])
    untouched = np.setdiff1d(np.arange(N_ENTITIES), read)
    trainer.pull()
    users, items = rows[:, 0].copy(), rows[:, 1].copy()
    labels = rows[:, 2].astype(np.float32)
    assert len(rows) >= 5 * 24
    for lo in range(0, 5 * 24, 24):
        hi = lo + 24
        loss, _ = ref.loss(torch.from_numpy(users[lo:hi]), torch.from_numpy(items[lo:hi]),
                           torch.from_numpy(labels[lo:hi]))
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        total, _, _ = trainer.step(users, items, labels, lo, hi)
        assert total == pytest.approx(float(loss.detach()), abs=1e-4)
    trainer.push()
    for (name, mine), theirs in zip(net.state_dict().items(), ref.state_dict().values(),
                                    strict=True):
        torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=1e-4, msg=name)
    # the torch optimizer now holds the fused run's Adam state (checkpoints, resume)
    mine_opt, their_opt = ((trainer.optimizer.rows, ref_opt.rows) if updates == "rows"
                           else (trainer.optimizer, ref_opt))
    state = mine_opt.state[net.entity_emb]
    assert int(state["step"]) == 5
    torch.testing.assert_close(state["exp_avg"], their_opt.state[ref.entity_emb]["exp_avg"],
                               atol=1e-6, rtol=1e-4)
    moved = (net.entity_emb.detach() != random_net(5, variant=variant)[0].entity_emb).any(1)
    if updates == "rows":  # lazy: rows no batch read keep their values and zero moments
        assert len(untouched) > 0 and not moved[untouched].any() and moved.any()
        assert float(state["exp_avg"][untouched].abs().sum()) == 0.0
    else:  # dense: the L2 term moves every row
        assert moved.all()


@pytest.mark.parametrize(("n_layers", "dim"), [(2, 5), (4, 5), (2, SINGLE_MIN_DIM)])
def test_parallel_steps_equal_serial_steps_bit_for_bit(n_layers, dim, monkeypatch):
    """Parallel tasks buffer each row's entity gradients and add them in row order;
    serial steps add them in place in the same order: the same numbers."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here: no parallel path to compare")
    monkeypatch.setattr("kgnnls.fused.PARALLEL_MIN_ROWS", 0)
    flats = []
    for threads in (1, 2):
        net, rows = random_net(7, n_layers=n_layers, ls_hops=2, dim=dim)
        trainer = FusedTrainer(net, make_optimizer(net, net.config.lr, net.config.l2_weight),
                               threads=threads)
        trainer.pull()
        users, items = rows[:, 0].copy(), rows[:, 1].copy()
        labels = rows[:, 2].astype(np.float32)
        assert len(rows) > CHUNK  # every step runs several tasks, the last one short
        for _ in range(3):
            trainer.step(users, items, labels, 0, len(rows))
        flats.append(trainer.flat.copy())
    assert np.array_equal(flats[0], flats[1])


@pytest.mark.parametrize(("updates", "threads"), [("dense", 1), ("rows", 1), ("dense", 2),
                                                   ("rows", 2)])
def test_compiled_steps_equal_single_steps_bit_for_bit(updates, threads, monkeypatch):
    """``steps`` over many batches in one compiled call (the training loop's path; with
    2 threads its parallel kernels) is serial ``step`` batch by batch: the same losses,
    parameters and Adam moments."""
    monkeypatch.setattr("kgnnls.fused.PARALLEL_MIN_ROWS", 0)
    out = []
    for many in (False, True):
        net, rows = random_net(3, n_layers=2, ls_hops=2, updates=updates)
        trainer = FusedTrainer(net, make_optimizer(net, net.config.lr, net.config.l2_weight,
                                                   updates), threads=threads if many else 1)
        trainer.pull()
        users, items = rows[:, 0].copy(), rows[:, 1].copy()
        labels = rows[:, 2].astype(np.float32)
        hi = 5 * 24 + 7  # a short last batch
        if many:
            sums, n_steps = trainer.steps(users, items, labels, 0, hi, 24)
        else:
            parts = [trainer.step(users, items, labels, lo, min(lo + 24, hi))
                     for lo in range(0, hi, 24)]
            sums, n_steps = np.sum(parts, axis=0), len(parts)
        out.append((sums, n_steps, trainer.step_count, trainer.flat.copy(),
                    trainer.m.copy(), trainer.v.copy()))
    (s1, n1, c1, *arrays1), (s2, n2, c2, *arrays2) = out
    assert n1 == n2 == c1 == c2 == 6
    np.testing.assert_array_equal(s1, s2)
    for a, b in zip(arrays1, arrays2, strict=True):
        assert np.array_equal(a, b)


def test_step_refuses_rows_out_of_range():
    net, rows = random_net(0)
    trainer = FusedTrainer(net, make_optimizer(net, 1e-2, 0.0))
    with pytest.raises(IndexError, match="out of range"):
        trainer.step(rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].astype(np.float32),
                     0, len(rows) + 1)


def test_uncovered_configs_are_named():
    assert unsupported(Config()) is None
    assert unsupported(Config(n_layers=4, ls_hops=4)) is None
    assert "n_layers=5" in unsupported(Config(n_layers=5))
    assert "ls_hops=5" in unsupported(Config(ls_hops=5))
    assert unsupported(Config(ls_hops=5, ls_weight=0.0)) is None
    assert unsupported(Config(updates="rows")) is None
    assert "parallel" in unsupported(Config(), parallel=True)
    net, _ = random_net(0, n_layers=5)
    with pytest.raises(ValueError, match="n_layers=5"):
        FusedTrainer(net, make_optimizer(net, 1e-2, 0.0))


def test_grid_keeps_the_shapes_and_exercises_every_covered_literal_value():
    assert len(SHAPES) == 80 and all(f in COVERED for f in SHAPES)
    for name, values in literal_fields().items():
        covered = covered_values(name, "train")
        assert set(covered) <= set(values)
        for value in covered:
            assert any(_exercises(f, name, value) for f in COVERED), (name, value)
    assert all(unsupported(Config(**f)) is None for f in COVERED)


def test_a_new_aggregator_without_kernels_fails_a_test_not_a_run(monkeypatch):
    """``Aggregator`` gains a value (simulated by a subclass of Config): until the
    table decides it, unsupported() names it (autograd trains, no KeyError) and the
    table's check fails; declared covered without kernel support, it joins the
    equivalence grid, where the fused step fails on it."""
    from dataclasses import fields as dataclass_fields

    from kgnnls.coverage import COVERAGE, SCOPES, Values, undecided

    @dataclass(frozen=True)
    class Wider(Config):
        aggregator: Literal["sum", "concat", "neighbor", "mean"] = "sum"

    net, rows = random_net(3, n_layers=2, ls_hops=2)
    net.config = Wider(**{f.name: getattr(net.config, f.name)
                          for f in dataclass_fields(Config)
                          if f.name != "aggregator"}, aggregator="mean")
    for scope in SCOPES:
        assert unsupported(net.config, scope=scope).startswith("aggregator=mean")
    assert "aggregator=mean (train): neither covered nor a declared fallback" in undecided(Wider)
    with pytest.raises(ValueError, match="aggregator=mean"):
        FusedTrainer(net, make_optimizer(net, 1e-2, 0.0))

    monkeypatch.setitem(COVERAGE, "aggregator",
                        dict.fromkeys(SCOPES, Values(("sum", "concat", "neighbor", "mean"))))
    assert undecided(Wider) == []
    grid = literal_grid(SHAPES, Wider)
    assert [f for f in grid if f.get("aggregator") == "mean"] == [
        dict(variant="paper", n_layers=2, ls_hops=2, aggregator="mean")]
    with pytest.raises(KeyError):  # the kernels have no code for it
        _check_against_autograd({}, net=net, rows=rows)


def test_training_loop_picks_the_fused_path_and_matches_autograd(planted):
    from kgnnls.train import fit

    cfg = Config(dim=8, n_neighbors=4, lr=0.02, epochs=4, patience=4, batch_size=64)
    fused = fit(planted, cfg, progress=False)
    reference = fit(planted, cfg, progress=False, options=AUTOGRAD)
    assert (fused.training_path, reference.training_path) == ("fused", "autograd")
    for a, b in zip(fused.history, reference.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=2e-3)
    # lazy Adam (updates=rows) trains on the fused path too, with autograd's numbers
    rows_cfg = replace(cfg, updates="rows")
    fused = fit(planted, rows_cfg, progress=False)
    reference = fit(planted, rows_cfg, progress=False, options=AUTOGRAD)
    assert (fused.training_path, reference.training_path) == ("fused", "autograd")
    for a, b in zip(fused.history, reference.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=2e-3)
    # a config the fused step does not cover falls back to autograd, or fails if insisted on
    deep = replace(cfg, n_layers=5, n_neighbors=2, epochs=1)
    fallback = fit(planted, deep, progress=False)
    assert fallback.training_path == "autograd"
    assert fallback.training_path_reason.startswith("n_layers=5")
    assert fused.training_path_reason is None and reference.training_path_reason is None
    with pytest.raises(ConfigError, match="n_layers=5"):
        fit(planted, deep, progress=False, options=RunOptions(training_path="fused"))


@pytest.mark.parametrize("fields", [dict(variant="paper", n_layers=1),
                                    dict(variant="authors", aggregator="concat", n_layers=2),
                                    dict(variant="paper", aggregator="neighbor", n_layers=4),
                                    dict(variant="paper", aggregator="concat", n_layers=2,
                                         dim=SINGLE_MIN_DIM)],
                         ids=_name)
def test_compiled_forward_scores_pairs_like_the_reference(fields):
    """Scorer.score_pairs (validation, CTR metrics) runs the compiled forward where the
    fused step covers the config, with the tensor path's numbers; ``compiled=False``
    (autograd runs) keeps the latter. A Scorer is a snapshot of the parameters."""
    net, rows = random_net(4, **fields)
    net.eval()
    users, items = torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])
    with torch.no_grad():
        reference = net.forward(users, items)
    scorer = Scorer(net)
    scores = scorer.score_pairs(users, items)
    assert scorer.last_path == "compiled-forward"
    assert scores.dtype == torch.float32 and scores.shape == reference.shape
    torch.testing.assert_close(scores, reference, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # a new scorer follows the parameters; the old one is a snapshot
        net.entity_emb.mul_(0.5)
        halved = net.forward(users, items)
    assert not torch.allclose(halved, reference)
    torch.testing.assert_close(Scorer(net).score_pairs(users, items), halved, atol=1e-5,
                               rtol=1e-5)
    assert torch.equal(scorer.score_pairs(users, items), scores)
    reference_path = Scorer(net, compiled=False)
    assert torch.equal(reference_path.score_pairs(users, items), halved)
    assert reference_path.last_path == "tensor"


def test_kernel_names_carry_the_sources_they_inline(tmp_path, monkeypatch):
    # numba checks a cached kernel against its own file only: the batch kernels of
    # kernels.py inline stages.py, so their names (and cache entries) carry its digest
    import importlib
    import sys

    from kgnnls import fast_rank, model
    from kgnnls.fused import kernels, stages
    from kgnnls.threads import source_digest

    digest = source_digest(stages, fast_rank, model)
    assert digest == stages.SOURCE_DIGEST
    assert all(digest in k.py_func.__name__ for k in
               (kernels.kernel_set(True, True).steps, kernels.kernel_set(False, False).steps,
                stages.row_variants(True, False)[0]))
    module = tmp_path / "kgnnls_digest_probe.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = importlib.import_module("kgnnls_digest_probe")
    before = source_digest(probe)
    module.write_text("X = 2\n")
    assert source_digest(probe) != before
    sys.modules.pop("kgnnls_digest_probe")
