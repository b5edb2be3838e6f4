"""In-memory datasets: Dataset.from_frames / from_arrays / from_csr (kgnnls.data.frames)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from kgnnls import KGNNLS, Config, DataError, Dataset
from kgnnls.data.frames import OWN_ENTITY_PREFIX, own_item_entities
from kgnnls.data.synthetic import planted_dataset

FIT = dict(dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=4, l2_weight=1e-5)


@pytest.fixture(scope="module")
def planted():
    return planted_dataset(seed=0)


def _frames(ds: Dataset, unlinked: int = 0):
    """``ds`` as three DataFrames of original ids; the last ``unlinked`` items get no link."""
    inter = pd.DataFrame({"user_id": ds.user_ids[ds.ratings[:, 0]],
                          "item_id": ds.item_ids[ds.ratings[:, 1]], "label": ds.ratings[:, 2]})
    kg = pd.DataFrame({"head": ds.entity_ids[ds.kg[:, 0]],
                       "relation": ds.relation_names[ds.kg[:, 1]],
                       "tail": ds.entity_ids[ds.kg[:, 2]]})
    n = ds.n_items - unlinked
    links = pd.DataFrame({"item": ds.item_ids[:n], "entity": ds.entity_ids[:n]})
    return inter, kg, links


def test_from_frames_rebuilds_a_dataset_exactly(planted):
    inter, kg, links = _frames(planted)
    ds = Dataset.from_frames(inter, kg, links, name="planted")
    assert ds.stats() == planted.stats()
    assert ds.negatives == "given"  # the planted rows hold their sampled negatives
    assert _named(ds) == _named(planted)  # same rows and triples by original ids


def _named(ds: Dataset) -> tuple[list, list]:
    """Rows and triples by original ids, sorted: equal however a source indexed them."""
    rows = sorted(zip(ds.user_ids[ds.ratings[:, 0]], ds.item_ids[ds.ratings[:, 1]],
                      ds.ratings[:, 2].tolist(), strict=True))
    kg = sorted(zip(ds.entity_ids[ds.kg[:, 0]], ds.relation_names[ds.kg[:, 1]],
                    ds.entity_ids[ds.kg[:, 2]], strict=True))
    return rows, kg


def test_unlinked_items_get_their_own_entity_and_train(planted):
    inter, kg, links = _frames(planted, unlinked=10)
    ds = Dataset.from_frames(inter, kg, links)
    assert ds.n_items == planted.n_items and ds.n_entities == planted.n_entities + 10
    unlinked = [ds.item_index(i) for i in planted.item_ids[-10:]]
    assert ds.entity_ids[unlinked].tolist() == [OWN_ENTITY_PREFIX + i
                                                for i in planted.item_ids[-10:]]
    assert not np.isin(unlinked, ds.kg[:, [0, 2]].ravel()).any()  # no KG edges
    model = KGNNLS(Config(seed=0, **FIT)).fit(ds)
    assert model.evaluate()["test"]["auc"] > 0.6
    assert len(model.recommend(ds.user_ids[0], k=3)) == 3


def test_no_kg_and_no_negatives_samples_one_per_positive():
    users = np.repeat([f"u{i}" for i in range(20)], 5)
    items = [f"i{(3 * i + j) % 40}" for i in range(20) for j in range(5)]
    inter = pd.DataFrame({"user": users, "item": items})
    a = Dataset.from_frames(inter, seed=3)
    b = Dataset.from_frames(inter, seed=3)
    c = Dataset.from_frames(inter, seed=4)
    assert len(a.kg) == 0 and a.n_entities == a.n_items
    assert a.n_positives == 100 and len(a.ratings) == 200
    assert a.negatives == "sampled 1:1 (seed 3)"
    np.testing.assert_array_equal(a.ratings, b.ratings)  # seeded
    assert not np.array_equal(a.ratings, c.ratings)
    model = KGNNLS(Config(seed=0, **{**FIT, "epochs": 1})).fit(a)
    assert np.isfinite(model.score(["u0"], ["i0"])).all()


def test_columns_are_inferred_or_given():
    inter = pd.DataFrame({"user_id:token": [1, 2, 2, 3], "item_id:token": [7, 8, 9, 7],
                          "rating:float": [5.0, 1.0, 4.0, 4.5]})
    ds = Dataset.from_frames(inter, threshold=4)
    assert ds.user_ids.tolist() == ["1", "2", "3"] and ds.item_ids.tolist() == ["7", "8", "9"]
    assert ds.ratings[:, 2].tolist() == [1, 0, 1, 1]  # below the threshold: labelled negative
    renamed = inter.set_axis(["who", "what", "stars"], axis=1)
    ds2 = Dataset.from_frames(renamed, threshold=4,
                              columns={"user": "who", "item": "what", "rating": "stars"})
    assert ds2.fingerprint() == ds.fingerprint()


@pytest.mark.parametrize(("frame", "message"), [
    ({"user": ["a", None], "item": ["x", "y"]}, "interactions: column 'user', row 1: missing"),
    ({"user": [1, -1], "item": ["x", "y"]}, "column 'user', row 1: negative id -1"),
    ({"user": [1.0, 2.5], "item": ["x", "y"]}, "column 'user', row 1: non-integer id 2.5"),
    ({"user": ["a", "b"], "item": [3.0, np.nan]}, "column 'item', row 1: missing value"),
    ({"user": ["a", "a", "b"], "item": ["x", "y", "x"], "label": [1, 0, 7]},
     "column 'label', row 2: label must be 0 or 1, got 7"),
    ({"user": ["a", "b", "a"], "item": ["x", "y", "x"], "label": [1, 0, 0]},
     "rows 0 and 2: duplicate (user, item) pair ('a', 'x') with conflicting labels"),
    ({"user": ["a"], "item": ["x"], "rating": [3.0]}, "no threshold was given"),
    ({"person": ["a"], "item": ["x"]}, "no user column among person, item"),
])
def test_bad_frames_name_column_and_row(frame, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Dataset.from_frames(pd.DataFrame(frame))


def test_bad_kg_and_links_are_refused():
    inter = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "label": [1, 0]})
    with pytest.raises(DataError, match="kg: column 'tail', row 0: missing value"):
        Dataset.from_frames(inter, pd.DataFrame({"head": ["x"], "relation": ["r"],
                                                 "tail": [None]}))
    with pytest.raises(DataError, match="no KG triple mentions any item"):
        Dataset.from_frames(inter, pd.DataFrame({"head": ["p"], "relation": ["r"],
                                                 "tail": ["q"]}))
    links = pd.DataFrame({"item": ["x", "y"], "entity": ["E", "E"]})
    with pytest.raises(DataError, match="item_entities: column 'entity', row 1: 'E' appears"):
        Dataset.from_frames(inter, pd.DataFrame({"head": ["E"], "relation": ["r"],
                                                 "tail": ["F"]}), links)


def test_own_entity_names_never_clash():
    entities, n_own = own_item_entities(np.array(["x", "y"]), np.array(["x"]), np.array(["E"]),
                                        np.array([OWN_ENTITY_PREFIX + "y", "E"]))
    assert n_own == 1 and entities[0] == "E"
    assert entities[1] == OWN_ENTITY_PREFIX * 2 + "y"  # the plain name is a KG entity already


def test_from_arrays_and_csr_agree(planted):
    r = planted.ratings
    a = Dataset.from_arrays(r[:, 0], r[:, 1], r[:, 2], planted.kg, n_items=planted.n_items)
    assert a.fingerprint() == planted.fingerprint()
    pos = r[r[:, 2] == 1]
    pos = pos[np.lexsort((pos[:, 1], pos[:, 0]))]  # the CSR's row order
    m = sparse.csr_matrix((np.full(len(pos), 3.0), (pos[:, 0], pos[:, 1])),
                          shape=(planted.n_users, planted.n_items))
    c = Dataset.from_csr(m, planted.kg, seed=5)
    b = Dataset.from_arrays(pos[:, 0], pos[:, 1], None, planted.kg, n_items=planted.n_items,
                            seed=5)
    assert c.n_items == planted.n_items and c.n_positives == len(pos)
    assert c.fingerprint() == b.fingerprint()  # counts are positives; negatives seeded alike


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(users=[0, 1.5], items=[0, 1]), "users: row 1: non-integer value 1.5"),
    (dict(users=[0, np.nan], items=[0, 1]), "users: row 1: missing value"),
    (dict(users=[0, 1], items=[0, -2]), "items: row 1: negative index -2"),
    (dict(users=[0, 1], items=[0, 5], n_items=3), "items: row 1: index 5 >= n_items=3"),
    (dict(users=[0, 0], items=[1, 1], labels=[1, 0]), "rows 0 and 1: duplicate"),
    (dict(users=[0, 1], items=[0, 1], kg_triples=[[0, 0, 2], [1, 0, 9]], n_entities=4),
     "kg_triples: row 1, column tail: unknown entity 9"),
])
def test_bad_arrays_name_row_and_column(kwargs, message):
    with pytest.raises(DataError, match=message):
        Dataset.from_arrays(**kwargs)


def test_csr_nan_is_refused():
    m = sparse.csr_matrix(np.array([[1.0, 0.0], [0.0, np.nan]]))
    with pytest.raises(DataError, match="user_items: row 1, column 1: NaN"):
        Dataset.from_csr(m)
