"""CKE (Zhang et al., KDD 2016): collaborative filtering plus structural KB embedding.

As in the KGNN-LS paper (Sec. 5.2), CKE is "CF plus a structural knowledge
module" (no textual or visual part). Item ``i`` is KG entity ``i``; its
vector is its CF offset plus its structural embedding::

    logit(u, i) = u . (eta_i + e_i)

The structural module is TransR (Lin et al., 2015) on the directed KG
triples ``(h, r, t)``: entities are projected into relation space by a
``d x d`` matrix ``M_r`` and scored by the distance
``f(h, r, t) = || h M_r + r - t M_r ||^2``. Each training step draws a batch of
triples (``extra.kg_batch_size``, default the CTR batch size) from a seeded
stream, corrupts each tail with a uniformly drawn entity and adds CKE's
pairwise ranking loss ``-log sigmoid(f(h, r, t') - f(h, r, t))`` (Bayesian
TransR, CKE Eq. 3) to the CTR loss::

    loss = BCE(y, logit) + kg_weight * mean(-log sigmoid(f_neg - f_pos)) + L2

``kg_weight`` (``extra.kg_weight``) is 0.1, as the KGNN-LS paper; the L2
term is ``config.l2_weight`` as Adam weight decay on every table. CKE's norm
constraints on TransR embeddings are not enforced (the L2 term bounds them).
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
from kgnnls.seeding import torch_generator
from kgnnls.space import Choice, Float, Space


def _restore_kg_stream(module: CKE, _incompatible_keys) -> None:
    module._kg_stream.set_state(module.kg_stream_state)


class CKE(nn.Module):
    """MF whose item vectors add a TransR entity embedding, trained jointly with TransR."""

    #: the loss reaches every parameter in every step (DDP need not search for unused ones)
    uses_every_parameter = True

    def __init__(self, config: Config, n_users: int, n_items: int, n_entities: int,
                 n_relations: int, triples: np.ndarray | Tensor,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.kg_weight = float(config.extra.get("kg_weight", 0.1))
        self.kg_batch_size = int(config.extra.get("kg_batch_size", config.batch_size))
        d = config.dim
        self.user_emb = nn.Parameter(torch.empty(n_users, d))
        self.item_emb = nn.Parameter(torch.empty(n_items, d))
        self.entity_emb = nn.Parameter(torch.empty(n_entities, d))
        self.relation_emb = nn.Parameter(torch.empty(max(n_relations, 1), d))
        self.projection = nn.Parameter(torch.empty(max(n_relations, 1), d, d))
        for p in (self.user_emb, self.item_emb, self.entity_emb, self.relation_emb):
            nn.init.xavier_uniform_(p, generator=generator)
        with torch.no_grad():  # TransR starts from identity projections (Lin et al.)
            self.projection.copy_(torch.eye(d).expand_as(self.projection))
        self.register_buffer("triples", torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3))
        self._kg_stream = torch_generator(config.seed, "cke-kg-batches")
        # the stream's state travels with the weights, so a resumed run draws
        # the same KG batches as an uninterrupted one
        self.register_buffer("kg_stream_state", self._kg_stream.get_state())
        self.register_load_state_dict_post_hook(_restore_kg_stream)

    @classmethod
    def from_data(cls, dataset: Dataset, split: Split, config: Config) -> CKE:
        return cls(config, dataset.n_users, dataset.n_items, dataset.n_entities,
                   dataset.n_relations, dataset.kg, generator=torch_generator(config.seed, "init"))

    def checkpoint_meta(self) -> dict:
        return {"n_users": self.user_emb.shape[0], "n_items": self.item_emb.shape[0],
                "n_entities": self.entity_emb.shape[0], "n_relations": self.relation_emb.shape[0]}

    @classmethod
    def from_checkpoint(cls, config: Config, meta: dict, state: dict[str, Tensor]) -> CKE:
        net = cls(config, meta["n_users"], meta["n_items"], meta["n_entities"],
                  meta["n_relations"], state["triples"])
        net.load_state_dict(state)
        return net

    # ------------------------------------------------------------------ parts
    def item_vectors(self, items: Tensor) -> Tensor:
        return self.item_emb[items] + self.entity_emb[items]

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.user_emb[users] * self.item_vectors(items)).sum(-1)

    def transr_distance(self, heads: Tensor, rels: Tensor, tails: Tensor) -> Tensor:
        """``|| h M_r + r - t M_r ||^2`` per triple, computed as ``|| (h - t) M_r + r ||^2``
        with the triples sorted by relation: one ``[n_r, d] x [d, d]`` product per
        relation present. Gathering each triple's ``M_r`` (``[B, d, d]``) cost most of
        an epoch (docs/performance.md)."""
        diff = self.entity_emb[heads] - self.entity_emb[tails]
        order = torch.argsort(rels, stable=True)
        counts = torch.bincount(rels, minlength=self.projection.shape[0]).tolist()
        by_relation = torch.cat([part @ self.projection[r] for r, part in
                                 enumerate(torch.split(diff[order], counts)) if counts[r]])
        projected = torch.empty_like(diff).index_copy(0, order, by_relation)  # triple order
        return (projected + self.relation_emb[rels]).pow(2).sum(-1)

    def kg_loss(self) -> Tensor:
        n = len(self.triples)
        if n == 0 or self.kg_weight == 0:
            return self.user_emb.new_zeros(())
        pick = torch.randint(0, n, (self.kg_batch_size,), generator=self._kg_stream)
        h, r, t = self.triples[pick].unbind(-1)
        corrupt = torch.randint(0, self.entity_emb.shape[0], (self.kg_batch_size,),
                                generator=self._kg_stream)
        self.kg_stream_state.copy_(self._kg_stream.get_state())
        pos, neg = self.transr_distance(h.repeat(2), r.repeat(2), torch.cat([t, corrupt])).chunk(2)
        return F.softplus(pos - neg).mean()  # -log sigmoid(f_neg - f_pos)

    def loss(self, users: Tensor, items: Tensor, labels: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        bce = F.binary_cross_entropy_with_logits(self.forward(users, items), labels)
        kg = self.kg_loss()
        return bce + self.kg_weight * kg, {"bce": bce.detach(), "kg": kg.detach()}

    @torch.no_grad()
    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        return self.forward(users, items)

    @torch.no_grad()
    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        return self.user_emb[users] @ self.item_vectors(items).T

    def parameter_groups(self, l2_weight: float) -> list[dict]:
        return [{"params": list(self.parameters()), "weight_decay": l2_weight}]

    def ranking_chunk(self, n_items: int, budget_bytes: int = MEMORY_BUDGET) -> int:
        return rows_per_chunk(8 * n_items, budget_bytes)


#: The leaderboard's search space (``kgnnls benchmark``), by Config field (``extra.NAME``:
#: a model setting).
SEARCH_SPACES: dict[str, Space] = {
    "cke": {"dim": Choice((16, 32, 64)), "lr": Float(1e-3, 1e-2, log=True),
            "l2_weight": Float(1e-6, 1e-3, log=True),
            "extra.kg_weight": Float(0.01, 1.0, log=True)},
}


__all__ = ["CKE", "SEARCH_SPACES"]
