"""KGNN-LS: knowledge-aware GNN with label-smoothness regularization.

Read this file beside Section 4 of the paper. For a (user u, item v) pair:

1. relation scores ``s_u(r) = u . r`` turn the KG into the user-specific
   adjacency ``A_u`` (Sec. 4.1);
2. ``L`` layers of Eq. (1), ``H <- sigma(D^-1/2 (A_u + I) D^-1/2 H W)``, run on
   the receptive field of ``v`` (its sampled neighbours up to ``L`` hops);
3. the prediction is ``sigmoid(u . v_u)``;
4. the label-smoothness term (Sec. 4.2, Theorems 1-2) hides ``y_uv``,
   propagates the user's other training labels to ``v`` over the same
   adjacency (``P = D^-1 A_u``, labelled items clamped every step) and scores
   the propagated label against ``y_uv``.

Two variants share this code. ``paper`` (default) follows the equations;
``authors`` reproduces the released TensorFlow code. The differences are
listed in ``docs/faithfulness.md``; in short:

=================  ===================================  ===============================
                   paper                                authors
=================  ===================================  ===============================
``s_u(r)``         inner product                        mean over dimensions (= dot/d)
edge weights       ``exp(s_u(r))`` per slot, scaled by   softmax over the S slots,
                   ``deg/S`` so S slots estimate the     then averaged over S
                   full neighbourhood; ``+ I``
normalization      ``D^-1/2 A D^-1/2`` (GNN),           none beyond the softmax
                   ``D^-1 A`` (label propagation)
layer              ``act(agg W)``                        ``act(agg W + b)``
label loss         cross-entropy of the propagated      sigmoid cross-entropy with the
                   probability                           propagated label as a logit
propagation depth  ``max(L, 2)``                        ``L``
=================  ===================================  ===============================

Tensors carry leading "batch" dimensions so one code path serves both
training on pairs (batch ``[B]``) and ranking all items for a chunk of users
(batch ``[U, I]``, with item-side tensors broadcast over users).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kgnnls.budget import MEMORY_BUDGET, rows_per_chunk
from kgnnls.config import Config
from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import Split
from kgnnls.graph import KnowledgeGraph, LabelTable
from kgnnls.seeding import rng, torch_generator
from kgnnls.space import Choice, Float, Int, Space

_EPS = 1e-7


class _SparseRows(torch.autograd.Function):
    """``table[index]`` whose gradient is a coalesced sparse tensor over the
    distinct rows (``F.embedding(sparse=True)`` leaves one entry per lookup,
    and coalescing 18 k of them costs more than the rest of the update)."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        rows, inverse = torch.unique(index, return_inverse=True)  # sorted
        ctx.save_for_backward(rows, inverse)
        ctx.shape = table.shape
        return table[rows][inverse]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        rows, inverse = ctx.saved_tensors
        values = torch.zeros(len(rows), grad.shape[-1], dtype=grad.dtype)
        values.index_add_(0, inverse.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), values, ctx.shape,
                                         is_coalesced=True, check_invariants=False)
        return sparse, None


