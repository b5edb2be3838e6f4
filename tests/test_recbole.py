"""RecBole atomic files: Book-Crossing round trip gives the same data and results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kgnnls import load_dataset
from kgnnls.cli import main
from kgnnls.data import read_recbole
from kgnnls.data.writers import write_recbole

FAST = ["--set", "dim=8", "--set", "n_layers=1", "--set", "epochs=1", "--set", "batch_size=2048",
        "--set", "topk_users=10", "--quiet", "--show", "0"]


def test_book_as_recbole_atomic_files_trains_identically(tmp_path, book_dir, capsys):
    native = load_dataset("book-crossing", data_dir=book_dir)
    atomic = tmp_path / "bx-atomic"
    # a rating column (positives 8, negatives 2) and string entity ids
    write_recbole(native, atomic, name="bx", ratings=(8.0, 2.0), entity_prefix="m.")
    assert (atomic / "bx.kg").read_text().splitlines()[1].startswith("m.")

    # the rows below the threshold are the labelled negatives: threshold-labels
    back = read_recbole(atomic, threshold=5, ratings="threshold-labels")
    assert back.stats() | {"dataset": ""} == native.stats() | {"dataset": ""}
    np.testing.assert_array_equal(back.ratings, native.ratings)
    np.testing.assert_array_equal(back.kg, native.kg)
    assert back.fingerprint() == native.fingerprint()

    runs = {}
    for name, args in (("native", ["--dataset", "book-crossing", "--data-dir", str(book_dir)]),
                       ("atomic", ["--dataset", str(atomic), "--preset", "book-crossing",
                                   "--set", "threshold=5", "--set",
                                   "ratings=threshold-labels"])):
        out = tmp_path / name
        assert main(["train", *args, "--out", str(out), "--seed", "1", *FAST]) == 0
        runs[name] = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    a, b = runs["native"], runs["atomic"]
    assert a["dataset_fingerprint"] == b["dataset_fingerprint"]
    assert a["dataset_stats"]["interactions"] == b["dataset_stats"]["interactions"] == 139746
    assert a["test"]["auc"] == b["test"]["auc"]
    assert a["val"] == b["val"]


def test_recbole_label_files_roundtrip(tmp_path, planted):
    write_recbole(planted, tmp_path, name="p")
    back = read_recbole(tmp_path)
    np.testing.assert_array_equal(back.ratings, planted.ratings)
    assert back.user_ids.tolist() == planted.user_ids.tolist()

    def triples(ds):
        return {(ds.entity_ids[h], ds.relation_names[r], ds.entity_ids[t]) for h, r, t in ds.kg}

    assert triples(back) == triples(planted)


def test_recbole_benchmark_parts(tmp_path, planted):
    from kgnnls.data import split_ratings

    split = split_ratings(planted.ratings, seed=0)
    parts = {"train": split.train[split.train[:, 2] == 1], "valid": split.val, "test": split.test}
    parts = {k: r[r[:, 1] != 3] for k, r in parts.items()}  # item 3 occurs in no part
    write_recbole(planted, tmp_path, name="p", parts=parts)
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "p.kg", "p.link", "p.test.inter", "p.train.inter", "p.valid.inter"]
    for part, rows in parts.items():
        lines = (tmp_path / f"p.{part}.inter").read_text().splitlines()
        assert lines[0] == "user_id:token\titem_id:token\tlabel:float"
        got = [ln.split("\t") for ln in lines[1:]]
        assert got == [[planted.user_ids[u], planted.item_ids[i], str(y)] for u, i, y in rows]
    # the link names only items that occur in a part (RecBole needs that)
    link = [ln.split("\t")[0] for ln in (tmp_path / "p.link").read_text().splitlines()[1:]]
    occurring = np.unique(np.concatenate([r[:, 1] for r in parts.values()]))
    assert link == planted.item_ids[occurring].tolist()
    assert len(link) == planted.n_items - 1 and planted.item_ids[3] not in link
    with pytest.raises(ValueError, match="rows or parts"):
        write_recbole(planted, tmp_path, rows=split.test, parts=parts)
