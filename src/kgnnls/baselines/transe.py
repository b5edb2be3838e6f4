"""TransE (Bordes et al., NIPS 2013): KG embeddings with ``h + r ~ t``.

Used by the LibFM + TransE baseline (paper Sec. 5.2: TransE dimension 32)
as frozen item features. A triple's energy is ``||h + r - t||_p``; training
minimises the margin ranking loss ``mean(relu(margin + E(pos) - E(neg)))``,
where each negative replaces the head or the tail (chance 1/2 each) of its
positive by a uniformly drawn entity. As in Bordes et al., relation vectors
are L2-normalised once at init and entity vectors before every epoch.
Everything random comes from the run's seed (``kgnnls.seeding``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from kgnnls.seeding import rng, torch_generator


class TransE(nn.Module):
    """Entity and relation tables scored by ``||h + r - t||_p``."""

    def __init__(self, n_entities: int, n_relations: int, dim: int = 32, norm: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.norm = norm
        bound = 6 / math.sqrt(dim)
        self.entity_emb = nn.Parameter(torch.empty(n_entities, dim))
        self.relation_emb = nn.Parameter(torch.empty(n_relations, dim))
        for table in (self.entity_emb, self.relation_emb):
            nn.init.uniform_(table, -bound, bound, generator=generator)
        with torch.no_grad():
            self.relation_emb.div_(self.relation_emb.norm(dim=1, keepdim=True).clamp(min=1e-12))
            self.normalize_entities()

    @torch.no_grad()
    def normalize_entities(self) -> None:
        self.entity_emb.div_(self.entity_emb.norm(dim=1, keepdim=True).clamp(min=1e-12))

    def energy(self, triples: Tensor) -> Tensor:
        """``||h + r - t||_p`` of each ``[head, relation, tail]`` row (lower: more plausible)."""
        h = self.entity_emb[triples[:, 0]]
        r = self.relation_emb[triples[:, 1]]
        t = self.entity_emb[triples[:, 2]]
        return torch.linalg.vector_norm(h + r - t, ord=self.norm, dim=-1)

    def margin_loss(self, positives: Tensor, negatives: Tensor, margin: float) -> Tensor:
        return torch.relu(margin + self.energy(positives) - self.energy(negatives)).mean()


def corrupt(triples: np.ndarray, n_entities: int, generator: np.random.Generator) -> np.ndarray:
    """One negative per triple: its head or its tail (chance 1/2) replaced uniformly."""
    out = triples.copy()
    replace_tail = generator.random(len(triples)) < 0.5
    column = np.where(replace_tail, 2, 0)
    out[np.arange(len(triples)), column] = generator.integers(0, n_entities, len(triples))
    return out


def train_transe(kg: np.ndarray, n_entities: int, n_relations: int, seed: int, dim: int = 32,
                 epochs: int = 50, lr: float = 0.01, margin: float = 1.0,
                 batch_size: int = 1024, norm: int = 1) -> tuple[TransE, list[float]]:
    """Train TransE on ``kg`` (``[n, 3]`` rows ``head, relation, tail``).

    Returns the model (in eval mode, entities normalised) and the mean
    margin loss of each epoch.
    """
    model = TransE(n_entities, n_relations, dim, norm,
                   generator=torch_generator(seed, "transe-init"))
    kg = np.asarray(kg, dtype=np.int64)
    if len(kg) == 0:
        return model.eval(), []
    order, negatives = rng(seed, "transe-shuffle"), rng(seed, "transe-negatives")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        model.normalize_entities()
        perm = order.permutation(len(kg))
        pos_all = torch.from_numpy(kg[perm])
        neg_all = torch.from_numpy(corrupt(kg[perm], n_entities, negatives))
        total = 0.0
        for s in range(0, len(kg), batch_size):
            loss = model.margin_loss(pos_all[s:s + batch_size], neg_all[s:s + batch_size], margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(pos_all[s:s + batch_size])
        losses.append(total / len(kg))
    model.normalize_entities()
    return model.eval(), losses


__all__ = ["TransE", "corrupt", "train_transe"]
