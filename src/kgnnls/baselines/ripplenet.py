"""RippleNet (Wang et al., CIKM 2018): user preferences propagated over the KG.

For each user, hop 0 of the *ripple set* starts from the user's training
positives (``split.train`` rows with label 1; validation and test rows never
enter). Hop ``k`` holds ``M`` triples ``(h, r, t)`` of the undirected KG whose
head is a tail of hop ``k - 1`` (hop 0: a positive item). With ``v`` the item
embedding, each hop computes (paper Eqs. 2-4)::

    p_i = softmax_i(v^T R_i h_i)          R_i: a d x d matrix per relation
    o   = sum_i p_i t_i
    v  <- (v + o) W                       "plus_transform" item update

and the prediction is ``sigmoid(u . v)`` with ``u = o_1 + ... + o_H`` (all
hops, as the authors' ``using_all_hops``) and ``v`` the item vector after the
last update. The item update is the authors' default ``plus_transform``
(``replace_transform`` is ``extra.item_update = "replace"``: ``v <- o W``).

Loss (paper Eq. 11, as the authors' code approximates it)::

    BCE(y, u . v) - lambda2 * sum_hops mean_i sigmoid(h_i^T R_i t_i) + lambda1 ||theta||^2

``lambda2`` is ``extra.kge_weight``; ``lambda1`` is ``config.l2_weight``,
applied as Adam weight decay on every table (the authors apply it to the
looked-up rows of each batch only).

Ripple sets: the authors draw ``M`` triples per hop *without* replacement when
a hop has at least ``M`` candidates and with replacement otherwise; here all
hops draw with replacement, uniformly over the candidate triples (the same
marginal per draw), which is one vectorized ``searchsorted`` and never
materialises the candidate lists. As in the authors' code, the KG is used in
both directions, hop ``k >= 1`` seeds are the sampled tails of hop ``k - 1``,
and a hop without candidates repeats the previous one. Users without training
positives have no ripple set: their user vector is 0 (logit 0).

Settings (``config.extra``): ``n_hop`` (H, default 2), ``n_memory`` (M, 32),
``kge_weight`` (lambda2, 0.01), ``item_update`` ("plus" | "replace").
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
from kgnnls.graph import KnowledgeGraph
from kgnnls.seeding import rng, torch_generator
from kgnnls.space import Choice, Float, Int, Space

#: bytes of one ``score_matrix`` block's attention weights (see RippleNet.score_matrix)
BLOCK_BYTES = 8 << 20


def ripple_sets(graph: KnowledgeGraph, pos_users: np.ndarray, pos_items: np.ndarray,
                n_users: int, n_hop: int, n_memory: int, generator: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heads, relations, tails ``[n_users, n_hop, n_memory]`` and a ``has_memory`` mask.

    Each draw picks one (seed, edge) uniformly among all edges leaving the
    user's seeds of that hop (with replacement).
    """
    shape = (n_users, n_hop, n_memory)
    heads, rels, tails = (np.zeros(shape, np.int64) for _ in range(3))
    deg = graph.degrees
    # hop-0 seeds: each user's training positives, user-major
    order = np.argsort(pos_users, kind="stable")
    seed_user, seed_ent = pos_users[order], pos_items[order]
    has_memory = np.bincount(seed_user, minlength=n_users) > 0
    for hop in range(n_hop):
        d = deg[seed_ent]
        cum = np.cumsum(d)
        total = np.bincount(seed_user, weights=d, minlength=n_users).astype(np.int64)
        base = np.concatenate([[0], np.cumsum(total)[:-1]])
        ok = total > 0
        draw = np.floor(generator.random((n_users, n_memory)) * total[:, None]).astype(np.int64)
        flat = (base[:, None] + np.minimum(draw, np.maximum(total[:, None] - 1, 0)))[ok]
        k = np.searchsorted(cum, flat, side="right")  # which seed
        offset = flat - (cum[k] - d[k])
        edge = graph.indptr[seed_ent[k]] + offset
        heads[ok, hop] = seed_ent[k]
        rels[ok, hop] = graph.relations[edge]
        tails[ok, hop] = graph.neighbors[edge]
        if hop > 0:  # no candidates: repeat the previous hop (authors)
            gone = ~ok & has_memory
            heads[gone, hop], rels[gone, hop], tails[gone, hop] = (
                heads[gone, hop - 1], rels[gone, hop - 1], tails[gone, hop - 1])
        # next seeds: this hop's sampled tails
        users = np.flatnonzero(has_memory)
        seed_user = np.repeat(users, n_memory)
        seed_ent = tails[users, hop].reshape(-1)
    return heads, rels, tails, has_memory


