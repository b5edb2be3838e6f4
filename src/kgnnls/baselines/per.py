"""PER (Yu et al., WSDM 2014): meta-path-based latent features, personalized mixture.

PER treats the KG as a heterogeneous information network and diffuses each
user's implicit feedback along meta-paths ``user - item - attribute - item``.
For meta-path ``q`` with item-attribute incidence ``A_q`` (``I x T_q``), the
item-item similarity is the attributes two items share, each weighted by one
over its item degree (resource-allocation weighting, so that a genre shared by
a thousand artists says less than a shared record label)::

    S_q = A_q diag(1 / deg_q) A_q^T
    x_q(u, i) = sum_{j in pos(u), j != i} S_q[j, i] / |pos(u)|     (R_norm S_q)

``pos(u)`` are the user's *training* positives. The ``j != i`` exclusion makes
the features of a training positive leave-one-out, so that training rows look
like the held-out rows the model is evaluated on (whose items are never in
``pos(u)``). All products are scipy.sparse, factored as
``(R_norm A_q W^1/2)[u] . (A_q W^1/2)[i]`` so neither ``S_q`` nor a dense
``U x I`` matrix is ever stored.

Meta-paths used (the KGNN-LS paper names hand-picked attributes, e.g.
"user-musician-genre-musician" for Last.FM, but the released KGs have
anonymised or sparse relations, so a fixed rule is used instead):

* one path per KG relation that links items to attributes (triples whose
  head or tail is an item), keeping the ``extra.n_paths`` (default 10)
  relations with the most item-attribute links among attributes shared by at
  least two items (others create no item-item path);
* plus the collaborative path ``user - item - user - item`` (attributes =
  users who liked the item; ``extra.cf_path``, default on), also
  leave-one-out (the user's own row is excluded).

Model: PER's second stage learns one weight per meta-path, personalised by
user clusters. Here the clusters are soft and low-rank: the weight of path
``q`` for user ``u`` is ``w_q + p_u . m_q`` (``p_u``, ``m_q`` of size
``config.dim``), and::

    logit(u, i) = b + sum_q (w_q + p_u . m_q) * log(1 + x_q(u, i) / s_q)

with ``s_q`` the mean non-zero training feature of path ``q``. It is trained
with BCE by the shared loop (L2 as Adam weight decay). PER's per-path NMF of
the diffused matrices is not reproduced (the logistic mixture over the
diffused scores replaces it).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kgnnls.budget import MEMORY_BUDGET, rows_per_chunk
from kgnnls.config import Config
from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import Split
from kgnnls.seeding import torch_generator
from kgnnls.space import Choice, Float, Space


def item_attribute_links(kg: np.ndarray, n_items: int) -> np.ndarray:
    """``(relation, item, attribute)`` for every triple with an item on one side."""
    kg = np.asarray(kg, np.int64).reshape(-1, 3)
    head_item = kg[:, 0] < n_items
    tail_item = ~head_item & (kg[:, 2] < n_items)
    links = np.concatenate([kg[head_item][:, [1, 0, 2]], kg[tail_item][:, [1, 2, 0]]])
    return np.unique(links, axis=0)


def select_paths(links: np.ndarray, n_relations: int, n_paths: int) -> np.ndarray:
    """Relations with the most links to attributes shared by >= 2 items (at most n_paths)."""
    if len(links) == 0:
        return np.zeros(0, np.int64)
    _, inverse, counts = np.unique(links[:, [0, 2]], axis=0, return_inverse=True,
                                   return_counts=True)
    shared = counts[inverse.ravel()] >= 2
    useful = np.bincount(links[shared, 0], minlength=n_relations)
    order = np.argsort(-useful, kind="stable")
    return np.sort(order[useful[order] > 0][:n_paths])


def _ids(t: Tensor) -> np.ndarray:
    """A writable int64 copy (scipy's fancy indexing needs one)."""
    return np.array(t.numpy(), dtype=np.int64)


class PER(nn.Module):
    """Logistic mixture over leave-one-out meta-path diffusion scores."""

    #: the loss reaches every parameter in every step (DDP need not search for unused ones)
    uses_every_parameter = True

    def __init__(self, config: Config, n_users: int, n_items: int, positives: np.ndarray | Tensor,
                 path_links: np.ndarray | Tensor, n_kg_paths: int, cf_path: bool,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.n_users, self.n_items = n_users, n_items
        self.n_kg_paths, self.cf_path = int(n_kg_paths), bool(cf_path)
        n_paths = self.n_kg_paths + int(self.cf_path)
        d = config.dim
        self.bias = nn.Parameter(torch.zeros(1))
        self.path_weight = nn.Parameter(torch.zeros(n_paths))
        self.user_factors = nn.Parameter(torch.empty(n_users, d))
        self.path_factors = nn.Parameter(torch.empty(max(n_paths, 1), d))
        for p in (self.user_factors, self.path_factors):
            nn.init.xavier_uniform_(p, generator=generator)
        # the inputs the sparse matrices are rebuilt from (saved in checkpoints)
        self.register_buffer("positives",
                             torch.as_tensor(positives, dtype=torch.long).reshape(-1, 2))
        self.register_buffer("path_links",
                             torch.as_tensor(path_links, dtype=torch.long).reshape(-1, 3))
        self._build()
        self.register_buffer("scales", torch.ones(n_paths))

    # ------------------------------------------------------------------ features
    def _build(self) -> None:
        """Per path: user side ``R_norm A W^1/2``, item side ``A W^1/2`` and ``||A_i W^1/2||^2``."""
        pos = self.positives.numpy()
        U, n_items = self.n_users, self.n_items
        R = sp.csr_matrix((np.ones(len(pos)), (pos[:, 0], pos[:, 1])), shape=(U, n_items))
        R.data[:] = 1.0  # duplicates count once
        self._deg = np.asarray(R.sum(1)).ravel()
        self._r = R
        self._rn = sp.csr_matrix(sp.diags(1.0 / np.maximum(self._deg, 1)) @ R)
        links = self.path_links.numpy()
        sides = []
        for q in range(self.n_kg_paths):
            rows = links[links[:, 0] == q]
            cols, col = np.unique(rows[:, 2], return_inverse=True)
            a = sp.csr_matrix((np.ones(len(rows)), (rows[:, 1], col.ravel())),
                              shape=(n_items, len(cols)))
            sides.append(a)
        if self.cf_path:
            sides.append(sp.csr_matrix(R.T))  # attributes = users who liked the item
        self._user_side, self._item_side, self._self_sim = [], [], []
        for a in sides:
            deg = np.asarray(a.sum(0)).ravel()
            a = sp.csr_matrix(a @ sp.diags(1.0 / np.sqrt(np.maximum(deg, 1))))
            self._item_side.append(a)
            self._user_side.append(sp.csr_matrix(self._rn @ a))
            self._self_sim.append(np.asarray(a.multiply(a).sum(1)).ravel())

    def _paths(self):
        return zip(self._user_side, self._item_side, self._self_sim, strict=True)

    def _raw_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Leave-one-out diffusion scores ``[n, Q]`` of pairs."""
        r = np.asarray(self._r[users, items]).ravel()
        rn = r / np.maximum(self._deg[users], 1)
        out = np.empty((len(users), len(self._item_side)))
        for q, (us, its, ss) in enumerate(self._paths()):
            out[:, q] = np.asarray(us[users].multiply(its[items]).sum(1)).ravel() - rn * ss[items]
        if self.cf_path:  # the user's own row of the item-user-item step
            out[:, -1] -= r / np.maximum(self._deg[users], 1) * (1 - rn)
        return np.maximum(out, 0.0)

    def _raw_matrix(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Leave-one-out diffusion scores ``[Q, U, I]``."""
        r = self._r[users][:, items].toarray()
        inv = (1.0 / np.maximum(self._deg[users], 1))[:, None]
        rn = r * inv
        out = np.empty((len(self._item_side), len(users), len(items)))
        for q, (us, its, ss) in enumerate(self._paths()):
            out[q] = (us[users] @ its[items].T).toarray() - rn * ss[items][None, :]
        if self.cf_path:
            out[-1] -= r * inv * (1 - rn)
        return np.maximum(out, 0.0)

    def set_scales(self, rows: np.ndarray) -> None:
        """``s_q``: mean non-zero feature of path q over ``rows`` (training rows)."""
        x = self._raw_pairs(rows[:, 0], rows[:, 1])
        nz = (x > 0).sum(0)
        mean = np.where(nz > 0, x.sum(0) / np.maximum(nz, 1), 1.0)
        self.scales.copy_(torch.as_tensor(np.where(mean > 0, mean, 1.0), dtype=torch.float32))

    # ------------------------------------------------------------------ model
    @classmethod
    def from_data(cls, dataset: Dataset, split: Split, config: Config) -> PER:
        n_paths = int(config.extra.get("n_paths", 10))
        links = item_attribute_links(dataset.kg, dataset.n_items)
        chosen = select_paths(links, dataset.n_relations, n_paths)
        path_of = np.full(max(dataset.n_relations, 1), -1, np.int64)
        path_of[chosen] = np.arange(len(chosen))
        links = links[path_of[links[:, 0]] >= 0]
        links[:, 0] = path_of[links[:, 0]]
        pos = split.train[split.train[:, 2] == 1][:, :2]
        net = cls(config, dataset.n_users, dataset.n_items, pos, links, len(chosen),
                  bool(config.extra.get("cf_path", True)),
                  generator=torch_generator(config.seed, "init"))
        net.set_scales(split.train)
        net.path_relations = [int(r) for r in chosen]  # KG relation of each meta-path
        return net

    def checkpoint_meta(self) -> dict:
        return {"n_users": self.n_users, "n_items": self.n_items,
                "n_kg_paths": self.n_kg_paths, "cf_path": self.cf_path,
                "path_relations": list(getattr(self, "path_relations", []))}

    @classmethod
    def from_checkpoint(cls, config: Config, meta: dict, state: dict[str, Tensor]) -> PER:
        net = cls(config, meta["n_users"], meta["n_items"], state["positives"],
                  state["path_links"], meta["n_kg_paths"], meta["cf_path"])
        net.path_relations = list(meta.get("path_relations", []))
        net.load_state_dict(state)
        return net

    def _features(self, raw: np.ndarray) -> Tensor:
        x = torch.as_tensor(raw, dtype=torch.float32)
        scales = self.scales.view(-1, *([1] * (x.dim() - 1))) if x.dim() == 3 else self.scales
        return torch.log1p(x / scales)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        f = self._features(self._raw_pairs(_ids(users), _ids(items)))  # [B, Q]
        w = self.path_weight + self.user_factors[users] @ self.path_factors.T  # [B, Q]
        return self.bias + (w * f).sum(-1)

    def loss(self, users: Tensor, items: Tensor, labels: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
        bce = F.binary_cross_entropy_with_logits(self.forward(users, items), labels)
        return bce, {"bce": bce.detach()}

    @torch.no_grad()
    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        return self.forward(users, items)

    @torch.no_grad()
    def score_matrix(self, users: Tensor, items: Tensor) -> Tensor:
        f = self._features(self._raw_matrix(_ids(users), _ids(items)))  # [Q, U, I]
        w = self.path_weight + self.user_factors[users] @ self.path_factors.T  # [U, Q]
        return self.bias + torch.einsum("uq,qui->ui", w, f)

    def parameter_groups(self, l2_weight: float) -> list[dict]:
        return [{"params": [self.user_factors, self.path_factors, self.path_weight],
                 "weight_decay": l2_weight},
                {"params": [self.bias], "weight_decay": 0.0}]

    def ranking_chunk(self, n_items: int, budget_bytes: int = MEMORY_BUDGET) -> int:
        return rows_per_chunk(8 * n_items * 2 * (len(self._item_side) + 2), budget_bytes)


#: The leaderboard's search space (``kgnnls benchmark``), by Config field.
SEARCH_SPACES: dict[str, Space] = {
    "per": {"dim": Choice((8, 16, 32)), "lr": Float(1e-3, 1e-1, log=True),
            "l2_weight": Float(1e-6, 1e-3, log=True)},
}


__all__ = ["PER", "SEARCH_SPACES", "item_attribute_links", "select_paths"]
