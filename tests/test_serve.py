"""HTTP serving: the framework's test client, and the real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from kgnnls import KGNNLS, Config
from kgnnls.data.synthetic import planted_dataset
from kgnnls.serve import create_app

FIT = dict(dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=4, l2_weight=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = KGNNLS(Config(seed=0, **FIT)).fit(planted_dataset(seed=0))
    run = tmp_path_factory.mktemp("run")
    model.save(run / "model.pt")
    return model, run


@pytest.fixture(scope="module")
def client(trained):
    return TestClient(create_app(trained[0], max_k=50, max_pairs=100))


def test_health_and_docs(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["users"] == 60 and body["items"] == 80
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/recommend", "/score", "/explain"} <= set(paths)


def test_recommend_score_explain_match_the_api(client, trained):
    model = trained[0]
    got = client.get("/recommend", params={"user": "u7", "k": 5}).json()
    assert got["items"] == [{"item": i, "score": pytest.approx(s)}
                            for i, s in model.recommend("u7", k=5)]
    pairs = [{"user": "u1", "item": "i3"}, {"user": "u2", "item": "i9"}]
    scores = client.post("/score", json={"pairs": pairs}).json()["scores"]
    assert scores == pytest.approx(model.score(["u1", "u2"], ["i3", "i9"]).tolist())
    ex = client.get("/explain", params={"user": "u1", "item": "i3"}).json()
    assert ex["item"] == "i3" and ex["relations"]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("get", "/recommend", {"params": {"user": "nobody"}}, 404),
    ("get", "/recommend", {"params": {"user": "u1", "k": 0}}, 422),
    ("get", "/recommend", {"params": {"user": "u1", "k": 51}}, 422),
    ("get", "/recommend", {"params": {"user": "u1", "k": "ten"}}, 422),
    ("get", "/recommend", {}, 422),
    ("post", "/score", {"json": {"pairs": []}}, 422),
    ("post", "/score", {"json": {"pairs": [{"user": "u1", "item": "zzz"}]}}, 404),
    ("post", "/score", {"json": {"pairs": [{"user": "u1", "item": "i1"}] * 101}}, 413),
    ("post", "/score", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     422),
    ("post", "/recommend", {}, 405),
    ("get", "/explain", {"params": {"user": "u1", "item": "nope"}}, 404),
])
def test_bad_requests_get_4xx_json(client, method, path, kwargs, status):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status
    assert "detail" in response.json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_answers_200_concurrent_requests(trained):
    model, run = trained
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kgnnls", "serve", str(run), "--port",
                             str(port), "--log-level", "warning"], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    assert json.load(r)["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("server did not start: " + proc.stderr.read().decode()[-2000:])
                time.sleep(0.2)
        users = [f"u{i % 60}" for i in range(200)]
        expected = {u: [i for i, _ in model.recommend(u, k=7)] for u in set(users)}

        def ask(user):
            with urllib.request.urlopen(f"{base}/recommend?user={user}&k=7", timeout=30) as r:
                return user, r.status, json.load(r)

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(ask, users))
        assert len(answers) == 200
        for user, status, body in answers:
            assert status == 200 and body["user"] == user
            assert [x["item"] for x in body["items"]] == expected[user]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
