"""The fused step's per-pair stages: one compiled function per stage of the math.

For one (user, item) pair, in order: lay out the receptive field and the
relation scores (:func:`tree_layout`), look up the labels the propagation
term reads (:func:`label_lookup`), derive the edge coefficients of both
terms (:func:`coefficients`), run Eq. (1) up the tree (:func:`gnn_forward`)
and the label propagation (:func:`ls_forward`), then back-propagate through
the GNN (:func:`gnn_backward`), hand the tree's entity gradients to the
batch (:func:`scatter_rows`), back-propagate the propagation term
(:func:`ls_backward`) and the coefficients down to the user and relation
vectors (:func:`coefficient_backward`). :func:`rows_grad` runs them over a
task's rows; :func:`rows_logits` runs the forward stages alone.

Arguments come packed: :class:`Shape` (sizes and switches, scalars), :class:`Graph`
(the sampled neighbourhoods), :class:`Labels` (the training labels), and per
task :class:`Tree` (level offsets), :class:`Views` (parameter views),
:class:`Scratch` (per-pair work arrays) and :class:`TaskGrads`. Node arrays
index the receptive field level by level (``tree.o[h]``: first node of level
h); an edge's quantities live at its child node.

The stages are inlined into their callers (numba IR, ``STAGE_INLINE``): a
pair's work is a few microseconds on Last.FM, so a call per stage with these
argument packs would cost a measurable share (docs/performance.md).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from kgnnls.fast_rank import _tanh
from kgnnls.model import _EPS

#: how the stages enter their callers: "always" (numba IR inlining) or "never" (calls);
#: docs/performance.md has both measured
STAGE_INLINE = "always"

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
#: variant (paper?), aggregator code (fast_rank.AGG_CODES), LS weight
Shape = namedtuple("Shape", ["off_u", "off_e", "off_r", "off_w", "off_b", "n_rel", "d",
                             "d_in", "n_layers", "hops", "S", "paper", "agg", "ls_weight"])
#: the sampled graph: per entity its slots' entities and relations, and its relation
#: runs (see _relation_runs)
Graph = namedtuple("Graph", ["adj_e", "adj_r", "runs"])
#: training labels: rows per user (CSR, sorted), bit planes (or empty), and per item the
#: candidate items of its propagation tree (see _label_candidates)
Labels = namedtuple("Labels", ["lab_ptr", "lab_ent", "lab_val", "lab_items", "known_bits",
                               "label_bits", "cand_ptr", "cand_ent"])
#: level offsets of the receptive field, its depth, nodes below depth L (inner nodes),
#: nodes up to depth L (GNN field) and up to depth hops (propagation field)
Tree = namedtuple("Tree", ["o", "D", "NC", "NL", "NH"])
#: 2-D views of the flat parameter buffer, and W in the precision the products use
Views = namedtuple("Views", ["user_table", "ent_table", "rel_table", "weights", "biases",
                             "w32", "w64"])
#: a task's gradient outputs for layer weights, biases and relations (W's float32
#: part is added to ``g_weights`` at the end of the task)
TaskGrads = namedtuple("TaskGrads", ["g_weights", "g_biases", "g_rel", "gw32"])
#: where the rows' entity gradients go: straight into the table (``direct``) or per
#: row into ``ent_rows``/``g_ent_rows``, and the table rows touched (``ent_mark``)
Outputs = namedtuple("Outputs", ["g_users_b", "ent_rows", "g_ent_rows", "g_ent_table",
                                 "direct", "ent_mark"])
Scratch = namedtuple("Scratch", [
    "comb32", "xq32", "gx32", "comb", "gxs", "ent", "rel", "stamp", "met", "es", "g_s",
    "sm", "frac", "slot_sum", "degree", "self_c", "child_c", "self_p", "child_p",
    "g_z", "g_ld", "g_self_c", "g_child_c", "g_self_p", "g_child_p",
    "vec", "g_vec", "own", "neigh", "row_g", "cvec", "gc", "gx", "xq", "gown", "gnb", "u",
    "g_u", "init", "clamp", "cur", "g_cur"])

stage = njit(inline=STAGE_INLINE, error_model="numpy", fastmath=FAST)


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


# ---------------------------------------------------------------------- per task
@stage
def tree_of(sh):
    """Level offsets of the receptive field as deep as either term reaches."""
    L, H, S = sh.n_layers, sh.hops, sh.S
    D = max(L, H)
    o = np.zeros(D + 2, np.int64)
    width = 1
    for h in range(D + 1):
        o[h + 1] = o[h] + width
        width *= S
    return Tree(o, D, o[L], o[L + 1], o[H + 1])


@stage
def views_of(p, sh, n_ent):
    """2-D views of the flat buffer ``p`` (indices from range() are then known to be
    non-negative, so numba drops its wraparound checks and LLVM vectorizes), and W
    copied once into the precision its products run in (like with like for BLAS)."""
    L, d, d_in = sh.n_layers, sh.d, sh.d_in
    off_u, off_e, off_r, off_w, off_b = sh.off_u, sh.off_e, sh.off_r, sh.off_w, sh.off_b
    user_table = p[off_u:off_u + (off_e - off_u)].reshape(((off_e - off_u) // d, d))
    ent_table = p[off_e:off_e + n_ent * d].reshape((n_ent, d))
    rel_table = p[off_r:off_r + sh.n_rel * d].reshape((sh.n_rel, d))
    weights = p[off_w:off_w + L * d_in * d].reshape((L, d_in, d))
    n_bias = 0 if sh.paper else L
    biases = p[off_b:off_b + n_bias * d].reshape((n_bias, d))
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
    return Views(user_table, ent_table, rel_table, weights, biases, w32, w64)


@stage
def scratch_of(sh, tree):
    """The per-pair work arrays, reused by every pair of a task, in a few
    allocations (as ~45 small arrays their mallocs and frees cost a measurable share
    of a Last.FM step)."""
    L, H, d, d_in, n_rel = sh.n_layers, sh.hops, sh.d, sh.d_in, sh.n_rel
    N, NC, NL, NH = tree.o[tree.D + 1], tree.NC, tree.NL, tree.NH
    single = d >= SINGLE_MIN_DIM
    L32, L64 = (L, 0) if single else (0, L)
    comb32 = np.zeros((L32, NC, d_in), np.float32)
    v32 = np.zeros((2, d if single else 0), np.float32)
    comb = np.zeros((L64, NC, d_in), np.float64)
    gxs = np.zeros((NC, d), np.float64)
    node_ids = np.empty((2, N), np.int64)
    per_rel = np.empty((2, n_rel), np.int64)
    per_rel[0, :] = -1  # stamp: the last pair that met the relation
    rel_f = np.zeros((2, n_rel), np.float64)
    pn = np.zeros((14, N), np.float64)
    pn[2, :] = 1.0  # slot_sum: a node's sum over its slots of e^s_u(r)
    pn[3, :] = 1.0  # degree
    pn[4, :] = 1.0  # self_c
    # hidden vectors of the inner nodes only: the leaves (S^L of the NL nodes) enter
    # through their parents' sums, read from the entity table, and their gradient is
    # written straight to the batch output (this keeps a deep field in cache)
    levels = np.zeros((4, L + 1, NC, d), np.float64)
    row_g = np.zeros((NL, d), np.float32)  # this row's gradient of each tree node's entity
    wide = np.zeros((2, d_in), np.float64)
    narrow = np.zeros((6, d), np.float64)
    prop = np.zeros((2, H + 1, NH), np.float64)
    return Scratch(
        comb32, v32[0], v32[1], comb, gxs, node_ids[0], node_ids[1], per_rel[0], per_rel[1],
        rel_f[0], rel_f[1], pn[0], pn[1], pn[2], pn[3], pn[4], pn[5], pn[6], pn[7], pn[8],
        pn[9], pn[10], pn[11], pn[12], pn[13], levels[0], levels[1], levels[2, :L],
        levels[3, :L], row_g, wide[0], wide[1], narrow[0], narrow[1], narrow[2], narrow[3],
        narrow[4], narrow[5], np.full(NH, 0.5), np.zeros(NH, np.bool_), prop[0], prop[1])


# ---------------------------------------------------------------------- forward
@stage
def tree_layout(b, user, item, Dc, sh, graph, tree, pv, s):
    """The pair's receptive field to depth ``Dc`` (entities, relations, each slot's
    softmax weight at the child) and per node the sum of its slots' e^s_u(r) and
    (paper) its degree D = 1 + deg/S * sum_slots exp(s_u(r)). Relations are scored
    when first met (``stamp``: pair ``b``), into ``es``/``met``: the slot weights of
    every node share them (a node's deg/S factor cancels in its softmax), so no exp
    per edge. Returns how many relations the pair met."""
    o, S, d, paper, L = tree.o, sh.S, sh.d, sh.paper, sh.n_layers
    runs, adj_e, adj_r = graph.runs, graph.adj_e, graph.adj_r
    ent, rel, u, es, stamp, met = s.ent, s.rel, s.u, s.es, s.stamp, s.met
    scale = 1.0 if paper else 1.0 / d
    for k in range(d):
        u[k] = pv.user_table[user, k]
    n_met = 0
    # paper: D^-1/2 on both sides of the deepest GNN level needs its nodes' degrees
    leaf_deg = paper and Dc == L
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
                        score += u[k] * pv.rel_table[r, k]
                    score *= scale
                    if score > 300.0:
                        raise FloatingPointError(
                            "relation scores above 300: training has diverged")
                    es[r] = math.exp(score)
                    met[n_met] = r
                    n_met += 1
                acc += runs[e, j + 1] * es[r]
            s.slot_sum[node] = acc
            if h < Dc:
                first = o[h + 1] + n * S
                for j in range(S):  # the node's softmax over its slots, at the child
                    c = first + j
                    ent[c] = adj_e[e, j]
                    rel[c] = adj_r[e, j]
                    s.sm[c] = es[rel[c]] / acc
            if paper:
                big = acc * runs[e, 0]  # runs[e, 0]: the slot weight deg / S
                s.degree[node] = 1.0 + big
                s.frac[node] = big / s.degree[node]  # share of the slots in D
    return n_met


@stage
def label_lookup(user, item, reached, labels, tree, s):
    """Each propagation node's initial label and whether it is clamped (y_uv hidden
    wherever v is); returns whether any labelled entity is in reach."""
    known_bits, label_bits, lab_items = labels.known_bits, labels.label_bits, labels.lab_items
    init, clamp, ent = s.init, s.clamp, s.ent
    for node in range(1, tree.NH):
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
            lab, known = lookup(user, e, labels.lab_ptr, labels.lab_ent, labels.lab_val,
                                lab_items)
        hidden = e == item
        init[node] = 0.5 if hidden else lab
        clamp[node] = known and not hidden
        reached = reached or clamp[node]
    init[0] = 0.5
    clamp[0] = False
    return reached


@stage
def coefficients(Dc, sh, tree, s):
    """Edge coefficients: the GNN's (symmetric) on levels < L, the propagation's on
    levels < Dc; paper: exp(z - ld) and exp(z - ld/2 - ld_child/2)."""
    o, S, L, paper = tree.o, sh.S, sh.n_layers, sh.paper
    self_c, child_c, self_p, child_p = s.self_c, s.child_c, s.self_p, s.child_p
    sm, frac, degree = s.sm, s.frac, s.degree
    if paper:
        for node in range(o[Dc + 1] if Dc == L else o[Dc]):
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
                if paper:
                    child_p[c] = sm[c] * frac[node]
                    if h < L:
                        child_c[c] = child_p[c] * math.sqrt(degree[node] / degree[c])
                else:
                    child_c[c] = sm[c] / S
                    child_p[c] = child_c[c]


@stage
def aggregate(it, h, n, sh, tree, pv, s):
    """Eq. (1)'s aggregation at a node of iteration ``it``: its own (scaled) vector,
    its children's weighted sum, and the aggregator's input to W, kept for the
    backward in the precision of the W products."""
    o, S, d, d_in, agg, L = tree.o, sh.S, sh.d, sh.d_in, sh.agg, sh.n_layers
    vec, own, neigh, cvec = s.vec, s.own, s.neigh, s.cvec
    node = o[h] + n
    first = o[h + 1] + n * S
    for k in range(d):  # inner loops run along d: they vectorize
        own[it, node, k] = s.self_c[node] * vec[it, node, k]
        neigh[it, node, k] = 0.0
    if it == 0 and h == L - 1:  # the children are leaves
        for j in range(S):
            cc = s.child_c[first + j]
            e = s.ent[first + j]
            for k in range(d):
                neigh[it, node, k] += cc * pv.ent_table[e, k]
    else:
        for j in range(S):
            cc = s.child_c[first + j]
            for k in range(d):
                neigh[it, node, k] += cc * vec[it, first + j, k]
    for k in range(d):  # the aggregator's input to W
        if agg == 0:  # sum: own + neigh
            cvec[k] = own[it, node, k] + neigh[it, node, k]
        elif agg == 1:  # concat: [own; neigh]
            cvec[k] = own[it, node, k]
            cvec[d + k] = neigh[it, node, k]
        else:  # neighbor: neigh
            cvec[k] = neigh[it, node, k]
    if d >= SINGLE_MIN_DIM:
        for i in range(d_in):
            s.comb32[it, node, i] = cvec[i]
    else:
        for i in range(d_in):
            s.comb[it, node, i] = cvec[i]
    return node


@stage
def gnn_forward(sh, tree, pv, s):
    """Eq. (1) up the tree, L iterations (ReLU inside, tanh at the last); returns the
    logit u . v_L of the root. Small levels apply W node by node, large ones as one
    matrix product over the level (``MATMUL_MIN_NODES``)."""
    o, L, d, d_in, paper = tree.o, sh.n_layers, sh.d, sh.d_in, sh.paper
    vec, xq, xq32, cvec = s.vec, s.xq, s.xq32, s.cvec
    w32, w64, biases = pv.w32, pv.w64, pv.biases
    single = d >= SINGLE_MIN_DIM
    for node in range(tree.NC):
        e = s.ent[node]
        for k in range(d):
            vec[0, node, k] = pv.ent_table[e, k]
    for it in range(L):
        n_level = o[L - it]
        for h in range(L - it):
            for n in range(o[h + 1] - o[h]):
                node = aggregate(it, h, n, sh, tree, pv, s)
                if n_level >= MATMUL_MIN_NODES:
                    continue
                if single:
                    for q in range(d):
                        xq32[q] = 0.0
                    for i in range(d_in):
                        ci32 = s.comb32[it, node, i]
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
        if n_level >= MATMUL_MIN_NODES:
            if single:
                xs = np.dot(s.comb32[it, :n_level], w32[it]).astype(np.float64)
            else:
                xs = np.dot(s.comb[it, :n_level], w64[it])
            for node in range(n_level):
                for q in range(d):
                    x = xs[node, q] + (0.0 if paper else biases[it, q])
                    if it == L - 1:
                        vec[it + 1, node, q] = _tanh(x)
                    else:
                        vec[it + 1, node, q] = max(x, 0.0)
    logit = 0.0
    for k in range(d):
        logit += s.u[k] * vec[L, 0, k]
    return logit


@stage
def ls_forward(y, reached, inv_b, sh, tree, s):
    """The label-smoothness term of the pair: labels propagated ``hops`` steps up the
    tree (clamped nodes keep theirs). Returns (loss, gradient at the root's label).
    With no labelled entity in reach the result does not depend on the edge weights
    (paper: a convex mix of 0.5s; authors: weights summing to 1/S per step), so the
    term is a constant without gradient."""
    o, H, S, paper = tree.o, sh.hops, sh.S, sh.paper
    cur, init, clamp = s.cur, s.init, s.clamp
    for node in range(tree.NH if reached else 1):
        cur[0, node] = init[node]
    for it in range(H if reached else 0):
        for h in range(H - it):
            for n in range(o[h + 1] - o[h]):
                node = o[h] + n
                if clamp[node]:
                    cur[it + 1, node] = init[node]
                    continue
                first = o[h + 1] + n * S
                acc = s.self_p[node] * cur[it, node]
                for j in range(S):
                    acc += s.child_p[first + j] * cur[it, first + j]
                cur[it + 1, node] = acc
    final = cur[H, 0] if reached else (0.5 if paper else 0.5 / S ** H)
    g_final = 0.0
    if paper:
        q = min(max(final, _EPS), 1 - _EPS)
        loss = -(y * math.log(q) + (1 - y) * math.log(1 - q))
        if _EPS <= final <= 1 - _EPS:
            g_final = (q - y) / (q * (1 - q))
    else:
        loss = max(final, 0.0) - final * y + math.log1p(math.exp(-abs(final)))
        g_final = sigmoid(final) - y
    g_final *= sh.ls_weight * inv_b if reached else 0.0
    return loss, g_final


# ---------------------------------------------------------------------- backward
@stage
def level_gx(it, n_level, sh, s):
    """The gradient at W's output of every node of a level (tanh' at the last
    iteration, ReLU' before), into ``gxs``."""
    for node in range(n_level):
        for q in range(sh.d):
            hv = s.vec[it + 1, node, q]
            if it == sh.n_layers - 1:
                s.gxs[node, q] = s.g_vec[it + 1, node, q] * (1.0 - hv * hv)
            else:
                s.gxs[node, q] = s.g_vec[it + 1, node, q] if hv > 0 else 0.0


@stage
def node_gx(it, node, sh, pv, s, tg):
    """One node's gradient at W's output (``gx``), W's gradient from it, and the
    gradient at W's input (``gc``): the node-by-node path of small levels."""
    d, d_in = sh.d, sh.d_in
    gx, gc = s.gx, s.gc
    for q in range(d):
        hv = s.vec[it + 1, node, q]
        if it == sh.n_layers - 1:
            gx[q] = s.g_vec[it + 1, node, q] * (1.0 - hv * hv)
        else:
            gx[q] = s.g_vec[it + 1, node, q] if hv > 0 else 0.0
    if d >= SINGLE_MIN_DIM:
        gx32 = s.gx32
        for q in range(d):
            gx32[q] = gx[q]
        for i in range(d_in):
            acc32 = np.float32(0.0)
            ci32 = s.comb32[it, node, i]
            for q in range(d):
                tg.gw32[it, i, q] += ci32 * gx32[q]
                acc32 += pv.w32[it, i, q] * gx32[q]
            gc[i] = acc32
    else:
        for i in range(d_in):
            acc = 0.0
            ci = s.comb[it, node, i]
            for q in range(d):
                tg.g_weights[it, i, q] += ci * gx[q]
                acc += pv.w64[it, i, q] * gx[q]
            gc[i] = acc


@stage
def disaggregate(it, h, n, sh, tree, pv, s):
    """Back through Eq. (1)'s aggregation at a node: ``gc`` (W's input) to the own
    and neighbour sums, then to the node's and its children's vectors (a leaf's
    gradient to ``row_g``: a leaf has one parent) and their coefficients."""
    o, S, d, agg = tree.o, sh.S, sh.d, sh.agg
    gc, gown, gnb, vec, g_vec = s.gc, s.gown, s.gnb, s.vec, s.g_vec
    node = o[h] + n
    first = o[h + 1] + n * S
    for k in range(d):
        if agg == 0:
            gown[k], gnb[k] = gc[k], gc[k]
        elif agg == 1:
            gown[k], gnb[k] = gc[k], gc[d + k]
        else:
            gown[k], gnb[k] = 0.0, gc[k]
    acc = 0.0
    for k in range(d):
        g_vec[it, node, k] += s.self_c[node] * gown[k]
        acc += gown[k] * vec[it, node, k]
    s.g_self_c[node] += acc
    leaves = it == 0 and h == sh.n_layers - 1
    for j in range(S):
        c = first + j
        cc = s.child_c[c]
        acc = 0.0
        if leaves:  # a leaf's one parent: its whole gradient
            e = s.ent[c]
            for k in range(d):
                acc += gnb[k] * pv.ent_table[e, k]
                s.row_g[c, k] = cc * gnb[k]
        else:
            for k in range(d):
                acc += gnb[k] * vec[it, c, k]
                g_vec[it, c, k] += cc * gnb[k]
        s.g_child_c[c] += acc


@stage
def gnn_backward(g_logit, NZ, sh, tree, pv, s, tg):
    """Back-propagate the logit's gradient through Eq. (1): into the user vector
    (``g_u``), W and the biases (``tg``), every tree node's entity (``row_g``) and
    the GNN coefficients (``g_self_c``, ``g_child_c``); clears the coefficient
    gradients of the ``NZ`` nodes a gradient can reach first."""
    o, L, d, paper = tree.o, sh.n_layers, sh.d, sh.paper
    vec, g_vec = s.vec, s.g_vec
    for k in range(d):
        s.g_u[k] = g_logit * vec[L, 0, k]
        g_vec[L, 0, k] = g_logit * s.u[k]
    for c in range(NZ):
        s.g_z[c] = 0.0
        s.g_ld[c] = 0.0
        s.g_self_c[c] = 0.0
        s.g_child_c[c] = 0.0
        s.g_self_p[c] = 0.0
        s.g_child_p[c] = 0.0
    for it in range(L - 1, -1, -1):
        for node in range(o[L - it + 1] if it > 0 else tree.NC):
            for k in range(d):
                g_vec[it, node, k] = 0.0
        n_level = o[L - it]
        matmul = n_level >= MATMUL_MIN_NODES
        if matmul:  # gx of the whole level, then two matrix products
            level_gx(it, n_level, sh, s)
            if d >= SINGLE_MIN_DIM:
                gx_level = s.gxs[:n_level].astype(np.float32)
                tg.gw32[it] += np.dot(s.comb32[it, :n_level].T, gx_level)
                gcs = np.dot(gx_level, pv.w32[it].T).astype(np.float64)
            else:
                tg.g_weights[it] += np.dot(s.comb[it, :n_level].T, s.gxs[:n_level])
                gcs = np.dot(s.gxs[:n_level], pv.w64[it].T)
        for h in range(L - it):
            for n in range(o[h + 1] - o[h]):
                node = o[h] + n
                if matmul:
                    for q in range(d):
                        s.gx[q] = s.gxs[node, q]
                    for i in range(sh.d_in):
                        s.gc[i] = gcs[node, i]
                else:
                    node_gx(it, node, sh, pv, s, tg)
                if not paper:
                    for q in range(d):
                        tg.g_biases[it, q] += s.gx[q]
                disaggregate(it, h, n, sh, tree, pv, s)
    for node in range(tree.NC):
        for k in range(d):
            s.row_g[node, k] = g_vec[0, node, k]


@stage
def scatter_rows(bi, tree, s, out):
    """The pair's entity gradients (``row_g``) to the batch: straight into the table
    with ``out.direct`` (in the order the batch outputs would be added later, so both
    ways give the same numbers without a ``[batch, tree, d]`` buffer), else into the
    row's slice of ``ent_rows``/``g_ent_rows``."""
    d = s.row_g.shape[1]
    ent, row_g = s.ent, s.row_g
    if out.direct:
        for node in range(tree.NL):
            e = ent[node]
            for k in range(d):
                out.g_ent_table[e, k] += row_g[node, k]
            if out.ent_mark.shape[0] > 0:
                out.ent_mark[e] = 1
            if out.ent_rows.shape[0] > 0:  # the rows whose gradient the step clears
                out.ent_rows[bi, node] = e
    else:
        for node in range(tree.NL):
            out.ent_rows[bi, node] = ent[node]
            for k in range(d):
                out.g_ent_rows[bi, node, k] = row_g[node, k]


@stage
def ls_backward(g_final, sh, tree, s):
    """Back-propagate the root label's gradient through the propagation into its
    coefficients (``g_self_p``, ``g_child_p``); clamped nodes stop it."""
    o, H, S, NH = tree.o, sh.hops, sh.S, tree.NH
    cur, g_cur = s.cur, s.g_cur
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
                if s.clamp[node] or g == 0.0:
                    continue
                first = o[h + 1] + n * S
                s.g_self_p[node] += g * cur[it, node]
                g_cur[it, node] += g * s.self_p[node]
                for j in range(S):
                    s.g_child_p[first + j] += g * cur[it, first + j]
                    g_cur[it, first + j] += g * s.child_p[first + j]


@stage
def coefficient_backward(Dc, NZ, n_met, sh, graph, tree, pv, s, tg):
    """Coefficient gradients down to the edge logits z and log-degrees, then to the
    relation scores s_u(r) = scale * u . r: into ``g_u`` and the task's relation
    gradient."""
    o, S, L, paper, d = tree.o, sh.S, sh.n_layers, sh.paper, sh.d
    g_z, g_ld, g_s, runs = s.g_z, s.g_ld, s.g_s, graph.runs
    child_c, child_p, g_child_c, g_child_p = s.child_c, s.child_p, s.g_child_c, s.g_child_p
    for h in range(Dc):
        for n in range(o[h + 1] - o[h]):
            node = o[h] + n
            first = o[h + 1] + n * S
            if paper:
                g_ld[node] -= s.self_c[node] * s.g_self_c[node]  # self_c = self_p
                g_ld[node] -= s.self_p[node] * s.g_self_p[node]
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
        if Dc == L:  # the deepest level's softmax, from its slots' relations
            for node in range(o[Dc], o[Dc + 1]):
                if g_ld[node] == 0.0:
                    continue
                e = s.ent[node]
                g_lse = g_ld[node] * s.frac[node] / s.slot_sum[node]
                for j in range(2, 2 + 2 * int(runs[e, 1]), 2):
                    r = int(runs[e, j])
                    g_s[r] += g_lse * runs[e, j + 1] * s.es[r]
        for h in range(Dc - 1, -1, -1):
            for n in range(o[h + 1] - o[h]):
                node = o[h] + n
                g_lse = g_ld[node] * s.frac[node]  # d softplus(lse) / d lse
                first = o[h + 1] + n * S
                for j in range(S):
                    g_z[first + j] += g_lse * s.sm[first + j]
    for c in range(1, NZ):
        g_s[s.rel[c]] += g_z[c]
    scale = 1.0 if paper else 1.0 / d
    g_rel = tg.g_rel
    for i in range(n_met):  # s_u(r) = scale * u . r: to the user and relation vectors
        r = s.met[i]
        g = g_s[r] * scale
        g_s[r] = 0.0
        for k in range(d):
            s.g_u[k] += g * pv.rel_table[r, k]
            g_rel[r, k] += g * s.u[k]


# ---------------------------------------------------------------------- row loops
@njit(cache=True, error_model="numpy", fastmath=FAST)
def rows_grad(users, items, labels, lo, hi, b0, inv_b, p, gw, gb, g_rel, out, codes,
              code_base, sh, graph, labs):
    """Forward and backward of rows ``lo:hi`` (batch rows from ``b0``); returns the
    summed (bce, ls) of the rows.

    ``p`` holds every parameter at ``sh``'s offsets; it is only read. Each row
    writes its own slice of the batch outputs ``out`` (user gradients, its tree's
    entity rows and their gradients, or the table directly); layer-weight, bias
    and relation gradients go to this task's flat ``gw``/``gb``/``g_rel``.
    ``codes[b - code_base]``: the row's reach code (see _reach_codes).
    """
    L, d = sh.n_layers, sh.d
    tree = tree_of(sh)
    pv = views_of(p, sh, graph.adj_e.shape[0])
    s = scratch_of(sh, tree)
    single = d >= SINGLE_MIN_DIM
    tg = TaskGrads(gw.reshape((L, sh.d_in, d)), gb.reshape((L, d)),
                   g_rel.reshape((sh.n_rel, d)),
                   np.zeros((L if single else 0, sh.d_in, d), np.float32))
    sum_bce = 0.0
    sum_ls = 0.0
    for b in range(lo, hi):
        bi = b - b0
        user, item, y = users[b], items[b], labels[b]
        # 95 % of Last.FM pairs reach no label: their propagated label is a constant
        # (see ls_forward), so the tree's levels beyond the GNN's do not matter
        code = codes[b - code_base]
        reached = code == REACHED
        listed = code != UNLISTED  # else: look at every node of the tree
        Dc = tree.D if reached or not listed else L  # the levels whose weights matter
        n_met = tree_layout(b, user, item, Dc, sh, graph, tree, pv, s)
        if sh.hops > 0 and (reached or not listed):
            reached = label_lookup(user, item, reached, labs, tree, s)
        coefficients(Dc, sh, tree, s)
        logit = gnn_forward(sh, tree, pv, s)
        sum_bce += max(logit, 0.0) - logit * y + math.log1p(math.exp(-abs(logit)))
        g_logit = (sigmoid(logit) - y) * inv_b
        g_final = 0.0
        if sh.hops > 0:
            ls, g_final = ls_forward(y, reached, inv_b, sh, tree, s)
            sum_ls += ls
        NZ = tree.o[Dc + 1]  # nodes a gradient can reach
        gnn_backward(g_logit, NZ, sh, tree, pv, s, tg)
        scatter_rows(bi, tree, s, out)
        if sh.hops > 0 and g_final != 0.0:
            ls_backward(g_final, sh, tree, s)
        coefficient_backward(Dc, NZ, n_met, sh, graph, tree, pv, s, tg)
        for k in range(d):
            out.g_users_b[bi, k] = s.g_u[k]
    gw32 = tg.gw32
    for it in range(gw32.shape[0]):
        for i in range(sh.d_in):
            for q in range(d):
                tg.g_weights[it, i, q] += gw32[it, i, q]
    return sum_bce, sum_ls


@njit(cache=True, error_model="numpy", fastmath=FAST)
def rows_logits(users, items, lo, hi, p, out, sh, graph):
    """``out[b]`` = the logit of pair ``b`` for rows ``lo:hi``: the forward stages
    alone, over the GNN's levels (``sh.hops`` is 0: no propagation term)."""
    L = sh.n_layers
    tree = tree_of(sh)
    pv = views_of(p, sh, graph.adj_e.shape[0])
    s = scratch_of(sh, tree)
    for b in range(lo, hi):
        tree_layout(b, users[b], items[b], L, sh, graph, tree, pv, s)
        coefficients(L, sh, tree, s)
        out[b] = gnn_forward(sh, tree, pv, s)
