"""Diagnostics of a trained network that no accuracy metric shows.

:func:`relation_entropy`: does KGNN-LS actually weigh relations per user (the
premise of its user-specific adjacency ``A_u``), or has ``s_u(r)`` collapsed
to a near-uniform softmax, where every user sees the same graph? For each
user, the softmax over relations of ``s_u(r)`` (``KGNNLSNet.relation_weights``)
has entropy ``H``; ``H / log(R)`` is 1.0 for uniform weights and falls toward
0 as one relation dominates. The top weight beside ``1/R`` reads the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def relation_entropy(network: Any, users: np.ndarray | torch.Tensor | None = None,
                     n_relations: int | None = None, chunk: int = 65536
                     ) -> dict[str, float | int | None] | None:
    """Normalized entropy of each user's relation weights, summarised.

    Returns ``{"mean", "min", "top_weight_mean", "uniform_top_weight" (1/R),
    "relations" (R), "users"}`` over ``users`` (default: every user), or None
    for a network without relation scores (the baselines). With one relation
    or none (``kg=none``) entropy is undefined: ``mean`` and ``min`` are None.
    ``n_relations``: the KG's relations (the dataset's ``n_relations``), so that
    the ``[self]`` pseudo-relation of isolated entities is left out; None: every
    relation the network scores.
    """
    if not hasattr(network, "relation_weights"):
        return None
    if users is None:
        users = torch.arange(network.n_users)
    users = torch.as_tensor(np.asarray(users), dtype=torch.long).unique()
    n_rel = int(network.relation_emb.shape[0] if n_relations is None else n_relations)
    if n_rel == 0:
        return {"mean": None, "min": None, "top_weight_mean": None,
                "uniform_top_weight": None, "relations": 0, "users": len(users)}
    entropies, tops = [], []
    for start in range(0, len(users), chunk):
        w = network.relation_weights(users[start:start + chunk], n_rel).double()
        entropies.append(-(w * torch.log(w.clamp_min(1e-300))).sum(-1))
        tops.append(w.max(-1).values)
    h = torch.cat(entropies) if entropies else torch.zeros(0, dtype=torch.float64)
    top = torch.cat(tops) if tops else torch.zeros(0, dtype=torch.float64)
    defined = n_rel > 1 and len(h) > 0
    normalized = h / math.log(n_rel) if defined else None
    return {
        "mean": float(normalized.mean()) if defined else None,
        "min": float(normalized.min()) if defined else None,
        "top_weight_mean": float(top.mean()) if len(top) else None,
        "uniform_top_weight": 1.0 / n_rel,
        "relations": n_rel,
        "users": len(users),
    }


__all__ = ["relation_entropy"]
