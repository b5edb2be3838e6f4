"""Datasets: Table 2 statistics, readers' validation, negative sampling, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kgnnls import DataError, load_dataset
from kgnnls.data import detect_layout, read_final, read_raw, read_recbole, split_ratings
from kgnnls.data.sampling import draw_negatives, touched_keys

LASTFM_TABLE2 = {"users": 1872, "items": 3846, "interactions": 42346, "positives": 21173,
                 "negatives": 21173, "entities": 9366, "relations": 60, "triples": 15518}
BOOK_TABLE2 = {"users": 17860, "items": 14967, "interactions": 139746, "positives": 69873,
               "entities": 77903, "relations": 25, "triples": 151500}


def test_embedded_lastfm_matches_paper_table2(lastfm):
    stats = lastfm.stats()
    assert {k: stats[k] for k in LASTFM_TABLE2} == LASTFM_TABLE2


def test_lastfm_reindexing_follows_the_authors(lastfm):
    # users in order of first positive row, items in item-map line order,
    # entities items first, relations by first appearance in kg.txt
    assert lastfm.user_ids[:3].tolist() == ["2", "3", "4"]
    assert lastfm.item_ids[:3].tolist() == ["2", "3", "4"]
    assert lastfm.entity_ids[:3].tolist() == ["0", "1", "2"]
    assert lastfm.relation_names[0] == "music.artist.origin"
    assert lastfm.kg[0].tolist() == [2086, 0, 3846]


def test_shared_lastfm_raw_equals_embedded(music_dir, lastfm):
    local = load_dataset("lastfm", data_dir=music_dir.parent, seed=0)
    assert local.fingerprint() == lastfm.fingerprint()


def test_book_final_layout_matches_table2(book_dir):
    ds = load_dataset("book-crossing", data_dir=book_dir)
    stats = ds.stats()
    assert {k: stats[k] for k in BOOK_TABLE2} == BOOK_TABLE2
    assert ds.negatives == "given"


def test_negatives_are_one_per_positive_untouched_and_distinct(lastfm):
    r = lastfm.ratings
    pos, neg = r[r[:, 2] == 1], r[r[:, 2] == 0]
    np.testing.assert_array_equal(np.bincount(pos[:, 0], minlength=lastfm.n_users),
                                  np.bincount(neg[:, 0], minlength=lastfm.n_users))
    pos_keys = set((pos[:, 0] * lastfm.n_items + pos[:, 1]).tolist())
    neg_keys = neg[:, 0] * lastfm.n_items + neg[:, 1]
    assert len(set(neg_keys.tolist())) == len(neg_keys)
    assert not pos_keys & set(neg_keys.tolist())


def test_negative_sampling_is_seeded():
    a, b, c = (load_dataset("lastfm", seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.ratings, b.ratings)
    assert not np.array_equal(a.ratings, c.ratings)


def test_draw_negatives_is_uniform_over_untouched_items():
    # one user, 10 items, items 0-3 touched: each of 6 others drawn w.p. 2/6
    n_items, touched = 10, np.arange(4)
    counts = np.zeros(n_items)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        drawn = draw_negatives(np.array([2]), touched.copy(), n_items, rng)
        assert len(set(drawn[:, 1])) == 2
        counts[drawn[:, 1]] += 1
    assert counts[:4].sum() == 0
    freq = counts[4:] / 3000
    np.testing.assert_allclose(freq, 2 / 6, atol=0.03)


def test_draw_negatives_fails_clearly_when_no_item_is_left():
    with pytest.raises(DataError, match="only 1 of 3 items are untouched"):
        draw_negatives(np.array([2]), np.array([0, 1]), 3, np.random.default_rng(0),
                       user_ids=np.array(["alice"]))


def test_split_is_6_2_2_disjoint_and_seeded(lastfm):
    s1 = split_ratings(lastfm.ratings, seed=0)
    s2 = split_ratings(lastfm.ratings, seed=0)
    n = len(lastfm.ratings)
    assert (len(s1.val), len(s1.test)) == (int(0.2 * n), int(0.2 * n))
    assert len(s1.train) + len(s1.val) + len(s1.test) == n
    np.testing.assert_array_equal(s1.test, s2.test)
    assert not np.array_equal(s1.test, split_ratings(lastfm.ratings, seed=1).test)


def test_resample_candidates_exclude_every_labelled_pair(lastfm):
    keys = touched_keys(lastfm)
    assert len(keys) == len(np.unique(lastfm.ratings[:, 0] * lastfm.n_items
                                      + lastfm.ratings[:, 1]))


# ---------------------------------------------------------------- layouts
def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _final(tmp_path: Path, ratings: str, kg: str = "0\t0\t3\n1\t0\t3\n2\t1\t4\n") -> Path:
    _write(tmp_path / "ratings_final.txt", ratings)
    _write(tmp_path / "kg.txt", kg)
    return tmp_path


def test_detect_layout(tmp_path, music_dir, book_dir):
    assert detect_layout(music_dir) == "raw"
    assert detect_layout(book_dir) == "final"
    _write(tmp_path / "x.inter", "user_id:token\titem_id:token\tlabel:float\n")
    assert detect_layout(tmp_path) == "recbole"
    other = _write(tmp_path / "other" / "readme.txt", "").parent
    with pytest.raises(DataError, match="no dataset layout recognised"):
        detect_layout(other)


@pytest.mark.parametrize(("ratings", "line", "problem"), [
    ("0\t1\t1\n0\t2\n", 2, "expected 3 columns"),
    ("0\t1\t1\nx\t2\t0\n", 2, "user id must be an integer (64-bit), got 'x'"),
    ("0\t1\t1\n0\t2\t7\n", 2, "label must be 0 or 1, got 7"),
    ("0\t1\t1\n0\t2\t0\n0\t1\t0\n", 3, "conflicting label"),
    ("0\t1\t1\n\t2\t0\n", 2, "empty field"),
])
def test_final_reader_names_file_line_and_problem(tmp_path, ratings, line, problem):
    path = _final(tmp_path, ratings)
    with pytest.raises(DataError) as err:
        read_final(path)
    assert err.value.path.endswith("ratings_final.txt")
    assert err.value.line == line
    assert problem in str(err.value)


def test_reader_rejects_non_utf8_and_empty_files(tmp_path):
    path = _final(tmp_path, "0\t1\t1\n")
    _write(path / "kg.txt", b"0\t0\t3\n1\t0\t\xff\n")
    with pytest.raises(DataError, match=r"kg.txt:2: not valid UTF-8 \(byte 0xff\)"):
        read_final(path)
    _write(path / "ratings_final.txt", "\n\n")
    with pytest.raises(DataError, match="empty file"):
        read_final(path)


def test_kg_mentioning_no_item_is_rejected(tmp_path):
    path = _final(tmp_path, "0\t0\t1\n0\t1\t0\n", kg="5\t0\t6\n")
    with pytest.raises(DataError, match="no KG triple mentions any item"):
        read_final(path)


def test_final_layout_keeps_exact_duplicates_and_crlf(tmp_path):
    path = _final(tmp_path, "0\t1\t1\r\n0\t2\t0\r\n0\t2\t0\r\n")
    ds = read_final(path)
    assert len(ds.ratings) == 3


def test_raw_layout_threshold_and_unmapped_items(tmp_path):
    _write(tmp_path / "item_index2entity_id.txt", "10\te10\n11\te11\n12\te12\n")
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n"
                                     "7,10,5.0,1\n7,11,2.0,1\n8,12,4.0,1\n7,99,5.0,1\n")
    _write(tmp_path / "kg.txt", "e10\tfilm.genre\tg1\ne12\tfilm.genre\tg1\n")
    ds = read_raw(tmp_path)  # MovieLens rule: rating >= 4 is positive
    assert ds.user_ids.tolist() == ["7", "8"]
    assert ds.ratings.tolist() == [[0, 0, 1], [1, 2, 1]]
    assert ds.excluded.tolist() == [[0, 1]]  # rated below 4: never a sampled negative
    assert ds.entity_ids.tolist() == ["e10", "e11", "e12", "g1"]


def test_recbole_reader_rating_needs_threshold(tmp_path):
    _write(tmp_path / "d.inter", "user_id:token\titem_id:token\trating:float\nu\ta\t5\nu\tb\t1\n")
    _write(tmp_path / "d.link", "item_id:token\tentity_id:token\na\tea\nb\teb\n")
    _write(tmp_path / "d.kg", "head_id:token\trelation_id:token\ttail_id:token\nea\tr\tx\n")
    with pytest.raises(DataError, match="no threshold was given"):
        read_recbole(tmp_path)
    ds = read_recbole(tmp_path, threshold=3)  # positives-only: the low rating is excluded
    assert ds.ratings.tolist() == [[0, 0, 1]]
    assert ds.excluded.tolist() == [[0, 1]]
    assert ds.relation_names.tolist() == ["r"]
    ds = read_recbole(tmp_path, threshold=3, ratings="threshold-labels")
    assert ds.ratings.tolist() == [[0, 0, 1], [0, 1, 0]]
    assert ds.excluded.tolist() == []


def test_recbole_reader_checks_header_types(tmp_path):
    _write(tmp_path / "d.inter", "user_id\titem_id\tlabel\nu\ta\t1\n")
    _write(tmp_path / "d.link", "item_id:token\tentity_id:token\na\tea\n")
    _write(tmp_path / "d.kg", "head_id:token\trelation_id:token\ttail_id:token\nea\tr\tx\n")
    with pytest.raises(DataError, match=r"d.inter:1: header field 'user_id' lacks its ':type'"):
        read_recbole(tmp_path)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="unknown dataset 'no-such-data'"):
        load_dataset("no-such-data")


def test_local_only_dataset_says_how_to_get_it():
    with pytest.raises(DataError, match=r"not available locally.*ml-20m\.zip"):
        load_dataset("movielens-20m")


def test_recbole_item_missing_from_link_is_an_error_with_unlinked_error(tmp_path):
    _write(tmp_path / "d.inter", "user_id:token\titem_id:token\tlabel:float\nu\ta\t1\nu\tzz\t0\n"
                                 "v\tzz\t1\n")
    _write(tmp_path / "d.link", "item_id:token\tentity_id:token\na\tea\n")
    _write(tmp_path / "d.kg", "head_id:token\trelation_id:token\ttail_id:token\nea\tr\tx\n")
    with pytest.raises(DataError, match=r"d.inter:3: item 'zz' is missing from d.link \(2 rows"):
        read_recbole(tmp_path, unlinked="error")
    ds = read_recbole(tmp_path)  # default: the item gets its own entity, after the linked ones
    assert ds.item_ids.tolist() == ["a", "zz"]
    assert ds.entity_ids.tolist() == ["ea", "[unlinked item] zz", "x"]
    assert ds.kg.tolist() == [[0, 0, 2]]
