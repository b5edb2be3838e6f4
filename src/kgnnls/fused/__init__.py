"""The fused training step: forward, backward and Adam in one compiled loop.

At the paper's batch sizes (128 pairs, tensors of 128 x 8 x 16) an eager
PyTorch step is nearly all per-operator framework overhead: ~100 operators
forward and back, each a few microseconds of dispatch for a few hundred
FLOPs. This module computes the same step without the framework: for each
pair it walks the receptive field, evaluates Eq. (1), the prediction and the
label-propagation term, back-propagates by hand, accumulates the gradient,
and after each batch applies Adam (coupled L2 as ``weight_decay``, exactly
``torch.optim.Adam``'s update) to all parameters, held in one flat buffer.

What it covers is the allow-list of :mod:`kgnnls.coverage` (scope
``train``; the compiled forward, scope ``forward``). The autograd model
stays the reference: ``tests/test_fused.py`` checks loss and every gradient
against it to 1e-5 on random inputs for each covered configuration, and
serves everything else. :func:`kgnnls.train.fit` picks this path when it
applies (``RunOptions.training_path = "auto"``) and records the path that
ran, and why not where it did not, in ``metrics.json`` (``training_path``,
``training_path_reason``). docs/performance.md has the measurements.

The per-pair loop is compiled (numba), so the hot path has no Python loop
over samples. Pairs run in tasks of a fixed size whose results are summed in
a fixed order, so a run's numbers do not depend on the number of threads.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from kgnnls.arrays import csr_indptr
from kgnnls.coverage import MAX_DEPTH, unsupported  # the allow-list (re-exported)
from kgnnls.fast_rank import AGG_CODES
from kgnnls.fused.kernels import (
    CHUNK,
    Adam,
    candidate_pass,
    kernels_for,
    reach_codes,
    relation_runs,
    set_bits,
)
from kgnnls.fused.stages import (
    REACHED,
    SINGLE_MIN_DIM,
    UNLISTED,
    UNREACHED,
    Graph,
    Labels,
    Shape,
)
from kgnnls.graph import LabelTable
from kgnnls.model import KGNNLSNet
from kgnnls.optim import RowAdam
from kgnnls.threads import clamp_threads, numba_threads

#: rows per step from which several threads pay for their hand-off (a parallel region
#: costs microseconds, a task of CHUNK rows far more; docs/performance.md): two tasks
PARALLEL_MIN_ROWS = 2 * CHUNK


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
    candidate_pass(adj_e, n_items, hops, ptr, empty[1], False)
    if ptr[-1] > CANDIDATE_LIMIT:
        return empty
    ents = np.empty(int(ptr[-1]), np.int64)
    candidate_pass(adj_e, n_items, hops, ptr, ents, True)
    return ptr, ents


# ---------------------------------------------------------------------- driver
#: users x items cells up to which labels are kept as two bit planes (2 x 512 MiB at most;
#: MovieLens-20M: 2 x 280 MiB); larger catalogues search each user's sorted items
BIT_TABLE_LIMIT = 1 << 32


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
    set_bits(ptr, ents, values, known, label)  # bit k of word w: entity 64 w + k
    return {"known_bits": known, "label_bits": label}


def _label_rows(labels: LabelTable | None, n_entities: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The label table as rows per user (CSR): a user's labelled items sit together,
    so a lookup touches one short sorted run instead of a table of users x items."""
    if labels is None or len(labels.keys) == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    keys = labels.keys.numpy()  # sorted user * n_entities + entity
    users, ents = keys // n_entities, keys % n_entities
    ptr = csr_indptr(users, int(users[-1]) + 1)
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
        runs=relation_runs(adj_r, np.exp(network.log_slot_weight.numpy().astype(np.float64))))


def _shape(offsets: dict, model: dict, hops: int = 0, ls_weight: float = 0.0,
           given_grad: bool = False) -> Shape:
    """The kernels' :class:`Shape` from :func:`_layout`'s offsets and :func:`_model_args`
    (plain ints, bools and floats: one compiled signature per kernel)."""
    return Shape(**{k: int(v) for k, v in offsets.items()}, n_rel=int(model["n_rel"]),
                 d=int(model["d"]), d_in=int(model["d_in"]), n_layers=int(model["n_layers"]),
                 hops=int(hops), S=int(model["S"]), paper=bool(model["paper"]),
                 agg=int(model["agg"]), ls_weight=float(ls_weight),
                 given_grad=bool(given_grad))


