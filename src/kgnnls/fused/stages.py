"""The fused step's per-pair kernel as stages, and its packed arguments.

For one (user, item) pair, in order: lay out the receptive field and the
relation scores (:func:`tree_layout`), look up the labels the propagation term
reads (:func:`label_lookup`), derive the edge coefficients of both terms
(:func:`coefficients`), run Eq. (1) up the tree (:func:`gnn_forward`) and the
label propagation (:func:`ls_forward`), then back-propagate through the GNN
(:func:`gnn_backward`), hand the tree's entity gradients to the batch
(:func:`scatter_rows`), back-propagate the propagation term (:func:`ls_backward`)
and the coefficients down to the user and relation vectors
(:func:`coefficient_backward`). :func:`row_loop` runs them over a task's rows;
:func:`rows_grad` (training) and :func:`rows_logits` (forward only) build its
per-task packs and call it.

Arguments come packed: :class:`Shape` (sizes and switches, scalars),
:class:`Graph` (the sampled neighbourhoods), :class:`Labels` (the training
labels), :class:`Outputs`, and per task :class:`Tree` (level offsets),
:class:`Views` (parameter views), :class:`Scratch` (per-pair work arrays) and
:class:`TaskGrads`. Node arrays index the receptive field level by level
(``tree.o[h]``: first node of level h); an edge's quantities live at its child
node.

The stages are inlined (numba IR) into :func:`row_loop`, which is compiled
without numba's reference counting (``_nrt=False``): with it, every array read
out of a pack is an atomic reference-count update, which made a pair 4-10x
slower (docs/performance.md, "The per-pair kernel as stages"). So nothing inside
the loop allocates: the per-task builders (:func:`tree_of`, :func:`views_of`,
:func:`scratch_of`, :func:`task_grads`, compiled normally) allocate every array,
and the level matrix products run in helpers compiled with reference counting
(:func:`product_into`, :func:`level_backward`).
"""

from __future__ import annotations

import math
import types
from collections import namedtuple

import numpy as np
from numba import njit

from kgnnls.fast_rank import _tanh
from kgnnls.model import _EPS

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
#: paths; :func:`bound` sets them per variant (these are the general kernel's)
_SINGLE_OK, _MATMUL_OK = True, True


def bound(source, name: str, **names):
    """A copy of the function ``source`` named ``name`` whose global names ``names``
    refer to other objects: one source compiled as several variants (numba freezes
    globals as constants, so a variant compiles only the code its constants reach).
    Distinct names keep the variants' on-disk caches apart."""
    fn = types.FunctionType(source.__code__, {**source.__globals__, **names}, name,
                            source.__defaults__, source.__closure__)
    fn.__qualname__, fn.__doc__ = name, source.__doc__
    return fn


def is_small(d: int, n_layers: int, S: int) -> bool:
    """Whether a network runs neither the single-precision ``W`` products (``d >=
    SINGLE_MIN_DIM``) nor a level's matrix product (a level of ``MATMUL_MIN_NODES``
    nodes): then the smaller ``*_small`` kernels, which leave those paths out, give
    the same numbers and compile in less time (docs/performance.md, first run)."""
    return d < SINGLE_MIN_DIM and sum(S ** h for h in range(n_layers)) < MATMUL_MIN_NODES


#: level offsets of the receptive field, its depth, nodes below depth L (inner nodes),
#: nodes up to depth L (GNN field) and up to depth hops (propagation field)
Tree = namedtuple("Tree", ["o", "D", "NC", "NL", "NH"])
#: 2-D views of the flat parameter buffer, and W copied into the precision its
#: products run in (float32 ``w32`` or float64 ``w64``, the other one empty)
Views = namedtuple("Views", ["user_table", "ent_table", "rel_table", "weights", "biases",
                             "w32", "w64"])
#: a task's gradients of the layer weights, biases and relations; W's float32 part
#: (``gw32``) is added to ``g_weights`` at the end of the task
TaskGrads = namedtuple("TaskGrads", ["g_weights", "g_biases", "g_rel", "gw32"])
#: the per-pair work arrays, reused by every pair of a task (see scratch_of)
Scratch = namedtuple("Scratch", [
    "comb32", "xq32", "gx32", "comb", "xs", "gxs", "gcs", "ent", "rel", "stamp", "met",
    "es", "g_s", "sm", "frac", "slot_sum", "degree", "self_c", "child_c", "self_p",
    "child_p", "g_z", "g_ld", "g_self_c", "g_child_c", "g_self_p", "g_child_p", "vec",
    "g_vec", "own", "neigh", "row_g", "cvec", "gc", "gx", "xq", "gown", "gnb", "u", "g_u",
    "init", "clamp", "cur", "g_cur"])


