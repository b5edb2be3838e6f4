"""The fused step's batch-level kernels: gradients of a batch in tasks, the forward
of many pairs, Adam (dense and lazy), and the compiled loop of optimizer steps;
plus the small compiled helpers that prepare a trainer's inputs.

Pairs run in tasks of ``CHUNK`` rows whose results are summed in a fixed order,
so a run's numbers do not depend on the number of threads. Kernels that exist
in a serial and a parallel variant are compiled from one source by
:func:`kgnnls.threads.compiled`; Python picks the variant (a serial run compiles no parallel
kernel).
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange

from kgnnls.fused.stages import (
    REACHED,
    UNLISTED,
    UNREACHED,
    Outputs,
    Shape,
    is_small,
    lookup,
    row_variants,
    variant_suffix,
)
from kgnnls.threads import compiled

#: rows per parallel task; a fixed size (not one per thread) keeps the order in which
#: gradients are summed, hence every number, independent of the thread count. Each task
#: allocates its scratch arrays once: a paper-sized batch (128) is two tasks, one per
#: core of a 2-core machine
CHUNK = 64

#: Adam's settings: the dense update's (``wd`` on ``p[:wd_until]``) and, with
#: ``rows``, the lazy update's of the user and entity tables (``kgnnls.optim.RowAdam``)
Adam = namedtuple("Adam", ["lr", "beta1", "beta2", "eps", "wd", "wd_until", "rows", "row_lr",
                           "row_beta1", "row_beta2", "row_eps", "row_l2"])


#: the per-pair wrappers the batch kernels call: bound per variant by kernel_set
rows_grad = rows_logits = None


@njit(cache=True)
def reach_codes(users, items, lo, hi, hops, labs):
    """The code (UNREACHED, REACHED, UNLISTED) of each pair ``lo:hi``. It depends only
    on the pair, the training labels and the sampled graph, all fixed while a model
    trains: the training loop computes it once for the training rows rather than in
    every epoch (Last.FM: a random look-up per candidate, about 3 % of a step)."""
    cand_ptr, cand_ent, known_bits = labs.cand_ptr, labs.cand_ent, labs.known_bits
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
                    known = lookup(user, e, labs.lab_ptr, labs.lab_ent, labs.lab_val,
                                   labs.lab_items)[1]
                if known:
                    code = REACHED
                    break
        out[b - lo] = code
    return out


@njit(inline="always")
def tree_size(n_layers, S):
    """Nodes of the GNN's receptive field: sum_{h <= L} S^h."""
    n_tree = 0
    width = 1
    for _ in range(n_layers + 1):
        n_tree += width
        width *= S
    return n_tree


