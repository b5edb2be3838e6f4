"""Latency of the real HTTP server: /recommend p50/p99 on Last.FM.

Starts ``kgnnls serve`` on 127.0.0.1 in a subprocess, warms it up, then sends
requests for random users at concurrency 1 and 8 and records each request's
latency. Writes benchmarks/results/serve.json.

    python benchmarks/serve.py [--run RUN_DIR] [--requests 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Timer, machine, write_result


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="trained run directory (default: train Last.FM)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            subprocess.run([sys.executable, "-m", "kgnnls", "train", "--dataset", "lastfm",
                            "--out", str(run), "--quiet", "--show", "0"], check=True,
                           stdout=subprocess.DEVNULL)
        port = _port()
        server = subprocess.Popen([sys.executable, "-m", "kgnnls", "serve", str(run),
                                   "--port", str(port), "--log-level", "warning"])
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    _get(base + "/health")
                    break
                except OSError:
                    time.sleep(0.1)
            with urllib.request.urlopen(base + "/health") as r:
                health = json.load(r)
            from kgnnls import KGNNLS

            users = list(KGNNLS.load(run).user_ids)
            rnd = random.Random(0)
            urls = [f"{base}/recommend?user={rnd.choice(users)}&k={args.k}"
                    for _ in range(args.requests)]
            for url in urls[:50]:  # warm-up
                _get(url)
            results = {}
            for concurrency in (1, 8):
                with Timer() as t, ThreadPoolExecutor(concurrency) as pool:
                    lat = sorted(pool.map(_get, urls))
                q = statistics.quantiles(lat, n=100)
                results[str(concurrency)] = {
                    "requests": len(lat), "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3,
                    "mean_ms": statistics.fmean(lat) * 1e3, "throughput_rps": len(lat) / t.seconds,
                    "other_load": t.other_load}
        finally:
            server.terminate()
            server.wait(timeout=20)
    print(f"{'concurrency':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'other load':>10}")
    for c, r in results.items():
        print(f"{c:>11} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['throughput_rps']:>8.0f} "
              f"{r['other_load']:>10.0%}")
    path = write_result("serve", {"machine": machine(), "model": health, "k": args.k,
                                  "endpoint": "/recommend", "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
