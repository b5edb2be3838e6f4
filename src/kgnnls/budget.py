"""How much scratch memory a chunked computation may take, and how many rows fit.

Ranking scores ``[users, items]`` blocks, and pair scoring builds per-pair
trees; both work through their rows in chunks sized so that the temporaries
of one chunk stay near :data:`MEMORY_BUDGET`. One constant and one rule keep
every model (KGNN-LS and the baselines) chunking alike.
"""

from __future__ import annotations

#: bytes of temporaries one chunk may allocate (scores, gathered embeddings)
MEMORY_BUDGET = 256 << 20

#: the most rows per chunk: beyond it, bigger blocks stop paying off and
#: delay the first results
CHUNK_CAP = 4096

#: users per ``score_matrix`` call for a scorer without advice of its own (a top-K
#: ranker's ``[users, items]`` block is its only sizeable temporary)
RANKING_CHUNK = 256


def rows_per_chunk(bytes_per_row: int, budget: int = MEMORY_BUDGET, cap: int = CHUNK_CAP
                   ) -> int:
    """Rows (users, pairs) per chunk so that ``rows * bytes_per_row`` stays within
    ``budget``: at least 1, at most ``cap``."""
    return max(1, min(cap, int(budget // max(int(bytes_per_row), 1))))


__all__ = ["CHUNK_CAP", "MEMORY_BUDGET", "RANKING_CHUNK", "rows_per_chunk"]
