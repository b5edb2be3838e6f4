"""Issue 23: unlinked RecBole items, the two explicit-rating policies, strict fast reading."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from kgnnls import DataError, load_dataset
from kgnnls.cli import main
from kgnnls.data import read_final, read_raw, read_recbole
from kgnnls.data.sampling import touched_keys

FAST = ["--set", "dim=4", "--set", "n_layers=1", "--set", "epochs=2", "--set", "batch_size=64",
        "--quiet", "--show", "0"]

# user, item, rating: items i0..i5 are linked to a KG entity, u0..u3 are not
RATINGS = [(u, i, r) for u, items in {
    "alice": ["i0", "i1", "i2", "u0", "u1", "i3"],
    "bob": ["i1", "i4", "u0", "u2", "i5"],
    "carol": ["i0", "i2", "i5", "u3", "u1"],
    "dave": ["i3", "i4", "u2", "i0"],
}.items() for i, r in zip(items, [5, 4, 2, 5, 1, 4], strict=False)]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _recbole(root: Path, rows=RATINGS) -> Path:
    _write(root / "d.inter", "user_id:token\titem_id:token\trating:float\n"
           + "".join(f"{u}\t{i}\t{r}\n" for u, i, r in rows))
    _write(root / "d.link", "item_id:token\tentity_id:token\n"
           + "".join(f"i{k}\te{k}\n" for k in range(7)))  # e6 (item i6) is in no triple
    kg = [("e0", "genre", "g1"), ("e1", "genre", "g1"), ("e2", "genre", "g2"),
          ("e3", "director", "p1"), ("e4", "director", "p1"), ("e5", "genre", "g2"),
          ("g1", "broader", "g2")]
    _write(root / "d.kg", "head_id:token\trelation_id:token\ttail_id:token\n"
           + "".join("\t".join(t) + "\n" for t in kg))
    return root


def test_unlinked_items_get_their_own_entity_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="kgnnls.data.readers"):
        ds = read_recbole(_recbole(tmp_path), threshold=4)
    warned = [r.getMessage() for r in caplog.records if "no d.link row" in r.getMessage()]
    assert len(warned) == 1 and ": 4 items have no d.link row" in warned[0]
    # linked items in .link order, then unlinked ones in order of first appearance
    assert ds.item_ids.tolist() == [f"i{k}" for k in range(7)] + ["u0", "u1", "u2", "u3"]
    assert ds.entity_ids[7:11].tolist() == [f"[unlinked item] u{k}" for k in range(4)]
    assert ds.n_entities == 11 + 3  # items, then g1, g2, p1
    heads_tails = set(ds.kg[:, [0, 2]].reshape(-1).tolist())
    assert not heads_tails & set(range(6, 11))  # i6 and the unlinked items: no edge
    assert any("1 items have no KG triple" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match=r"d.inter:5: item 'u0' is missing from d.link "
                                        r"\(7 rows have an item without a KG entity\)"):
        read_recbole(tmp_path, threshold=4, unlinked="error")


def test_recbole_with_unlinked_items_trains_evaluates_explains_recommends(tmp_path, capsys):
    data = _recbole(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--out", str(out), "--seed", "0",
                 "--set", "threshold=4", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset_stats"]["items"] == 11
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["test"]["auc"] <= 1.0
    assert main(["explain", str(out), "--user", "alice", "--item", "u0"]) == 0
    text = capsys.readouterr().out
    assert "item u0 has no KG neighbours" in text
    assert main(["explain", str(out), "--user", "alice", "--item", "i0"]) == 0
    assert "no KG neighbours" not in capsys.readouterr().out
    assert main(["recommend", str(out), "--user", "dave", "-k", "11", "--include-seen",
                 "--json"]) == 0
    listed = json.dumps(json.loads(capsys.readouterr().out))
    assert all(f'"{i}"' in listed for i in ("u0", "u3", "i6"))  # every item is rankable
    assert main(["train", "--dataset", str(data), "--out", str(tmp_path / "strict"),
                 "--set", "threshold=4", "--set", "unlinked=error", *FAST]) == 2
    assert "missing from d.link" in capsys.readouterr().err


def _raw(root: Path, rows=RATINGS) -> Path:
    """The same ratings in the authors' raw MovieLens layout."""
    _write(root / "ratings.csv", "userId,movieId,rating,timestamp\n"
           + "".join(f"{u},{i},{r}.0,1\n" for u, i, r in rows))
    _write(root / "item_index2entity_id.txt", "".join(f"i{k}\te{k}\n" for k in range(7)))
    _write(root / "kg.txt", "e0\tgenre\tg1\ne3\tdirector\tp1\n")
    return root


