"""Full ranking for one-layer KGNN-LS: every user x every item, fast.

``KGNNLSNet.score_matrix`` is the reference; this computes the same numbers
(to float32 rounding) for ``L = 1`` without materialising ``[U, I, S, d]``:

* user x relation scores ``s_u(r)`` once per user (a matmul);
* the paper variant's degrees ``D_u(e)`` for every entity at once as
  ``exp(s_u) @ counts^T`` (``counts[e, r]``: how often relation r fills
  e's S slots), shifted by the user's largest score so nothing overflows;
* each item's S slots collapsed to its distinct (neighbour, relation) pairs
  with multiplicities (Last.FM: 1.9 per item instead of 8);
* ``W`` applied to the entity table before mixing (``(sum c h) W = sum c (h W)``);
* one compiled pass per (user, item): mix, ``tanh`` (a rational
  approximation accurate to a few float32 ulps), dot with the user vector.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from kgnnls.arrays import concat_ranges, csr_indptr
from kgnnls.threads import compiled, numba_threads

AGG_CODES = {"sum": 0, "concat": 1, "neighbor": 2}


_F = np.float32
_CLAMP = _F(7.90531110763549805)
_P0, _P1, _P2, _P3 = _F(-2.76076847742355e-16), _F(2.00018790482477e-13), _F(-8.60467152213735e-11), _F(5.12229709037114e-08)  # noqa: E501
_P4, _P5, _P6 = _F(1.48572235717979e-05), _F(6.37261928875436e-04), _F(4.89352455891786e-03)
_Q0, _Q1, _Q2, _Q3 = _F(1.19825839466702e-06), _F(1.18534705686654e-04), _F(2.26843463243900e-03), _F(4.89352518554385e-03)  # noqa: E501


@njit(inline="always", fastmath=True, error_model="numpy")
def _tanh(x):
    # Eigen's float tanh: odd rational 13/6 approximation on a clamped input
    # (written out: a loop over a constant tuple would stop vectorization)
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * (x2 * (x2 * (x2 * (x2 * (x2 * _P0 + _P1) + _P2) + _P3) + _P4) + _P5) + _P6
    q = x2 * (x2 * (x2 * _Q0 + _Q1) + _Q2) + _Q3
    return x * p / q


_BLOCK = 128  # items mixed per block before the vectorized tanh-and-dot pass


def _score_source(user_vecs, rel_emb, rel_scale, items, own_w, neigh_w, bias,
                     slot_ptr, slot_ent, slot_rel, slot_cnt, need, rel_ptr, rel_id, rel_cnt,
                     paper, aggregator, n_neighbors, out):
    """out[u, j] = u . tanh(own + sum_slots c * neigh_w[n] (+ bias)) for item items[j].

    Per user: relation weights w_r = exp(s_u(r) - m_u); then for every entity
    that can appear, ``norm``: paper D_u(e)^-1/2 (scaled by exp(m_u)), authors
    the softmax denominator. ``slot_cnt`` and ``rel_cnt`` already carry the
    slot multiplicities (and deg/S in the paper variant).
    """
    n_users, d = user_vecs.shape
    n_rel, n_ent, n_items = rel_emb.shape[0], neigh_w.shape[0], items.shape[0]
    for u in prange(n_users):
        w = np.empty(n_rel, dtype=np.float32)
        top = np.float32(-np.inf)
        for r in range(n_rel):
            acc = np.float32(0.0)
            for k in range(d):
                acc += user_vecs[u, k] * rel_emb[r, k]
            w[r] = acc * rel_scale
            top = max(top, w[r])
        for r in range(n_rel):
            w[r] = np.exp(w[r] - top)
        floor = np.float32(np.exp(-top))
        norm = np.empty(n_ent, dtype=np.float32)
        for q in range(need.shape[0]):
            e = need[q]
            tot = np.float32(0.0)
            for t in range(rel_ptr[e], rel_ptr[e + 1]):
                tot += rel_cnt[t] * w[rel_id[t]]
            norm[e] = np.float32(1.0) / np.sqrt(floor + tot) if paper else tot
        x = np.empty((_BLOCK, d), dtype=np.float32)
        for start in range(0, n_items, _BLOCK):
            stop = min(start + _BLOCK, n_items)
            for j in range(start, stop):
                i = items[j]
                row = x[j - start]
                own_c = floor * norm[i] * norm[i] if paper else np.float32(1.0)
                if aggregator == 2:
                    for k in range(d):
                        row[k] = bias[k]
                else:
                    for k in range(d):
                        row[k] = own_c * own_w[j, k] + bias[k]
                for t in range(slot_ptr[i], slot_ptr[i + 1]):
                    n = slot_ent[t]
                    if paper:
                        c = slot_cnt[t] * w[slot_rel[t]] * norm[i] * norm[n]
                    else:
                        c = slot_cnt[t] * w[slot_rel[t]] / (norm[i] * n_neighbors)
                    for k in range(d):
                        row[k] += c * neigh_w[n, k]
            flat = x.reshape(-1)
            for t in range((stop - start) * d):  # long, branch-free: vectorizes
                flat[t] = _tanh(flat[t])
            for j in range(start, stop):
                row = x[j - start]
                acc = np.float32(0.0)
                for k in range(d):
                    acc += user_vecs[u, k] * row[k]
                out[u, j] = acc


# error_model="numpy" (kgnnls.threads.compiled): no ZeroDivisionError checks, which
# would stop LLVM vectorizing; users run in parallel with more than one thread
_score_one_layer = compiled(_score_source, "_score_one_layer", parallel=False, fastmath=True)
_score_one_layer_parallel = compiled(_score_source, "_score_one_layer_parallel", parallel=True,
                                     fastmath=True)


def _csr(owner: np.ndarray, key: np.ndarray, n_rows: int, n_keys: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``key`` values per ``owner`` row with their counts, as CSR."""
    uniq, counts = np.unique(owner * np.int64(n_keys) + key, return_counts=True)
    return csr_indptr(uniq // n_keys, n_rows), uniq % n_keys, counts.astype(np.float32)


class OneLayerRanker:
    """Fast ``score_matrix`` for a one-layer ``KGNNLSNet`` (either variant, any aggregator)."""

    def __init__(self, net):
        if net.n_layers != 1:
            raise ValueError("the fast ranker covers one-layer networks only")
        self.net = net
        adj_e, adj_r = net.adj_entity.numpy(), net.adj_relation.numpy()
        n_ent, s = adj_e.shape
        n_rel = net.relation_emb.shape[0]
        owner = np.repeat(np.arange(n_ent, dtype=np.int64), s)
        # distinct (neighbour, relation) slots of every entity
        ptr, pair, cnt = _csr(owner, adj_e.reshape(-1) * n_rel + adj_r.reshape(-1), n_ent,
                              n_ent * n_rel)
        # distinct relations among every entity's slots (degrees / softmax denominators)
        rptr, rel, rcnt = _csr(owner, adj_r.reshape(-1), n_ent, n_rel)
        deg_over_s = np.exp(net.log_slot_weight.numpy()).astype(np.float32)
        if net.paper:  # each slot stands for deg/S edges
            cnt = cnt * deg_over_s[np.repeat(np.arange(n_ent), np.diff(ptr))]
            rcnt = rcnt * deg_over_s[np.repeat(np.arange(n_ent), np.diff(rptr))]
        self.slots = (ptr, (pair // n_rel).astype(np.int64), (pair % n_rel).astype(np.int64),
                      cnt.astype(np.float32))
        self.relations = (rptr, rel.astype(np.int64), rcnt.astype(np.float32))

    def _needed(self, items: np.ndarray) -> np.ndarray:
        if not self.net.paper:
            return np.unique(items)
        ptr, ent = self.slots[0], self.slots[1]
        idx = concat_ranges(ptr[items], ptr[items + 1] - ptr[items])
        return np.unique(np.concatenate([items, ent[idx]]))

    @torch.no_grad()
    def score_matrix(self, users: torch.Tensor, items: torch.Tensor, threads: int = 1
                     ) -> torch.Tensor:
        net, cfg = self.net, self.net.config
        d = cfg.dim
        w = net.weights[0]
        w_own, w_neigh = (w[:d], w[d:]) if cfg.aggregator == "concat" else (w, w)
        items_np = items.numpy().astype(np.int64)
        bias = net.biases[0] if len(net.biases) else torch.zeros(d)
        out = np.empty((len(users), len(items)), dtype=np.float32)
        with numba_threads(threads) as count:
            (_score_one_layer_parallel if count > 1 else _score_one_layer)(
                net.user_emb[users].numpy(), net.relation_emb.numpy(),
                np.float32(1.0 if net.paper else 1.0 / d), items_np,
                (net.entity_emb[items] @ w_own).numpy(), (net.entity_emb @ w_neigh).numpy(),
                bias.numpy(), *self.slots, self._needed(items_np), *self.relations,
                net.paper, AGG_CODES[cfg.aggregator], np.float32(cfg.n_neighbors), out)
        return torch.from_numpy(out)