# ------------------------------------------------------- level matrix products
@njit(_nrt=True, cache=True, error_model="numpy")
def product_into(a, b, out):
    """``out[:] = a @ b`` (converted to ``out``'s type): a level's W product, compiled
    with reference counting (BLAS's result is a new array), so the loop that calls
    it needs none."""
    x = np.dot(a, b)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j]


@njit(_nrt=True, cache=True, error_model="numpy")
def level_backward(comb, gx, w, g_w, gcs):
    """A level's W backward as two matrix products: ``g_w += comb.T @ gx`` and
    ``gcs[:] = gx @ w.T``, in ``comb``'s precision (see product_into)."""
    g = gx.astype(comb.dtype)
    _add_to(g_w, np.dot(comb.T, g))
    x = np.dot(g, w.T)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            gcs[i, j] = x[i, j]


# ---------------------------------------------------------------------- per task
# The functions from here to _rows_logits_source are sources: _row_variants compiles
# them once per variant (numba freezes _SINGLE_OK / _MATMUL_OK as constants).
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


def views_of(p, sh, n_ent):
    """2-D views of the flat buffer ``p`` (indices from range() into them are known
    to be non-negative, so numba drops its wraparound checks and LLVM vectorizes),
    and W copied once per task into the precision its products run in."""
    L, d, d_in = sh.n_layers, sh.d, sh.d_in
    off_u, off_e, off_r, off_w, off_b = sh.off_u, sh.off_e, sh.off_r, sh.off_w, sh.off_b
    user_table = p[off_u:off_u + (off_e - off_u)].reshape(((off_e - off_u) // d, d))
    ent_table = p[off_e:off_e + n_ent * d].reshape((n_ent, d))
    rel_table = p[off_r:off_r + sh.n_rel * d].reshape((sh.n_rel, d))
    weights = p[off_w:off_w + L * d_in * d].reshape((L, d_in, d))
    n_bias = 0 if sh.paper else L
    biases = p[off_b:off_b + n_bias * d].reshape((n_bias, d))
    single = _SINGLE_OK and d >= SINGLE_MIN_DIM
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


def task_grads(gw, gb, g_rel, sh):
    """The task's flat gradient outputs as :class:`TaskGrads` views, and a zeroed
    float32 W gradient where the W products run in single precision."""
    L, d, d_in = sh.n_layers, sh.d, sh.d_in
    single = _SINGLE_OK and d >= SINGLE_MIN_DIM
    return TaskGrads(gw.reshape((L, d_in, d)), gb.reshape((L, d)),
                     g_rel.reshape((sh.n_rel, d)),
                     np.zeros((L if single else 0, d_in, d), np.float32))


def scratch_of(sh, tree):
    """The per-pair work arrays in a few allocations (as ~45 small arrays their
    mallocs and frees cost a measurable share of a step). The W products' operands
    (the aggregator's input per level) are kept in one precision, float32 from
    SINGLE_MIN_DIM on, else float64; the other precision's arrays are empty. Only
    the inner nodes keep hidden vectors: the leaves (S^L of the NL nodes) enter
    through their parents' sums, read from the entity table, and their gradient is
    written straight to the batch output (this keeps a deep field in cache)."""
    L, H, d, d_in, n_rel = sh.n_layers, sh.hops, sh.d, sh.d_in, sh.n_rel
    N, NC, NL, NH = tree.o[tree.D + 1], tree.NC, tree.NL, tree.NH
    single = _SINGLE_OK and d >= SINGLE_MIN_DIM
    L32, L64 = (L, 0) if single else (0, L)
    v32 = np.zeros((2, d if single else 0), np.float32)
    node_ids = np.empty((2, N), np.int64)
    per_rel = np.empty((2, n_rel), np.int64)
    per_rel[0, :] = -1  # stamp: the last pair that met the relation
    rel_f = np.zeros((2, n_rel), np.float64)
    pn = np.zeros((14, N), np.float64)
    pn[2, :] = 1.0  # slot_sum: a node's sum over its slots of e^s_u(r)
    pn[3, :] = 1.0  # degree
    pn[4, :] = 1.0  # self_c
    levels = np.zeros((4, L + 1, NC, d), np.float64)
    level_d = np.zeros((2, NC, d), np.float64)  # a level's products (MATMUL_MIN_NODES)
    wide = np.zeros((2, d_in), np.float64)
    narrow = np.zeros((6, d), np.float64)
    prop = np.zeros((2, H + 1, NH), np.float64)
    return Scratch(
        np.zeros((L32, NC, d_in), np.float32), v32[0], v32[1],
        np.zeros((L64, NC, d_in), np.float64), level_d[0], level_d[1],
        np.zeros((NC, d_in), np.float64),
        node_ids[0], node_ids[1], per_rel[0], per_rel[1], rel_f[0], rel_f[1],
        pn[0], pn[1], pn[2], pn[3], pn[4], pn[5], pn[6], pn[7], pn[8], pn[9], pn[10],
        pn[11], pn[12], pn[13], levels[0], levels[1], levels[2, :L], levels[3, :L],
        np.zeros((NL, d), np.float32), wide[0], wide[1], narrow[0], narrow[1], narrow[2],
        narrow[3], narrow[4], narrow[5], np.full(NH, 0.5), np.zeros(NH, np.bool_),
        prop[0], prop[1])


# ---------------------------------------------------------------------- forward
def tree_layout(b, user, item, Dc, sh, graph, tree, pv, s):
    """The pair's receptive field to depth ``Dc`` (entities, relations, each slot's
    softmax weight at the child) and per node the sum of its slots' e^s_u(r) and
    (paper) its degree D = 1 + deg/S * sum_slots exp(s_u(r)). Relations are scored
    when first met (``stamp``: pair ``b``) into ``es``/``met``: the slot weights of
    every node share them (a node's deg/S factor cancels in its softmax), so no exp
    per edge and no score per relation (Last.FM: a pair meets about 8 of 60).
    Returns how many relations the pair met."""
    o, S, d, paper, L = tree.o, sh.S, sh.d, sh.paper, sh.n_layers
    runs, adj_e, adj_r, rel_table = graph.runs, graph.adj_e, graph.adj_r, pv.rel_table
    ent, rel, u, es, stamp, met = s.ent, s.rel, s.u, s.es, s.stamp, s.met
    sm, frac, slot_sum, degree = s.sm, s.frac, s.slot_sum, s.degree
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
    return n_met


def label_lookup(user, item, reached, labs, tree, s):
    """Each propagation node's initial label and whether it is clamped (y_uv hidden
    wherever v is); returns whether any labelled entity is in reach."""
    known_bits, label_bits, lab_items = labs.known_bits, labs.label_bits, labs.lab_items
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
            lab, known = lookup(user, e, labs.lab_ptr, labs.lab_ent, labs.lab_val, lab_items)
        hidden = e == item
        init[node] = 0.5 if hidden else lab
        clamp[node] = known and not hidden
        reached = reached or clamp[node]
    init[0] = 0.5
    clamp[0] = False
    return reached


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


def aggregate(it, h, n, sh, tree, pv, s):
    """Eq. (1)'s aggregation at node ``n`` of level ``h`` in iteration ``it``: its
    own (scaled) vector and its children's weighted sum, into the aggregator's
    input to W (``cvec``, kept per level in the W products' precision for the
    backward). Returns the node."""
    o, S, d, d_in, agg, L = tree.o, sh.S, sh.d, sh.d_in, sh.agg, sh.n_layers
    vec, own, neigh, cvec, child_c = s.vec, s.own, s.neigh, s.cvec, s.child_c
    node = o[h] + n
    first = o[h + 1] + n * S
    for k in range(d):  # inner loops run along d: they vectorize
        own[it, node, k] = s.self_c[node] * vec[it, node, k]
        neigh[it, node, k] = 0.0
    if it == 0 and h == L - 1:  # the children are leaves
        for j in range(S):
            cc = child_c[first + j]
            e = s.ent[first + j]
            for k in range(d):
                neigh[it, node, k] += cc * pv.ent_table[e, k]
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
    if _SINGLE_OK and d >= SINGLE_MIN_DIM:
        for i in range(d_in):
            s.comb32[it, node, i] = cvec[i]
    else:
        for i in range(d_in):
            s.comb[it, node, i] = cvec[i]
    return node


def node_forward(it, node, sh, pv, s):
    """W applied to one node's aggregated input, then ReLU (tanh at the last
    iteration): the node-by-node path of small levels."""
    d, d_in, paper = sh.d, sh.d_in, sh.paper
    xq, vec, biases = s.xq, s.vec, pv.biases
    if _SINGLE_OK and d >= SINGLE_MIN_DIM:
        xq32, comb32, w32 = s.xq32, s.comb32, pv.w32
        for q in range(d):
            xq32[q] = 0.0
        for i in range(d_in):
            ci32 = comb32[it, node, i]
            for q in range(d):
                xq32[q] += ci32 * w32[it, i, q]
        for q in range(d):
            xq[q] = xq32[q] + (0.0 if paper else biases[it, q])
    else:
        cvec, w64 = s.cvec, pv.w64
        for q in range(d):
            xq[q] = 0.0 if paper else biases[it, q]
        for i in range(d_in):
            ci = cvec[i]
            for q in range(d):
                xq[q] += ci * w64[it, i, q]
    for q in range(d):
        if it == sh.n_layers - 1:
            vec[it + 1, node, q] = _tanh(xq[q])
        else:
            vec[it + 1, node, q] = max(xq[q], 0.0)


def level_forward(it, n_level, sh, pv, s):
    """W applied to a whole level as one matrix product (levels of at least
    ``MATMUL_MIN_NODES`` nodes), then the activation."""
    d, paper, xs, vec = sh.d, sh.paper, s.xs, s.vec
    if _SINGLE_OK and d >= SINGLE_MIN_DIM:
        product_into(s.comb32[it, :n_level], pv.w32[it], xs[:n_level])
    else:
        product_into(s.comb[it, :n_level], pv.w64[it], xs[:n_level])
    for node in range(n_level):
        for q in range(d):
            x = xs[node, q] + (0.0 if paper else pv.biases[it, q])
            if it == sh.n_layers - 1:
                vec[it + 1, node, q] = _tanh(x)
            else:
                vec[it + 1, node, q] = max(x, 0.0)


def gnn_forward(sh, tree, pv, s):
    """Eq. (1) up the tree, L iterations (ReLU inside, tanh at the last); returns the
    logit u . v_L of the root. Small levels apply W node by node, large ones as one
    matrix product over the level (``MATMUL_MIN_NODES``)."""
    o, L, d, vec = tree.o, sh.n_layers, sh.d, s.vec
    for node in range(tree.NC):
        e = s.ent[node]
        for k in range(d):
            vec[0, node, k] = pv.ent_table[e, k]
    for it in range(L):
        n_level = o[L - it]
        matmul = _MATMUL_OK and n_level >= MATMUL_MIN_NODES
        for h in range(L - it):
            for n in range(o[h + 1] - o[h]):
                node = aggregate(it, h, n, sh, tree, pv, s)
                if not matmul:
                    node_forward(it, node, sh, pv, s)
        if _MATMUL_OK and matmul:
            level_forward(it, n_level, sh, pv, s)
    logit = 0.0
    for k in range(d):
        logit += s.u[k] * vec[L, 0, k]
    return logit


def ls_forward(y, reached, inv_b, sh, tree, s):
    """The label-smoothness term of the pair: labels propagated ``hops`` steps up the
    tree (clamped nodes keep theirs). Returns (loss, gradient at the root's label).
    With no labelled entity in reach the result does not depend on the edge weights
    (paper: a convex mix of 0.5s; authors: weights summing to 1/S per step), so the
    term is a constant without gradient."""
    o, H, S, paper = tree.o, sh.hops, sh.S, sh.paper
    cur, init, clamp, self_p, child_p = s.cur, s.init, s.clamp, s.self_p, s.child_p
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
                acc = self_p[node] * cur[it, node]
                for j in range(S):
                    acc += child_p[first + j] * cur[it, first + j]
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
def node_gx(it, node, sh, pv, s, tg):
    """One node's gradient at W's output (``gx``), W's gradient from it, and the
    gradient at W's input (``gc``): the node-by-node path of small levels."""
    d, d_in, gx, gc, vec, g_vec = sh.d, sh.d_in, s.gx, s.gc, s.vec, s.g_vec
    for q in range(d):
        hv = vec[it + 1, node, q]
        if it == sh.n_layers - 1:
            gx[q] = g_vec[it + 1, node, q] * (1.0 - hv * hv)
        else:
            gx[q] = g_vec[it + 1, node, q] if hv > 0 else 0.0
    if _SINGLE_OK and d >= SINGLE_MIN_DIM:
        gx32, comb32, w32, gw32 = s.gx32, s.comb32, pv.w32, tg.gw32
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
        comb, w64, g_weights = s.comb, pv.w64, tg.g_weights
        for i in range(d_in):
            acc = 0.0
            ci = comb[it, node, i]
            for q in range(d):
                g_weights[it, i, q] += ci * gx[q]
                acc += w64[it, i, q] * gx[q]
            gc[i] = acc


def level_gx(it, n_level, sh, pv, s, tg):
    """The gradient at W's output of a whole level (``gxs``), then W's gradient and
    the gradient at W's input (``gcs``) as two matrix products."""
    vec, g_vec, gxs = s.vec, s.g_vec, s.gxs
    for node in range(n_level):
        for q in range(sh.d):
            hv = vec[it + 1, node, q]
            if it == sh.n_layers - 1:
                gxs[node, q] = g_vec[it + 1, node, q] * (1.0 - hv * hv)
            else:
                gxs[node, q] = g_vec[it + 1, node, q] if hv > 0 else 0.0
    if _SINGLE_OK and sh.d >= SINGLE_MIN_DIM:
        level_backward(s.comb32[it, :n_level], gxs[:n_level], pv.w32[it], tg.gw32[it],
                       s.gcs[:n_level])
    else:
        level_backward(s.comb[it, :n_level], gxs[:n_level], pv.w64[it], tg.g_weights[it],
                       s.gcs[:n_level])


def disaggregate(it, h, n, sh, tree, pv, s):
    """Back through Eq. (1)'s aggregation at a node: ``gc`` (W's input) to the own
    and neighbour sums, then to the node's and its children's vectors (a leaf's
    gradient to ``row_g``: a leaf has one parent) and their coefficients."""
    o, S, d, agg = tree.o, sh.S, sh.d, sh.agg
    gc, gown, gnb, vec, g_vec, child_c = s.gc, s.gown, s.gnb, s.vec, s.g_vec, s.child_c
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
        cc = child_c[c]
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


def gnn_backward(g_logit, NZ, sh, tree, pv, s, tg):
    """Back-propagate the logit's gradient through Eq. (1): into the user vector
    (``g_u``), W and the biases (``tg``), every tree node's entity (``row_g``) and
    the GNN coefficients (``g_self_c``, ``g_child_c``); clears the coefficient
    gradients of the ``NZ`` nodes a gradient can reach first."""
    o, L, d, paper, vec, g_vec = tree.o, sh.n_layers, sh.d, sh.paper, s.vec, s.g_vec
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
        matmul = _MATMUL_OK and n_level >= MATMUL_MIN_NODES
        if _MATMUL_OK and matmul:
            level_gx(it, n_level, sh, pv, s, tg)
        for h in range(L - it):
            for n in range(o[h + 1] - o[h]):
                node = o[h] + n
                if _MATMUL_OK and matmul:
                    for q in range(d):
                        s.gx[q] = s.gxs[node, q]
                    for i in range(sh.d_in):
                        s.gc[i] = s.gcs[node, i]
                else:
                    node_gx(it, node, sh, pv, s, tg)
                if not paper:
                    for q in range(d):
                        tg.g_biases[it, q] += s.gx[q]
                disaggregate(it, h, n, sh, tree, pv, s)
    for node in range(tree.NC):
        for k in range(d):
            s.row_g[node, k] = g_vec[0, node, k]


def scatter_rows(bi, tree, s, out):
    """The pair's entity gradients (``row_g``) to the batch: straight into the table
    with ``out.direct`` (a serial run, or a parallel run's first task, the only one
    that writes the table), in the order the batch outputs would be added later, so
    both ways give the same numbers without a ``[batch, tree, d]`` buffer (300 MB at
    L = 4, d = 64); else into the row's slice of ``ent_rows``/``g_ent_rows``."""
    ent, row_g = s.ent, s.row_g
    d = row_g.shape[1]
    if out.direct:
        g_ent_table, ent_mark, ent_rows = out.g_ent_table, out.ent_mark, out.ent_rows
        for node in range(tree.NL):
            e = ent[node]
            for k in range(d):
                g_ent_table[e, k] += row_g[node, k]
            if ent_mark.shape[0] > 0:
                ent_mark[e] = 1
            if ent_rows.shape[0] > 0:  # the rows whose gradient the step clears
                ent_rows[bi, node] = e
    else:
        ent_rows, g_ent_rows = out.ent_rows, out.g_ent_rows
        for node in range(tree.NL):
            ent_rows[bi, node] = ent[node]
            for k in range(d):
                g_ent_rows[bi, node, k] = row_g[node, k]


def ls_backward(g_final, sh, tree, s):
    """Back-propagate the root label's gradient through the propagation into its
    coefficients (``g_self_p``, ``g_child_p``); clamped nodes stop it."""
    o, H, S, NH = tree.o, sh.hops, sh.S, tree.NH
    cur, g_cur, clamp, self_p, child_p = s.cur, s.g_cur, s.clamp, s.self_p, s.child_p
    g_self_p, g_child_p = s.g_self_p, s.g_child_p
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


def edge_backward(Dc, sh, tree, s):
    """Coefficient gradients down to the edge logits z (``g_z``) and, paper, the
    log-degrees (``g_ld``), level by level."""
    o, S, L, paper = tree.o, sh.S, sh.n_layers, sh.paper
    g_z, g_ld = s.g_z, s.g_ld
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


def coefficient_backward(Dc, NZ, n_met, sh, graph, tree, pv, s, tg):
    """Coefficient gradients down to the relation scores s_u(r) = scale * u . r
    (through the edge logits, and, paper, the degrees' softmax), then into ``g_u``
    and the task's relation gradient."""
    o, S, L, paper, d = tree.o, sh.S, sh.n_layers, sh.paper, sh.d
    g_z, g_ld, g_s, runs, rel_table = s.g_z, s.g_ld, s.g_s, graph.runs, pv.rel_table
    edge_backward(Dc, sh, tree, s)
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
    g_rel, u, g_u = tg.g_rel, s.u, s.g_u
    for i in range(n_met):  # s_u(r) = scale * u . r: to the user and relation vectors
        r = s.met[i]
        g = g_s[r] * scale
        g_s[r] = 0.0
        for k in range(d):
            g_u[k] += g * rel_table[r, k]
            g_rel[r, k] += g * u[k]


# ---------------------------------------------------------------------- row loop
def _row_loop_source(users, items, labels, lo, hi, b0, inv_b, codes, code_base, sh, graph,
                     labs, tree, pv, s, tg, out, logits_out):
    """Forward and backward of rows ``lo:hi`` (batch rows from ``b0``) through the
    stages; returns the summed (bce, ls) of the rows.

    ``pv.*`` (every parameter) is only read. Each row writes its own slice of the
    batch outputs ``out`` (user gradients, its tree's entity rows and their
    gradients, or the table directly); layer-weight, bias and relation gradients go
    to this task's ``tg`` (W's float32 part added to ``tg.g_weights`` at the end:
    in the wrapper, inlined into a prange body, that loop made parallel steps
    differ from serial ones). ``codes[b - code_base]``: the row's reach code (see
    _reach_codes). A non-empty ``logits_out`` makes it a forward pass: each row's
    logit goes there and nothing else runs (one compiled loop for both modes).
    """
    sum_bce = 0.0
    sum_ls = 0.0
    for b in range(lo, hi):
        bi = b - b0
        user, item, y = users[b], items[b], labels[b]
        # most pairs reach no label (Last.FM: 95 %): their propagated label is a
        # constant (see ls_forward), so the tree's levels beyond the GNN's do not matter
        code = codes[b - code_base]
        reached = code == REACHED
        listed = code != UNLISTED  # else: look at every node of the tree
        Dc = tree.D if reached or not listed else sh.n_layers  # levels whose weights matter
        n_met = tree_layout(b, user, item, Dc, sh, graph, tree, pv, s)
        if sh.hops > 0 and (reached or not listed):
            reached = label_lookup(user, item, reached, labs, tree, s)
        coefficients(Dc, sh, tree, s)
        logit = gnn_forward(sh, tree, pv, s)
        if logits_out.shape[0] > 0:
            logits_out[bi] = logit
            continue
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
        for k in range(sh.d):
            out.g_users_b[bi, k] = s.g_u[k]
    gw32 = tg.gw32
    for it in range(gw32.shape[0]):
        for i in range(sh.d_in):
            for q in range(sh.d):
                tg.g_weights[it, i, q] += gw32[it, i, q]
    return sum_bce, sum_ls


def _rows_grad_source(users, items, labels, lo, hi, b0, inv_b, p, gw, gb, g_rel, out, codes,
                      code_base, sh, graph, labs):
    """Training mode: forward and backward of rows ``lo:hi`` (batch rows from ``b0``)
    into ``out`` (:class:`Outputs`) and this task's flat ``gw``/``gb``/``g_rel``;
    builds the task's packs and runs :func:`row_loop`. Returns the summed (bce, ls)
    of the rows."""
    tree = tree_of(sh)
    return row_loop(users, items, labels, lo, hi, b0, inv_b, codes, code_base, sh, graph,
                    labs, tree, views_of(p, sh, graph.adj_e.shape[0]), scratch_of(sh, tree),
                    task_grads(gw, gb, g_rel, sh), out, np.zeros(0, np.float64))


def _rows_logits_source(users, items, lo, hi, p, out, sh, graph):
    """``out[b]`` = the logit of pair ``b`` for rows ``lo:hi``: :func:`row_loop`'s
    forward-only mode, over the GNN's levels (no propagation term). The empty
    outputs and labels it needs are made here, typed as the training mode's, so
    both modes share one compiled loop."""
    d, L = sh.d, sh.n_layers
    zero = np.int64(0)  # not a literal 0 / False: those would type a second loop
    gnn = Shape(sh.off_u, sh.off_e, sh.off_r, sh.off_w, sh.off_b, sh.n_rel, d, sh.d_in, L,
                zero, sh.S, sh.paper, sh.agg, 0.0)
    tree = tree_of(gnn)
    no_bits = np.zeros((0, 0), np.uint64)
    none = Outputs(np.zeros((0, d), np.float32), np.zeros((0, tree.NL), np.int64),
                   np.zeros((0, tree.NL, d), np.float32), np.zeros((0, d), np.float32),
                   lo < zero, np.zeros(0, np.uint8))
    labs = Labels(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0,
                  no_bits, no_bits, np.zeros(1, np.int64), np.zeros(0, np.int64))
    tg = TaskGrads(np.zeros((L, sh.d_in, d), np.float64), np.zeros((L, d), np.float64),
                   np.zeros((sh.n_rel, d), np.float64), np.zeros((0, sh.d_in, d), np.float32))
    unlisted = np.full(hi - lo, UNLISTED, np.uint8)  # no propagation term
    row_loop(users, items, np.zeros(users.shape[0], np.float32), lo, hi, zero, 1.0, unlisted,
             lo, gnn, graph, labs, tree, views_of(p, gnn, graph.adj_e.shape[0]),
             scratch_of(gnn, tree), tg, none, out)


#: the per-task builders, compiled on their own: only calls are left in the wrappers,
#: which the batch kernels inline into their prange bodies
_BUILDERS = (tree_of, views_of, scratch_of, task_grads)
#: the stage sources, callees before their callers (see _row_variants)
_STAGES = (tree_layout, label_lookup, coefficients, aggregate,
           node_forward, level_forward, gnn_forward, ls_forward, node_gx, level_gx,
           disaggregate, gnn_backward, scatter_rows, ls_backward, edge_backward,
           coefficient_backward)


def _row_variants(suffix: str, single_ok: bool, matmul_ok: bool) -> tuple:
    """The row loop and its two wrappers for one choice of paths: every stage bound
    to this variant's switches and inlined (numba IR) into the loop, which is
    compiled without reference counting (see the module's docstring)."""
    names = {"_SINGLE_OK": single_ok, "_MATMUL_OK": matmul_ok}
    for source in _STAGES:
        names[source.__name__] = njit(inline="always")(
            bound(source, source.__name__ + suffix, **names))
    loop = njit(_nrt=False, cache=True, error_model="numpy", fastmath=FAST)(
        bound(_row_loop_source, "row_loop" + suffix, **names))
    names["row_loop"] = loop
    for source in _BUILDERS:
        names[source.__name__] = njit(cache=True, error_model="numpy")(
            bound(source, source.__name__ + suffix, **names))
    grad = njit(inline="always")(bound(_rows_grad_source, "rows_grad" + suffix, **names))
    logits = njit(inline="always")(bound(_rows_logits_source, "rows_logits" + suffix, **names))
    return loop, grad, logits


#: every path (any width, any depth), and the small networks' loop (see is_small)
row_loop, rows_grad, rows_logits = _row_variants("", True, True)
row_loop_small, rows_grad_small, rows_logits_small = _row_variants("_small", False, False)
