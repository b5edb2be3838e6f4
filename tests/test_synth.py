"""Synthetic datasets of a paper dataset's shape (``synthetic_like``, ``kgnnls data synth``)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kgnnls import KGNNLS, Config, load_dataset
from kgnnls.data.synthetic import shape_at, synthetic_like
from kgnnls.evaluate import ctr_metrics

TABLE2_MOVIE = {"users": 138_159, "items": 16_954, "interactions": 13_501_622,
                "entities": 102_569, "relations": 32, "triples": 499_474}


def _counts(ds):
    st = ds.stats()
    return {k: st[k] for k in TABLE2_MOVIE}


def test_shape_at_scale_one_is_the_papers_table_2_row():
    shape = shape_at("ml-20m", 1.0)
    assert {k: shape[k] for k in TABLE2_MOVIE} == TABLE2_MOVIE
    assert shape_at("movielens-20m", 1.0) == shape
    half = shape_at("ml-20m", 0.5)
    assert half["users"] == round(138_159 * 0.5) and half["relations"] == 32
    assert half["interactions"] == 2 * round(6_750_811 * 0.5)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KGNNLS_SYNTH_X1") != "1",
                    reason="about 20 s and 1.5 GiB: set KGNNLS_SYNTH_X1=1")
def test_scale_one_has_exactly_the_table_2_counts():
    ds = synthetic_like("ml-20m", 1.0, seed=0)
    assert _counts(ds) == TABLE2_MOVIE
    assert ds.n_positives == 13_501_622 // 2


@pytest.fixture(scope="module")
def small():
    return synthetic_like("ml-20m", 0.05, seed=0)


def test_counts_are_exact_and_rows_well_formed(small):
    shape = shape_at("ml-20m", 0.05)
    assert _counts(small) == {k: shape[k] for k in TABLE2_MOVIE}
    r = small.ratings
    assert small.n_positives * 2 == len(r)
    keys = r[:, 0] * small.n_items + r[:, 1]
    assert len(np.unique(keys)) == len(keys)  # no pair labelled twice
    pos = np.bincount(r[r[:, 2] == 1, 0], minlength=small.n_users)
    neg = np.bincount(r[r[:, 2] == 0, 0], minlength=small.n_users)
    assert (pos >= 1).all() and (pos == neg).all()  # 1:1 negatives for every user
    kg = small.kg
    assert set(np.unique(kg[:, 1])) == set(range(32))
    ends = np.zeros(small.n_entities, bool)
    ends[kg[:, [0, 2]].ravel()] = True
    assert ends.all()  # every entity occurs in the KG (the final layout sizes by max id)
    assert (kg[kg[:, 1] == 0, 0] == np.arange(small.n_items)).all()  # one genre per item


def test_same_seed_same_arrays_other_seed_different():
    a, b = synthetic_like("ml-20m", 0.02, seed=3), synthetic_like("ml-20m", 0.02, seed=3)
    assert np.array_equal(a.ratings, b.ratings) and np.array_equal(a.kg, b.kg)
    c = synthetic_like("ml-20m", 0.02, seed=4)
    assert _counts(c) == _counts(a)
    assert not np.array_equal(a.ratings, c.ratings) and not np.array_equal(a.kg, c.kg)


def test_too_small_a_scale_is_refused():
    with pytest.raises(ValueError, match="too small"):
        synthetic_like("ml-20m", 0.001)
    with pytest.raises(ValueError, match="no Table 2 shape"):
        shape_at("no-such-dataset")


def test_planted_signal_is_learnable():
    ds = synthetic_like("ml-20m", 0.01, seed=0)
    cfg = Config(seed=0, dim=16, n_neighbors=8, lr=1e-2, batch_size=4096, epochs=3,
                 patience=3, ls_weight=0.1, l2_weight=1e-6)
    model = KGNNLS(cfg).fit(ds)
    from kgnnls.train import make_split

    test = make_split(ds, model.config).test
    assert ctr_metrics(model.network, test)["auc"] > 0.6


def test_cli_writes_files_load_dataset_reads_back(tmp_path, capsys):
    from kgnnls.cli import main

    out = tmp_path / "synth"
    assert main(["data", "synth", "--like", "ml-20m", "--scale", "0.01", "--seed", "1",
                 "--out", str(out)]) == 0
    assert "interactions" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"ratings_final.txt", "kg_final.txt",
                                               "item_index2entity_id.txt"}
    back, made = load_dataset(out), synthetic_like("ml-20m", 0.01, seed=1)
    assert _counts(back) == _counts(made)
    assert back.negatives == "given"
    order = np.lexsort((made.ratings[:, 1], made.ratings[:, 0]))
    assert np.array_equal(back.ratings, made.ratings[order])
    assert np.array_equal(back.kg, made.kg)
    assert main(["data", "synth", "--scale", "0.001", "--out", str(tmp_path / "x")]) == 2
