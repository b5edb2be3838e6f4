"""The real server (``kgnnls serve``, uvicorn on 127.0.0.1) under abuse.

1,000 malformed requests, each answered with a 4xx and a JSON error body, the
server still healthy after; then 50 concurrent clients sending valid requests
for at most 10 s (or a request cap), every answer equal to the model's own.
Requests are written to raw sockets, so malformed ones reach the server as sent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from urllib.parse import quote

import pytest

from kgnnls import KGNNLS, Config
from kgnnls.data.synthetic import planted_dataset

MAX_K, MAX_BODY, MAX_PAIRS = 1000, 1 << 20, 10_000  # `kgnnls serve` defaults
N_MALFORMED = 1000
CLIENTS, SECONDS, REQUEST_CAP = 50, 10.0, 2000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             chunked: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None and chunked:
        lines.append("Transfer-Encoding: chunked")
        pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif body is not None:
        if not any(k.lower() == "content-length" for k in headers or {}):
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    else:
        payload = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def _send(port: int, raw: bytes) -> tuple[int, str | None, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # the server may answer (413) and close before it has taken the whole body
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("content-type"), response.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = KGNNLS(Config(seed=0, dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=4,
                          l2_weight=1e-5)).fit(planted_dataset(seed=0))
    run = tmp_path_factory.mktemp("abuse-run")
    model.save(run / "model.pt")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kgnnls", "serve", str(run), "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "error"],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            if _send(port, _request("GET", "/health"))[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("server did not start: " + proc.communicate()[1].decode()[-2000:])
        time.sleep(0.1)
    try:
        yield KGNNLS.load(run), port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _pairs_body(n: int, user: str = "u1", item: str = "i1") -> bytes:
    return json.dumps({"pairs": [{"user": user, "item": item}] * n}).encode()


def _malformed(rnd: random.Random) -> list:
    """Generators of one malformed request each: (kind, raw bytes, expected status)."""
    j = {"Content-Type": "application/json"}
    # one valid pair padded just over the limit (the padding field is ignored by the
    # schema, so only the body limit can refuse it)
    big = json.dumps({"pairs": [{"user": "u1", "item": "i1"}], "pad": "x" * MAX_BODY}).encode()
    assert MAX_BODY < len(big) < MAX_BODY + 100
    odd_ids = ["12345", "-1", "0", "u999999", "../../etc/passwd", "%00", "%ff%fe", "%E2%98%83",
               "u1%20", "U1", "null", "%27%3B--"]
    return [
        ("unknown user", lambda: _request("GET", f"/recommend?user=nobody{rnd.randrange(10**9)}"),
         404),
        ("odd user id", lambda: _request("GET", f"/recommend?user={rnd.choice(odd_ids)}"), 404),
        ("user id too long", lambda: _request("GET", "/recommend?user=" + "u" * 257), 422),
        ("k <= 0", lambda: _request("GET", f"/recommend?user=u1&k={-rnd.randrange(10**6)}"),
         422),
        ("huge k", lambda: _request(
            "GET", f"/recommend?user=u1&k={rnd.choice([MAX_K + 1, 10**9, 10**30])}"), 422),
        ("non-numeric k", lambda: _request("GET", "/recommend?user=u1&k=" + rnd.choice(
            ["ten", "1.5", "1e3", "", "0x10", "%20", "NaN", "inf", "[1]"])), 422),
        ("bad exclude_seen", lambda: _request("GET", "/recommend?user=u1&exclude_seen=maybe"),
         422),
        ("missing user", lambda: _request("GET", "/recommend?k=5"), 422),
        ("explain: missing item", lambda: _request("GET", "/explain?user=u1"), 422),
        ("explain: unknown item", lambda: _request("GET", "/explain?user=u1&item=i999"), 404),
        ("explain: top 0", lambda: _request("GET", "/explain?user=u1&item=i1&top=0"), 422),
        ("wrong method", lambda: _request(*rnd.choice([
            ("POST", "/recommend?user=u1"), ("DELETE", "/score"), ("PUT", "/health"),
            ("GET", "/score"), ("PATCH", "/explain?user=u1&item=i1")])), 405),
        ("unknown path", lambda: _request("GET", rnd.choice(
            ["/", "/nope", "/recommend/u1", "/admin", "/" + quote("é" * 20)])), 404),
        ("invalid JSON", lambda: _request("POST", "/score", rnd.choice(
            [b"{not json", b'{"pairs": [', b"{'pairs': []}", b'{"pairs": [{"user": "u1",}]}']),
            j), 422),
        ("empty body", lambda: _request("POST", "/score", b"", j), 422),
        ("deeply nested JSON", lambda: _request("POST", "/score", b"[" * 100_000, j), 400),
        ("invalid UTF-8", lambda: _request("POST", "/score", b'{"pairs": ["\xff\xfe"]}', j),
         400),
        ("wrong JSON shape", lambda: _request("POST", "/score", rnd.choice(
            [b'{"pairs": []}', b'{"pairs": 5}', b"null", b"[]", b'{"pairs": [{"user": 1}]}',
             b'{"pairs": [{"user": "u1", "item": ["i1"]}]}']), j), 422),
        ("not JSON content type", lambda: _request(
            "POST", "/score", _pairs_body(1), {"Content-Type": "text/plain"}), 422),
        ("unknown item", lambda: _request("POST", "/score", _pairs_body(2, item="zzz"), j), 404),
        ("too many pairs", lambda: _request("POST", "/score", _pairs_body(MAX_PAIRS + 1), j),
         413),
        ("declared body too large", lambda: _request(
            "POST", "/score", b"{" * 1000, {**j, "Content-Length": str(10 * MAX_BODY)}), 413),
        ("oversized body", lambda: _request("POST", "/score", big, j), 413),
        ("oversized chunked body", lambda: _request("POST", "/score", big, j, chunked=True),
         413),
    ]


def test_malformed_requests_get_4xx_json_and_the_server_survives(server):
    _, port, proc = server
    rnd = random.Random(0)
    kinds = _malformed(rnd)
    statuses: Counter = Counter()
    failures = []
    for n in range(N_MALFORMED):
        kind, make, expected = kinds[n % len(kinds)]
        try:
            status, ctype, body = _send(port, make())
            detail = json.loads(body)["detail"] if ctype == "application/json" else None
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            failures.append((kind, f"{type(e).__name__}: {e}"))
            continue
        statuses[status] += 1
        if status != expected or detail is None:
            failures.append((kind, status, ctype, body[:200]))
    crashes = sum(n for s, n in statuses.items() if s >= 500) + (proc.poll() is not None)
    print(f"\nabuse: {N_MALFORMED} malformed requests ({len(kinds)} kinds), statuses "
          f"{dict(sorted(statuses.items()))}, failures {len(failures)}, crashes {crashes}")
    assert not failures, failures[:10]
    assert crashes == 0 and sum(statuses.values()) == N_MALFORMED
    assert all(400 <= s < 500 for s in statuses)
    status, _, body = _send(port, _request("GET", "/health"))
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_concurrent_clients_get_correct_answers(server):
    model, port, proc = server
    users, items = list(model.user_ids)[::2], list(model.item_ids)
    ks = (1, 7, 20)
    expected_recs = {(u, k): model.recommend(u, k=k) for u in users for k in ks}
    matrix = {}
    for u in users:
        matrix.update(zip([(u, i) for i in items], model.score([u] * len(items), items).tolist(),
                          strict=True))
    lock = threading.Lock()
    sent, wrong, errors = [0], [], []
    stop_at = time.monotonic() + SECONDS

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop_at:
            with lock:
                if sent[0] >= REQUEST_CAP:
                    return
                sent[0] += 1
            try:
                if rnd.random() < 0.5:
                    u, k = rnd.choice(users), rnd.choice(ks)
                    status, _, body = _send(port, _request("GET", f"/recommend?user={u}&k={k}"))
                    got = [(x["item"], x["score"]) for x in json.loads(body)["items"]]
                    want = expected_recs[u, k]
                    ok = status == 200 and [i for i, _ in got] == [i for i, _ in want] and all(
                        abs(a[1] - b[1]) <= 1e-6 for a, b in zip(got, want, strict=True))
                else:
                    pairs = [(rnd.choice(users), rnd.choice(items))
                             for _ in range(rnd.randint(1, 20))]
                    body = json.dumps({"pairs": [{"user": u, "item": i} for u, i in pairs]})
                    status, _, raw = _send(port, _request(
                        "POST", "/score", body.encode(), {"Content-Type": "application/json"}))
                    got = json.loads(raw)["scores"]
                    ok = status == 200 and len(got) == len(pairs) and all(
                        abs(g - matrix[p]) <= 1e-6 for g, p in zip(got, pairs, strict=True))
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            if not ok:
                wrong.append(status)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(s,)) for s in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 40)
    elapsed = time.monotonic() - started
    print(f"\nconcurrent: {sent[0]} valid requests from {CLIENTS} clients in {elapsed:.1f} s, "
          f"wrong {len(wrong)}, errors {len(errors)}, server alive {proc.poll() is None}")
    assert not any(t.is_alive() for t in threads)
    assert not errors and not wrong, (errors[:5], wrong[:5])
    assert sent[0] >= CLIENTS and proc.poll() is None
    assert _send(port, _request("GET", "/health"))[0] == 200
