"""SVD baseline: matrix factorization for implicit-feedback CTR (Koren, KDD 2008).

The logit of a (user u, item i) pair is

    logit(u, i) = b + b_u + b_i + p_u . q_i            (``extra.biased = True``)
    logit(u, i) = p_u . q_i                            (``extra.biased = False``)

trained with binary cross-entropy on the labelled rows, like every model here.
The paper's Sec. 5.2 uses "the unbiased version (y_uv = u^T v)" with ``d = 8``;
see :mod:`kgnnls.presets` for the settings used per dataset. Settings read from
``config.extra``: ``biased`` (default True), ``init_std`` (default 0.1: the
std of the normal init of ``p`` and ``q``; biases start at 0), ``bias_l2``
(weight decay of ``b_u`` and ``b_i``; default ``config.l2_weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kgnnls.budget import MEMORY_BUDGET, rows_per_chunk
from kgnnls.config import Config
from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import Split
from kgnnls.seeding import torch_generator
from kgnnls.space import Choice, Float, Space


def ranking_chunk_for(n_items: int, floats_per_item: int = 1,
                      budget_bytes: int = MEMORY_BUDGET) -> int:
    """Users per ``score_matrix`` call keeping ``[U, I]`` temporaries near the budget."""
    return rows_per_chunk(4 * max(n_items, 1) * floats_per_item, budget_bytes)


def bce_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean BCE on logits and its detached copy as the ``bce`` part."""
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    return loss, {"bce": loss.detach()}


class SVD(nn.Module):
    """Biased (or unbiased) MF scored by an inner product plus biases."""

    #: the loss reaches every parameter in every step (DDP need not search for unused ones)
    uses_every_parameter = True

    def __init__(self, config: Config, n_users: int, n_items: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.biased = bool(config.extra.get("biased", True))
        d, std = config.dim, float(config.extra.get("init_std", 0.1))
        self.user_emb = nn.Parameter(torch.empty(n_users, d))
        self.item_emb = nn.Parameter(torch.empty(n_items, d))
        for table in (self.user_emb, self.item_emb):
            nn.init.normal_(table, std=std, generator=generator)
        # the biases exist in both settings (same state dict); unbiased keeps them at 0
        self.global_bias = nn.Parameter(torch.zeros(1), requires_grad=self.biased)
        self.user_bias = nn.Parameter(torch.zeros(n_users), requires_grad=self.biased)
        self.item_bias = nn.Parameter(torch.zeros(n_items), requires_grad=self.biased)

    @classmethod
    def from_data(cls, dataset: Dataset, split: Split, config: Config) -> SVD:
        """Sizes from ``dataset``; init from ``config.seed`` (the KG is not used)."""
        return cls(config, dataset.n_users, dataset.n_items,
                   generator=torch_generator(config.seed, "init"))

    def checkpoint_meta(self) -> dict:
        return {"n_users": self.user_emb.shape[0], "n_items": self.item_emb.shape[0]}

    @classmethod
    def from_checkpoint(cls, config: Config, meta: dict, state: dict[str, Tensor]) -> SVD:
        net = cls(config, meta["n_users"], meta["n_items"])
        net.load_state_dict(state)
        return net

    # ------------------------------------------------------------------ scores
    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        logits = (self.user_emb[users] * self.item_emb[items]).sum(-1)
        if self.biased:
            logits = logits + self.global_bias + self.user_bias[users] + self.item_bias[items]
        return logits

    def loss(self, users: Tensor, items: Tensor, labels: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """BCE of the logits (the L2 term is Adam's weight decay)."""
        return bce_loss(self.forward(users, items), labels)

    def parameter_groups(self, l2_weight: float) -> list[dict]:
        """L2 as coupled weight decay: ``l2_weight`` on ``p`` and ``q``, ``extra.bias_l2``
        (default ``l2_weight``) on ``b_u`` and ``b_i``, none on ``b``."""
        groups = [{"params": [self.user_emb, self.item_emb], "weight_decay": l2_weight}]
        if self.biased:
            bias_l2 = float(self.config.extra.get("bias_l2", l2_weight))
            groups += [{"params": [self.user_bias, self.item_bias], "weight_decay": bias_l2},
                       {"params": [self.global_bias], "weight_decay": 0.0}]
        return groups

    @torch.no_grad()
    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        return self.forward(users, items)

    @torch.no_grad()
    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits ``[len(users), len(items)]``."""
        logits = self.user_emb[users] @ self.item_emb[items].T
        if self.biased:
            logits += (self.global_bias + self.user_bias[users]).unsqueeze(1)
            logits += self.item_bias[items].unsqueeze(0)
        return logits

    def ranking_chunk(self, n_items: int) -> int:
        return ranking_chunk_for(n_items)


#: The leaderboard's search space (``kgnnls benchmark``), by Config field.
SEARCH_SPACES: dict[str, Space] = {
    "svd": {"dim": Choice((8, 16, 32, 64)), "lr": Float(1e-3, 3e-2, log=True),
            "l2_weight": Float(1e-6, 1e-3, log=True)},
}


__all__ = ["SEARCH_SPACES", "SVD", "bce_loss", "ranking_chunk_for"]
