"""The fused training step: forward, backward and Adam in one compiled loop.

At the paper's batch sizes (128 pairs, tensors of 128 x 8 x 16) an eager
PyTorch step is nearly all per-operator framework overhead: ~100 operators
forward and back, each a few microseconds of dispatch for a few hundred
FLOPs. This module computes the same step without the framework: for each
pair it walks the receptive field, evaluates Eq. (1), the prediction and the
label-propagation term, back-propagates by hand, accumulates the gradient,
and after each batch applies Adam (coupled L2 as ``weight_decay``, exactly
``torch.optim.Adam``'s update) to all parameters, held in one flat buffer.

It covers ``KGNNLSNet`` with ``L <= 4`` and a propagation depth ``<= 4``,
both variants, every aggregator, ``updates="dense"`` and ``"rows"`` (lazy Adam
on the table rows a batch reads), one process. The
autograd model stays the reference: ``tests/test_fused.py`` checks loss and
every gradient against it to 1e-5 on random inputs for each covered
configuration, and serves everything else. :func:`kgnnls.train.fit` picks
this path when it applies (``Config.training_path = "auto"``) and records the
path that ran in ``metrics.json`` (``training_path``). docs/performance.md
has the measurements.

The per-pair loop is compiled (numba), so the hot path has no Python loop
over samples. Pairs run in tasks of a fixed size whose results are summed in
a fixed order, so a run's numbers do not depend on the number of threads.
"""

from __future__ import annotations

import math
import time
import types

import numba
import numpy as np
import torch
from numba import njit, prange

from kgnnls.config import Config
from kgnnls.fast_rank import AGG_CODES, _tanh
from kgnnls.graph import LabelTable
from kgnnls.model import _EPS, KGNNLSNet
from kgnnls.optim import RowAdam
from kgnnls.threads import numba_threads

#: the deepest receptive field (GNN layers and label-propagation hops) covered
MAX_DEPTH = 4


def unsupported(config: Config, parallel: bool = False, forward_only: bool = False
                ) -> str | None:
    """Why the fused step cannot train ``config`` (None: it can).

    ``forward_only``: only the compiled forward (:func:`logits`) is wanted, which
    does not depend on the training objective.
    """
    if config.model not in ("kgnn-ls", "kgcn"):
        return f"model {config.model!r} is not KGNN-LS"
    if not forward_only and config.loss != "bce":
        return f"loss={config.loss} (the fused step computes the pointwise bce objective)"
    if config.n_layers > MAX_DEPTH:
        return f"L = {config.n_layers} > {MAX_DEPTH}"
    if config.ls_weight > 0 and config.label_hops > MAX_DEPTH:
        return f"label propagation depth {config.label_hops} > {MAX_DEPTH}"
    if parallel:
        return "data-parallel training runs under DistributedDataParallel (autograd)"
    return None


# ---------------------------------------------------------------------- kernels
@njit(inline="always")
def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(inline="always")
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(inline="always")
def _lookup(user, ent, lab_ptr, lab_ent, lab_val, lab_items):
    """(label, known) of (user, entity): search the user's sorted labelled items.

    Branch-free halving (a select per step, a fixed number of steps for a
    given run length): most entities are not labelled, so a branchy binary
    search mispredicts on nearly every step.
    """
    if ent >= lab_items or user + 1 >= lab_ptr.shape[0]:
        return 0.5, False
    base, n = lab_ptr[user], lab_ptr[user + 1] - lab_ptr[user]
    if n == 0:
        return 0.5, False
    while n > 1:
        half = n >> 1
        base = base + half if lab_ent[base + half] <= ent else base
        n -= half
    if lab_ent[base] == ent:
        return lab_val[base], True
    return 0.5, False


# fast-math without nnan/ninf: reassociation lets the small reductions vectorize
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: levels with at least this many nodes (deep fields: 73 at S = 8, L = 3) apply ``W``
#: as one matrix product over the level; smaller ones node by node, where a BLAS
#: call's overhead would dominate (every L <= 2 field at S = 8)
MATMUL_MIN_NODES = 32

#: from this width on, the ``W`` products (per node, and the levels' matrix products)
#: run in single precision, as autograd's do: twice the lanes per vector. Book-Crossing's
#: d = 64 step takes 0.83-0.93 of the double-precision time; at d = 16 and 32 (Last.FM's
#: data) it measured no faster (1.01), so narrower fields stay in double
SINGLE_MIN_DIM = 64

#: rows per parallel task; a fixed size (not one per thread) keeps the order in which
#: gradients are summed, hence every number, independent of the thread count. Each task
#: allocates its scratch arrays once: a paper-sized batch (128) is two tasks, one per
#: core of a 2-core machine (on one thread 64 costs no more than 128, measured)
CHUNK = 64


#: a pair's propagation tree (see _label_candidates): it holds no labelled item of the
#: user, it holds one, or the item has no candidate list (walk the whole tree)
UNREACHED, REACHED, UNLISTED = 0, 1, 2


