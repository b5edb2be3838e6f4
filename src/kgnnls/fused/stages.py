"""The fused step's per-pair kernel and its packed arguments.

:func:`row_kernel` computes, for each pair of a task: the receptive field and
the relation scores, the labels the propagation term reads, the edge
coefficients of both terms, Eq. (1) up the tree, the label propagation, and the
backward of all of them; in forward-only mode only the logit.
:func:`rows_grad` (training) and :func:`rows_logits` (forward only) call it
with packed arguments: :class:`Shape` (sizes and switches, scalars),
:class:`Graph` (the sampled neighbourhoods), :class:`Labels` (the training
labels) and :class:`Outputs`. Each variant (paper or authors, small or
general: :func:`row_variants`) is compiled from this one source.

The kernel stays one function: split into stages that take these packs, a pair
became 4x slower (every read of an array out of a pack costs an atomic
reference-count update; docs/performance.md, "The fused path's code").
"""

from __future__ import annotations

import functools
import math
import sys
from collections import namedtuple

import numpy as np
from numba import njit

from kgnnls import fast_rank, model
from kgnnls.fast_rank import _tanh
from kgnnls.model import _EPS
from kgnnls.threads import bound, source_digest

#: in every kernel name: numba checks a cached kernel against its own file only, and
#: the kernels inline code from this file, fast_rank.py and model.py (see
#: threads.source_digest)
SOURCE_DIGEST = source_digest(sys.modules[__name__], fast_rank, model)

# fast-math without nnan/ninf: reassociation lets the small reductions vectorize
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: levels with at least this many nodes (deep fields: 73 at S = 8, L = 3) apply ``W``
#: as one matrix product over the level; smaller ones node by node, where a BLAS
#: call's overhead would dominate (every L <= 2 field at S = 8)
MATMUL_MIN_NODES = 32

#: from this width on, the ``W`` products (per node, and the levels' matrix products)
#: run in single precision, as autograd's do (twice the lanes per vector; narrower
#: fields measured no faster, see docs/performance.md)
SINGLE_MIN_DIM = 64

#: a pair's propagation tree (see _label_candidates): it holds no labelled item of the
#: user, it holds one, or the item has no candidate list (walk the whole tree)
UNREACHED, REACHED, UNLISTED = 0, 1, 2

#: sizes and switches: parameter offsets in the flat buffer, relations, width, the
#: aggregator's input width, layers, propagation hops (0: no LS term), slots per node,
#: variant (paper?), aggregator code (fast_rank.AGG_CODES), LS weight, and whether the
#: base term's gradient per row is given (``loss="bpr"``: see FusedTrainer.bpr_steps)
#: instead of the kernel's BCE
Shape = namedtuple("Shape", ["off_u", "off_e", "off_r", "off_w", "off_b", "n_rel", "d",
                             "d_in", "n_layers", "hops", "S", "paper", "agg", "ls_weight",
                             "given_grad"])
#: the sampled graph: per entity its slots' entities and relations, and its relation
#: runs (see _relation_runs)
Graph = namedtuple("Graph", ["adj_e", "adj_r", "runs"])
#: training labels: rows per user (CSR, sorted), bit planes (or empty), and per item the
#: candidate items of its propagation tree (see _label_candidates)
Labels = namedtuple("Labels", ["lab_ptr", "lab_ent", "lab_val", "lab_items", "known_bits",
                               "label_bits", "cand_ptr", "cand_ent"])
#: where a task's entity gradients go: straight into the table (``direct``) or per row
#: into ``ent_rows``/``g_ent_rows``; ``ent_mark`` gets the table rows touched
Outputs = namedtuple("Outputs", ["g_users_b", "ent_rows", "g_ent_rows", "g_ent_table",
                                 "direct", "ent_mark"])


@njit(inline="always")
def sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(inline="always")
def lookup(user, ent, lab_ptr, lab_ent, lab_val, lab_items):
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


