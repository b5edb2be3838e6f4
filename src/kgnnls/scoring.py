"""How a trained model scores: the one place that picks compiled code or tensors.

:class:`Scorer` wraps a model for evaluation, ``recommend``/``score``,
serving, ``explain`` and training validation, with the duck-typed scorer
interface of :mod:`kgnnls.evaluate` (``score_pairs``, ``score_matrix``). For a
``KGNNLSNet`` it picks, per call kind:

* pairs: the compiled forward (:mod:`kgnnls.fused`) where it covers the
  config and ``compiled`` is set, else the network's tensor forward
  (``KGNNLSNet.score_pairs``, the reference);
* full ranking: the compiled one-layer ranker (:mod:`kgnnls.fast_rank`) at
  ``L = 1`` where ``ranker`` is set, else the layer-wise tensor path
  (``KGNNLSNet.score_matrix_layerwise``);
* a network on a GPU always scores on the tensor path, on its device (the
  compiled code is CPU code), and hands CPU tensors back (:mod:`kgnnls.device`).

Every other model (the baselines, the rankers) scores by its own methods.
The network chooses no backend itself: it is the torch reference, and the
compiled paths compute its numbers to float rounding (``tests/test_fused.py``,
``tests/test_model.py``).

A Scorer is a **snapshot**: the compiled forward copies the parameters into
its flat layout once, on first use, and reuses it for every later call, so
scoring one pair does not copy the model (5 M floats on Book-Crossing).
After the parameters change (an epoch of training, a ``load_state_dict``)
call :meth:`Scorer.refresh` or build a new Scorer; ``KGNNLS`` builds one per
fitted or loaded network, training refreshes its own after every epoch.
"""

from __future__ import annotations

from typing import Any

import torch

from kgnnls import fused
from kgnnls.budget import rows_per_chunk
from kgnnls.coverage import Scope, unsupported
from kgnnls.device import network_device
from kgnnls.fast_rank import OneLayerRanker
from kgnnls.model import KGNNLSNet

#: the paths :attr:`Scorer.last_path` names
PATHS = ("compiled-forward", "ranker", "tensor", "model")


def _ranker_chunk(net: KGNNLSNet, n_items: int) -> int:
    """Users per compiled-ranker call: its output row and a degree row per user."""
    return rows_per_chunk(4 * (n_items + net.entity_emb.shape[0]))


class Scorer:
    """Scores of one parameter snapshot of ``model`` by the fastest path that covers it.

    ``threads``: threads of the compiled paths (None: ``torch.get_num_threads()``
    at each call, as the tensor path uses); ``compiled``: pairs may use the
    compiled forward (False: the tensor reference, e.g. for
    ``training_path="autograd"``); ``ranker``: full ranking may use the compiled
    one-layer ranker; ``forward``: the compiled forward to score pairs with, when
    the caller holds a live one (:meth:`kgnnls.fused.FusedTrainer.forward` reads
    the parameter buffer training updates, so validation needs no copy; kept by
    :meth:`refresh`). ``last_path`` names the path of the latest call (one of
    :data:`PATHS`). The compiled state is built on first use and kept: see the
    module docstring (a snapshot: :meth:`refresh` after the parameters change).
    """

    def __init__(self, model: Any, *, threads: int | None = None, compiled: bool = True,
                 ranker: bool = True, forward: fused.CompiledForward | None = None):
        self.model = model
        self.threads = threads
        self.compiled = compiled
        self.ranker = ranker
        self.last_path: str | None = None
        self._live_forward = forward
        self._forward: fused.CompiledForward | None = forward
        self._ranker: OneLayerRanker | None = None

    # ------------------------------------------------------------------ which path
    def pairs_path(self) -> str:
        """The path :meth:`score_pairs` takes now."""
        return self._path(self.compiled, "forward", "compiled-forward")

    def matrix_path(self) -> str:
        """The path :meth:`score_matrix` takes now."""
        return self._path(self.ranker, "rank", "ranker")

    def _path(self, allowed: bool, scope: Scope, compiled_path: str) -> str:
        """``compiled_path`` where it is ``allowed`` and ``kgnnls.coverage`` covers the
        network in ``scope`` on the CPU; else the tensor path (``model`` for others)."""
        net = self.model
        if not isinstance(net, KGNNLSNet):
            return "model"
        if (allowed and network_device(net).type == "cpu"
                and unsupported(net.config, scope=scope) is None):
            return compiled_path
        return "tensor"

    def refresh(self) -> Scorer:
        """Take a new parameter snapshot: the compiled forward copies the parameters
        again on its next use. The one-layer ranker is kept: its layout depends on
        the network's sampled graph alone, and it reads the parameters at each call."""
        self._forward = self._live_forward
        return self

    def _threads(self) -> int:
        return torch.get_num_threads() if self.threads is None else self.threads

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits (or the model's monotone score) of pairs ``(users[i], items[i])``, ``[n]``,
        on the CPU."""
        path = self.last_path = self.pairs_path()
        if path == "model":
            return self.model.score_pairs(users, items)
        if path == "compiled-forward":
            if self._forward is None:
                self._forward = fused.CompiledForward(self.model)
            out = self._forward.logits(users.numpy(), items.numpy(), threads=self._threads())
            return torch.from_numpy(out).float()
        device = network_device(self.model)
        return self.model.score_pairs(users.to(device), items.to(device)).cpu()

    @torch.no_grad()
    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits ``[len(users), len(items)]`` of every user-item combination, on the CPU."""
        path = self.last_path = self.matrix_path()
        if path == "model":
            return self.model.score_matrix(users, items)
        if path == "ranker":
            if self._ranker is None:
                self._ranker = OneLayerRanker(self.model)
            return self._ranker.score_matrix(users, items, threads=self._threads())
        device = network_device(self.model)
        return self.model.score_matrix(users.to(device), items.to(device)).cpu()

    def ranking_chunk(self, n_items: int) -> int:
        """Users per :meth:`score_matrix` call that keep its temporaries bounded (the
        model's own advice for its tensor path; 1,024 for a model without any)."""
        if self.matrix_path() == "ranker":
            return _ranker_chunk(self.model, n_items)
        chunk = getattr(self.model, "ranking_chunk", None)
        return chunk(n_items) if chunk is not None else 1024


__all__ = ["PATHS", "Scorer"]
