"""Threads for the compiled (numba) kernels: a scoped thread count, and a
kernel's serial and parallel variants compiled from one source.

numba's thread count is process-wide; a compiled kernel that wants ``n``
threads sets it for its call and restores the caller's afterwards, so that
one model's setting does not leak into the next call (or into a test). A
parallel region costs a thread hand-off and compiles slower, so a kernel used
by 1-thread runs too has a serial variant, and Python picks one per call.
"""

from __future__ import annotations

import contextlib
import hashlib
import types
from collections.abc import Iterator
from pathlib import Path

import numba
import torch
from numba import njit


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


def bound(source, name: str, **names):
    """A copy of the function ``source`` named ``name`` whose global names ``names``
    refer to other objects: one source compiled as several variants (numba freezes
    globals as constants, so a variant compiles only the code its constants reach).
    Distinct names keep the variants' on-disk caches apart."""
    fn = types.FunctionType(source.__code__, {**source.__globals__, **names}, name,
                            source.__defaults__, source.__closure__)
    fn.__qualname__, fn.__doc__ = name, source.__doc__
    return fn


def source_digest(*modules: types.ModuleType) -> str:
    """A short digest of the source files of ``modules``, for kernel names.

    numba's on-disk cache of a function is checked against its own file only;
    a kernel that inlines code from another module would otherwise load stale
    machine code after that module changed. A name that carries this digest
    gets a fresh cache entry instead.
    """
    h = hashlib.sha1()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:8]


def compiled(source, name: str, parallel: bool, inline: bool = False, fastmath: bool = False,
             **calls):
    """``source`` compiled serially or with ``prange`` parallel (a parallel region costs
    a thread hand-off: worth it for large batches only) under its own name, which keeps
    the on-disk caches apart. ``calls`` binds global names of the source (the kernels it
    calls) for this variant only: a serial variant then references no parallel kernel,
    which numba would otherwise compile too (see docs/performance.md, first run).
    ``inline``: a serial variant for inlining into a caller (numba IR), which then
    optimizes the callee's callees once rather than once per level. ``fastmath``:
    numba's flag (True: every fast-math flag)."""
    fn = bound(source, name, **calls)
    if inline:
        return njit(inline="always", error_model="numpy")(fn)
    return njit(cache=True, error_model="numpy", parallel=parallel, fastmath=fastmath)(fn)


__all__ = ["bound", "clamp_threads", "compiled", "numba_threads", "source_digest"]
