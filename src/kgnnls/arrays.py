"""Small array idioms shared across the package: CSR built from pairs, and
concatenated index ranges.

Each appeared hand-written at several sites (evaluation masks, the sampled
knowledge graph, the recommender's seen items, the fast ranker's slot
tables); one definition keeps their conventions (int64 pointers, row order,
order within a row) the same everywhere.
"""

from __future__ import annotations

import numpy as np


def csr_indptr(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Row pointers (int64, ``n_rows + 1`` long) of the entries ``rows`` once they
    are sorted by row: row ``r`` holds entries ``indptr[r]:indptr[r + 1]``.

    ``rows`` need not be sorted; every value must lie in ``[0, n_rows)``.
    """
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int, *,
                   sort_cols: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(rows[i], cols[i])`` as CSR: ``(indptr, cols_in_row_order)``.

    Within a row the columns come ascending (``sort_cols=True``) or in their
    input order (``sort_cols=False``, a stable sort by row), which is what a
    caller that draws from a row by position needs to stay reproducible.
    """
    order = np.lexsort((cols, rows)) if sort_cols else np.argsort(rows, kind="stable")
    return csr_indptr(rows, n_rows), cols[order]


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without
    the Python loop: the flat positions of several CSR rows (or sorted runs)."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - ends + lengths, lengths) + np.arange(ends[-1] if len(ends) else 0)


__all__ = ["concat_ranges", "csr_from_pairs", "csr_indptr"]
