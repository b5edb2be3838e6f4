"""LibFM and LibFM + TransE baselines: second-order factorization machines.

A factorization machine (Rendle, ICDM 2010) over a feature vector ``x`` scores

    logit(x) = w0 + sum_j w_j x_j + sum_{j<k} <v_j, v_k> x_j x_k .

``LibFM`` (paper Sec. 5.2: "we concatenate user ID and item ID as input")
has two one-hot fields, so its logit is ``w0 + w_u + w_i + <v_u, v_i>``; the
paper's dimension ``{1, 1, 8}`` is libFM's ``-dim`` (global bias, linear
terms, 8 factors). ``LibFMTransE`` appends to each pair a dense block, the
item entity's frozen TransE embedding ``e_i`` (dimension 32 in the paper),
with its own linear weights ``w_e`` and factor matrix ``V_e`` (``[32, k]``):

    logit = w0 + w_u + w_i + w_e . e_i
            + <v_u, v_i> + <v_u + v_i, V_e^T e_i>
            + 1/2 (||V_e^T e_i||^2 - sum_j e_ij^2 ||V_e[j]||^2) .

Every pairwise term except ``<v_u, .>`` depends on the item alone, so a
pair's logit is ``w0 + w_u + c_i + <v_u, a_i>`` with ``a_i = v_i + V_e^T
e_i`` and an item constant ``c_i``; ranking is one matrix product. The
models are trained with BCE by the shared loop (libFM itself would use
SGD/ALS/MCMC; here it is Adam like every other model). Settings read from
``config.extra``: ``init_std`` (0.1), ``bias_l2`` (weight decay of the
linear weights ``w_u``, ``w_i``, ``w_e``; default ``config.l2_weight``),
``feature_l2`` (weight decay of ``V_e``; default ``config.l2_weight``),
``feature_scale`` (the TransE rows, unit-norm, are multiplied by it; 1.0),
and for TransE ``transe_dim`` (32),
``transe_epochs`` (50), ``transe_lr`` (0.01), ``transe_margin`` (1.0),
``transe_batch_size`` (1024), ``transe_norm`` (1: L1 energy, as Bordes et
al. used on FB15k).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kgnnls.baselines.mf import bce_loss, ranking_chunk_for
from kgnnls.baselines.transe import train_transe
from kgnnls.config import Config
from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import Split
from kgnnls.seeding import torch_generator
from kgnnls.space import Choice, Float, Space


class LibFM(nn.Module):
    """Second-order FM over one-hot user and item ids, plus optional dense item features.

    ``item_features`` (``[n_items, f]``, a buffer, never trained) is empty for
    plain LibFM; :class:`LibFMTransE` fills it with TransE embeddings.
    """

    #: plain LibFM leaves the dense-feature tables unused (LibFMTransE fills them)
    uses_every_parameter = False

    def __init__(self, config: Config, n_users: int, n_items: int,
                 item_features: Tensor | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        k, std = config.dim, float(config.extra.get("init_std", 0.1))
        if item_features is None:
            item_features = torch.zeros(n_items, 0)
        item_features = torch.as_tensor(item_features, dtype=torch.float32)
        if item_features.shape[0] != n_items:
            raise ValueError(f"item_features has {item_features.shape[0]} rows for "
                             f"{n_items} items")
        n_feat = item_features.shape[1]
        self.register_buffer("item_features", item_features.clone())
        self.global_bias = nn.Parameter(torch.zeros(1))
        self.user_bias = nn.Parameter(torch.zeros(n_users))
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.user_factors = nn.Parameter(torch.empty(n_users, k))
        self.item_factors = nn.Parameter(torch.empty(n_items, k))
        self.feature_weights = nn.Parameter(torch.zeros(n_feat))
        self.feature_factors = nn.Parameter(torch.empty(n_feat, k))
        for table in (self.user_factors, self.item_factors, self.feature_factors):
            nn.init.normal_(table, std=std, generator=generator)

    @classmethod
    def from_data(cls, dataset: Dataset, split: Split, config: Config) -> LibFM:
        """Sizes from ``dataset``; init from ``config.seed`` (the KG is not used)."""
        return cls(config, dataset.n_users, dataset.n_items,
                   generator=torch_generator(config.seed, "init"))

    def checkpoint_meta(self) -> dict:
        return {"n_users": self.user_bias.shape[0], "n_items": self.item_bias.shape[0],
                "n_features": self.item_features.shape[1]}

    @classmethod
    def from_checkpoint(cls, config: Config, meta: dict, state: dict[str, Tensor]) -> LibFM:
        features = state.get("item_features", torch.zeros(meta["n_items"], 0))
        net = cls(config, meta["n_users"], meta["n_items"], item_features=features)
        net.load_state_dict(state)
        return net

    # ------------------------------------------------------------------ scores
    def _item_side(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """``a_i`` (``[n, k]``) and the item constant ``c_i`` (``[n]``) of ``items``."""
        v = self.item_factors[items]
        const = self.item_bias[items]
        if self.item_features.shape[1] == 0:
            return v, const
        x = self.item_features[items]  # [n, f]
        dense = x @ self.feature_factors  # sum_j x_j V_e[j], [n, k]
        own = (x * x) @ (self.feature_factors * self.feature_factors).sum(1)  # [n]
        const = (const + x @ self.feature_weights + (v * dense).sum(-1)
                 + 0.5 * ((dense * dense).sum(-1) - own))
        return v + dense, const

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        a, const = self._item_side(items)
        return (self.global_bias + self.user_bias[users] + const
                + (self.user_factors[users] * a).sum(-1))

    def loss(self, users: Tensor, items: Tensor, labels: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """BCE of the FM logit (the L2 term is Adam's weight decay)."""
        return bce_loss(self.forward(users, items), labels)

    def parameter_groups(self, l2_weight: float) -> list[dict]:
        """L2 as coupled weight decay: ``l2_weight`` on ``v_u`` and ``v_i``,
        ``extra.feature_l2`` on ``V_e``, ``extra.bias_l2`` on the linear weights
        (both default ``l2_weight``), none on ``w0``."""
        extra = self.config.extra
        linear = [self.user_bias, self.item_bias]
        groups = [{"params": [self.user_factors, self.item_factors], "weight_decay": l2_weight}]
        if self.item_features.shape[1]:
            linear.append(self.feature_weights)
            groups.append({"params": [self.feature_factors],
                           "weight_decay": float(extra.get("feature_l2", l2_weight))})
        return [*groups,
                {"params": linear, "weight_decay": float(extra.get("bias_l2", l2_weight))},
                {"params": [self.global_bias], "weight_decay": 0.0}]

    @torch.no_grad()
    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        return self.forward(users, items)

    @torch.no_grad()
    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits ``[len(users), len(items)]``: one product plus user and item constants."""
        a, const = self._item_side(items)
        logits = self.user_factors[users] @ a.T
        logits += (self.global_bias + self.user_bias[users]).unsqueeze(1)
        logits += const.unsqueeze(0)
        return logits

    def ranking_chunk(self, n_items: int) -> int:
        return ranking_chunk_for(n_items)


class LibFMTransE(LibFM):
    """LibFM with each item's TransE entity embedding as extra dense features."""

    #: the loss reaches every parameter in every step (DDP need not search for unused ones)
    uses_every_parameter = True

    @classmethod
    def from_data(cls, dataset: Dataset, split: Split, config: Config) -> LibFMTransE:
        """Train TransE on ``dataset.kg`` (seeded), then build the FM on its frozen item rows.

        Item ``i`` is KG entity ``i`` (items come first among the entities).
        """
        extra = config.extra
        transe, _ = train_transe(
            dataset.kg, dataset.n_entities, dataset.n_relations, config.seed,
            dim=int(extra.get("transe_dim", 32)), epochs=int(extra.get("transe_epochs", 50)),
            lr=float(extra.get("transe_lr", 0.01)),
            margin=float(extra.get("transe_margin", 1.0)),
            batch_size=int(extra.get("transe_batch_size", 1024)),
            norm=int(extra.get("transe_norm", 1)))
        features = transe.entity_emb.detach()[:dataset.n_items] * float(
            extra.get("feature_scale", 1.0))
        return cls(config, dataset.n_users, dataset.n_items, item_features=features,
                   generator=torch_generator(config.seed, "init"))


_FM_SPACE: Space = {"dim": Choice((4, 8, 16, 32)), "lr": Float(1e-3, 3e-2, log=True),
                    "l2_weight": Float(1e-6, 1e-3, log=True),
                    "extra.bias_l2": Float(1e-5, 1e-2, log=True)}
#: The leaderboard's search space (``kgnnls benchmark``), by Config field (``extra.NAME``:
#: a model setting).
SEARCH_SPACES: dict[str, Space] = {
    "libfm": _FM_SPACE,
    "libfm-transe": {**_FM_SPACE, "extra.feature_scale": Float(0.1, 1.0, log=True)},
}


__all__ = ["SEARCH_SPACES", "LibFM", "LibFMTransE"]
