"""The shared helpers (kgnnls.arrays, kgnnls.budget, kgnnls.threads) against the
hand-written idioms they replaced."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kgnnls.arrays import concat_ranges, csr_from_pairs, csr_indptr
from kgnnls.budget import CHUNK_CAP, MEMORY_BUDGET, rows_per_chunk
from kgnnls.threads import clamp_threads, numba_threads

pairs = st.integers(1, 12).flatmap(lambda n_rows: st.tuples(
    st.just(n_rows),
    st.lists(st.tuples(st.integers(0, n_rows - 1), st.integers(0, 30)), max_size=60)))


def _arrays(n_rows_and_pairs):
    n_rows, items = n_rows_and_pairs
    data = np.array(items, dtype=np.int64).reshape(-1, 2)
    return n_rows, data[:, 0], data[:, 1]


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_csr_from_pairs_matches_the_hand_written_idiom(case):
    n_rows, rows, cols = _arrays(case)
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    got_ptr, got_cols = csr_from_pairs(rows, cols, n_rows)
    assert got_ptr.dtype == np.int64
    np.testing.assert_array_equal(got_ptr, indptr)
    np.testing.assert_array_equal(got_cols, cols[order])
    np.testing.assert_array_equal(csr_indptr(rows, n_rows), indptr)
    for r in range(n_rows):  # each row holds exactly its columns, ascending
        expected = np.sort(cols[rows == r])
        np.testing.assert_array_equal(got_cols[got_ptr[r]:got_ptr[r + 1]], expected)


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_csr_from_pairs_unsorted_keeps_input_order_within_a_row(case):
    n_rows, rows, cols = _arrays(case)
    ptr, got = csr_from_pairs(rows, cols, n_rows, sort_cols=False)
    for r in range(n_rows):
        np.testing.assert_array_equal(got[ptr[r]:ptr[r + 1]], cols[rows == r])


def test_csr_indptr_counts_empty_trailing_rows():
    np.testing.assert_array_equal(csr_indptr(np.array([1, 1, 0]), 4), [0, 1, 3, 3, 3])
    np.testing.assert_array_equal(csr_indptr(np.zeros(0, np.int64), 2), [0, 0, 0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 6)), max_size=20))
def test_concat_ranges_matches_the_loop_and_the_repeat_idiom(spans):
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    lengths = np.array([n for _, n in spans], dtype=np.int64)
    loop = np.concatenate([np.arange(s, s + n) for s, n in spans] + [np.zeros(0, np.int64)])
    idiom = np.repeat(starts, lengths) + (np.arange(lengths.sum())
                                          - np.repeat(np.cumsum(lengths) - lengths, lengths))
    got = concat_ranges(starts, lengths)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, loop)
    np.testing.assert_array_equal(got, idiom)


@pytest.mark.parametrize("per_row", [1, 3, 4 * 100, 4 * 48_123 * 2, 8 * 17_000, 1 << 30])
def test_rows_per_chunk_matches_the_hand_written_rule(per_row):
    assert rows_per_chunk(per_row) == max(1, min(4096, int((256 << 20) // per_row)))


def test_rows_per_chunk_bounds_and_arguments():
    assert MEMORY_BUDGET == 256 << 20 and CHUNK_CAP == 4096
    assert rows_per_chunk(10**12) == 1  # one row over budget still runs
    assert rows_per_chunk(1) == CHUNK_CAP
    assert rows_per_chunk(0) == CHUNK_CAP  # an empty row costs nothing, no ZeroDivisionError
    assert rows_per_chunk(100, budget=1000) == 10
    assert rows_per_chunk(1, cap=65536) == 65536


def test_model_and_baselines_chunk_by_the_shared_rule():
    from kgnnls.baselines.mf import ranking_chunk_for

    for n_items in (0, 1, 5000, 3_000_000):
        assert ranking_chunk_for(n_items) == rows_per_chunk(4 * max(n_items, 1))
    assert ranking_chunk_for(1000, floats_per_item=3) == rows_per_chunk(12_000)


def test_numba_threads_sets_clamps_and_restores():
    top = numba.config.NUMBA_NUM_THREADS
    before = numba.get_num_threads()
    with numba_threads(1) as n:
        assert n == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with numba_threads(top + 5) as n:  # more than the pool: clamped, not an error
        assert n == top and numba.get_num_threads() == top
    with numba_threads(0) as n:
        assert n == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    assert clamp_threads(-3) == 1 and clamp_threads(top + 1) == top


def test_numba_threads_restores_on_error():
    before = numba.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), numba_threads(1):
        raise RuntimeError("boom")
    assert numba.get_num_threads() == before
