"""Load speed: a MovieLens-20M-shaped raw directory to a ready Dataset.

Generates, in a temporary directory, the authors' raw MovieLens layout:
``ratings.csv`` (``userId,movieId,rating,timestamp`` header, half-star
ratings, rows sorted by user as ml-20m ships them, no repeated pair), an
``item_index2entity_id.txt`` mapping most rated movies to KG entities and a
``kg.txt`` of string triples of the KGNN-LS movie KG's size. Each size is then
loaded with ``kgnnls.load_dataset(DIR)`` (reading, the paper's preprocessing,
1:1 negative sampling, validation) plus ``Dataset.fingerprint()`` in a fresh
child process, which reports its wall time and peak RSS (``VmHWM``), so the
parent's memory never counts.

Targets (issue 23): 20 M rows to a ready Dataset in at most 20 s with a peak
RSS of at most 3 GiB, on the 2-core development machine.

    python benchmarks/load_speed.py [--rows 5000000 20000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result

TARGET_SECONDS = 20.0
TARGET_RSS_GIB = 3.0
ML20M_ROWS, ML20M_USERS, ML20M_MOVIES = 20_000_263, 138_493, 26_744
MAPPED_MOVIES = 16_954  # KGNN-LS movie item map (paper Table 2 items)
KG_TRIPLES, KG_ENTITIES, KG_RELATIONS = 499_474, 102_569, 32  # KGNN-LS movie KG
STARS = np.array(["0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0"])
STAR_P = np.array([1.1, 3.4, 1.4, 7.1, 4.4, 21.4, 11.0, 27.8, 7.7, 14.5]) / 100.0

CHILD = r"""
import json, sys, time
def hwm_kib():  # peak RSS of this process image (VmHWM); see measure()
    with open("/proc/self/status") as f:
        return int(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")))
t0 = time.perf_counter()
import kgnnls
from kgnnls.data.readers import read_directory
from kgnnls.data.sampling import sample_negatives
rss_import = hwm_kib()
t1 = time.perf_counter()
if sys.argv[2] == "stages":
    ds = read_directory(sys.argv[1]); t2 = time.perf_counter()
    ds = sample_negatives(ds, 0); t3 = time.perf_counter()
    stages = {"read": t2 - t1, "negatives": t3 - t2}
else:
    ds = kgnnls.load_dataset(sys.argv[1], seed=0); stages = {}
t4 = time.perf_counter()
fp = ds.fingerprint()
t5 = time.perf_counter()
print(json.dumps({"seconds": t5 - t1, "load_seconds": t4 - t1, "fingerprint_seconds": t5 - t4,
                  "import_seconds": t1 - t0, "stages": stages, "stats": ds.stats(),
                  "fingerprint": fp, "excluded": len(ds.excluded),
                  "peak_rss_kib": hwm_kib(),
                  "rss_after_import_kib": rss_import}))
"""


def generate(directory: Path, n_rows: int, seed: int = 0) -> dict[str, int]:
    """Write ratings.csv, item_index2entity_id.txt and kg.txt of ml-20m's shape."""
    rng = np.random.default_rng(seed)
    scale = n_rows / ML20M_ROWS
    n_users = max(int(ML20M_USERS * scale), 100)
    movie_ids = np.sort(rng.choice(131_262, ML20M_MOVIES, replace=False) + 1)
    popularity = 1.0 / np.arange(1, ML20M_MOVIES + 1) ** 0.9  # Zipf-like, as MovieLens
    popularity = rng.permutation(popularity / popularity.sum())
    activity = rng.lognormal(0.0, 1.0, n_users)
    users = movies = np.zeros(0, dtype=np.int64)
    factor = 1.05
    while len(users) < n_rows:  # repeated pairs are dropped: draw more until enough
        extra = int(n_rows * factor) + 1000
        users = np.sort(rng.choice(n_users, extra, p=activity / activity.sum()))
        movies = rng.choice(ML20M_MOVIES, extra, p=popularity)
        _, first = np.unique(users.astype(np.int64) * ML20M_MOVIES + movies, return_index=True)
        factor *= 1.25 * n_rows / max(len(first), 1)
        users, movies = users[first], movies[first]
    keep = np.sort(rng.permutation(len(users))[:n_rows])
    users, movies = users[keep] + 1, movie_ids[movies[keep]]
    stars = rng.choice(len(STARS), len(users), p=STAR_P / STAR_P.sum())
    table = pa.table({
        "userId": users, "movieId": movies,
        "rating": pa.DictionaryArray.from_arrays(pa.array(stars, pa.int32()), pa.array(STARS)),
        "timestamp": rng.integers(789_652_009, 1_427_784_002, len(users))})
    with open(directory / "ratings.csv", "wb") as f:  # arrow would quote the header
        f.write(b"userId,movieId,rating,timestamp\n")
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none",
                                                     batch_size=1 << 20))

    mapped = rng.choice(movie_ids, MAPPED_MOVIES, replace=False)
    entity_names = np.char.add("m.0", np.arange(KG_ENTITIES).astype(str))
    (directory / "item_index2entity_id.txt").write_text(
        "".join(f"{m}\t{e}\n" for m, e in zip(mapped, entity_names[:MAPPED_MOVIES], strict=True)))
    heads = rng.integers(0, KG_ENTITIES, KG_TRIPLES)
    heads[: MAPPED_MOVIES] = np.arange(MAPPED_MOVIES)  # every mapped movie has a triple
    tails = rng.integers(0, KG_ENTITIES, KG_TRIPLES)
    rels = np.char.add("film.film.rel", rng.integers(0, KG_RELATIONS, KG_TRIPLES).astype(str))
    kg = pa.table({"h": entity_names[heads], "r": rels, "t": entity_names[tails]})
    pacsv.write_csv(kg, directory / "kg.txt", pacsv.WriteOptions(
        include_header=False, delimiter="\t", quoting_style="none"))
    return {"rows": len(users), "users": int(np.unique(users).size),
            "bytes": (directory / "ratings.csv").stat().st_size}


