"""Which device trains: ``Config.device`` (``auto``, ``cpu``, ``cuda``) resolved at fit time.

The fused compiled step (:mod:`kgnnls.fused`) is CPU code; the autograd path
runs wherever its network lives. ``auto`` keeps the fused CPU step for every
config it covers (it is the measured fast path; autograd on a GPU has not been
measured against it) and otherwise trains autograd on CUDA when a GPU is
visible, else on the CPU. ``cuda`` insists on a GPU, ``cpu`` never uses one.

Only training moves: the trained network comes back to the CPU, where
evaluation, the compiled full-ranking path, saving and serving run as before,
so a model trained on a GPU behaves like any other afterwards. The GPU path
covers KGNN-LS and KGCN with ``updates=dense``; the baselines and
``updates=rows`` (sparse row gradients) stay on the CPU.
"""

from __future__ import annotations

import torch

from kgnnls.errors import ConfigError


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device (False on a CPU-only build)."""
    return torch.cuda.is_available()


def resolve_device(requested: str, fused: bool, parallel: bool = False,
                   gpu_ready: str | None = None) -> torch.device:
    """The device the training steps run on.

    ``fused``: the fused CPU step will run (it covers the config and the
    training path allows it); ``parallel``: several processes train
    data-parallel (gloo, CPU only today); ``gpu_ready``: None when the
    network's autograd path runs on a GPU, else why not (``auto`` then stays
    on the CPU). ``cuda`` without a GPU, with the fused step forced,
    data-parallel or with a network not ready is a ConfigError of one line.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not cuda_available():
            raise ConfigError("device=cuda but torch sees no CUDA GPU (this torch build: "
                              f"{torch.__version__}); use device=cpu or device=auto")
        if fused:
            raise ConfigError("device=cuda trains on the autograd path but training_path=fused "
                              "asks for the fused step, which is CPU code: drop one of them")
        if parallel:
            raise ConfigError("device=cuda does not train data-parallel yet (gloo on the "
                              "CPU); use one process or device=cpu")
        if gpu_ready is not None:
            raise ConfigError(f"device=cuda: {gpu_ready}; use device=cpu")
        return torch.device("cuda")
    if requested != "auto":
        raise ConfigError(f"device must be auto, cpu or cuda, got {requested!r}")
    if fused or parallel or gpu_ready is not None or not cuda_available():
        return torch.device("cpu")
    return torch.device("cuda")
