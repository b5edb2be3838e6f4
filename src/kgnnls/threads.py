"""One scope for the number of threads the compiled (numba) kernels run on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import torch


@contextmanager
def numba_threads(threads: int) -> Iterator[int]:
    """Run a block with numba's thread count set to ``threads`` (clipped to 1 ..
    ``NUMBA_NUM_THREADS``), then restore it, and torch's intra-op count with it:
    under the OpenMP threading layer both read one setting, so restoring numba's
    count alone would leave torch on numba's default (a ``threads=1`` run then
    validated on every core, with a parallel kernel to compile). Yields the
    clipped count."""
    count = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    torch_previous = torch.get_num_threads()  # first: numba's first call starts its pool,
    previous = numba.get_num_threads()  # which (OpenMP) resets the shared setting
    numba.set_num_threads(count)
    try:
        yield count
    finally:
        numba.set_num_threads(previous)
        torch.set_num_threads(torch_previous)