class RippleNet(nn.Module):
    """RippleNet with ripple sets stored as buffers (they travel in checkpoints)."""

    #: the loss reaches every parameter in every step (DDP need not search for unused ones)
    uses_every_parameter = True

    def __init__(self, config: Config, n_users: int, n_entities: int, n_relations: int,
                 heads: np.ndarray | Tensor, rels: np.ndarray | Tensor,
                 tails: np.ndarray | Tensor, has_memory: np.ndarray | Tensor,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        extra = config.extra
        self.n_hop = int(extra.get("n_hop", 2))
        self.n_memory = int(extra.get("n_memory", 32))
        self.kge_weight = float(extra.get("kge_weight", 0.01))
        self.replace_update = str(extra.get("item_update", "plus")).startswith("replace")
        d = config.dim
        self.entity_emb = nn.Parameter(torch.empty(n_entities, d))
        self.relation_emb = nn.Parameter(torch.empty(n_relations, d, d))
        self.transform = nn.Parameter(torch.empty(d, d))
        for p in (self.entity_emb, self.relation_emb.view(n_relations, d * d), self.transform):
            nn.init.xavier_uniform_(p, generator=generator)  # as the authors
        self.n_users = n_users
        self.register_buffer("mem_heads", torch.as_tensor(heads, dtype=torch.long))
        self.register_buffer("mem_relations", torch.as_tensor(rels, dtype=torch.long))
        self.register_buffer("mem_tails", torch.as_tensor(tails, dtype=torch.long))
        self.register_buffer("has_memory", torch.as_tensor(has_memory, dtype=torch.bool))

    @classmethod
    def from_data(cls, dataset: Dataset, split: Split, config: Config) -> RippleNet:
        graph = KnowledgeGraph.from_triples(dataset.kg, dataset.n_entities, dataset.n_relations,
                                            dedupe_pairs=False)
        pos = split.train[split.train[:, 2] == 1]
        n_hop = int(config.extra.get("n_hop", 2))
        n_memory = int(config.extra.get("n_memory", 32))
        sets = ripple_sets(graph, pos[:, 0], pos[:, 1], dataset.n_users, n_hop, n_memory,
                           rng(config.seed, "ripple-sets"))
        return cls(config, dataset.n_users, graph.n_entities, graph.n_relations, *sets,
                   generator=torch_generator(config.seed, "init"))

    def checkpoint_meta(self) -> dict:
        return {"n_users": self.n_users, "n_entities": self.entity_emb.shape[0],
                "n_relations": self.relation_emb.shape[0]}

    @classmethod
    def from_checkpoint(cls, config: Config, meta: dict, state: dict[str, Tensor]) -> RippleNet:
        net = cls(config, meta["n_users"], meta["n_entities"], meta["n_relations"],
                  state["mem_heads"], state["mem_relations"], state["mem_tails"],
                  state["has_memory"])
        net.load_state_dict(state)
        return net

    # ------------------------------------------------------------------ forward
    def _update(self, v: Tensor, o: Tensor) -> Tensor:
        return (o if self.replace_update else v + o) @ self.transform

    def _attention_logits(self, v: Tensor, h: Tensor, rels: Tensor) -> Tensor:
        """``v^T R_r h`` per memory ``[B, M]``, as ``(v^T R_r) h``: ``v`` times every
        relation matrix once (``[B, n_rel, d]``), gathered per memory. Materialising
        each memory's ``R_r`` (``[B, M, d, d]``) made a Last.FM epoch 5x slower."""
        vr = torch.einsum("bi,rij->brj", v, self.relation_emb)
        picked = torch.gather(vr, 1, rels.unsqueeze(-1).expand(-1, -1, vr.shape[-1]))
        return (picked * h).sum(-1)

    def _kge(self, h: Tensor, rels: Tensor, t: Tensor) -> Tensor:
        """``mean sigmoid(h^T R_r t)`` over the memories: the memories sorted by
        relation, one ``[n_r, d] x [d, d]`` product per relation present."""
        d = h.shape[-1]
        rels = rels.reshape(-1)
        order = torch.argsort(rels, stable=True)
        counts = torch.bincount(rels, minlength=self.relation_emb.shape[0]).tolist()
        hs = torch.split(h.reshape(-1, d)[order], counts)
        ts = torch.split(t.reshape(-1, d)[order], counts)
        scores = [((hr @ self.relation_emb[r]) * tr).sum(-1)
                  for r, (hr, tr) in enumerate(zip(hs, ts, strict=True)) if counts[r]]
        return torch.sigmoid(torch.cat(scores)).mean()

    def _forward(self, users: Tensor, items: Tensor, with_kge: bool
                 ) -> tuple[Tensor, Tensor | None]:
        v = self.entity_emb[items]  # [B, d]
        u = torch.zeros_like(v)
        kge = v.new_zeros(())
        for hop in range(self.n_hop):
            h = self.entity_emb[self.mem_heads[users, hop]]  # [B, M, d]
            rels = self.mem_relations[users, hop]  # [B, M]
            t = self.entity_emb[self.mem_tails[users, hop]]  # [B, M, d]
            p = torch.softmax(self._attention_logits(v, h, rels), dim=-1)  # [B, M]
            o = (p.unsqueeze(-1) * t).sum(1)
            u = u + o
            v = self._update(v, o)
            if with_kge:
                kge = kge + self._kge(h, rels, t)
        u = u * self.has_memory[users].unsqueeze(-1)
        return (u * v).sum(-1), (kge if with_kge else None)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self._forward(users, items, with_kge=False)[0]

    def loss(self, users: Tensor, items: Tensor, labels: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """BCE minus ``kge_weight`` times the KGE term (L2: Adam weight decay)."""
        logits, kge = self._forward(users, items, with_kge=True)
        bce = F.binary_cross_entropy_with_logits(logits, labels)
        return bce - self.kge_weight * kge, {"bce": bce.detach(), "kge": kge.detach()}

    @torch.no_grad()
    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        return self.forward(users, items)

    @torch.no_grad()
    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits ``[U, I]``, a few users at a time: each block's ``[U, I, M]``
        attention stays within ``BLOCK_BYTES``, small enough to stay in cache."""
        block = max(1, BLOCK_BYTES // (4 * max(len(items), 1) * self.n_memory))
        return torch.cat([self._score_block(users[s:s + block], items)
                          for s in range(0, len(users), block)]) if len(users) else \
            self.entity_emb.new_zeros((0, len(items)))

    def _score_block(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits ``[U, I]``: ``R h`` once per user memory, attention per (user, item)."""
        v = self.entity_emb[items].unsqueeze(0).expand(len(users), -1, -1)  # [U, I, d]
        u = torch.zeros_like(v)
        for hop in range(self.n_hop):
            h = self.entity_emb[self.mem_heads[users, hop]]  # [U, M, d]
            r = self.relation_emb[self.mem_relations[users, hop]]
            t = self.entity_emb[self.mem_tails[users, hop]]
            rh = torch.einsum("umij,umj->umi", r, h)
            p = torch.softmax(torch.einsum("umd,uid->uim", rh, v), dim=-1)  # [U, I, M]
            o = torch.einsum("uim,umd->uid", p, t)
            u = u + o
            v = self._update(v, o)
        u = u * self.has_memory[users].view(-1, 1, 1)
        return (u * v).sum(-1)

    def parameter_groups(self, l2_weight: float) -> list[dict]:
        """One group; ``lambda1`` as Adam's coupled weight decay (see KGNNLSNet)."""
        return [{"params": [self.entity_emb, self.relation_emb, self.transform],
                 "weight_decay": l2_weight}]

    def ranking_chunk(self, n_items: int, budget_bytes: int = MEMORY_BUDGET) -> int:
        return rows_per_chunk(4 * n_items * (2 * self.n_memory + 4 * self.config.dim),
                              budget_bytes)


#: The leaderboard's search space (``kgnnls benchmark``), by Config field (``extra.NAME``:
#: a model setting).
SEARCH_SPACES: dict[str, Space] = {
    "ripplenet": {"dim": Choice((8, 16, 32)), "lr": Float(1e-3, 2e-2, log=True),
                  "l2_weight": Float(1e-7, 1e-4, log=True), "extra.n_hop": Int(1, 3),
                  "extra.kge_weight": Float(1e-3, 0.1, log=True)},
}


__all__ = ["SEARCH_SPACES", "RippleNet", "ripple_sets"]