@pytest.mark.parametrize("policy", ["positives-only", "threshold-labels"])
def test_raw_and_recbole_ratings_follow_the_same_policy(tmp_path, policy):
    linked = [r for r in RATINGS if r[1].startswith("i")]  # raw drops unmapped items
    raw = read_raw(_raw(tmp_path / "raw", linked), ratings=policy)  # MovieLens: threshold 4
    rb = read_recbole(_recbole(tmp_path / "rb", linked), threshold=4, ratings=policy)
    for field in ("ratings", "excluded", "user_ids"):
        np.testing.assert_array_equal(getattr(raw, field), getattr(rb, field))
    pos = {(u, i) for u, i, r in linked if r >= 4}
    low = {(u, i) for u, i, r in linked if r < 4}
    got = {(raw.user_ids[u], raw.item_ids[i]): y for u, i, y in raw.ratings.tolist()}
    if policy == "positives-only":  # the paper's Appendix A: low ratings never labelled
        assert got == dict.fromkeys(pos, 1)
        assert {(raw.user_ids[u], raw.item_ids[i]) for u, i in raw.excluded.tolist()} == \
            {p for p in low if p[0] in {u for u, _ in pos}}
    else:
        assert got == {**dict.fromkeys(pos, 1), **dict.fromkeys(low, 0)}
        assert len(raw.excluded) == 0


def test_positives_only_samples_one_negative_per_positive_outside_touched(tmp_path):
    data = _raw(tmp_path, [(f"u{u}", f"i{(u + k) % 7}", 5 - (k % 3) * 2)
                           for u in range(5) for k in range(3)])
    a, b = (load_dataset(data, seed=7) for _ in range(2))
    np.testing.assert_array_equal(a.ratings, b.ratings)  # seeded
    r = a.ratings
    pos, neg = r[r[:, 2] == 1], r[r[:, 2] == 0]
    np.testing.assert_array_equal(np.bincount(pos[:, 0], minlength=a.n_users),
                                  np.bincount(neg[:, 0], minlength=a.n_users))
    n = a.n_items
    touched = set((pos[:, 0] * n + pos[:, 1]).tolist()) | set(
        (a.excluded[:, 0] * n + a.excluded[:, 1]).tolist())
    assert len(a.excluded) > 0 and not touched & set((neg[:, 0] * n + neg[:, 1]).tolist())
    assert set(touched_keys(a).tolist()) == touched | set((neg[:, 0] * n + neg[:, 1]).tolist())


def test_pair_rated_on_both_sides_of_the_threshold_is_a_positive(tmp_path):
    # the authors' preprocess.py keeps sets: such a pair is a positive, never a negative
    ds = read_raw(_raw(tmp_path, [("a", "i0", 5), ("a", "i0", 1), ("a", "i1", 2)]))
    assert ds.ratings.tolist() == [[0, 0, 1]]
    assert ds.excluded.tolist() == [[0, 1]]
    with pytest.raises(DataError, match=r"ratings.csv:3: duplicate \(user, item\) pair with a "
                                        "conflicting label"):
        read_raw(tmp_path, ratings="threshold-labels")


# ---------------------------------------------------------------- strict fast reading
def test_fast_reader_keeps_file_line_errors(tmp_path):
    body = "".join(f"{u},i{u % 7},5.0,1\n" for u in range(5000))
    bad = body + "9,i1,4.0\n" + body
    _raw(tmp_path)
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n" + bad)
    with pytest.raises(DataError, match=r"ratings.csv:5002: expected 4 columns separated by "
                                        r"',', found 3"):
        read_raw(tmp_path)
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n" + body
           + "9,i1,four,1\n")
    with pytest.raises(DataError, match=r"ratings.csv:5002: rating must be a finite number, "
                                        "got 'four'"):
        read_raw(tmp_path)


def test_line_numbers_count_blank_lines_and_crlf(tmp_path):
    kg = "0\t0\t3\n1\t0\t3\n"
    _write(tmp_path / "kg.txt", kg)
    (tmp_path / "ratings_final.txt").write_bytes(b"0\t1\t1\r\n\r\n\r\n0\t2\t0\r\n0\t2\t7\r\n")
    with pytest.raises(DataError, match=r"ratings_final.txt:5: label must be 0 or 1, got 7"):
        read_final(tmp_path)
    # a lone carriage return is a character of a cell, as the strict reader has it
    (tmp_path / "ratings_final.txt").write_bytes(b"0\t1\t1\n0\t2\r0\t3\t0\n")
    with pytest.raises(DataError, match=r"ratings_final.txt:2: expected 3 columns"):
        read_final(tmp_path)


def test_padded_and_quoted_cells_merge_with_plain_ones(tmp_path):
    _write(tmp_path / "item_index2entity_id.txt", "b1\te1\nb2\te2\n")
    _write(tmp_path / "kg.txt", "e1\tr\tx\ne2\tr\tx\n")
    _write(tmp_path / "BX-Book-Ratings.csv", '"User-ID";"ISBN";"Book-Rating"\n'
           '"7";"b1";"5"\n7 ;"b2";"0"\n"8";b1;"3"\n')
    ds = read_raw(tmp_path)  # Book-Crossing: every rating (>= 0) is a positive
    assert ds.user_ids.tolist() == ["7", "8"]
    assert ds.ratings.tolist() == [[0, 0, 1], [0, 1, 1], [1, 0, 1]]
