"""One seed, many independent random streams.

A run's ``seed`` drives negative sampling, the train/validation/test split,
neighbour sampling, parameter initialisation and minibatch order together (as
the paper's five repeats do), but each purpose gets its own stream so that,
for example, changing the model does not change the split.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _key(seed: int, purpose: str) -> list[int]:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [int(seed), zlib.crc32(purpose.encode())]


def rng(seed: int, purpose: str) -> np.random.Generator:
    """NumPy generator for ``purpose`` (e.g. ``"split"``) derived from ``seed``."""
    return np.random.default_rng(_key(seed, purpose))


def torch_generator(seed: int, purpose: str) -> torch.Generator:
    """Torch CPU generator for ``purpose`` derived from ``seed``."""
    sub = np.random.SeedSequence(_key(seed, purpose)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(sub) & 0x7FFF_FFFF_FFFF_FFFF)
