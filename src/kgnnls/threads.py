"""A scoped thread count for the compiled (numba) kernels.

numba's thread count is process-wide; a compiled kernel that wants ``n``
threads sets it for its call and restores the caller's afterwards, so that
one model's setting does not leak into the next call (or into a test).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import torch


def clamp_threads(n: int) -> int:
    """``n`` within what numba can run: at least 1, at most ``NUMBA_NUM_THREADS``
    (the pool size, fixed at start-up; asking for more raises)."""
    return max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))


@contextlib.contextmanager
def numba_threads(n: int) -> Iterator[int]:
    """Run the block with numba's thread count set to ``clamp_threads(n)`` (yielded),
    then restore it, and torch's intra-op count with it, also on error.

    Under the OpenMP threading layer both read one setting: numba's first call
    starts its pool and resets it, so restoring numba's count alone would leave
    torch on every core (a ``threads=1`` run then validated in parallel, with a
    parallel kernel to compile). torch's count is read before numba's for that
    reason.
    """
    torch_previous = torch.get_num_threads()
    previous = numba.get_num_threads()
    threads = clamp_threads(n)
    numba.set_num_threads(threads)
    try:
        yield threads
    finally:
        numba.set_num_threads(previous)
        torch.set_num_threads(torch_previous)


__all__ = ["clamp_threads", "numba_threads"]