@njit(cache=True)
def _reach_codes(users, items, lo, hi, hops, cand_ptr, cand_ent, known_bits,
                 lab_ptr, lab_ent, lab_val, lab_items):
    """The code (UNREACHED, REACHED, UNLISTED) of each pair ``lo:hi``. It depends only
    on the pair, the training labels and the sampled graph, all fixed while a model
    trains: the training loop computes it once for the training rows rather than in
    every epoch (Last.FM: a random look-up per candidate, about 3 % of a step)."""
    out = np.empty(hi - lo, np.uint8)
    bits = known_bits.shape[1] > 0
    for b in range(lo, hi):
        user, item = users[b], items[b]
        code = UNLISTED if item + 1 >= cand_ptr.shape[0] else UNREACHED
        if hops > 0 and code == UNREACHED:
            for i in range(cand_ptr[item], cand_ptr[item + 1]):
                e = cand_ent[i]  # an item: e < lab_items
                if bits:
                    known = user < known_bits.shape[0] and (
                        known_bits[user, e >> 6] >> np.uint64(e & 63)) & np.uint64(1) == 1
                else:
                    known = _lookup(user, e, lab_ptr, lab_ent, lab_val, lab_items)[1]
                if known:
                    code = REACHED
                    break
        out[b - lo] = code
    return out


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _rows_grad(users, items, labels, lo, hi, b0, inv_b, p, g_users_b,
               ent_rows, g_ent_rows, g_ent_table, direct, gw, gb, g_rel_task,
               off_u, off_e, off_r, off_w, off_b, n_rel, d, d_in, n_layers, hops, S,
               paper, agg, ls_weight, adj_e, adj_r, runs,
               lab_ptr, lab_ent, lab_val, lab_items, known_bits, label_bits, codes, code_base,
               ent_mark, logits_out):
    """Forward and backward of rows ``lo:hi`` (batch rows from ``b0``).

    ``p`` holds every parameter (user, entity, relation tables, layer weights,
    biases) at the given offsets; it is only read. Each row writes its own
    slice of the batch outputs (user gradients, its tree's entity rows and
    their gradients); layer-weight and relation gradients go to this task's
    ``gw``/``gb``/``g_rel_task``. With ``direct`` (a serial run, or a parallel run's
    first task, the only one that writes the table) a row's entity
    gradients go straight into ``g_ent_table``, in the order the batch outputs
    would be added later, so both ways give the same numbers without a
    ``[batch, tree, d]`` buffer (300 MB at L = 4, d = 64). Returns the summed
    (bce, ls) of the rows. A non-empty ``logits_out`` makes it a forward pass:
    each row's logit goes there and nothing else runs. Node
    arrays index the receptive field level by level (``o[h]``: first node of
    level h); an edge's quantities live at its child node.
    """
    L, H = n_layers, hops
    D = max(L, H)
    o = np.zeros(D + 2, np.int64)
    width = 1
    for h in range(D + 1):
        o[h + 1] = o[h] + width
        width *= S
    N = o[D + 1]
    scale = 1.0 if paper else 1.0 / d
    # 2-D views of the flat buffers: indices from range() are then known to be
    # non-negative, so numba drops its wraparound checks and LLVM vectorizes
    n_ent = adj_e.shape[0]
    user_table = p[off_u:off_u + (off_e - off_u)].reshape(((off_e - off_u) // d, d))
    ent_table = p[off_e:off_e + n_ent * d].reshape((n_ent, d))
    rel_table = p[off_r:off_r + n_rel * d].reshape((n_rel, d))
    g_rel = g_rel_task.reshape((n_rel, d))
    weights = p[off_w:off_w + L * d_in * d].reshape((L, d_in, d))
    n_bias = 0 if paper else L
    biases = p[off_b:off_b + n_bias * d].reshape((n_bias, d))
    g_weights = gw.reshape((L, d_in, d))
    g_biases = gb.reshape((L, d))
    NC = o[L]  # nodes that run the first layer (depth < L)
    # the W products' operands, W and the aggregator's input per level, in one precision
    # (like with like for BLAS, no conversion per use): float32 from SINGLE_MIN_DIM on,
    # else float64; the other precision's arrays are empty
    single = d >= SINGLE_MIN_DIM
    L32, L64 = (L, 0) if single else (0, L)
    w32 = np.empty((L32, d_in, d), np.float32)
    w64 = np.empty((L64, d_in, d), np.float64)
    for it in range(L):
        for i in range(d_in):
            for q in range(d):
                if single:
                    w32[it, i, q] = weights[it, i, q]
                else:
                    w64[it, i, q] = weights[it, i, q]
    gw32 = np.zeros((L32, d_in, d), np.float32)  # this call's W gradient; added to gw at the end
    comb32 = np.zeros((L32, NC, d_in), np.float32)
    v32 = np.zeros((2, d if single else 0), np.float32)
    xq32, gx32 = v32[0], v32[1]
    # scratch, reused by every row of the call, in a few allocations: as ~45 small
    # arrays their mallocs and frees were ~5 % of a Last.FM step
    comb = np.zeros((L64, NC, d_in), np.float64)
    gxs = np.zeros((NC, d), np.float64)
    node_ids = np.empty((2, N), np.int64)
    ent, rel = node_ids[0], node_ids[1]
    per_rel = np.empty((2, n_rel), np.int64)
    stamp = per_rel[0]
    stamp[:] = -1
    met = per_rel[1]  # the relations a pair meets, in the order it meets them
    rel_f = np.zeros((2, n_rel), np.float64)
    es, g_s = rel_f[0], rel_f[1]
    per_node = np.zeros((14, N), np.float64)
    sm, frac, slot_sum, degree = per_node[0], per_node[1], per_node[2], per_node[3]
    slot_sum[:] = 1.0  # a node's sum over its slots of e^s_u(r)
    degree[:] = 1.0
    self_c, child_c, self_p, child_p = per_node[4], per_node[5], per_node[6], per_node[7]
    self_c[:] = 1.0
    g_z, g_ld, g_self_c, g_child_c = per_node[8], per_node[9], per_node[10], per_node[11]
    g_self_p, g_child_p = per_node[12], per_node[13]
    NL = o[L + 1]
    # hidden vectors of the inner nodes only: the leaves (S^L of the NL nodes) enter
    # through their parents' sums, read from the entity table, and their gradient is
    # written straight to the batch output (this keeps a deep field in cache)
    levels = np.zeros((4, L + 1, NC, d), np.float64)
    vec, g_vec, own, neigh = levels[0], levels[1], levels[2, :L], levels[3, :L]
    row_g = np.zeros((NL, d), np.float32)  # this row's gradient of each tree node's entity
    wide = np.zeros((2, d_in), np.float64)
    cvec, gc = wide[0], wide[1]
    narrow = np.zeros((6, d), np.float64)
    gx, xq, gown, gnb, u, g_u = narrow[0], narrow[1], narrow[2], narrow[3], narrow[4], narrow[5]
    NH = o[H + 1]
    init = np.full(NH, 0.5)
    clamp = np.zeros(NH, np.bool_)
    prop = np.zeros((2, H + 1, NH), np.float64)
    cur, g_cur = prop[0], prop[1]

    sum_bce = 0.0
    sum_ls = 0.0
    for b in range(lo, hi):
        bi = b - b0
        user, item, y = users[b], items[b], labels[b]
        for k in range(d):
            u[k] = user_table[user, k]
        # e^s_u(r) of the relations the pair meets (Last.FM: about 8 of 60), each scored
        # when first met: the slot weights of every node share them (a node's deg/S
        # factor cancels in its softmax), so no exp per edge and no score per relation
        n_met = 0
        # is a label in reach? (``codes``: see _reach_codes) 95 % of Last.FM pairs reach
        # none: their propagated label is a constant (see the LS forward), so the tree's
        # levels beyond the GNN's do not matter
        code = codes[b - code_base]
        reached = code == REACHED
        listed = code != UNLISTED  # else: look at every node of the tree
        Dc = D if reached or not listed else L  # the levels whose edge weights matter
        # paper: D^-1/2 on both sides of the deepest GNN level needs its nodes' degrees
        leaf_deg = paper and Dc == L
        # receptive field; per node the sum of its slots' e^s_u(r) and
        # (paper) its degree D = 1 + deg/S * sum_slots exp(s_u(r))
        ent[0] = item
        # levels < Dc also lay out their children; the deepest one (paper, Dc = L) only
        # needs its nodes' degrees, from their own slots' relations
        for h in range(Dc + 1 if leaf_deg else Dc):
            for n in range(o[h + 1] - o[h]):
                node = o[h] + n
                e = ent[node]
                acc = 0.0  # over the node's slots, as runs of one relation (_relation_runs)
                for j in range(2, 2 + 2 * int(runs[e, 1]), 2):
                    r = int(runs[e, j])
                    if stamp[r] != b:  # the pair meets relation r: score it
                        stamp[r] = b
                        score = 0.0
                        for k in range(d):
                            score += u[k] * rel_table[r, k]
                        score *= scale
                        if score > 300.0:
                            raise FloatingPointError(
                                "relation scores above 300: training has diverged")
                        es[r] = math.exp(score)
                        met[n_met] = r
                        n_met += 1
                    acc += runs[e, j + 1] * es[r]
                slot_sum[node] = acc
                if h < Dc:
                    first = o[h + 1] + n * S
                    for j in range(S):  # the node's softmax over its slots, at the child
                        c = first + j
                        ent[c] = adj_e[e, j]
                        rel[c] = adj_r[e, j]
                        sm[c] = es[rel[c]] / acc
                if paper:
                    big = acc * runs[e, 0]  # runs[e, 0]: the slot weight deg / S
                    degree[node] = 1.0 + big
                    frac[node] = big / degree[node]  # share of the slots in D
        if H > 0 and (reached or not listed):  # each node's label (y_uv hidden wherever v is)
            for node in range(1, NH):
                e = ent[node]
                if known_bits.shape[1] > 0:  # bit rows: one load, no search
                    if e < lab_items and user < known_bits.shape[0]:
                        word, bit = e >> 6, np.uint64(e & 63)
                        known = (known_bits[user, word] >> bit) & np.uint64(1) == 1
                        lab = float((label_bits[user, word] >> bit) & np.uint64(1)) if known \
                            else 0.5
                    else:
                        lab, known = 0.5, False
                else:
                    lab, known = _lookup(user, e, lab_ptr, lab_ent, lab_val, lab_items)
                hidden = e == item
                init[node] = 0.5 if hidden else lab
                clamp[node] = known and not hidden
                reached = reached or clamp[node]
            init[0] = 0.5
            clamp[0] = False
        # coefficients: GNN (symmetric) on levels < L, propagation on levels < H
        if paper:
            for node in range(o[Dc + 1] if leaf_deg else o[Dc]):
                self_c[node] = 1.0 / degree[node]  # D^-1 of the self-loop
                self_p[node] = self_c[node]
        for h in range(Dc):
            for n in range(o[h + 1] - o[h]):
                node = o[h] + n
                first = o[h + 1] + n * S
                if not paper:
                    self_c[node] = 1.0  # the authors' layer adds the node's own vector
                    self_p[node] = 0.0
                for j in range(S):
                    c = first + j
                    if paper:  # exp(z - ld), and exp(z - ld/2 - ld_child/2)
                        child_p[c] = sm[c] * frac[node]
                        if h < L:
                            child_c[c] = child_p[c] * math.sqrt(degree[node] / degree[c])
                    else:
                        child_c[c] = sm[c] / S
                        child_p[c] = child_c[c]

        # ---------------------------------------------------------- GNN forward
        for node in range(NC):
            e = ent[node]
            for k in range(d):
                vec[0, node, k] = ent_table[e, k]
        for it in range(L):
            for h in range(L - it):
                for n in range(o[h + 1] - o[h]):
                    node = o[h] + n
                    first = o[h + 1] + n * S
                    for k in range(d):  # inner loops run along d: they vectorize
                        own[it, node, k] = self_c[node] * vec[it, node, k]
                        neigh[it, node, k] = 0.0
                    if it == 0 and h == L - 1:  # the children are leaves
                        for j in range(S):
                            cc = child_c[first + j]
                            e = ent[first + j]
                            for k in range(d):
                                neigh[it, node, k] += cc * ent_table[e, k]
                    else:
                        for j in range(S):
                            cc = child_c[first + j]
                            for k in range(d):
                                neigh[it, node, k] += cc * vec[it, first + j, k]
                    for k in range(d):  # the aggregator's input to W (written out, see above)
                        if agg == 0:  # sum: own + neigh
                            cvec[k] = own[it, node, k] + neigh[it, node, k]
                        elif agg == 1:  # concat: [own; neigh]
                            cvec[k] = own[it, node, k]
                            cvec[d + k] = neigh[it, node, k]
                        else:  # neighbor: neigh
                            cvec[k] = neigh[it, node, k]
                    if single:
                        for i in range(d_in):
                            comb32[it, node, i] = cvec[i]
                    else:
                        for i in range(d_in):
                            comb[it, node, i] = cvec[i]
                    if o[L - it] >= MATMUL_MIN_NODES:
                        continue
                    if single:
                        for q in range(d):
                            xq32[q] = 0.0
                        for i in range(d_in):
                            ci32 = comb32[it, node, i]
                            for q in range(d):
                                xq32[q] += ci32 * w32[it, i, q]
                        for q in range(d):
                            xq[q] = xq32[q] + (0.0 if paper else biases[it, q])
                    else:
                        for q in range(d):
                            xq[q] = 0.0 if paper else biases[it, q]
                        for i in range(d_in):
                            ci = cvec[i]
                            for q in range(d):
                                xq[q] += ci * w64[it, i, q]
                    for q in range(d):
                        if it == L - 1:
                            vec[it + 1, node, q] = _tanh(xq[q])
                        else:
                            vec[it + 1, node, q] = max(xq[q], 0.0)
            n_level = o[L - it]
            if n_level >= MATMUL_MIN_NODES:
                if single:
                    xs = np.dot(comb32[it, :n_level], w32[it]).astype(np.float64)
                else:
                    xs = np.dot(comb[it, :n_level], w64[it])
                for node in range(n_level):
                    for q in range(d):
                        x = xs[node, q] + (0.0 if paper else biases[it, q])
                        if it == L - 1:
                            vec[it + 1, node, q] = _tanh(x)
                        else:
                            vec[it + 1, node, q] = max(x, 0.0)
        logit = 0.0
        for k in range(d):
            logit += u[k] * vec[L, 0, k]
        if logits_out.shape[0] > 0:
            logits_out[bi] = logit
            continue
        sum_bce += max(logit, 0.0) - logit * y + math.log1p(math.exp(-abs(logit)))
        g_logit = (_sigmoid(logit) - y) * inv_b

        # ---------------------------------------------------------- LS forward
        g_final = 0.0
        if H > 0:
            # no labelled entity in reach: the result does not depend on the edge
            # weights (paper: a convex mix of 0.5s; authors: weights summing to 1/S
            # per step), so the term has no gradient
            for node in range(NH if reached else 1):
                cur[0, node] = init[node]
            for it in range(H if reached else 0):
                for h in range(H - it):
                    for n in range(o[h + 1] - o[h]):
                        node = o[h] + n
                        if clamp[node]:
                            cur[it + 1, node] = init[node]
                            continue
                        first = o[h + 1] + n * S
                        acc = self_p[node] * cur[it, node]
                        for j in range(S):
                            acc += child_p[first + j] * cur[it, first + j]
                        cur[it + 1, node] = acc
            final = cur[H, 0] if reached else (0.5 if paper else 0.5 / S ** H)
            if paper:
                q = min(max(final, _EPS), 1 - _EPS)
                sum_ls += -(y * math.log(q) + (1 - y) * math.log(1 - q))
                if _EPS <= final <= 1 - _EPS:
                    g_final = (q - y) / (q * (1 - q))
            else:
                sum_ls += max(final, 0.0) - final * y + math.log1p(math.exp(-abs(final)))
                g_final = _sigmoid(final) - y
            g_final *= ls_weight * inv_b if reached else 0.0

        # ---------------------------------------------------------- backward
        for k in range(d):
            g_u[k] = g_logit * vec[L, 0, k]
            g_vec[L, 0, k] = g_logit * u[k]
        NZ = o[Dc + 1]  # nodes a gradient can reach
        for c in range(NZ):
            g_z[c] = 0.0
            g_ld[c] = 0.0
            g_self_c[c] = 0.0
            g_child_c[c] = 0.0
            g_self_p[c] = 0.0
            g_child_p[c] = 0.0
        for it in range(L - 1, -1, -1):
            for node in range(o[L - it + 1] if it > 0 else NC):
                for k in range(d):
                    g_vec[it, node, k] = 0.0
            n_level = o[L - it]
            matmul = n_level >= MATMUL_MIN_NODES
            if matmul:  # gx of the whole level, then two matrix products
                for node in range(n_level):
                    for q in range(d):
                        hv = vec[it + 1, node, q]
                        if it == L - 1:
                            gxs[node, q] = g_vec[it + 1, node, q] * (1.0 - hv * hv)
                        else:
                            gxs[node, q] = g_vec[it + 1, node, q] if hv > 0 else 0.0
                if single:
                    gx_level = gxs[:n_level].astype(np.float32)
                    gw32[it] += np.dot(comb32[it, :n_level].T, gx_level)
                    gcs = np.dot(gx_level, w32[it].T).astype(np.float64)
                else:
                    g_weights[it] += np.dot(comb[it, :n_level].T, gxs[:n_level])
                    gcs = np.dot(gxs[:n_level], w64[it].T)
            for h in range(L - it):
                for n in range(o[h + 1] - o[h]):
                    node = o[h] + n
                    first = o[h + 1] + n * S
                    if matmul:
                        for q in range(d):
                            gx[q] = gxs[node, q]
                        for i in range(d_in):
                            gc[i] = gcs[node, i]
                    else:
                        for q in range(d):
                            hv = vec[it + 1, node, q]
                            if it == L - 1:
                                gx[q] = g_vec[it + 1, node, q] * (1.0 - hv * hv)
                            else:
                                gx[q] = g_vec[it + 1, node, q] if hv > 0 else 0.0
                        if single:
                            for q in range(d):
                                gx32[q] = gx[q]
                            for i in range(d_in):
                                acc32 = np.float32(0.0)
                                ci32 = comb32[it, node, i]
                                for q in range(d):
                                    gw32[it, i, q] += ci32 * gx32[q]
                                    acc32 += w32[it, i, q] * gx32[q]
                                gc[i] = acc32
                        else:
                            for i in range(d_in):
                                acc = 0.0
                                ci = comb[it, node, i]
                                for q in range(d):
                                    g_weights[it, i, q] += ci * gx[q]
                                    acc += w64[it, i, q] * gx[q]
                                gc[i] = acc
                    if not paper:
                        for q in range(d):
                            g_biases[it, q] += gx[q]
                    # gc -> own (scaled own vector) and neigh
                    for k in range(d):
                        if agg == 0:
                            gown[k], gnb[k] = gc[k], gc[k]
                        elif agg == 1:
                            gown[k], gnb[k] = gc[k], gc[d + k]
                        else:
                            gown[k], gnb[k] = 0.0, gc[k]
                    acc = 0.0
                    for k in range(d):
                        g_vec[it, node, k] += self_c[node] * gown[k]
                        acc += gown[k] * vec[it, node, k]
                    g_self_c[node] += acc
                    leaves = it == 0 and h == L - 1
                    for j in range(S):
                        c = first + j
                        cc = child_c[c]
                        acc = 0.0
                        if leaves:  # a leaf's one parent: its whole gradient
                            e = ent[c]
                            for k in range(d):
                                acc += gnb[k] * ent_table[e, k]
                                row_g[c, k] = cc * gnb[k]
                        else:
                            for k in range(d):
                                acc += gnb[k] * vec[it, c, k]
                                g_vec[it, c, k] += cc * gnb[k]
                        g_child_c[c] += acc
        for node in range(NC):
            for k in range(d):
                row_g[node, k] = g_vec[0, node, k]
        if direct:
            for node in range(NL):
                e = ent[node]
                for k in range(d):
                    g_ent_table[e, k] += row_g[node, k]
                if ent_mark.shape[0] > 0:
                    ent_mark[e] = 1
                if ent_rows.shape[0] > 0:  # the rows whose gradient the step clears
                    ent_rows[bi, node] = e
        else:
            for node in range(NL):
                ent_rows[bi, node] = ent[node]
                for k in range(d):
                    g_ent_rows[bi, node, k] = row_g[node, k]

        if H > 0 and g_final != 0.0:
            for node in range(NH):
                g_cur[H, node] = 0.0
            g_cur[H, 0] = g_final
            for it in range(H - 1, -1, -1):
                for node in range(NH):
                    g_cur[it, node] = 0.0
                for h in range(H - it):
                    for n in range(o[h + 1] - o[h]):
                        node = o[h] + n
                        g = g_cur[it + 1, node]
                        if clamp[node] or g == 0.0:
                            continue
                        first = o[h + 1] + n * S
                        g_self_p[node] += g * cur[it, node]
                        g_cur[it, node] += g * self_p[node]
                        for j in range(S):
                            g_child_p[first + j] += g * cur[it, first + j]
                            g_cur[it, first + j] += g * child_p[first + j]

        # coefficients -> edge logits z and log-degrees
        for h in range(Dc):
            for n in range(o[h + 1] - o[h]):
                node = o[h] + n
                first = o[h + 1] + n * S
                if paper:
                    g_ld[node] -= self_c[node] * g_self_c[node]  # self_c = self_p
                    g_ld[node] -= self_p[node] * g_self_p[node]
                    for j in range(S):
                        c = first + j
                        if h < L:
                            t = child_c[c] * g_child_c[c]
                            g_z[c] += t
                            g_ld[node] -= 0.5 * t
                            g_ld[c] -= 0.5 * t
                        t = child_p[c] * g_child_p[c]
                        g_z[c] += t
                        g_ld[node] -= t
                else:  # one softmax / S feeds both terms
                    dot = 0.0
                    for j in range(S):
                        c = first + j
                        dot += child_c[c] * (g_child_c[c] + g_child_p[c])
                    for j in range(S):
                        c = first + j
                        g_z[c] += child_c[c] * (g_child_c[c] + g_child_p[c] - S * dot)
        if paper:
            if leaf_deg:  # the deepest level's softmax, from its slots' relations
                for node in range(o[Dc], o[Dc + 1]):
                    if g_ld[node] == 0.0:
                        continue
                    e = ent[node]
                    g_lse = g_ld[node] * frac[node] / slot_sum[node]
                    for j in range(2, 2 + 2 * int(runs[e, 1]), 2):
                        r = int(runs[e, j])
                        g_s[r] += g_lse * runs[e, j + 1] * es[r]
            for h in range(Dc - 1, -1, -1):
                for n in range(o[h + 1] - o[h]):
                    node = o[h] + n
                    g_lse = g_ld[node] * frac[node]  # d softplus(lse) / d lse
                    first = o[h + 1] + n * S
                    for j in range(S):
                        g_z[first + j] += g_lse * sm[first + j]
        for c in range(1, NZ):
            g_s[rel[c]] += g_z[c]
        for i in range(n_met):  # s_u(r) = scale * u . r: to the user and relation vectors
            r = met[i]
            g = g_s[r] * scale
            g_s[r] = 0.0
            for k in range(d):
                g_u[k] += g * rel_table[r, k]
                g_rel[r, k] += g * u[k]
        for k in range(d):
            g_users_b[bi, k] = g_u[k]
    for it in range(L32):
        for i in range(d_in):
            for q in range(d):
                g_weights[it, i, q] += gw32[it, i, q]
    return sum_bce, sum_ls


@njit(inline="always")
def _tree_size(n_layers, S):
    """Nodes of the GNN's receptive field: sum_{h <= L} S^h."""
    n_tree = 0
    width = 1
    for _ in range(n_layers + 1):
        n_tree += width
        width *= S
    return n_tree


def _batch_grad_source(users, items, labels, lo, hi, p, grad,
                off_u, off_e, off_r, off_w, off_b, n_rel, d, d_in, n_layers, hops, S,
                paper, agg, ls_weight, adj_e, adj_r, runs,
                lab_ptr, lab_ent, lab_val, lab_items, known_bits, label_bits, cand_ptr,
                cand_ent, codes, direct, user_mark, ent_mark, touched):
    """Add the gradient of the mean loss over rows ``lo:hi`` to ``grad``.

    Rows run in parallel tasks of ``CHUNK``; their outputs are then added to
    ``grad`` in a fixed order. ``codes``: every row's :func:`_reach_codes`, or
    empty (computed here for the batch). Non-empty ``user_mark`` / ``ent_mark``
    get a 1 at every table row the batch reads (``updates="rows"``); a non-empty
    ``touched`` (``[>= rows, tree]``) gets the entity row of every tree node, for
    :func:`_steps` to clear. Returns (total, bce, ls) of the batch means.
    """
    if codes.shape[0] > 0:
        batch_codes, code_base = codes, 0
    else:
        batch_codes, code_base = _reach_codes(users, items, lo, hi, hops, cand_ptr, cand_ent,
                                              known_bits, lab_ptr, lab_ent, lab_val,
                                              lab_items), lo
    nb = hi - lo
    inv_b = 1.0 / nb
    n_tree = _tree_size(n_layers, S)
    g_user_table = grad[off_u:off_e].reshape(((off_e - off_u) // d, d))
    n_ent = adj_e.shape[0]
    g_ent_table = grad[off_e:off_e + n_ent * d].reshape((n_ent, d))
    g_users_b = np.zeros((nb, d), np.float32)
    n_out = 0 if direct else nb  # serial runs write the entity gradients in place
    ent_rows = touched if touched.shape[0] > 0 else np.empty((n_out, n_tree), np.int64)
    g_ent_rows = np.empty((n_out, n_tree, d), np.float32)
    n_tasks = (nb + CHUNK - 1) // CHUNK
    n_w = n_layers * d_in * d
    gw = np.zeros((n_tasks, n_w), np.float64)
    gb = np.zeros((n_tasks, n_layers * d), np.float64)
    g_rel = np.zeros((n_tasks, n_rel * d), np.float64)
    sums = np.zeros((n_tasks, 2), np.float64)
    for t in prange(n_tasks):
        a = lo + t * CHUNK
        in_place = direct or t == 0
        sums[t, 0], sums[t, 1] = _rows_grad(
            users, items, labels, a, min(a + CHUNK, hi), lo, inv_b, p, g_users_b, ent_rows,
            g_ent_rows, g_ent_table, in_place, gw[t], gb[t], g_rel[t],
            off_u, off_e, off_r, off_w, off_b, n_rel, d, d_in, n_layers, hops, S,
            paper, agg, ls_weight, adj_e, adj_r, runs,
            lab_ptr, lab_ent, lab_val, lab_items, known_bits, label_bits, batch_codes,
            code_base, ent_mark, np.zeros(0, np.float64))
    # everything below runs in one fixed order
    g_w = grad[off_w:off_w + n_w]
    g_b = grad[off_b:off_b + (0 if paper else n_layers * d)]
    g_r = grad[off_r:off_r + n_rel * d]
    for t in range(n_tasks):
        for i in range(n_w):
            g_w[i] += gw[t, i]
        for i in range(g_b.shape[0]):
            g_b[i] += gb[t, i]
        for i in range(n_rel * d):
            g_r[i] += g_rel[t, i]
    # the first task added its rows' entity gradients in place (no other task writes
    # the table); the later tasks' rows follow in row order, as in a serial run
    for bi in range(min(CHUNK, n_out), n_out):
        for node in range(n_tree):
            row = ent_rows[bi, node]
            for k in range(d):
                g_ent_table[row, k] += g_ent_rows[bi, node, k]
            if ent_mark.shape[0] > 0:
                ent_mark[row] = 1
    for bi in range(nb):
        row = users[lo + bi]
        for k in range(d):
            g_user_table[row, k] += g_users_b[bi, k]
        if user_mark.shape[0] > 0:
            user_mark[row] = 1
    sum_bce, sum_ls = 0.0, 0.0
    for t in range(n_tasks):
        sum_bce += sums[t, 0]
        sum_ls += sums[t, 1]
    mean_bce = sum_bce * inv_b
    mean_ls = sum_ls * inv_b
    return mean_bce + ls_weight * mean_ls, mean_bce, mean_ls


def _compiled(source, name: str, parallel: bool, **calls):
    """``source`` compiled serially or with ``prange`` parallel (a parallel region costs
    a thread hand-off: worth it for large batches only) under its own name, which keeps
    the on-disk caches apart. ``calls`` binds global names of the source (the kernels it
    calls) for this variant only: a serial variant then references no parallel kernel,
    which numba would otherwise compile too (see docs/performance.md, first run)."""
    fn = types.FunctionType(source.__code__, {**source.__globals__, **calls}, name,
                            source.__defaults__, source.__closure__)
    fn.__qualname__, fn.__doc__ = name, source.__doc__
    return njit(cache=True, error_model="numpy", parallel=parallel)(fn)


_batch_grad = _compiled(_batch_grad_source, "_batch_grad", parallel=False)
_batch_grad_parallel = _compiled(_batch_grad_source, "_batch_grad_parallel", parallel=True)


def _batch_logits_source(users, items, p, out, off_u, off_e, off_r, off_w, off_b, n_rel, d,
                         d_in, n_layers, S, paper, agg, adj_e, adj_r, runs):
    """``out[i]`` = the logit of pair (users[i], items[i]): the step's forward alone."""
    nb = users.shape[0]
    n_tree = _tree_size(n_layers, S)
    none_ent = np.zeros((0, d), np.float32)
    labels = np.zeros(nb, np.float32)
    no_bits = np.zeros((0, 0), np.uint64)
    unlisted = np.full(nb, UNLISTED, np.uint8)  # no propagation term: the GNN's levels only
    for t in prange((nb + CHUNK - 1) // CHUNK):
        a = t * CHUNK
        _rows_grad(
            users, items, labels, a, min(a + CHUNK, nb), 0, 1.0, p,
            np.zeros((0, d), np.float32), np.zeros((0, n_tree), np.int64),
            np.zeros((0, n_tree, d), np.float32), none_ent, False,
            np.zeros(n_layers * d_in * d, np.float64), np.zeros(n_layers * d, np.float64),
            np.zeros(n_rel * d, np.float64),
            off_u, off_e, off_r, off_w, off_b, n_rel, d, d_in, n_layers, 0, S,
            paper, agg, 0.0, adj_e, adj_r, runs,
            np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0,
            no_bits, no_bits, unlisted, 0, np.zeros(0, np.uint8), out)


_batch_logits = _compiled(_batch_logits_source, "_batch_logits", parallel=False)
_batch_logits_parallel = _compiled(_batch_logits_source, "_batch_logits_parallel",
                                   parallel=True)


@njit(cache=True, fastmath=True, error_model="numpy")
def _adam_range(p, grad, m, v, wd, b1, b2, step_size, bc2_sqrt, eps):
    # whole (sliced) arrays indexed from 0: numba then drops its negative-index
    # wraparound and LLVM vectorizes the loop (5x faster than lo:hi indexing)
    one = np.float32(1.0)
    for i in range(p.shape[0]):
        g = grad[i] + wd * p[i]
        mi = m[i] + (one - b1) * (g - m[i])
        vi = b2 * v[i] + (one - b2) * g * g
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)


_ADAM_BLOCK = 1 << 14


def _adam_source(p, grad, m, v, step, lr, beta1, beta2, eps, wd, wd_until):
    """``torch.optim.Adam`` (coupled weight decay on ``p[:wd_until]``) in float32, as
    torch's fused CPU kernel computes it. Leaves ``grad`` to the caller to clear
    (storing zeros over it is a quarter of the loop's time, and a batch's gradient
    touches a few table rows). Elementwise, so blocks run in parallel without
    changing a number."""
    f = np.float32
    step_size = f(lr / (1.0 - beta1 ** step))
    bc2_sqrt = f(math.sqrt(1.0 - beta2 ** step))
    n = p.shape[0]
    for blk in prange((n + _ADAM_BLOCK - 1) // _ADAM_BLOCK):
        a = blk * _ADAM_BLOCK
        z = min(a + _ADAM_BLOCK, n)
        mid = min(max(wd_until, a), z)
        _adam_range(p[a:mid], grad[a:mid], m[a:mid], v[a:mid], f(wd), f(beta1), f(beta2),
                    step_size, bc2_sqrt, f(eps))
        _adam_range(p[mid:z], grad[mid:z], m[mid:z], v[mid:z], f(0.0), f(beta1), f(beta2),
                    step_size, bc2_sqrt, f(eps))


_adam = _compiled(_adam_source, "_adam", parallel=False)
_adam_parallel = _compiled(_adam_source, "_adam_parallel", parallel=True)

@njit(cache=True, error_model="numpy")
def _adam_rows(p, grad, m, v, step, lr, beta1, beta2, eps, l2, d, mark):
    """Lazy Adam on the marked rows of a ``[rows, d]`` table (flat views): the L2
    gradient ``l2 * p`` added to those rows, then ``torch.optim.SparseAdam``'s
    update, as ``kgnnls.optim.RowAdam`` does it. Clears the marks and the rows'
    gradients; other rows keep their parameters and moments."""
    f = np.float32
    step_size = f(lr * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step))
    b1, b2, fl2, feps = f(1.0 - beta1), f(1.0 - beta2), f(l2), f(eps)
    for r in range(mark.shape[0]):
        if mark[r] == 0:
            continue
        mark[r] = 0
        for i in range(r * d, r * d + d):
            g = grad[i] + fl2 * p[i]
            grad[i] = 0
            mo = m[i]
            mn = mo + (g - mo) * b1
            vo = v[i]
            vn = vo + (g * g - vo) * b2
            m[i] = mn
            v[i] = vn
            p[i] -= step_size * (mn / (np.sqrt(vn) + feps))


#: the kernels _steps_source calls and whether the first task's rows write the gradient
#: table in place; _compiled binds them per variant (these are the serial ones)
_batch_grad_impl, _adam_impl, _DIRECT = _batch_grad, _adam, True


def _steps_source(users, items, labels, lo, hi, batch_size, p, grad, m, v, step,
                  lr, beta1, beta2, eps, wd, wd_until,
                  rows, row_lr, row_beta1, row_beta2, row_eps, row_l2, user_mark, ent_mark,
                  off_u, off_e, off_r, off_w, off_b, n_rel, d, d_in, n_layers, hops, S,
                  paper, agg, ls_weight, adj_e, adj_r, runs,
                  lab_ptr, lab_ent, lab_val, lab_items, known_bits, label_bits, cand_ptr,
                  cand_ent, codes, sums):
    """Optimizer steps over rows ``lo:hi`` in batches of ``batch_size``.

    The step of :meth:`FusedTrainer.step` in a compiled loop: a Python call per
    step (argument unboxing for two kernels) costs ~10 % of a Last.FM step.
    ``codes``: :func:`_reach_codes` of every row, or empty (each batch computes its own).
    Compiled twice (see ``_steps`` and ``_steps_parallel``): the parallel variant runs
    the gradient and the dense Adam on numba's threads.
    Adds each batch's (total, bce, ls) to ``sums``; returns the step count.
    """
    n_tree = _tree_size(n_layers, S)
    # dense updates: clear the gradient rows the batch wrote rather than the tables
    # (Last.FM: 9 of 9,366 entity rows per pair), unless trees outnumber the rows
    clear_rows = not rows and batch_size * n_tree < adj_e.shape[0]
    touched = np.empty((batch_size if clear_rows else 0, n_tree), np.int64)
    for s in range(lo, hi, batch_size):
        e = min(s + batch_size, hi)
        total, bce, ls = _batch_grad_impl(
            users, items, labels, s, e, p, grad, off_u, off_e, off_r, off_w, off_b,
            n_rel, d, d_in, n_layers, hops, S, paper, agg, ls_weight, adj_e, adj_r,
            runs, lab_ptr, lab_ent, lab_val, lab_items, known_bits, label_bits,
            cand_ptr, cand_ent, codes, _DIRECT, user_mark, ent_mark, touched)
        step += 1
        if rows:  # lazy Adam on the table rows the batch read, dense Adam on the rest
            _adam_rows(p[off_u:off_e], grad[off_u:off_e], m[off_u:off_e], v[off_u:off_e],
                       step, row_lr, row_beta1, row_beta2, row_eps, row_l2, d, user_mark)
            _adam_rows(p[off_e:off_r], grad[off_e:off_r], m[off_e:off_r], v[off_e:off_r],
                       step, row_lr, row_beta1, row_beta2, row_eps, row_l2, d, ent_mark)
            _adam_impl(p[off_r:], grad[off_r:], m[off_r:], v[off_r:], step, lr, beta1,
                       beta2, eps, wd, wd_until - off_r)
        else:
            _adam_impl(p, grad, m, v, step, lr, beta1, beta2, eps, wd, wd_until)
        if clear_rows:  # rows mode: _adam_rows cleared the rows it updated
            for bi in range(e - s):
                at = off_u + users[s + bi] * d
                grad[at:at + d] = 0
                for node in range(n_tree):
                    at = off_e + touched[bi, node] * d
                    grad[at:at + d] = 0
        elif not rows:
            grad[:off_r] = 0
        grad[off_r:] = 0
        sums[0] += total
        sums[1] += bce
        sums[2] += ls
    return step


_steps = _compiled(_steps_source, "_steps", parallel=False, _batch_grad_impl=_batch_grad,
                   _adam_impl=_adam, _DIRECT=True)
_steps_parallel = _compiled(_steps_source, "_steps_parallel", parallel=False,
                            _batch_grad_impl=_batch_grad_parallel, _adam_impl=_adam_parallel,
                            _DIRECT=False)


#: rows per step from which several threads pay for their hand-off (about 1.3 us per
#: parallel region with OpenMP, against ~100 us of work per 64-row task on Last.FM):
#: two tasks
PARALLEL_MIN_ROWS = 2 * CHUNK


@njit(cache=True)
def _candidate_pass(adj_e, n_items, hops, ptr, ents, fill):
    S = adj_e.shape[1]
    n_tree, width = 0, 1
    for _ in range(hops + 1):
        n_tree += width
        width *= S
    tree = np.empty(n_tree, np.int64)
    seen = np.full(n_items, -1, np.int64)
    for v in range(n_items):
        tree[0] = v
        n, head = 1, 0
        while n < n_tree:  # breadth first: level h + 1 from level h's slots
            e = tree[head]
            head += 1
            for j in range(S):
                tree[n] = adj_e[e, j]
                n += 1
        k = 0
        for i in range(1, n_tree):
            e = tree[i]
            if e < n_items and e != v and seen[e] != v:
                seen[e] = v
                if fill:
                    ents[ptr[v] + k] = e
                k += 1
        if not fill:
            ptr[v + 1] = ptr[v] + k


#: candidate entries (int64) up to which items list their trees' items (256 MiB); a deep
#: field on a large catalogue could list nearly every item per item: then every pair
#: walks its whole tree instead
CANDIDATE_LIMIT = 1 << 25


def _label_candidates(adj_e: np.ndarray, n_items: int, hops: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per item ``v``: the distinct entities of its label-propagation tree (depth
    ``hops``, the sampled slots) that can carry a training label (items), ``v``
    itself excluded, as CSR ``(ptr, ents)``. A pair reaches a label iff its user
    has one of them, so the kernel checks these (Last.FM: 6 of 72 nodes) before it
    walks a deep tree. Empty (``ptr`` of length 1: every pair walks its tree)
    without a propagation term or past ``CANDIDATE_LIMIT`` entries."""
    empty = np.zeros(1, np.int64), np.zeros(0, np.int64)
    if hops <= 0 or n_items <= 0:
        return empty
    ptr = np.zeros(n_items + 1, np.int64)
    _candidate_pass(adj_e, n_items, hops, ptr, empty[1], False)
    if ptr[-1] > CANDIDATE_LIMIT:
        return empty
    ents = np.empty(int(ptr[-1]), np.int64)
    _candidate_pass(adj_e, n_items, hops, ptr, ents, True)
    return ptr, ents


# ---------------------------------------------------------------------- driver
#: users x items cells up to which labels are kept as two bit planes (2 x 512 MiB at most;
#: MovieLens-20M: 2 x 280 MiB); larger catalogues search each user's sorted items
BIT_TABLE_LIMIT = 1 << 32


@njit(cache=True)
def _set_bits(ptr, ents, values, known, label):
    for user in range(ptr.shape[0] - 1):
        for i in range(ptr[user], ptr[user + 1]):
            word, bit = ents[i] >> 6, np.uint64(ents[i] & 63)
            known[user, word] |= np.uint64(1) << bit
            if values[i] == 1:
                label[user, word] |= np.uint64(1) << bit


def _label_bits(ptr: np.ndarray, ents: np.ndarray, values: np.ndarray, n_items: int
                ) -> dict[str, np.ndarray]:
    """0/1 labels as bit rows per user (known, label): a lookup is one load and a
    shift, and a user's row (Last.FM: 480 bytes) stays in cache for the whole tree.
    Empty (the search path) when the table would be too large or labels are not 0/1."""
    n_users = len(ptr) - 1
    words = (n_items + 63) // 64
    binary = bool(np.isin(values, (0.0, 1.0)).all())
    if not binary or n_users * words * 64 > BIT_TABLE_LIMIT or len(ents) == 0:
        empty = np.zeros((0, 0), np.uint64)
        return {"known_bits": empty, "label_bits": empty}
    known = np.zeros((n_users, words), np.uint64)
    label = np.zeros((n_users, words), np.uint64)
    _set_bits(ptr, ents, values, known, label)  # bit k of word w: entity 64 w + k
    return {"known_bits": known, "label_bits": label}


def _label_rows(labels: LabelTable | None, n_entities: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The label table as rows per user (CSR): a user's labelled items sit together,
    so a lookup touches one short sorted run instead of a table of users x items."""
    if labels is None or len(labels.keys) == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    keys = labels.keys.numpy()  # sorted user * n_entities + entity
    users, ents = keys // n_entities, keys % n_entities
    ptr = np.zeros(int(users[-1]) + 2, np.int64)
    np.cumsum(np.bincount(users, minlength=len(ptr) - 1), out=ptr[1:])
    return ptr, ents.astype(np.int64), labels.values.numpy(), labels.n_items


def _layout(network: KGNNLSNet) -> tuple[list[torch.nn.Parameter], np.ndarray, dict]:
    """The parameters in flat-buffer order, their start offsets and the kernels'
    offset arguments (user, entity, relation tables, layer weights, biases)."""
    params = [network.user_emb, network.entity_emb, network.relation_emb, *network.weights,
              *network.biases]
    starts = np.concatenate([[0], np.cumsum([q.numel() for q in params])]).astype(np.int64)
    n_tables_w = 3 + len(network.weights)
    offsets = dict(off_u=starts[0], off_e=starts[1], off_r=starts[2], off_w=starts[3],
                   off_b=starts[n_tables_w] if network.biases else starts[-1])
    return params, starts, offsets


@njit(cache=True)
def _relation_runs(adj_r, slot_weight):
    """Per entity one record, ``[slot weight, k, r_1, n_1, ..., r_k, n_k]``: the
    distinct relations ``r_i`` of its slots and how many slots hold each. A node's
    slot sum and degree need only its slot weight and the sum of its slots'
    e^s_u(r): over its distinct relations (Last.FM: 1.3 of 8 slots) that is fewer
    look-ups, fewer adds queued on one element in the backward, and one cache line
    per node (up to 3 relations) instead of four arrays' rows."""
    n, S = adj_r.shape
    out = np.zeros((n, 2 + 2 * S), np.float64)
    for e in range(n):
        out[e, 0] = slot_weight[e]
        k = 0
        for j in range(S):
            r = adj_r[e, j]
            i = 0
            while i < k and out[e, 2 + 2 * i] != r:
                i += 1
            if i == k:
                out[e, 2 + 2 * i] = r
                k += 1
            out[e, 3 + 2 * i] += 1.0
        out[e, 1] = k
    return out


def _model_args(network: KGNNLSNet) -> dict:
    """The kernels' arguments that describe the network and its sampled graph."""
    config = network.config
    adj_r = network.adj_relation.numpy()
    return dict(
        n_rel=network.relation_emb.shape[0], d=config.dim,
        d_in=2 * config.dim if config.aggregator == "concat" else config.dim,
        n_layers=config.n_layers, S=config.n_neighbors, paper=config.variant == "paper",
        agg=AGG_CODES[config.aggregator],
        adj_e=network.adj_entity.numpy(), adj_r=adj_r,
        runs=_relation_runs(adj_r, np.exp(network.log_slot_weight.numpy().astype(np.float64))))


def logits(network: KGNNLSNet, users: np.ndarray, items: np.ndarray, threads: int = 1
           ) -> np.ndarray:
    """Logits of (user, item) pairs by the compiled forward: ``network.forward``'s
    numbers to float rounding, without the framework (evaluation's hot path at
    depth: a Book-Crossing L = 4 field has 4,681 nodes per pair)."""
    reason = unsupported(network.config, forward_only=True)
    if reason is not None:
        raise ValueError(f"the compiled forward does not cover this config: {reason}")
    params, starts, offsets = _layout(network)
    # copied on every call: in-place updates by fused optimizers or collectives do not
    # all bump a tensor's version counter, so a cached copy could go stale
    flat = np.empty(int(starts[-1]), np.float32)
    for q, a, b in zip(params, starts[:-1], starts[1:], strict=True):
        flat[a:b] = q.detach().reshape(-1).numpy()
    out = np.zeros(len(users), np.float64)
    if len(users) == 0:
        return out
    with numba_threads(threads) as count:
        kernel = _batch_logits_parallel if count > 1 and len(users) >= PARALLEL_MIN_ROWS \
            else _batch_logits
        kernel(
            np.ascontiguousarray(users, np.int64), np.ascontiguousarray(items, np.int64),
            flat, out, **offsets, **_model_args(network))
    return out


class FusedTrainer:
    """Trains a :class:`KGNNLSNet` with the fused step, in place of autograd + Adam.

    The parameters and Adam's moments live in flat buffers while an epoch
    runs; :meth:`pull` copies them in from the network and the torch
    optimizer, :meth:`push` copies them back (so validation, checkpoints and
    resume see ordinary tensors and a ``torch.optim.Adam`` state).
    """

    def __init__(self, network: KGNNLSNet, optimizer: torch.optim.Optimizer | RowAdam,
                 threads: int = 1):
        reason = unsupported(network.config)
        if reason is not None:
            raise ValueError(f"the fused step does not cover this config: {reason}")
        #: updates="rows": the user and entity tables take lazy Adam on the rows a
        #: batch reads (kgnnls.optim.RowAdam), the other parameters dense Adam
        self.rows = isinstance(optimizer, RowAdam)
        dense = optimizer.dense if self.rows else optimizer
        if not isinstance(dense, torch.optim.Adam):
            raise ValueError("the fused step replaces torch.optim.Adam (or kgnnls RowAdam)")
        self.network = network
        self.optimizer = optimizer
        #: compiled-loop threads (numbers do not depend on it: see CHUNK)
        self.threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
        config = network.config
        groups = dense.param_groups
        decayed = groups[0]
        self.lr, (self.beta1, self.beta2) = decayed["lr"], decayed["betas"]
        self.eps, self.wd = decayed["eps"], decayed["weight_decay"]
        self.params, starts, self.offsets = _layout(network)
        tables = self.params[:3]
        lazy = tables[:2] if self.rows else []
        expected = [[id(t) for t in (*tables[len(lazy):], *network.weights)],
                    [id(b) for b in network.biases]]
        if [[id(q) for q in g["params"]] for g in groups] != [g for g in expected if g] or any(
                g["weight_decay"] != 0 for g in groups[1:]) or any(
                g.get("amsgrad") or g.get("maximize") for g in groups):
            raise ValueError("unexpected optimizer parameter groups for the fused step")
        if self.rows:
            sparse = optimizer.rows.param_groups
            if len(sparse) != 1 or [id(q) for q in sparse[0]["params"]] != [id(q) for q in lazy]:
                raise ValueError("unexpected lazy-Adam tables for the fused step")
            self.row_lr, (self.row_beta1, self.row_beta2) = sparse[0]["lr"], sparse[0]["betas"]
            self.row_eps, self.row_l2 = sparse[0]["eps"], float(optimizer.l2_weight)
        else:  # unused: dense Adam updates every row
            self.row_lr = self.row_beta1 = self.row_beta2 = self.row_eps = self.row_l2 = 0.0
        self.user_mark = np.zeros(network.user_emb.shape[0] if self.rows else 0, np.uint8)
        self.ent_mark = np.zeros(network.entity_emb.shape[0] if self.rows else 0, np.uint8)
        self.starts = starts
        self.wd_until = int(starts[3 + len(network.weights)])
        total = int(starts[-1])
        self.flat = np.zeros(total, np.float32)
        self.grad = np.zeros(total, np.float32)
        self.m = np.zeros(total, np.float32)
        self.v = np.zeros(total, np.float32)
        self.step_count = 0
        lab_ptr, lab_ent, lab_val, lab_items = _label_rows(network.labels,
                                                           network.entity_emb.shape[0])
        self.graph = dict(
            **_model_args(network),
            hops=config.label_hops if config.ls_weight > 0 else 0,
            ls_weight=float(config.ls_weight),
            lab_ptr=lab_ptr, lab_ent=lab_ent, lab_val=lab_val, lab_items=lab_items,
            **_label_bits(lab_ptr, lab_ent, lab_val, lab_items))
        self.graph["cand_ptr"], self.graph["cand_ent"] = _label_candidates(
            self.graph["adj_e"], min(lab_items, network.entity_emb.shape[0]),
            self.graph["hops"])
        if config.ls_weight > 0 and network.labels is None:
            raise RuntimeError("label smoothness needs training labels: call set_labels()")

    # ----------------------------------------------------------- state sync
    def _state(self, q: torch.nn.Parameter) -> dict:
        """The torch optimizer state that holds ``q``'s moments."""
        if not self.rows:
            return self.optimizer.state
        lazy = q is self.network.user_emb or q is self.network.entity_emb
        return (self.optimizer.rows if lazy else self.optimizer.dense).state

    def pull(self) -> None:
        """Parameters and Adam state from the network and the torch optimizer."""
        steps = set()
        for q, a, b in zip(self.params, self.starts[:-1], self.starts[1:], strict=True):
            self.flat[a:b] = q.detach().reshape(-1).numpy()
            st = self._state(q).get(q)
            if st:
                self.m[a:b] = st["exp_avg"].reshape(-1).numpy()
                self.v[a:b] = st["exp_avg_sq"].reshape(-1).numpy()
                steps.add(int(st["step"]))
            else:
                self.m[a:b] = 0
                self.v[a:b] = 0
                steps.add(0)
        if len(steps) != 1:
            raise ValueError("Adam state has different step counts per parameter")
        self.step_count = steps.pop()

    def push(self) -> None:
        """Parameters and Adam state back into the network and the torch optimizer."""
        with torch.no_grad():
            for q, a, b in zip(self.params, self.starts[:-1], self.starts[1:], strict=True):
                q.copy_(torch.from_numpy(self.flat[a:b]).view_as(q))
                if self.step_count == 0:
                    continue
                lazy = self.rows and self._state(q) is self.optimizer.rows.state
                self._state(q)[q] = {  # SparseAdam counts steps in an int
                    "step": self.step_count if lazy else torch.tensor(float(self.step_count),
                                                                      dtype=torch.float32),
                    "exp_avg": torch.from_numpy(self.m[a:b].copy()).view_as(q),
                    "exp_avg_sq": torch.from_numpy(self.v[a:b].copy()).view_as(q)}

    # ----------------------------------------------------------- steps
    def loss_and_grad(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray
                      ) -> tuple[tuple[float, float, float], list[np.ndarray]]:
        """(total, bce, ls) of one batch and the gradient of each parameter (tests)."""
        self.grad[:] = 0
        parts = _batch_grad(np.ascontiguousarray(users, np.int64),
                            np.ascontiguousarray(items, np.int64),
                            np.ascontiguousarray(labels, np.float32), 0, len(users),
                            self.flat, self.grad, **self.offsets, **self.graph,
                            codes=np.zeros(0, np.uint8), direct=True,
                            user_mark=np.zeros(0, np.uint8), ent_mark=np.zeros(0, np.uint8),
                            touched=np.zeros((0, 0), np.int64))
        grads = [self.grad[a:b].reshape(q.shape).copy()
                 for q, a, b in zip(self.params, self.starts[:-1], self.starts[1:], strict=True)]
        self.grad[:] = 0
        return parts, grads

    def reach_codes(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Per pair, whether its propagation tree holds a labelled item of its user
        (``REACHED``), none (``UNREACHED``: the deeper levels are skipped) or has no
        candidate list (``UNLISTED``). Fixed while the model trains: compute it once
        for the training rows and pass it to :meth:`steps` in each epoch."""
        users = np.ascontiguousarray(users, np.int64)
        items = np.ascontiguousarray(items, np.int64)
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users but {len(items)} items")
        g = self.graph
        return _reach_codes(users, items, 0, len(users), g["hops"], g["cand_ptr"],
                            g["cand_ent"], g["known_bits"], g["lab_ptr"], g["lab_ent"],
                            g["lab_val"], g["lab_items"])

    def steps(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray,
              lo: int, hi: int, batch_size: int, codes: np.ndarray | None = None
              ) -> tuple[np.ndarray, int]:
        """Optimizer steps on rows ``lo:hi`` in batches of ``batch_size`` (the last one
        may be short); returns the summed (total, bce, ls) of the batches and their
        number. The same numbers as :meth:`step` batch by batch, in one compiled call
        (with ``threads`` > 1 and batches of at least ``PARALLEL_MIN_ROWS`` rows, on
        that many threads). Inputs as for :meth:`step`; ``codes``, if given, is
        :meth:`reach_codes` of all the rows (the same numbers, without the look-ups)."""
        if not 0 <= lo < hi <= min(len(users), len(items), len(labels)):
            raise IndexError(f"rows {lo}:{hi} out of range for {len(users)} rows")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if codes is None:
            codes = np.zeros(0, np.uint8)
        elif codes.dtype != np.uint8 or len(codes) != len(users):
            raise ValueError(f"codes must be reach_codes() of the {len(users)} rows")
        sums = np.zeros(3, np.float64)
        before = self.step_count
        with numba_threads(self.threads):
            parallel = self.threads > 1 and batch_size >= PARALLEL_MIN_ROWS
            self.step_count = (_steps_parallel if parallel else _steps)(
                users, items, labels, lo, hi, batch_size, self.flat, self.grad, self.m,
                self.v, self.step_count, self.lr, self.beta1, self.beta2, self.eps, self.wd,
                self.wd_until, self.rows, self.row_lr, self.row_beta1, self.row_beta2,
                self.row_eps, self.row_l2, self.user_mark, self.ent_mark, **self.offsets,
                **self.graph, codes=codes, sums=sums)
        return sums, self.step_count - before

    def compile(self, batch_size: int, validate: bool = True) -> float:
        """Compile the kernels :meth:`steps` with ``batch_size`` will run (and, with
        ``validate``, the forward that scores the validation pairs) by running them
        on one pair, against copies of the buffers; returns the seconds it took. A
        training run calls this before its timer starts, so ``train_seconds`` counts
        training only (an empty numba cache costs seconds of compilation)."""
        t0 = time.perf_counter()
        one = np.zeros(1, np.int64)
        label = np.zeros(1, np.float32)
        codes = self.reach_codes(one, one)
        parallel = self.threads > 1 and batch_size >= PARALLEL_MIN_ROWS
        with numba_threads(self.threads):
            (_steps_parallel if parallel else _steps)(
                one, one, label, 0, 1, batch_size, self.flat.copy(), self.grad.copy(),
                self.m.copy(), self.v.copy(), 0, self.lr, self.beta1, self.beta2, self.eps,
                self.wd, self.wd_until, self.rows, self.row_lr, self.row_beta1,
                self.row_beta2, self.row_eps, self.row_l2, self.user_mark.copy(),
                self.ent_mark.copy(), **self.offsets, **self.graph, codes=codes,
                sums=np.zeros(3, np.float64))
        if validate:
            pairs = PARALLEL_MIN_ROWS if self.threads > 1 else 1
            logits(self.network, np.zeros(pairs, np.int64), np.zeros(pairs, np.int64),
                   threads=self.threads)
        return time.perf_counter() - t0

    def step(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray,
             lo: int, hi: int) -> tuple[float, float, float]:
        """One optimizer step on rows ``lo:hi``; returns the batch's (total, bce, ls).

        ``users``/``items`` int64 and ``labels`` float32, contiguous (the
        compiled loop reads them without bounds checks). :meth:`steps` with one
        batch: the same kernels the training loop runs.
        """
        sums, _ = self.steps(users, items, labels, lo, hi, hi - lo)
        return float(sums[0]), float(sums[1]), float(sums[2])


__all__ = ["MAX_DEPTH", "FusedTrainer", "logits", "unsupported"]