def measure(directory: Path, mode: str = "load") -> dict:
    """Load ``directory`` in a fresh interpreter; its wall time and peak RSS.

    The peak is the child's ``VmHWM``, not ``ru_maxrss``: Linux carries
    ``ru_maxrss`` over fork and exec, so a child of this process (which has
    just generated 20 M rows) would report the generator's peak.
    """
    out = subprocess.run([sys.executable, "-c", CHILD, str(directory), mode],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[5_000_000, 20_000_000])
    ap.add_argument("--keep", type=Path, help="generate into (and keep) this directory")
    ap.add_argument("--stages", action="store_true", help="time reading and sampling apart")
    args = ap.parse_args(argv)
    info = machine()
    runs = []
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="kgnnls-load-") as tmp:
            d = (args.keep or Path(tmp)) / f"ml-{n}"
            d.mkdir(parents=True, exist_ok=True)
            gen = generate(d, n)
            with open("/proc/loadavg") as f:
                load = f.read().split()[:3]
            r = measure(d, "stages" if args.stages else "load")
        r.update(generated=gen, loadavg_before=load,
                 peak_rss_gib=r["peak_rss_kib"] / 2**20,
                 rss_after_import_gib=r["rss_after_import_kib"] / 2**20)
        runs.append(r)
        print(f"{gen['rows']:>12,} rows  {r['seconds']:7.2f} s  "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB  (after import "
              f"{r['rss_after_import_gib']:.2f} GiB; load {' '.join(load)})",
              flush=True)
    big = max(runs, key=lambda r: r["generated"]["rows"])
    payload = {"benchmark": "load_speed", "machine": info, "runs": runs,
               "target_seconds": TARGET_SECONDS, "target_peak_rss_gib": TARGET_RSS_GIB,
               "largest_rows": big["generated"]["rows"],
               "met": bool(big["seconds"] <= TARGET_SECONDS
                           and big["peak_rss_gib"] <= TARGET_RSS_GIB)}
    if not args.stages:
        print(f"wrote {write_result('load_speed', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