def _batch_grad_source(users, items, labels, lo, hi, p, grad, sh, graph, labs, codes,
                       direct, user_mark, ent_mark, touched, given):
    """Add the gradient of the mean loss over rows ``lo:hi`` to ``grad``.

    Rows run in parallel tasks of ``CHUNK``; their outputs are then added to
    ``grad`` in a fixed order. ``codes``: every row's :func:`reach_codes`, or
    empty (computed here for the batch). ``direct``: every task writes its
    entity gradients into the table in place (serial runs; else only the first).
    Non-empty ``user_mark`` / ``ent_mark`` get a 1 at every table row the batch
    reads (``updates="rows"``); a non-empty ``touched`` (``[>= rows, tree]``) gets
    the entity row of every tree node, for :func:`_steps` to clear. ``given``:
    every row's base-term gradient where ``sh.given_grad`` (see the row kernel).
    Returns (total, bce, ls) of the batch means.
    """
    d, n_layers, n_rel = sh.d, sh.n_layers, sh.n_rel
    off_u, off_e, off_r, off_w, off_b = sh.off_u, sh.off_e, sh.off_r, sh.off_w, sh.off_b
    if codes.shape[0] > 0:
        batch_codes, code_base = codes, 0
    else:
        batch_codes, code_base = reach_codes(users, items, lo, hi, sh.hops, labs), lo
    nb = hi - lo
    inv_b = 1.0 / nb
    n_tree = tree_size(n_layers, sh.S)
    g_user_table = grad[off_u:off_e].reshape(((off_e - off_u) // d, d))
    n_ent = graph.adj_e.shape[0]
    g_ent_table = grad[off_e:off_e + n_ent * d].reshape((n_ent, d))
    g_users_b = np.zeros((nb, d), np.float32)
    n_out = 0 if direct else nb  # serial runs write the entity gradients in place
    ent_rows = touched if touched.shape[0] > 0 else np.empty((n_out, n_tree), np.int64)
    g_ent_rows = np.empty((n_out, n_tree, d), np.float32)
    n_tasks = (nb + CHUNK - 1) // CHUNK
    n_w = n_layers * sh.d_in * d
    gw = np.zeros((n_tasks, n_w), np.float64)
    gb = np.zeros((n_tasks, n_layers * d), np.float64)
    g_rel = np.zeros((n_tasks, n_rel * d), np.float64)
    sums = np.zeros((n_tasks, 2), np.float64)
    for t in prange(n_tasks):
        a = lo + t * CHUNK
        out = Outputs(g_users_b, ent_rows, g_ent_rows, g_ent_table, direct or t == 0,
                      ent_mark)
        sums[t, 0], sums[t, 1] = rows_grad(
            users, items, labels, a, min(a + CHUNK, hi), lo, inv_b, p, gw[t], gb[t],
            g_rel[t], out, batch_codes, code_base, sh, graph, labs, given)
    # everything below runs in one fixed order
    g_w = grad[off_w:off_w + n_w]
    g_b = grad[off_b:off_b + (0 if sh.paper else n_layers * d)]
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
    return mean_bce + sh.ls_weight * mean_ls, mean_bce, mean_ls




def _batch_logits_source(users, items, p, out, sh, graph):
    """``out[i]`` = the logit of pair (users[i], items[i]), in parallel tasks of
    ``CHUNK``."""
    nb = users.shape[0]
    for t in prange((nb + CHUNK - 1) // CHUNK):
        a = t * CHUNK
        rows_logits(users, items, a, min(a + CHUNK, nb), p, out, sh, graph)


def _serial_logits(rows_logits_py):
    """The serial forward of many pairs: the row kernel called once from Python
    (compiling a serial batch kernel around it would re-optimize the row
    kernel's code, seconds of a first run: docs/performance.md)."""
    def batch_logits(users, items, p, out, sh, graph):
        rows_logits_py(users, items, 0, users.shape[0], p, out, sh, graph)
    return batch_logits




@njit(cache=True, fastmath=True, error_model="numpy")
def _adam_range(p, grad, m, v, wd, b1, b2, step_size, bc2_sqrt, eps):
    # whole (sliced) arrays indexed from 0: numba then drops its negative-index
    # wraparound and LLVM vectorizes the loop
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
    (storing zeros over it costs a large share of the loop, and a batch's gradient
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


adam = compiled(_adam_source, "_adam", parallel=False)
adam_parallel = compiled(_adam_source, "_adam_parallel", parallel=True)


@njit(cache=True, error_model="numpy")
def adam_rows(p, grad, m, v, step, lr, beta1, beta2, eps, l2, d, mark):
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


#: the kernels _steps_source calls and whether every task writes the entity gradient
#: table in place; ``compiled`` binds them per variant (these are the serial ones)
_batch_grad_impl, _adam_impl, _DIRECT = None, adam, True


def _steps_source(users, items, labels, lo, hi, batch_size, p, grad, m, v, step, opt,
                  user_mark, ent_mark, sh, graph, labs, codes, sums, given):
    """Optimizer steps over rows ``lo:hi`` in batches of ``batch_size``.

    The step of ``FusedTrainer.step`` in a compiled loop: a Python call per step
    (argument unboxing for two kernels) costs a measurable share of a step. ``opt``:
    :class:`Adam`. ``codes``: :func:`reach_codes` of every row, or empty (each batch
    computes its own). ``given``: see :func:`_batch_grad_source`. Compiled twice
    (``steps``, ``steps_parallel``): the parallel variant runs the gradient and the
    dense Adam on numba's threads. Adds each
    batch's (total, bce, ls) to ``sums``; returns the step count.
    """
    off_u, off_e, off_r, d = sh.off_u, sh.off_e, sh.off_r, sh.d
    n_tree = tree_size(sh.n_layers, sh.S)
    rows = opt.rows
    # dense updates: clear the gradient rows the batch wrote rather than the tables
    # (Last.FM: 9 of 9,366 entity rows per pair), unless trees outnumber the rows
    clear_rows = not rows and batch_size * n_tree < graph.adj_e.shape[0]
    touched = np.empty((batch_size if clear_rows else 0, n_tree), np.int64)
    for s in range(lo, hi, batch_size):
        e = min(s + batch_size, hi)
        total, bce, ls = _batch_grad_impl(users, items, labels, s, e, p, grad, sh, graph, labs,
                                          codes, _DIRECT, user_mark, ent_mark, touched,
                                          given)
        step += 1
        if rows:  # lazy Adam on the table rows the batch read, dense Adam on the rest
            adam_rows(p[off_u:off_e], grad[off_u:off_e], m[off_u:off_e], v[off_u:off_e],
                      step, opt.row_lr, opt.row_beta1, opt.row_beta2, opt.row_eps,
                      opt.row_l2, d, user_mark)
            adam_rows(p[off_e:off_r], grad[off_e:off_r], m[off_e:off_r], v[off_e:off_r],
                      step, opt.row_lr, opt.row_beta1, opt.row_beta2, opt.row_eps,
                      opt.row_l2, d, ent_mark)
            _adam_impl(p[off_r:], grad[off_r:], m[off_r:], v[off_r:], step, opt.lr,
                       opt.beta1, opt.beta2, opt.eps, opt.wd, opt.wd_until - off_r)
        else:
            _adam_impl(p, grad, m, v, step, opt.lr, opt.beta1, opt.beta2, opt.eps, opt.wd,
                       opt.wd_until)
        if clear_rows:  # rows mode: adam_rows cleared the rows it updated
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


#: one network's kernels: a batch's gradient, the forward of many pairs and the
#: compiled loop of steps, each serial and parallel
Kernels = namedtuple("Kernels", ["batch_grad", "batch_grad_parallel", "batch_logits",
                                 "batch_logits_parallel", "steps", "steps_parallel"])


@functools.cache
def kernel_set(small: bool, paper: bool) -> Kernels:
    """Every batch-level kernel over one per-pair kernel (see stages.row_variants)."""
    suffix = variant_suffix(small, paper)
    _, rows_grad_fn, rows_logits_fn, rows_logits_py_fn = row_variants(small, paper)
    grad = compiled(_batch_grad_source, "_batch_grad" + suffix, parallel=False,
                    rows_grad=rows_grad_fn)
    grad_parallel = compiled(_batch_grad_source, "_batch_grad_parallel" + suffix,
                             parallel=True, rows_grad=rows_grad_fn)
    grad_inline = compiled(_batch_grad_source, "_batch_grad_inline" + suffix, parallel=False,
                           inline=True, rows_grad=rows_grad_fn)
    return Kernels(
        grad, grad_parallel,
        _serial_logits(rows_logits_py_fn),
        compiled(_batch_logits_source, "_batch_logits_parallel" + suffix, parallel=True,
                 rows_logits=rows_logits_fn),
        compiled(_steps_source, "_steps" + suffix, parallel=False,
                 _batch_grad_impl=grad_inline, _adam_impl=adam, _DIRECT=True),
        compiled(_steps_source, "_steps_parallel" + suffix, parallel=False,
                 _batch_grad_impl=grad_parallel, _adam_impl=adam_parallel, _DIRECT=False))


def kernels_for(sh: Shape) -> Kernels:
    """The kernels for a network of :class:`Shape` ``sh``: its variant's, and the small
    set where that covers the network (the same numbers, less to compile)."""
    return kernel_set(is_small(sh.d, sh.n_layers, sh.S), sh.paper)


# ---------------------------------------------------------------------- set-up
@njit(cache=True)
def candidate_pass(adj_e, n_items, hops, ptr, ents, fill):
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


@njit(cache=True)
def set_bits(ptr, ents, values, known, label):
    for user in range(ptr.shape[0] - 1):
        for i in range(ptr[user], ptr[user + 1]):
            word, bit = ents[i] >> 6, np.uint64(ents[i] & 63)
            known[user, word] |= np.uint64(1) << bit
            if values[i] == 1:
                label[user, word] |= np.uint64(1) << bit


@njit(cache=True)
def relation_runs(adj_r, slot_weight):
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
