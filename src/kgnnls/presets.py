"""Published hyper-parameters: one place for every model on every dataset.

``PRESETS[dataset][model]`` holds the ``Config`` fields that differ from the
defaults (model-specific settings under ``"extra"``). KGNN-LS values are the
paper's Table 8 (S, d, L, lambda, gamma, eta) with the authors' batch sizes;
``kgcn`` shares them with ``lambda = 0``.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "lastfm": {
        "kgnn-ls": dict(n_neighbors=8, dim=16, n_layers=1, ls_weight=0.1, l2_weight=1e-4,
                        lr=5e-4, batch_size=128),
    },
    "book-crossing": {
        "kgnn-ls": dict(n_neighbors=8, dim=64, n_layers=2, ls_weight=0.5, l2_weight=2e-5,
                        lr=2e-4, batch_size=256, topk_users=500),
    },
    "movielens-20m": {
        "kgnn-ls": dict(n_neighbors=16, dim=32, n_layers=1, ls_weight=1.0, l2_weight=1e-7,
                        lr=2e-2, batch_size=65536, threshold=4.0),
    },
    "dianping-food": {
        "kgnn-ls": dict(n_neighbors=4, dim=8, n_layers=2, ls_weight=0.5, l2_weight=1e-7,
                        lr=2e-2, batch_size=65536),
    },
}
