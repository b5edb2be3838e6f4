"""Knowledge-graph ablations (``Config.kg``): the graphs they build and the runs on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kgnnls import KGNNLS, Config
from kgnnls.data.ablation import UI_RELATION, KGMode, ablate_kg, parse_kg_mode
from kgnnls.errors import ConfigError
from kgnnls.graph import KnowledgeGraph
from kgnnls.train import build, make_split

MODES = ["full", "none", "shuffle:0.5", "keep:0.3", "ui"]


@pytest.fixture(scope="module")
def data():
    from kgnnls.data.synthetic import planted_dataset

    ds = planted_dataset(seed=0)
    return ds, make_split(ds, Config())


def _keys(kg: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.asarray(kg).tolist()))


def _is_subsequence(sub: np.ndarray, full: np.ndarray) -> bool:
    rows = iter(full.tolist())
    return all(any(row == other for other in rows) for row in sub.tolist())


# ---------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, mode", [("full", KGMode("full")), ("none", KGMode("none")),
                                        ("ui", KGMode("ui")),
                                        ("shuffle:0.25", KGMode("shuffle", 0.25)),
                                        ("keep:1", KGMode("keep", 1.0)),
                                        ("keep:0", KGMode("keep", 0.0))])
def test_modes_parse(text, mode):
    assert parse_kg_mode(text) == mode


@pytest.mark.parametrize("text", ["partial", "shuffle", "keep:", "shuffle:1.5", "keep:-0.1",
                                  "keep:nan", "shuffle:half", "none:0.5", "ui:1", ""])
def test_bad_modes_raise_one_line_config_errors(text):
    with pytest.raises(ConfigError) as info:
        parse_kg_mode(text)
    assert "\n" not in str(info.value) and "kg mode" in str(info.value)


def test_config_checks_the_mode_when_set():
    with pytest.raises(ConfigError, match="fraction must be in"):
        Config().with_overrides({"kg": "shuffle:1.5"})
    assert Config().with_overrides({"kg": "keep:0.5"}).kg == "keep:0.5"


@pytest.mark.parametrize("model", ["svd", "libfm"])
def test_models_without_a_kg_refuse_an_ablation(model):
    with pytest.raises(ConfigError, match=model):
        Config(model=model).with_overrides({"kg": "none"})
    Config(model=model).with_overrides({"kg": "full"})  # the default stays fine


# ---------------------------------------------------------------------- the graphs
def test_full_is_the_dataset_itself(data):
    ds, split = data
    assert ablate_kg(ds, "full", 0, split.train) is ds


def test_none_has_no_triples_and_only_items_as_entities(data):
    ds, split = data
    out = ablate_kg(ds, "none", 0, split.train)
    assert out.kg.shape == (0, 3)
    assert out.n_entities == ds.n_items and out.n_relations == 0
    assert np.array_equal(out.ratings, ds.ratings)  # interactions untouched


def test_keep_keeps_round_p_n_triples_in_file_order(data):
    ds, split = data
    for p in (0.0, 0.3, 0.77, 1.0):
        out = ablate_kg(ds, f"keep:{p}", 0, split.train)
        assert len(out.kg) == round(p * len(ds.kg))
        assert _is_subsequence(out.kg, ds.kg)  # kept rows, in the original order
        assert out.n_entities == ds.n_entities and out.n_relations == ds.n_relations


def test_shuffle_changes_about_p_of_tails_and_keeps_relation_counts(data):
    ds, split = data
    n = len(ds.kg)
    for p in (0.2, 0.5, 1.0):
        out = ablate_kg(ds, f"shuffle:{p}", 3, split.train)
        assert len(out.kg) == n
        assert np.array_equal(out.kg[:, :2], ds.kg[:, :2])  # heads and relations kept
        assert np.array_equal(np.bincount(out.kg[:, 1], minlength=ds.n_relations),
                              np.bincount(ds.kg[:, 1], minlength=ds.n_relations))
        changed = (out.kg[:, 2] != ds.kg[:, 2]).mean()
        # round(p n) tails redrawn uniformly over 104 entities: ~1 % land on the old one
        assert p - 0.06 <= changed <= round(p * n) / n
        assert out.kg[:, 2].min() >= 0 and out.kg[:, 2].max() < ds.n_entities


@pytest.mark.parametrize("mode", ["shuffle:0.5", "keep:0.5"])
def test_same_seed_same_graph_other_seed_other_graph(data, mode):
    ds, split = data
    a, b, c = (ablate_kg(ds, mode, seed, split.train).kg for seed in (1, 1, 2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_ui_holds_the_training_positives_only(data):
    ds, split = data
    out = ablate_kg(ds, "ui", 0, split.train)
    assert list(out.relation_names) == [UI_RELATION]
    assert out.n_entities == ds.n_items + ds.n_users
    assert out.entity_ids[ds.n_items] == f"user:{ds.user_ids[0]}"
    train_pos = split.train[split.train[:, 2] == 1]
    expected = {(i, 0, ds.n_items + u) for u, i in train_pos[:, :2].tolist()}
    assert _keys(out.kg) == expected
    # no validation or test positive that is not also a training row reaches the graph
    held_out = np.concatenate([split.val, split.test])
    held_out = held_out[held_out[:, 2] == 1]
    leaked = {(i, 0, ds.n_items + u) for u, i in held_out[:, :2].tolist()} - expected
    assert leaked and not (leaked & _keys(out.kg))
    with pytest.raises(ConfigError, match="training rows"):
        ablate_kg(ds, "ui", 0, None)


def test_isolated_entities_get_themselves_in_every_slot():
    graph = KnowledgeGraph.from_triples(np.zeros((0, 3), np.int64), 5, 0)
    assert graph.n_relations == 1 and graph.self_relation == 0
    adj_e, adj_r = graph.sample_neighbors(4, np.random.default_rng(0))
    assert np.array_equal(adj_e, np.repeat(np.arange(5)[:, None], 4, axis=1))
    assert (adj_r == 0).all() and (graph.degrees == 1).all()


# ---------------------------------------------------------------------- training on them
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["auto", "autograd"])
def test_kgnnls_trains_and_records_each_mode(data, mode, path):
    ds, split = data
    model = KGNNLS(Config(epochs=1, kg=mode, n_layers=2), training_path=path).fit(ds)
    assert model.info["training_path"] == ("fused" if path == "auto" else "autograd")
    assert np.isfinite(model.history[0]["loss"])
    metrics = model.evaluate()
    graph = ablate_kg(ds, mode, 0, split.train)
    assert metrics["kg"] == mode
    assert metrics["dataset_stats"]["triples"] == len(graph.kg)
    assert metrics["dataset_stats"]["entities"] == graph.n_entities
    assert metrics["dataset_fingerprint"] == ds.fingerprint()  # the input data's
    assert 0 <= metrics["test"]["auc"] <= 1
    _, net = build(ds, Config(kg=mode, n_layers=2))
    assert net.entity_emb.shape[0] == graph.n_entities


@pytest.mark.parametrize("model_name", ["per", "cke", "ripplenet", "libfm-transe"])
def test_kg_baselines_train_without_triples(data, model_name):
    ds, _ = data
    model = KGNNLS(Config(model=model_name, epochs=1, kg="none")).fit(ds)
    metrics = model.evaluate()
    assert metrics["dataset_stats"]["triples"] == 0 and metrics["relation_entropy"] is None
    assert np.isfinite(model.history[0]["loss"])


@pytest.mark.parametrize("mode", ["ui", "shuffle:0.5", "none"])
def test_an_ablated_model_scores_explains_saves_and_reloads(data, mode, tmp_path):
    ds, _ = data
    model = KGNNLS(Config(epochs=1, kg=mode)).fit(ds)
    metrics = model.evaluate()
    user, item = ds.user_ids[0], ds.item_ids[1]
    recs = model.recommend(user, k=5)
    assert len(recs) == 5
    why = model.explain(user, item)
    if mode == "ui":
        assert why.relations[0]["relation"] in (UI_RELATION, "[self]")
    loaded = KGNNLS.load(model.save(tmp_path / "model.pt"))
    assert loaded.recommend(user, k=5) == recs
    assert np.allclose(loaded.score([user], [item]), model.score([user], [item]))
    again = loaded.evaluate(ds)  # the ablation re-applied from config and seed
    assert again["dataset_stats"] == metrics["dataset_stats"]
    assert again["test"]["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert again["relation_entropy"] == metrics["relation_entropy"]


def test_loaded_model_refuses_other_data(data, tmp_path):
    from kgnnls.data.synthetic import planted_dataset
    from kgnnls.errors import CheckpointError

    ds, _ = data
    path = KGNNLS(Config(epochs=1, kg="keep:0.5")).fit(ds).save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="fingerprint"):
        KGNNLS.load(path).evaluate(planted_dataset(seed=1))


def test_ablated_entity_table_stays_put_under_torch_load(data):
    """The network's buffers hold the ablated graph: isolated items point at themselves."""
    ds, _ = data
    _, net = build(ds, Config(kg="none"))
    assert torch.equal(net.adj_entity, torch.arange(ds.n_items)[:, None].expand(-1, 8))
