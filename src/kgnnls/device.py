"""Which device trains: ``RunOptions.device`` (``auto``, ``cpu``, ``cuda``) resolved at fit time.

The fused compiled step (:mod:`kgnnls.fused`) is CPU code; the autograd path
runs wherever its network lives. ``auto`` keeps the fused CPU step for every
config it covers (it is the measured fast path; autograd on a GPU has not been
measured against it) and otherwise trains autograd on CUDA when a GPU is
visible, else on the CPU. ``cuda`` insists on a GPU, ``cpu`` never uses one.

A network trained on a GPU stays there: full ranking (the tensor layer-wise
path; the compiled one-layer ranker is CPU code), pair scoring and serving
run on it and hand CPU tensors back (:mod:`kgnnls.scoring` decides), so evaluation's
masking and top-k code is the CPU code it always was. :func:`scoring_device`
says where a loaded checkpoint goes (``KGNNLS.load``, ``kgnnls serve``);
``save`` writes CPU tensors, so a checkpoint loads anywhere. The GPU path
covers KGNN-LS and KGCN with ``updates=dense`` (training) and any KGNN-LS /
KGCN network (ranking); the baselines and ``updates=rows`` (sparse row
gradients) stay on the CPU.
"""

from __future__ import annotations

import typing

import torch

from kgnnls.config import Device
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
        _require_gpu(None)
        if fused:
            raise ConfigError("device=cuda trains on the autograd path but training_path=fused "
                              "asks for the fused step, which is CPU code: drop one of them")
        if parallel:
            raise ConfigError("device=cuda does not train data-parallel yet (gloo on the "
                              "CPU); use one process or device=cpu")
        _require_gpu(gpu_ready)
        return torch.device("cuda")
    if requested != "auto":
        _unknown(requested)
    if fused or parallel or gpu_ready is not None or not cuda_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _unknown(requested: str) -> typing.NoReturn:
    """ConfigError naming the devices ``RunOptions.device`` declares."""
    *first, last = typing.get_args(Device)
    raise ConfigError(f"device must be {', '.join(first)} or {last}, got {requested!r}")


def _require_gpu(gpu_ready: str | None) -> None:
    """ConfigError (one line) unless a GPU is visible and the network can use it."""
    if not cuda_available():
        raise ConfigError("device=cuda but torch sees no CUDA GPU (this torch build: "
                          f"{torch.__version__}); use device=cpu or device=auto")
    if gpu_ready is not None:
        raise ConfigError(f"device=cuda: {gpu_ready}; use device=cpu")


def scoring_device(requested: str, trained: str = "cpu", gpu_ready: str | None = None
                   ) -> torch.device:
    """Where a trained network ranks and serves (``KGNNLS.load``, ``kgnnls serve``).

    ``trained``: the device it trained on (``metrics.json``'s ``device``);
    ``gpu_ready``: None when the network scores on a GPU, else why not.
    ``auto`` keeps it where it trained, on the CPU when no GPU is visible (a
    checkpoint from a GPU loads on a CPU-only machine); ``cpu`` never uses a
    GPU; ``cuda`` insists (a ConfigError of one line without a GPU or for a
    network that ranks on the CPU only).
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        _require_gpu(gpu_ready)
        return torch.device("cuda")
    if requested != "auto":
        _unknown(requested)
    if trained == "cuda" and gpu_ready is None and cuda_available():
        return torch.device("cuda")
    return torch.device("cpu")


def place(network: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Move ``network`` (parameters, buffers and its label table, if any) to ``device``."""
    network.to(device)
    if getattr(network, "labels", None) is not None:
        network.set_labels(network.labels.to(device))
    return network


def network_device(network: object) -> torch.device:
    """The device of ``network``'s parameters (the CPU for scorers without any)."""
    parameters = getattr(network, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return torch.device("cpu") if first is None else first.device
