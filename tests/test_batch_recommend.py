"""Batch recommend (implicit's form), similar_items, recommend --all, POST /recommend/batch."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import seen_items
from kgnnls import KGNNLS, Config, DataError
from kgnnls.cli import main
from kgnnls.data.synthetic import planted_dataset
from kgnnls.serve import create_app

FIT = dict(dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=4, l2_weight=1e-5)


@pytest.fixture(scope="module")
def data():
    return planted_dataset(seed=0)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    model = KGNNLS(Config(seed=0, **FIT)).fit(data)
    run = tmp_path_factory.mktemp("run")
    model.save(run / "model.pt")
    return model, run


def test_batch_rows_equal_the_single_user_path(trained, monkeypatch):
    model = trained[0]
    users = model.user_ids  # every user, ranked 7 at a time (a last, partial chunk too)
    monkeypatch.setattr(model.network, "ranking_chunk", lambda n_items: 7)
    k = len(model.item_ids) - 1  # deep enough that every user's row needs padding
    items, scores = model.recommend(users, k=k, filter_seen=True)
    assert items.shape == scores.shape == (len(users), k)
    for row, user in enumerate(users):
        single = model.recommend(user, k=k)
        n = len(single)
        assert n == len(model.item_ids) - len(seen_items(model, user))
        assert items[row, :n].tolist() == [i for i, _ in single]
        np.testing.assert_allclose(scores[row, :n], [p for _, p in single], rtol=1e-6)
        assert (items[row, n:] == "").all() and np.isnan(scores[row, n:]).all()
        assert not set(items[row, :n]) & set(seen_items(model, user))


def test_batch_forms_and_aliases(trained):
    model = trained[0]
    one = model.recommend("u3", k=5)
    assert isinstance(one, list) and all(isinstance(i, str) for i, _ in one)
    items, scores = model.recommend(["u3"], k=5)  # a list, even of one: arrays
    assert items.shape == (1, 5) and items[0].tolist() == [i for i, _ in one]
    items, _ = model.recommend(np.array(["u3", "u3"]), k=5, exclude_seen=True,
                               filter_seen=False)  # filter_seen (implicit's name) wins
    assert items[0].tolist() == [i for i, _ in model.recommend("u3", k=5, exclude_seen=False)]
    assert (scores[0][:-1] >= scores[0][1:]).all()  # best first
    with pytest.raises(DataError, match="unknown user id 'nobody'"):
        model.recommend(["u1", "nobody"], k=3)


def test_similar_items_follow_the_planted_genres(trained, data):
    model = trained[0]
    genre = np.full(data.n_items, -1)
    is_genre = (data.relation_names[data.kg[:, 1]] == "genre") & (data.kg[:, 0] < data.n_items)
    genre[data.kg[is_genre, 0]] = data.kg[is_genre, 2]
    ids, sims = model.similar_items(model.item_ids, k=5)
    assert ids.shape == (data.n_items, 5) and (sims <= 1 + 1e-5).all()
    assert not (ids == model.item_ids[:, None]).any()  # never the item itself
    same = genre[[[model.item_index(i) for i in row] for row in ids]] == genre[:, None]
    assert same.mean() > 0.6  # 4 planted genres: chance is about 0.25
    single = model.similar_items("i3", k=5)
    assert [i for i, _ in single] == ids[3].tolist()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_recommend_all_writes_every_user_atomically(trained, tmp_path, capsys, suffix):
    model, run = trained
    out = tmp_path / f"recs{suffix}"
    assert main(["recommend", str(run), "--all", "--out", str(out), "-k", "4", "-q"]) == 0
    if suffix == ".csv":
        with out.open() as f:
            rows = list(csv.DictReader(f))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    assert len(rows) == 4 * len(model.user_ids)
    u7 = [r for r in rows if r["user"] == "u7"]
    assert [r["item"] for r in u7] == [i for i, _ in model.recommend("u7", k=4)]
    assert [int(r["rank"]) for r in u7] == [1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
    before = out.read_bytes()
    assert main(["recommend", str(run), "--all", "--out", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["recommend", str(run), "--all", "--out", str(out), "-q", "--overwrite"]) == 0


@pytest.mark.parametrize("argv", [
    ["--all"], ["--all", "--out", "recs.txt"], ["--all", "--out", "r.csv", "--user", "u1"],
    [], ["--user", "u1", "--out", "r.csv"],
])
def test_recommend_all_usage_errors(trained, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main(["recommend", str(trained[1]), *argv]) == 2
    assert "kgnnls: error:" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def client(trained):
    return TestClient(create_app(trained[0], max_k=50, max_batch_users=10))


def test_batch_endpoint_matches_the_single_endpoint(client):
    got = client.post("/recommend/batch", json={"users": ["u7", "u1"], "k": 5}).json()
    assert [r["user"] for r in got["results"]] == ["u7", "u1"]
    for result in got["results"]:
        single = client.get("/recommend", params={"user": result["user"], "k": 5}).json()
        assert result["items"] == single["items"]
    unfiltered = client.post("/recommend/batch",
                             json={"users": ["u7"], "k": 5, "filter_seen": False}).json()
    assert unfiltered["results"][0]["items"] == client.get(
        "/recommend", params={"user": "u7", "k": 5, "exclude_seen": False}).json()["items"]


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"users": ["u1"] * 11}, 413, "at most 10 users per request"),
    ({"users": ["u1"], "k": 51}, 422, "k must be at most 50"),
    ({"users": ["u1"], "k": 0}, 422, None),
    ({"users": []}, 422, None),
    ({"users": ["u1", "nobody"]}, 404, "unknown user id 'nobody'"),
    ({"user": "u1"}, 422, None),
])
def test_batch_endpoint_bad_requests_get_4xx(client, body, status, detail):
    response = client.post("/recommend/batch", json=body)
    assert response.status_code == status
    if detail is not None:
        assert detail in response.json()["detail"]