@njit(inline="always")
def _add_to(out, x):
    """``out += x`` for 2-D arrays of one shape, element by element: the array
    statement would compile numba's shape-mismatch message formatting (seconds of a
    first run's compilation)."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] += x[i, j]


#: whether the compiled kernel keeps its single-precision and level matrix-product
#: paths, and which variant (paper or authors) it computes: constants that
#: :func:`row_variants` binds per variant, so each compiles only the code it runs
_SINGLE_OK, _MATMUL_OK, _PAPER = True, True, True
#: the compiled per-pair kernel its wrappers call: bound per variant by row_variants
row_kernel = None


def is_small(d: int, n_layers: int, S: int) -> bool:
    """Whether a network runs neither the single-precision ``W`` products (``d >=
    SINGLE_MIN_DIM``) nor a level's matrix product (a level of ``MATMUL_MIN_NODES``
    nodes): then the smaller ``*_small`` kernels, which leave those paths out, give
    the same numbers and compile in less time (docs/performance.md, first run)."""
    return d < SINGLE_MIN_DIM and sum(S ** h for h in range(n_layers)) < MATMUL_MIN_NODES


@njit(inline="always")
def level_offsets(D, S):
    """``o[h]``: the first node of level h of a receptive field ``D`` levels deep
    (``o[D + 1]``: its size); node arrays index the field level by level."""
    o = np.zeros(D + 2, np.int64)
    width = 1
    for h in range(D + 1):
        o[h + 1] = o[h] + width
        width *= S
    return o


@njit(inline="always")
def param_views(p, off_u, off_e, off_r, off_w, off_b, n_ent, n_rel, d, d_in, L, paper):
    """2-D views (user, entity, relation tables, layer weights, biases) of the flat
    buffer ``p``: indices from range() into them are known to be non-negative, so
    numba drops its wraparound checks and LLVM vectorizes."""
    user_table = p[off_u:off_u + (off_e - off_u)].reshape(((off_e - off_u) // d, d))
    ent_table = p[off_e:off_e + n_ent * d].reshape((n_ent, d))
    rel_table = p[off_r:off_r + n_rel * d].reshape((n_rel, d))
    weights = p[off_w:off_w + L * d_in * d].reshape((L, d_in, d))
    n_bias = 0 if paper else L
    biases = p[off_b:off_b + n_bias * d].reshape((n_bias, d))
    return user_table, ent_table, rel_table, weights, biases


@njit(inline="always")
def w_copies(weights, single):
    """W copied once per task into the precision its products run in: (float32,
    float64), the other one empty."""
    L, d_in, d = weights.shape
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
    return w32, w64


def _row_source(users, items, labels, lo, hi, b0, inv_b, p, g_users_b,
               ent_rows, g_ent_rows, g_ent_table, direct, gw, gb, g_rel_task,
               off_u, off_e, off_r, off_w, off_b, n_rel, d, d_in, n_layers, hops, S,
               agg, ls_weight, adj_e, adj_r, runs,
               lab_ptr, lab_ent, lab_val, lab_items, known_bits, label_bits, codes, code_base,
               ent_mark, logits_out, given_grad, given):
    """Forward and backward of rows ``lo:hi`` (batch rows from ``b0``), for the
    variant that ``_PAPER`` names (bound per compiled variant: :func:`row_variants`).

    ``p`` holds every parameter (user, entity, relation tables, layer weights,
    biases) at the given offsets; it is only read. Each row writes its own
    slice of the batch outputs (user gradients, its tree's entity rows and
    their gradients); layer-weight and relation gradients go to this task's
    ``gw``/``gb``/``g_rel_task``. With ``direct`` (a serial run, or a parallel run's
    first task, the only one that writes the table) a row's entity
    gradients go straight into ``g_ent_table``, in the order the batch outputs
    would be added later, so both ways give the same numbers without a
    ``[batch, tree, d]`` buffer (300 MB at L = 4, d = 64). Returns the summed
    (bce, ls) of the rows. With ``given_grad`` the base term's gradient of row
    ``b``'s logit is ``given[b] * inv_b`` (its loss the caller's: bce stays 0)
    instead of BCE's ``(sigmoid(logit) - y) * inv_b``; the LS term still reads the
    row label ``y``. A non-empty ``logits_out`` makes it a forward pass:
    each row's logit goes there and nothing else runs. Node
    arrays index the receptive field level by level (``o[h]``: first node of
    level h); an edge's quantities live at its child node.
    """
    L, H = n_layers, hops
    D = max(L, H)
    o = level_offsets(D, S)
    N = o[D + 1]
    scale = 1.0 if _PAPER else 1.0 / d
    user_table, ent_table, rel_table, weights, biases = param_views(
        p, off_u, off_e, off_r, off_w, off_b, adj_e.shape[0], n_rel, d, d_in, L, _PAPER)
    g_rel = g_rel_task.reshape((n_rel, d))
    g_weights = gw.reshape((L, d_in, d))
    g_biases = gb.reshape((L, d))
    NC = o[L]  # nodes that run the first layer (depth < L)
    # the W products' operands, W and the aggregator's input per level, in one precision
    # (like with like for BLAS, no conversion per use): float32 from SINGLE_MIN_DIM on,
    # else float64; the other precision's arrays are empty
    single = _SINGLE_OK and d >= SINGLE_MIN_DIM
    L32, L64 = (L, 0) if single else (0, L)
    w32, w64 = w_copies(weights, single)
    gw32 = np.zeros((L32, d_in, d), np.float32)  # this call's W gradient; added to gw at the end
    comb32 = np.zeros((L32, NC, d_in), np.float32)
    v32 = np.zeros((2, d if single else 0), np.float32)
    xq32, gx32 = v32[0], v32[1]
    # scratch, reused by every row of the call, in a few allocations: as ~45 small
    # arrays their mallocs and frees cost a measurable share of a step
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
        # is a label in reach? (``codes``: see _reach_codes) most pairs reach
        # none: their propagated label is a constant (see the LS forward), so the tree's
        # levels beyond the GNN's do not matter
        code = codes[b - code_base]
        reached = code == REACHED
        listed = code != UNLISTED  # else: look at every node of the tree
        Dc = D if reached or not listed else L  # the levels whose edge weights matter
        # paper: D^-1/2 on both sides of the deepest GNN level needs its nodes' degrees
        leaf_deg = _PAPER and Dc == L
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
                if _PAPER:
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
                    lab, known = lookup(user, e, lab_ptr, lab_ent, lab_val, lab_items)
                hidden = e == item
                init[node] = 0.5 if hidden else lab
                clamp[node] = known and not hidden
                reached = reached or clamp[node]
            init[0] = 0.5
            clamp[0] = False
        # coefficients: GNN (symmetric) on levels < L, propagation on levels < H
        if _PAPER:
            for node in range(o[Dc + 1] if leaf_deg else o[Dc]):
                self_c[node] = 1.0 / degree[node]  # D^-1 of the self-loop
                self_p[node] = self_c[node]
        for h in range(Dc):
            for n in range(o[h + 1] - o[h]):
                node = o[h] + n
                first = o[h + 1] + n * S
                if not _PAPER:
                    self_c[node] = 1.0  # the authors' layer adds the node's own vector
                    self_p[node] = 0.0
                for j in range(S):
                    c = first + j
                    if _PAPER:  # exp(z - ld), and exp(z - ld/2 - ld_child/2)
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
                    if _MATMUL_OK and o[L - it] >= MATMUL_MIN_NODES:
                        continue
                    if single:
                        for q in range(d):
                            xq32[q] = 0.0
                        for i in range(d_in):
                            ci32 = comb32[it, node, i]
                            for q in range(d):
                                xq32[q] += ci32 * w32[it, i, q]
                        for q in range(d):
                            xq[q] = xq32[q] + (0.0 if _PAPER else biases[it, q])
                    else:
                        for q in range(d):
                            xq[q] = 0.0 if _PAPER else biases[it, q]
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
            if _MATMUL_OK and n_level >= MATMUL_MIN_NODES:
                if single:
                    xs = np.dot(comb32[it, :n_level], w32[it]).astype(np.float64)
                else:
                    xs = np.dot(comb[it, :n_level], w64[it])
                for node in range(n_level):
                    for q in range(d):
                        x = xs[node, q] + (0.0 if _PAPER else biases[it, q])
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
        if given_grad:
            g_logit = given[b] * inv_b
        else:
            sum_bce += max(logit, 0.0) - logit * y + math.log1p(math.exp(-abs(logit)))
            g_logit = (sigmoid(logit) - y) * inv_b

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
            final = cur[H, 0] if reached else (0.5 if _PAPER else 0.5 / S ** H)
            if _PAPER:
                q = min(max(final, _EPS), 1 - _EPS)
                sum_ls += -(y * math.log(q) + (1 - y) * math.log(1 - q))
                if _EPS <= final <= 1 - _EPS:
                    g_final = (q - y) / (q * (1 - q))
            else:
                sum_ls += max(final, 0.0) - final * y + math.log1p(math.exp(-abs(final)))
                g_final = sigmoid(final) - y
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
            matmul = _MATMUL_OK and n_level >= MATMUL_MIN_NODES
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
                    _add_to(gw32[it], np.dot(comb32[it, :n_level].T, gx_level))
                    gcs = np.dot(gx_level, w32[it].T).astype(np.float64)
                else:
                    _add_to(g_weights[it], np.dot(comb[it, :n_level].T, gxs[:n_level]))
                    gcs = np.dot(gxs[:n_level], w64[it].T)
            for h in range(L - it):
                for n in range(o[h + 1] - o[h]):
                    node = o[h] + n
                    first = o[h + 1] + n * S
                    if _MATMUL_OK and matmul:
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
                    if not _PAPER:
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
                if _PAPER:
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
        if _PAPER:
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



def _rows_grad_source(users, items, labels, lo, hi, b0, inv_b, p, gw, gb, g_rel, out, codes,
              code_base, sh, graph, labs, given):
    """:func:`row_kernel`'s training mode with packed arguments: forward and
    backward of rows ``lo:hi`` (batch rows from ``b0``) into ``out``
    (:class:`Outputs`) and this task's ``gw``/``gb``/``g_rel``; returns the summed
    (bce, ls) of the rows. ``given``: the rows' base-term gradients where
    ``sh.given_grad``."""
    return row_kernel(
        users, items, labels, lo, hi, b0, inv_b, p, out.g_users_b, out.ent_rows,
        out.g_ent_rows, out.g_ent_table, out.direct, gw, gb, g_rel, sh.off_u, sh.off_e,
        sh.off_r, sh.off_w, sh.off_b, sh.n_rel, sh.d, sh.d_in, sh.n_layers, sh.hops, sh.S,
        sh.agg, sh.ls_weight, graph.adj_e, graph.adj_r, graph.runs, labs.lab_ptr,
        labs.lab_ent, labs.lab_val, labs.lab_items, labs.known_bits, labs.label_bits, codes,
        code_base, out.ent_mark, np.zeros(0, np.float64), sh.given_grad, given)


def _rows_logits_source(users, items, lo, hi, p, out, sh, graph):
    """``out[b]`` = the logit of pair ``b`` for rows ``lo:hi``: :func:`row_kernel`'s
    forward-only mode, over the GNN's levels (no propagation term). The empty
    outputs it needs are made here, typed as the training mode's, so both modes
    share one compiled kernel. Runs compiled (inlined into the parallel batch
    kernel) and as plain Python (the serial forward: one call of the compiled row
    kernel, so no compiled caller links and re-optimizes the kernel's code)."""
    d, n_layers = sh.d, sh.n_layers
    n_tree = 0
    width = 1
    for _ in range(n_layers + 1):
        n_tree += width
        width *= sh.S
    no_bits = np.zeros((0, 0), np.uint64)
    none = Outputs(np.zeros((0, d), np.float32), np.zeros((0, n_tree), np.int64),
                   np.zeros((0, n_tree, d), np.float32), np.zeros((0, d), np.float32), False,
                   np.zeros(0, np.uint8))
    labs = Labels(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0,
                  no_bits, no_bits, np.zeros(1, np.int64), np.zeros(0, np.int64))
    unlisted = np.full(hi - lo, UNLISTED, np.uint8)  # no propagation term
    zero = np.int64(0)  # not a literal 0 / False: those would type a second kernel
    row_kernel(
        users, items, np.zeros(users.shape[0], np.float32), lo, hi, zero, 1.0, p,
        none.g_users_b, none.ent_rows, none.g_ent_rows, none.g_ent_table, lo < zero,
        np.zeros(n_layers * sh.d_in * d, np.float64), np.zeros(n_layers * d, np.float64),
        np.zeros(sh.n_rel * d, np.float64), sh.off_u, sh.off_e, sh.off_r, sh.off_w, sh.off_b,
        sh.n_rel, d, sh.d_in, n_layers, zero, sh.S, sh.agg, 0.0, graph.adj_e,
        graph.adj_r, graph.runs, labs.lab_ptr, labs.lab_ent, labs.lab_val, labs.lab_items,
        labs.known_bits, labs.label_bits, unlisted, lo, none.ent_mark, out, lo < zero,
        np.zeros(0, np.float64))


def variant_suffix(small: bool, paper: bool) -> str:
    """The end of every kernel name of one variant: its switches and
    :data:`SOURCE_DIGEST` (a cached kernel is reused only by the same code)."""
    return ("_small" if small else "") + ("_paper" if paper else "_authors") + "_" + SOURCE_DIGEST


@functools.cache
def row_variants(small: bool, paper: bool) -> tuple:
    """The per-pair kernel and its wrappers for one variant (see :func:`is_small`;
    ``paper``: the paper's equations, else the authors' code): training and
    forward-only (compiled, for inlining), and forward-only in plain Python. Built
    on first use: a run compiles one variant's code, and the tests compile each."""
    suffix = variant_suffix(small, paper)
    kernel = njit(cache=True, error_model="numpy", fastmath=FAST)(
        bound(_row_source, "row_kernel" + suffix, _SINGLE_OK=not small, _MATMUL_OK=not small,
              _PAPER=paper))
    grad = njit(inline="always")(bound(_rows_grad_source, "rows_grad" + suffix,
                                       row_kernel=kernel))
    logits = njit(inline="always")(bound(_rows_logits_source, "rows_logits" + suffix,
                                         row_kernel=kernel))
    return kernel, grad, logits, bound(_rows_logits_source, "rows_logits_py" + suffix,
                                       row_kernel=kernel)
