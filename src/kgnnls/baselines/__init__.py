"""The paper's baselines (Tables 3-4), trained and evaluated by the same loop.

Each baseline is an ``nn.Module`` with the :class:`kgnnls.train.Trainable`
verbs (``from_data``, ``loss``, ``parameter_groups``, ``score_pairs``,
``score_matrix``, ``checkpoint_meta``, ``from_checkpoint``), so
``kgnnls train --model NAME`` and ``KGNNLS(Config(model=NAME))`` run it
through the very training loop, split, negatives and metrics as KGNN-LS.
Their hyper-parameters live with KGNN-LS's in :mod:`kgnnls.presets`.
"""

from __future__ import annotations

import importlib

#: model name -> "module:Class"; modules are imported on first use.
BASELINES: dict[str, str] = {
    "svd": "kgnnls.baselines.mf:SVD",
    "libfm": "kgnnls.baselines.fm:LibFM",
    "libfm-transe": "kgnnls.baselines.fm:LibFMTransE",
    "per": "kgnnls.baselines.per:PER",
    "cke": "kgnnls.baselines.cke:CKE",
    "ripplenet": "kgnnls.baselines.ripplenet:RippleNet",
}


def baseline_class(name: str) -> type:
    """The class of baseline ``name`` (imported lazily)."""
    module, cls = BASELINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["BASELINES", "baseline_class"]