def bpr_rows(users: np.ndarray, pos: np.ndarray, neg: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BPR's ``B`` triples as the step's ``2B`` rows: the positives (label 1), then the
    negatives (label 0), as ``KGNNLSNet.loss`` orders them (the LS term reads the
    labels)."""
    users2 = np.ascontiguousarray(np.concatenate([users, users]), np.int64)
    items2 = np.ascontiguousarray(np.concatenate([pos, neg]), np.int64)
    labels2 = np.repeat(np.array([1.0, 0.0], np.float32), len(users))
    return users2, items2, labels2


def bpr_gradient(logits: np.ndarray) -> tuple[float, np.ndarray]:
    """BPR's mean loss ``-mean log sigmoid(s_i - s_j)`` over the ``B`` pairs of
    :func:`bpr_rows`' logits, and each row's gradient in units of the step's
    ``1 / 2B``: ``-2 sigmoid(s_j - s_i)`` for the positive, its negation for the
    negative."""
    pos, neg = np.split(np.asarray(logits, np.float64), 2)
    diff = pos - neg
    loss = float(np.mean(np.logaddexp(0.0, -diff)))
    pull = 2.0 / (1.0 + np.exp(diff))  # 2 sigmoid(-diff)
    return loss, np.concatenate([-pull, pull])


def _flat_copy(params: list[torch.nn.Parameter], starts: np.ndarray) -> np.ndarray:
    """The parameters copied into one float32 buffer, in :func:`_layout`'s order."""
    flat = np.empty(int(starts[-1]), np.float32)
    for q, a, b in zip(params, starts[:-1], starts[1:], strict=True):
        flat[a:b] = q.detach().reshape(-1).numpy()
    return flat


class CompiledForward:
    """The compiled forward of a :class:`KGNNLSNet`: logits of (user, item) pairs,
    ``network.forward``'s numbers to float rounding, without the framework
    (evaluation's hot path at depth: a Book-Crossing L = 4 field has 4,681 nodes
    per pair).

    Built once: the parameters are copied into the flat layout (or, with ``flat``,
    read from a buffer in that layout, e.g. :meth:`FusedTrainer.forward`'s, without a
    copy) and the graph arguments prepared; :meth:`logits` then scores any number of
    pairs. A copy does not follow later updates of the network: build a new one.
    """

    def __init__(self, network: KGNNLSNet, flat: np.ndarray | None = None,
                 model: dict | None = None):
        reason = unsupported(network.config, scope="forward")
        if reason is not None:
            raise ValueError(f"the compiled forward does not cover this config: {reason}")
        params, starts, offsets = _layout(network)
        if flat is not None and (flat.dtype != np.float32 or flat.shape != (starts[-1],)):
            raise ValueError(f"flat must be float32 of the {int(starts[-1])} parameters")
        self.flat = _flat_copy(params, starts) if flat is None else flat
        model = _model_args(network) if model is None else model
        self.shape = _shape(offsets, model)  # hops = 0: the GNN's levels only
        self.graph = Graph(model["adj_e"], model["adj_r"], model["runs"])

    def logits(self, users: np.ndarray, items: np.ndarray, threads: int = 1) -> np.ndarray:
        """Logits (float64) of the pairs ``(users[i], items[i])``; ``threads`` > 1 runs
        batches of at least ``PARALLEL_MIN_ROWS`` pairs on that many threads (the same
        numbers)."""
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users but {len(items)} items")
        out = np.zeros(len(users), np.float64)
        if len(users) == 0:
            return out
        sh = self.shape
        kernels = kernels_for(sh)
        with numba_threads(threads) as count:
            kernel = kernels.batch_logits_parallel \
                if count > 1 and len(users) >= PARALLEL_MIN_ROWS else kernels.batch_logits
            kernel(np.ascontiguousarray(users, np.int64), np.ascontiguousarray(items, np.int64),
                   self.flat, out, self.shape, self.graph)
        return out


def logits(network: KGNNLSNet, users: np.ndarray, items: np.ndarray, threads: int = 1
           ) -> np.ndarray:
    """Logits of (user, item) pairs by the compiled forward (:class:`CompiledForward`).
    The parameters are copied on every call: in-place updates by fused optimizers or
    collectives do not all bump a tensor's version counter, so a cached copy could go
    stale."""
    return CompiledForward(network).logits(users, items, threads)


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
        self.threads = clamp_threads(threads)
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
        self._forward: CompiledForward | None = None

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

    # ----------------------------------------------------------- kernel arguments
    def _packed(self, given_grad: bool = False) -> tuple[Shape, Graph, Labels]:
        """The kernels' argument packs, from ``offsets`` and ``graph`` (built per call:
        a few microseconds, and a change to ``graph`` is always seen); ``given_grad``:
        the rows' base-term gradients come with the call (BPR)."""
        g = self.graph
        shape = _shape(self.offsets, g, hops=g["hops"], ls_weight=g["ls_weight"],
                       given_grad=given_grad)
        labels = Labels(g["lab_ptr"], g["lab_ent"], g["lab_val"], int(g["lab_items"]),
                        g["known_bits"], g["label_bits"], g["cand_ptr"], g["cand_ent"])
        return shape, Graph(g["adj_e"], g["adj_r"], g["runs"]), labels

    def _adam(self) -> Adam:
        """The optimizer settings as the compiled loop reads them."""
        return Adam(float(self.lr), float(self.beta1), float(self.beta2), float(self.eps),
                    float(self.wd), int(self.wd_until), bool(self.rows), float(self.row_lr),
                    float(self.row_beta1), float(self.row_beta2), float(self.row_eps),
                    float(self.row_l2))

    def forward(self) -> CompiledForward:
        """The compiled forward over this trainer's flat buffer, without a copy: it
        scores with the parameters as they stand after the last step (validation
        during training needs no :meth:`push`)."""
        if self._forward is None:
            self._forward = CompiledForward(self.network, flat=self.flat, model=self.graph)
        return self._forward

    # ----------------------------------------------------------- steps
    def loss_and_grad(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                      negatives: np.ndarray | None = None
                      ) -> tuple[tuple[float, float, float], list[np.ndarray]]:
        """(total, base, ls) of one batch and the gradient of each parameter (tests):
        BCE on labelled rows, or with ``negatives`` BPR on ``(users, items,
        negatives)`` triples (``labels`` unused), as ``KGNNLSNet.loss``."""
        self.grad[:] = 0
        none = np.zeros(0, np.uint8)
        bpr, given = 0.0, None
        if negatives is not None:
            users, items, labels = bpr_rows(users, items, negatives)
            bpr, given = bpr_gradient(self.forward().logits(users, items))
        packed = self._packed(given_grad=given is not None)
        total, bce, ls = kernels_for(packed[0]).batch_grad(
            np.ascontiguousarray(users, np.int64), np.ascontiguousarray(items, np.int64),
            np.ascontiguousarray(labels, np.float32), 0, len(users), self.flat, self.grad,
            *packed, none, True, none, none, np.zeros((0, 0), np.int64),
            np.zeros(0, np.float64) if given is None else given)
        grads = [self.grad[a:b].reshape(q.shape).copy()
                 for q, a, b in zip(self.params, self.starts[:-1], self.starts[1:], strict=True)]
        self.grad[:] = 0
        return (total + bpr, bce if given is None else bpr, ls), grads

    def reach_codes(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Per pair, whether its propagation tree holds a labelled item of its user
        (``REACHED``), none (``UNREACHED``: the deeper levels are skipped) or has no
        candidate list (``UNLISTED``). Fixed while the model trains: compute it once
        for the training rows and pass it to :meth:`steps` in each epoch."""
        users = np.ascontiguousarray(users, np.int64)
        items = np.ascontiguousarray(items, np.int64)
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users but {len(items)} items")
        return reach_codes(users, items, 0, len(users), int(self.graph["hops"]),
                           self._packed()[2])

    def _run_steps(self, users, items, labels, lo, hi, batch_size, codes, buffers=None,
                   given=None) -> tuple[np.ndarray, int]:
        """The compiled loop of steps (serial or parallel by ``threads`` and
        ``batch_size``) on this trainer's buffers, or on ``buffers`` (flat, grad, m, v,
        user_mark, ent_mark) with step count 0; ``given``: every row's base-term
        gradient (BPR), else BCE. Returns (sums, new step count)."""
        sums = np.zeros(3, np.float64)
        flat, grad, m, v, user_mark, ent_mark = buffers or (
            self.flat, self.grad, self.m, self.v, self.user_mark, self.ent_mark)
        count = 0 if buffers else self.step_count
        packed = self._packed(given_grad=given is not None)
        kernels = kernels_for(packed[0])
        with numba_threads(self.threads):
            kernel = kernels.steps_parallel \
                if self.threads > 1 and batch_size >= PARALLEL_MIN_ROWS else kernels.steps
            count = kernel(users, items, labels, lo, hi, batch_size, flat, grad, m, v, count,
                           self._adam(), user_mark, ent_mark, *packed, codes, sums,
                           np.zeros(0, np.float64) if given is None else given)
        return sums, count

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
        before = self.step_count
        sums, self.step_count = self._run_steps(users, items, labels, lo, hi, batch_size,
                                                codes)
        return sums, self.step_count - before

    def bpr_steps(self, users: np.ndarray, pos: np.ndarray, neg: np.ndarray,
                  batch_size: int) -> tuple[np.ndarray, int]:
        """BPR steps (``loss="bpr"``) over ``(users, pos, neg)`` triples in batches of
        ``batch_size`` triples; returns the summed (total, bpr, ls) of the batches and
        their number. Each batch: the compiled forward scores its ``2B`` rows
        (:func:`bpr_rows`) on the current parameters, :func:`bpr_gradient` turns the
        logits into the rows' base-term gradients, and one fused step adds the LS
        term's and applies Adam, as ``KGNNLSNet.loss`` with ``negatives`` and
        ``torch.optim.Adam`` would."""
        if not len(users) == len(pos) == len(neg):
            raise ValueError(f"{len(users)} users, {len(pos)} positives, {len(neg)} negatives")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sums, before = np.zeros(3), self.step_count
        forward, no_codes = self.forward(), np.zeros(0, np.uint8)
        for s in range(0, len(users), batch_size):
            rows = bpr_rows(users[s:s + batch_size], pos[s:s + batch_size],
                            neg[s:s + batch_size])
            bpr, given = bpr_gradient(forward.logits(rows[0], rows[1], self.threads))
            n = len(rows[0])
            part, self.step_count = self._run_steps(*rows, 0, n, n, no_codes, given=given)
            sums += (part[0] + bpr, bpr, part[2])
        return sums, self.step_count - before

    def compile(self, batch_size: int, validate: bool = True) -> float:
        """Compile the kernels :meth:`steps` with ``batch_size`` will run (and, with
        ``validate``, the forward that scores validation pairs) by running them on one
        pair, against copies of the buffers; returns the seconds it took. A training
        run calls this before its timer starts, so ``train_seconds`` counts training
        only (an empty numba cache costs seconds of compilation)."""
        t0 = time.perf_counter()
        one = np.zeros(1, np.int64)
        copies = tuple(a.copy() for a in (self.flat, self.grad, self.m, self.v,
                                          self.user_mark, self.ent_mark))
        self._run_steps(one, one, np.zeros(1, np.float32), 0, 1, batch_size,
                        self.reach_codes(one, one), copies)
        if validate:  # the variant validation's batches (>= PARALLEL_MIN_ROWS) will use
            pairs = np.zeros(PARALLEL_MIN_ROWS, np.int64)
            CompiledForward(self.network, flat=copies[0], model=self.graph).logits(
                pairs, pairs, self.threads)
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


__all__ = ["CHUNK", "MAX_DEPTH", "PARALLEL_MIN_ROWS", "REACHED", "SINGLE_MIN_DIM", "UNLISTED",
           "UNREACHED", "CompiledForward", "FusedTrainer", "bpr_gradient", "bpr_rows", "logits",
           "unsupported"]