class KGNNLSNet(nn.Module):
    """The KGNN-LS network; ``ls_weight = 0`` gives KGCN (Wang et al., WWW 2019)."""

    #: the loss reaches every parameter in every step (DDP need not search for unused ones)
    uses_every_parameter = True

    #: any KG entity can be scored as an item (cold start: ``recommend(new_items=...)``)
    scores_entities = True

    def __init__(self, config: Config, n_users: int, n_entities: int, n_relations: int,
                 adj_entity: np.ndarray | Tensor, adj_relation: np.ndarray | Tensor,
                 degrees: np.ndarray | Tensor, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.paper = config.variant == "paper"
        self.n_layers = config.n_layers
        self.label_hops = config.label_hops
        self.n_neighbors = config.n_neighbors
        d = config.dim
        self.user_emb = nn.Parameter(torch.empty(n_users, d))
        self.entity_emb = nn.Parameter(torch.empty(n_entities, d))
        self.relation_emb = nn.Parameter(torch.empty(n_relations, d))
        d_in = 2 * d if config.aggregator == "concat" else d
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(d_in, d))
                                         for _ in range(config.n_layers)])
        # the paper's Eq. (1) has no bias; the authors' layers do
        biases = [] if self.paper else [nn.Parameter(torch.zeros(d)) for _ in range(self.n_layers)]
        self.biases = nn.ParameterList(biases)
        for p in (self.user_emb, self.entity_emb, self.relation_emb, *self.weights):
            nn.init.xavier_uniform_(p, generator=generator)  # as the authors (Glorot uniform)
        with torch.no_grad():  # ... but smaller embeddings: see Config.init_scale
            for table in (self.user_emb, self.entity_emb, self.relation_emb):
                table.mul_(config.init_scale)

        self.register_buffer("adj_entity", torch.as_tensor(adj_entity, dtype=torch.long))
        self.register_buffer("adj_relation", torch.as_tensor(adj_relation, dtype=torch.long))
        deg = torch.as_tensor(degrees, dtype=torch.float32).clamp(min=1)
        # each of the S slots stands for deg/S edges of the full neighbourhood
        self.register_buffer("log_slot_weight", torch.log(deg / config.n_neighbors))
        # how often each relation fills an entity's slots: D_u(e) for any e is
        # then 1 + deg/S * (exp(s_u) . slot_counts[e]), with no deeper gather
        counts = torch.zeros(n_entities, n_relations)
        counts.scatter_add_(1, self.adj_relation, torch.ones(self.adj_relation.shape))
        self.register_buffer("slot_counts", counts, persistent=False)
        self.labels: LabelTable | None = None

    @classmethod
    def from_data(cls, dataset: Dataset, split: Split, config: Config) -> KGNNLSNet:
        """Build on ``dataset``'s KG: neighbour sample, init and labels from ``config.seed``."""
        graph = KnowledgeGraph.from_triples(dataset.kg, dataset.n_entities, dataset.n_relations,
                                            dedupe_pairs=config.variant == "paper")
        adj_entity, adj_relation = graph.sample_neighbors(config.n_neighbors,
                                                          rng(config.seed, "neighbors"))
        net = cls(config, dataset.n_users, graph.n_entities, graph.n_relations, adj_entity,
                  adj_relation, graph.degrees, generator=torch_generator(config.seed, "init"))
        net.set_labels(LabelTable(split.train[:, 0], split.train[:, 1], split.train[:, 2],
                                  graph.n_entities))
        return net

    def checkpoint_meta(self) -> dict:
        """Constructor sizes; with the state dict they rebuild the network."""
        return {"n_users": self.n_users, "n_entities": self.entity_emb.shape[0],
                "n_relations": self.relation_emb.shape[0]}

    @classmethod
    def from_checkpoint(cls, config: Config, meta: dict, state: dict[str, Tensor]) -> KGNNLSNet:
        net = cls(config, meta["n_users"], meta["n_entities"], meta["n_relations"],
                  state["adj_entity"], state["adj_relation"], torch.ones(meta["n_entities"]))
        net.load_state_dict(state)
        return net

    # ------------------------------------------------------------------ parts
    @property
    def n_users(self) -> int:
        return self.user_emb.shape[0]

    def set_labels(self, table: LabelTable | None) -> None:
        """Training labels used by the label-smoothness term."""
        self.labels = table

    def relation_scores(self, user_vectors: Tensor) -> Tensor:
        """``s_u(r)`` for every relation: ``[..., R]``."""
        scores = user_vectors @ self.relation_emb.T
        return scores if self.paper else scores / self.relation_emb.shape[1]

    @torch.no_grad()
    def relation_weights(self, users: Tensor, n_relations: int | None = None) -> Tensor:
        """Softmax over relations of ``s_u(r)``, ``[U, R]``: how much each relation
        weighs for each user. ``n_relations``: only the first ones, the KG's own
        (graphs with isolated entities add a ``[self]`` pseudo-relation last)."""
        scores = self.relation_scores(self.user_emb[users.to(self.user_emb.device)])
        return torch.softmax(scores[:, :n_relations], dim=-1)

    def receptive_field(self, items: Tensor, depth: int) -> tuple[list[Tensor], list[Tensor]]:
        """Entities ``[..., S^h]`` for h = 0..depth and relations ``[..., S^(h+1)]``."""
        entities, relations = [items.unsqueeze(-1)], []
        for _ in range(depth):
            relations.append(self.adj_relation[entities[-1]].flatten(-2))
            entities.append(self.adj_entity[entities[-1]].flatten(-2))
        return entities, relations

    def _edge_logits(self, rel_scores: Tensor, entities: list[Tensor], relations: list[Tensor]
                     ) -> list[Tensor]:
        """Log edge weight of every slot, ``[..., S^h, S]`` per level h."""
        out = []
        s = self.n_neighbors
        for level, rel in enumerate(relations):
            if rel_scores.dim() == rel.dim():  # pairs: [B, R] with [B, n]
                z = rel_scores.gather(-1, rel)
            else:  # ranking: [U, 1, R] with [I, n] -> [U, I, n]
                z = rel_scores.squeeze(-2)[:, rel]
            z = z.unflatten(-1, (-1, s))
            if self.paper:
                z = z + self.log_slot_weight[entities[level]].unsqueeze(-1)
            out.append(z)
        return out

    @staticmethod
    def _log_degree(z: Tensor) -> Tensor:
        """``log(1 + sum_j exp(z_j))``: log of ``D_ii`` with the self-loop."""
        return F.softplus(torch.logsumexp(z, dim=-1))

    def _entity_log_degree(self, rel_scores: Tensor, entities: Tensor, ranking: bool) -> Tensor:
        """Log degree of ``entities``: ``log(1 + deg/S * sum_slots exp(s_u(r_slot)))``.

        Same value as ``_log_degree`` of their edge logits, without their
        neighbours' embeddings: ranking sums relation counts once per user and
        entity; pairs gather the S slot relations of each entity (not the R
        relation counts: S = 8 values instead of 60 on Last.FM's leaves).
        """
        shift = rel_scores.amax(-1, keepdim=True).detach()
        weights = torch.exp(rel_scores - shift)  # [..., R], max 1
        if ranking:  # every entity once per user: [U, E], then gather
            total = weights.squeeze(-2) @ self.slot_counts.T
            log_total = torch.log(total) + self.log_slot_weight + shift.squeeze(-2)
            return F.softplus(log_total)[:, entities]
        rel = self.adj_relation[entities]  # [..., n, S]; weights: [..., R], same leading dims
        total = weights.gather(-1, rel.flatten(-2)).view(rel.shape).sum(-1)
        return F.softplus(torch.log(total) + self.log_slot_weight[entities] + shift)

    def coefficients(self, z: list[Tensor], level: int, log_deg: list[Tensor] | None,
                     symmetric: bool) -> tuple[Tensor | None, Tensor]:
        """Weights of a node's self term and of its S children at ``level``.

        ``z`` and ``log_deg`` as :meth:`edge_weights` returns them. Paper:
        ``symmetric`` gives Eq. (1)'s ``D^-1/2 (A_u + I) D^-1/2`` (the GNN),
        otherwise Theorem 2's ``D^-1 (A_u + I)`` (label propagation); the self
        term is None for the authors' variant (softmax over the S slots, no
        self-loop).
        """
        if not self.paper:
            return None, torch.softmax(z[level], dim=-1) / self.n_neighbors
        ld = log_deg[level]
        if symmetric:  # D^-1/2 (A + I) D^-1/2
            child = z[level] - 0.5 * ld.unsqueeze(-1) - 0.5 * log_deg[level + 1].unflatten(
                -1, (-1, self.n_neighbors))
        else:  # D^-1 (A + I)
            child = z[level] - ld.unsqueeze(-1)
        return torch.exp(-ld), torch.exp(child)

    # ------------------------------------------------------------------ forward
    def _propagate(self, users: Tensor, items: Tensor, ranking: bool, with_labels: bool
                   ) -> tuple[Tensor, Tensor | None]:
        L = self.n_layers
        H = self.label_hops if with_labels else 0
        depth = max(L, H)
        entities, relations = self.receptive_field(items, depth)
        u = self._rows(self.user_emb, users)
        if ranking:
            u = u.unsqueeze(-2)  # [U, 1, d] broadcasts against items
        rel_scores = self.relation_scores(u)
        z, log_deg = self._edge_terms(rel_scores, entities, relations, ranking)
        item_vectors = self._aggregate(entities, z, log_deg, ranking)
        logits = (u * item_vectors).sum(-1)
        predicted_label = None
        if with_labels:
            predicted_label = self._label_propagation(users, items, entities, z, log_deg)
        return logits, predicted_label

    def _edge_terms(self, rel_scores: Tensor, entities: list[Tensor], relations: list[Tensor],
                    ranking: bool) -> tuple[list[Tensor], list[Tensor] | None]:
        """:meth:`edge_weights` from the users' relation scores (pairs or ranking)."""
        z = self._edge_logits(rel_scores, entities, relations)
        if not self.paper:
            return z, None
        log_deg = [self._log_degree(zl) for zl in z]
        if len(log_deg) == self.n_layers:  # D^-1/2 on both sides: the leaves' degrees too
            log_deg.append(self._entity_log_degree(rel_scores, entities[self.n_layers], ranking))
        return z, log_deg

    @torch.no_grad()
    def edge_weights(self, users: Tensor, entities: list[Tensor], relations: list[Tensor]
                     ) -> tuple[list[Tensor], list[Tensor] | None]:
        """The user-specific adjacency ``A_u`` on a receptive field, in log space.

        For pairs ``(users[i], items[i])`` whose field is ``entities, relations
        = receptive_field(items, depth)``: ``z[h]`` ``[B, S^h, S]`` holds the log
        edge weight of every slot at level ``h`` (Sec. 4.1: ``s_u(r)``, paper
        variant plus ``log(deg/S)``, the slot's share of the full neighbourhood);
        ``log_deg[h]`` ``[B, S^h]`` the log of ``D_ii`` with the self-loop,
        ``log(1 + sum_j exp(z_j))``, per level, the leaves of an ``L``-deep
        field included (Eq. (1)'s ``D^-1/2`` on both sides). The authors'
        variant has no degrees (``log_deg`` None). :meth:`coefficients` turns
        them into Eq. (1)'s and Theorem 2's normalized weights.
        """
        rel_scores = self.relation_scores(self.user_emb[users])
        return self._edge_terms(rel_scores, entities, relations, ranking=False)

    def _aggregate(self, entities: list[Tensor], z: list[Tensor], log_deg: list[Tensor] | None,
                   ranking: bool) -> Tensor:
        """Eq. (1), L times, on the receptive field: item vectors ``[..., d]``.

        Eq. (1) is linear before the activation, so the first layer may mix
        raw embeddings and then multiply by W (training: S times fewer
        FLOPs on the widest level) or multiply first (ranking: the whole
        table is projected once and shared by every user).
        """
        L, d = self.n_layers, self.config.dim
        # training: layer 0 starts from the raw embeddings, gathered once
        vectors = None if ranking else self._gather_levels(entities[:L + 1])
        for it in range(L):
            act = torch.tanh if it == L - 1 else torch.relu
            w = self.weights[it]
            # concat: [own; neigh] W = own W_top + neigh W_bottom
            w_own, w_neigh = (w[:d], w[d:]) if self.config.aggregator == "concat" else (w, w)
            projected = it == 0 and ranking
            nxt = []
            for level in range(L - it):
                self_c, child_c = self.coefficients(z, level, log_deg, symmetric=True)
                if projected:
                    own = self._projected(entities[level], w_own)
                    child = self._projected(entities[level + 1], w_neigh)
                else:
                    own, child = vectors[level], vectors[level + 1]
                child = child.unflatten(-2, (-1, self.n_neighbors))
                neigh = torch.einsum("...ns,...nsd->...nd", child_c, child)
                if self_c is not None:
                    own = self_c.unsqueeze(-1) * own
                if projected:
                    x = neigh if self.config.aggregator == "neighbor" else own + neigh
                else:
                    x = self._combine(own, neigh) @ w
                if len(self.biases):
                    x = x + self.biases[it]
                nxt.append(act(x))
            vectors = nxt
        return vectors[0].squeeze(-2)

    def _projected(self, entities: Tensor, w: Tensor) -> Tensor:
        """``entity_emb[entities] @ w`` for ranking, where every entity recurs."""
        return (self.entity_emb @ w)[entities]

    def _rows(self, table: Tensor, index: Tensor) -> Tensor:
        """``table[index]``; with ``updates="rows"`` its gradient is sparse (kgnnls.optim)."""
        if self.config.updates == "rows" and torch.is_grad_enabled():
            return _SparseRows.apply(table, index)
        return table[index]

    def sparse_tables(self) -> list[nn.Parameter]:
        """Tables whose gradients are sparse under ``updates="rows"``."""
        return [self.user_emb, self.entity_emb] if self.config.updates == "rows" else []

    def _gather_levels(self, levels: list[Tensor]) -> list[Tensor]:
        """``entity_emb`` rows of every tree level, in one gather.

        Each gather's backward fills a gradient the size of the whole table
        (5 M floats on Book-Crossing); one gather per step instead of one per
        level and layer cuts that cost by the number of gathers.
        """
        rows = self._rows(self.entity_emb, torch.cat([e.reshape(-1) for e in levels]))
        return [part.view(*e.shape, -1) for part, e in
                zip(rows.split([e.numel() for e in levels]), levels, strict=True)]

    def _combine(self, own: Tensor, neigh: Tensor) -> Tensor:
        agg = self.config.aggregator
        if agg == "sum":
            return own + neigh
        if agg == "concat":
            own, neigh = torch.broadcast_tensors(own, neigh)
            return torch.cat([own, neigh], dim=-1)
        return neigh

    def _label_propagation(self, users: Tensor, items: Tensor, entities: list[Tensor],
                           z: list[Tensor], log_deg: list[Tensor] | None) -> Tensor:
        """Leave-one-out label of each item (Theorem 2 on its receptive field)."""
        init, clamp = self.label_inputs(users, items, entities)
        return self.run_label_propagation(init, clamp, z, log_deg)

    def label_inputs(self, users: Tensor, items: Tensor, entities: list[Tensor]
                     ) -> tuple[list[Tensor], list[Tensor]]:
        """Initial labels per tree level (0.5 unless labelled) and the clamp masks."""
        if self.labels is None:
            raise RuntimeError("label smoothness needs training labels: call set_labels()")
        root = torch.full((*items.shape, 1), 0.5, device=items.device)
        init, clamp = [root], [torch.zeros(root.shape, dtype=torch.bool,
                                           device=items.device)]  # the root is hidden
        for h in range(1, self.label_hops + 1):
            label, known = self.labels.lookup(users.unsqueeze(-1), entities[h])
            hidden = entities[h] == items.unsqueeze(-1)  # y_uv is hidden wherever v appears
            init.append(torch.where(hidden, 0.5, label))
            clamp.append(known & ~hidden)
        return init, clamp

    def run_label_propagation(self, init: list[Tensor], clamp: list[Tensor], z: list[Tensor],
                              log_deg: list[Tensor] | None) -> Tensor:
        """``label_hops`` steps of ``l <- D^-1 A l`` with labelled items reset each step."""
        current = init
        for it in range(self.label_hops):
            nxt = []
            for level in range(self.label_hops - it):
                self_c, child_c = self.coefficients(z, level, log_deg, symmetric=False)
                child = current[level + 1].unflatten(-1, (-1, self.n_neighbors))
                agg = (child_c * child).sum(-1)
                if self_c is not None:
                    agg = agg + self_c * current[level]
                nxt.append(torch.where(clamp[level], init[level], agg))
            current = nxt
        return current[0].squeeze(-1)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits of ``sigmoid(u . v_u)`` for pairs ``(users[i], items[i])``."""
        return self._propagate(users, items, ranking=False, with_labels=False)[0]

    def loss(self, users: Tensor, items: Tensor, labels: Tensor,
             negatives: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. (8) without the L2 term (Adam's weight decay applies it).

        Both terms are means over the batch (the paper writes sums over all
        pairs; with minibatches the mean keeps lambda independent of B).
        Returns the loss and its detached parts (``bce``, ``ls``).

        With ``negatives`` (``loss="bpr"``: one sampled untouched item per
        positive ``(users[i], items[i])``) the base term is BPR's
        ``-mean log sigmoid(s(u, i) - s(u, j))`` (part ``bpr``), and the
        label-smoothness term scores the positives as label 1 and the
        negatives as label 0, over the 2B rows.
        """
        with_ls = self.config.ls_weight > 0
        if negatives is not None:  # one forward over positives then negatives
            users = torch.cat([users, users])
            items = torch.cat([items, negatives])
            labels = torch.cat([torch.ones(len(negatives), device=negatives.device),
                                torch.zeros(len(negatives), device=negatives.device)])
        logits, label_pred = self._propagate(users, items, ranking=False, with_labels=with_ls)
        if negatives is None:
            base = F.binary_cross_entropy_with_logits(logits, labels)
            parts = {"bce": base.detach()}
        else:
            pos, neg = logits.split(len(negatives))
            base = -F.logsigmoid(pos - neg).mean()
            parts = {"bpr": base.detach()}
        total = base
        if with_ls:
            if self.paper:
                ls = F.binary_cross_entropy(label_pred.clamp(_EPS, 1 - _EPS), labels)
            else:
                ls = F.binary_cross_entropy_with_logits(label_pred, labels)
            total = total + self.config.ls_weight * ls
            parts["ls"] = ls.detach()
        return total, parts

    @torch.no_grad()
    def score_pairs(self, users: Tensor, items: Tensor, budget_bytes: int = MEMORY_BUDGET
                    ) -> Tensor:
        """Logits for pairs by the tensor path, without gradient: the reference.

        Runs on the network's device (``users`` and ``items`` there too);
        :class:`kgnnls.scoring.Scorer` picks the compiled forward where it
        covers the config and moves tensors between devices.

        Chunked so that the receptive-field temporaries stay near
        ``budget_bytes``: a pair's tree has ``sum_h S^h`` nodes (4,681 at S = 8,
        L = 4, where 8,192 pairs at once would need gigabytes).
        """
        nodes = sum(self.n_neighbors ** h for h in range(self.n_layers + 1))
        chunk = rows_per_chunk(nodes * self.config.dim * 4 * 6, budget_bytes, cap=len(users))
        if len(users) <= chunk:
            return self.forward(users, items)
        return torch.cat([self.forward(users[i:i + chunk], items[i:i + chunk])
                          for i in range(0, len(users), chunk)])

    @torch.no_grad()
    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits ``[len(users), len(items)]`` by the tensor path: :meth:`score_matrix_layerwise`.

        The reference ranking on the network's device, any depth;
        :class:`kgnnls.scoring.Scorer` picks the compiled one-layer ranker
        where it applies.
        """
        return self.score_matrix_layerwise(users, items)

    @torch.no_grad()
    def score_matrix_layerwise(self, users: Tensor, items: Tensor) -> Tensor:
        """Full ranking by tensors: Eq. (1) once per (user, entity), not per tree node.

        A node's hidden vector depends only on the user and the entity, so
        layer ``l`` is computed for the entities within ``L - 1 - l`` slot hops
        of the ranked items, each once: the cost grows with the number of
        such entities instead of with ``I * S^L``.
        """
        L, s = self.n_layers, self.n_neighbors
        # rings[k]: entities within k slot hops of the items (rings[0] = items)
        rings = [items]
        for _ in range(L):
            ring = torch.cat([rings[-1], self.adj_entity[rings[-1]].reshape(-1)])
            rings.append(torch.unique(ring))
        position = torch.empty(self.entity_emb.shape[0], dtype=torch.long, device=items.device)
        u = self.user_emb[users]
        rel_scores = self.relation_scores(u)  # [U, R]
        log_deg = None
        if self.paper:
            log_deg = self._entity_log_degree(rel_scores.unsqueeze(-2), torch.arange(
                self.entity_emb.shape[0], device=items.device), ranking=True)  # [U, E]
        hidden = None  # [U, |rings[L - it]|, d] after the first layer
        for it in range(L):
            nodes, below = rings[L - 1 - it], rings[L - it]
            slots, rels = self.adj_entity[nodes], self.adj_relation[nodes]  # [n, S]
            z = rel_scores[:, rels]  # [U, n, S]
            if self.paper:
                z = z + self.log_slot_weight[nodes].unsqueeze(-1)
                ld = log_deg[:, nodes]
                self_c = torch.exp(-ld)
                child_c = torch.exp(z - 0.5 * ld.unsqueeze(-1) - 0.5 * log_deg[:, slots])
            else:
                self_c, child_c = None, torch.softmax(z, dim=-1) / s
            if it == 0:
                x = self._first_layer_ranked(nodes, slots, self_c, child_c)
            else:
                position[below] = torch.arange(len(below), device=below.device)
                x = self._layer_ranked(hidden, position[nodes], position[slots], self_c,
                                       child_c, self.weights[it])
            if len(self.biases):
                x.add_(self.biases[it])
            hidden = torch.tanh_(x) if it == L - 1 else torch.relu_(x)
        # the last layer ran on rings[0] = items
        return torch.bmm(hidden, u.unsqueeze(-1)).squeeze(-1)

    def _first_layer_ranked(self, nodes: Tensor, slots: Tensor, self_c: Tensor | None,
                            child_c: Tensor) -> Tensor:
        """Layer 1's pre-activation ``[U, n, d]`` of ``nodes``: raw embeddings are shared
        by all users, so ``W`` multiplies them once, before the user-specific weights."""
        d, w = self.config.dim, self.weights[0]
        w_own, w_neigh = (w[:d], w[d:]) if self.config.aggregator == "concat" else (w, w)
        x = _neighbor_sum(child_c, (self.entity_emb @ w_neigh).unsqueeze(0), slots)
        if self.config.aggregator == "neighbor":
            return x
        own = (self.entity_emb[nodes] @ w_own).unsqueeze(0)
        return x.add_(own) if self_c is None else x.addcmul_(self_c.unsqueeze(-1), own)

    def _layer_ranked(self, hidden: Tensor, own_pos: Tensor, child_pos: Tensor,
                      self_c: Tensor | None, child_c: Tensor, w: Tensor) -> Tensor:
        """A deeper layer's pre-activation ``[U, n, d]`` from the layer below's ``hidden``
        (rows ``own_pos`` of the nodes, ``child_pos`` of their children)."""
        agg = self.config.aggregator
        if agg == "concat":
            own = hidden[:, own_pos]
            if self_c is not None:
                own = self_c.unsqueeze(-1) * own
            return self._combine(own, _neighbor_sum(child_c, hidden, child_pos)) @ w
        if agg == "sum":  # the node itself is one more entry of its row of the sparse sum
            own_c = torch.ones_like(child_c[..., 0]) if self_c is None else self_c
            x = _neighbor_sum(torch.cat([own_c.unsqueeze(-1), child_c], dim=-1), hidden,
                              torch.cat([own_pos.unsqueeze(-1), child_pos], dim=-1))
        else:
            x = _neighbor_sum(child_c, hidden, child_pos)
        return x @ w

    @torch.no_grad()
    def score_matrix_reference(self, users: Tensor, items: Tensor) -> Tensor:
        """``score_matrix`` with broadcast tensor ops (any depth)."""
        return self._propagate(users, items, ranking=True, with_labels=False)[0]

    @torch.no_grad()
    def label_coverage(self, users: Tensor, items: Tensor) -> Tensor:
        """For each pair: does its propagation tree reach a labelled entity?

        Rows where it does not get the constant label 0.5 (paper: clamped to
        nothing) and contribute no gradient to the edge weights.
        """
        entities, _ = self.receptive_field(items, self.label_hops)
        reached = torch.zeros(len(users), dtype=torch.bool)
        for h in range(1, self.label_hops + 1):
            _, known = self.labels.lookup(users.unsqueeze(-1), entities[h])
            reached |= (known & (entities[h] != items.unsqueeze(-1))).any(-1)
        return reached

    # ------------------------------------------------------------------ L2
    def parameter_groups(self, l2_weight: float) -> list[dict]:
        """Adam parameter groups with the L2 term as coupled weight decay.

        Eq. (8) writes ``gamma ||F||^2``; the authors' code, with which the
        paper's Table 8 values of gamma were tuned, computes ``gamma *
        tf.nn.l2_loss`` = ``gamma/2 * sum(theta^2)`` over the embedding tables
        and layer weights (not biases). Both variants use that scale so that
        Table 8's gamma means what it meant there; its gradient,
        ``gamma * theta``, is exactly Adam's ``weight_decay = gamma``.
        """
        decayed = [self.user_emb, self.entity_emb, self.relation_emb, *self.weights]
        groups = [{"params": decayed, "weight_decay": l2_weight}]
        if len(self.biases):
            groups.append({"params": list(self.biases), "weight_decay": 0.0})
        return groups

    def ranking_chunk(self, n_items: int, budget_bytes: int = MEMORY_BUDGET) -> int:
        """Users per :meth:`score_matrix` call so that its temporaries stay near ``budget_bytes``
        (layer-wise: degrees, hidden vectors and neighbour weights per user)."""
        s, d, n_ent = self.n_neighbors, self.config.dim, self.entity_emb.shape[0]
        per_user = 4 * (2 * n_ent + n_ent * d + n_items * s * (d + 2))
        return rows_per_chunk(per_user, budget_bytes)


def _neighbor_sum(child_c: Tensor, hidden: Tensor, child_pos: Tensor) -> Tensor:
    """``neigh[u, n] = sum_s child_c[u, n, s] * hidden[u, child_pos[n, s]]`` (any number
    of entries ``s`` per row); ``hidden`` is ``[U, m, d]``, or ``[1, m, d]`` shared by all
    users.

    As one weighted ``embedding_bag`` over the rows of ``hidden`` rather than a
    gather of every user's children: the gathered ``[U, n, S, d]`` tensor is the
    ranking's largest temporary, and writing then reading it cost more than the
    arithmetic. ``embedding_bag`` also beat a block-diagonal CSR product (3x) and
    ``einsum`` over the shared first layer, whose output needed a transposing copy
    (docs/performance.md).
    """
    n_users, n, s = child_c.shape
    index = child_pos.reshape(1, n * s)
    if hidden.shape[0] == 1:
        index = index.expand(n_users, -1)
    else:
        index = torch.arange(n_users, device=hidden.device).unsqueeze(1) * hidden.shape[1] + index
    neigh = F.embedding_bag(index.reshape(n_users * n, s), hidden.reshape(-1, hidden.shape[-1]),
                            mode="sum",
                            per_sample_weights=child_c.reshape(n_users * n, s).to(hidden.dtype))
    return neigh.view(n_users, n, -1)


_KGNN_SPACE: Space = {
    "n_neighbors": Choice((4, 8, 16)),
    "dim": Choice((16, 32, 64)),
    "n_layers": Int(1, 2),
    "ls_weight": Choice((0.0, 0.1, 0.5, 1.0)),
    "l2_weight": Float(1e-7, 1e-4, log=True),
    "lr": Float(5e-4, 2e-2, log=True),
    "negatives": Choice(("fixed", "resample")),
    "loss": Choice(("bce", "bpr")),
}
#: The leaderboard's search space (``kgnnls benchmark``), by model name and Config field:
#: the paper's grid (Appendix B, kgnnls.tune.PAPER_SPACE) cut to what trains in seconds
#: (L <= 2, S <= 16, d <= 64), plus the negatives and the objective (the paper's BCE or
#: BPR, docs/faithfulness.md); KGCN is KGNN-LS with lambda = 0.
SEARCH_SPACES: dict[str, Space] = {
    "kgnn-ls": _KGNN_SPACE,
    "kgcn": {k: v for k, v in _KGNN_SPACE.items() if k != "ls_weight"},
}


__all__ = ["SEARCH_SPACES", "KGNNLSNet"]
