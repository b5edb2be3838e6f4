"""Why did KGNN-LS score this item for this user? Answers from the knowledge graph.

Three views of one (user, item) score, all read off the trained network:

* **relations**: the user's relation scores ``s_u(r)``, softmaxed over all
  relations: which kinds of KG links this user's edge weights favour;
* **neighbours**: the entities in the item's receptive field ranked by their
  share of the aggregation weight (the normalized ``A_u`` coefficients,
  multiplied along the path for deeper hops), with the relation that links
  them;
* **label evidence**: the user's own training labels that label propagation
  carries to the item, each with its influence ``d l_u(v) / d y_ue`` (computed
  by autograd through Theorem 2's iteration), so a user sees which of their
  positives (or negatives) vouch for the item through the KG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from kgnnls.graph import SELF_RELATION_NAME

if TYPE_CHECKING:
    from kgnnls.scoring import Scorer


@dataclass
class Explanation:
    user: str
    item: str
    probability: float
    new_item: bool = False
    relations: list[dict[str, Any]] = field(default_factory=list)
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    label_hops: int = 0
    predicted_label: float | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    kg_neighbours: bool = True
    """False when the item has no KG edge (e.g. a RecBole item without a
    ``.link`` row): its receptive field is the item alone."""

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "item": self.item, "new_item": self.new_item,
                "probability": self.probability, "kg_neighbours": self.kg_neighbours,
                "relations": self.relations, "neighbours": self.neighbours,
                "label_propagation": {"hops": self.label_hops,
                                      "predicted_label": self.predicted_label,
                                      "evidence": self.evidence}}

    def to_text(self) -> str:
        what = f"new item (KG entity {self.item})" if self.new_item else f"item {self.item}"
        lines = [f"user {self.user}, {what}: predicted probability {self.probability:.3f}", "",
                 f"relations that matter to user {self.user} (softmax of s_u(r), top "
                 f"{len(self.relations)}):"]
        lines += [f"  {r['weight']:.3f}  {r['relation']}" for r in self.relations]
        lines += [""]
        if not self.kg_neighbours:
            lines += [f"{what} has no KG neighbours (no knowledge-graph triple links it to any "
                      "entity): its score comes from its own embedding and the user's alone", ""]
        lines += [f"most influential entities around {what} (share of the aggregation "
                  "weight):"]
        for n in self.neighbours:
            via = "(the item itself)" if n["hop"] == 0 else f"via {' / '.join(n['path'])}"
            lines.append(f"  {n['share']:.3f}  {n['entity']}  {via}")
        lines.append("")
        if self.predicted_label is None:
            lines.append("label propagation: no training labels in this model")
        elif not self.evidence:
            lines.append(f"label propagation ({self.label_hops} hops): no entity labelled for "
                         f"this user is reached; the propagated label is "
                         f"{self.predicted_label:.3f} (uninformative)")
        else:
            lines.append(f"label propagation ({self.label_hops} hops): propagated label "
                         f"{self.predicted_label:.3f} from {len(self.evidence)} of the user's "
                         "labelled items:")
            for e in self.evidence:
                kind = "positive" if e["label"] == 1 else "negative"
                lines.append(f"  {e['influence']:+.3f}  item {e['item']} ({kind}, hop "
                             f"{e['hop']}) via {' / '.join(e['path'])}")
        return "\n".join(lines)


class _Names:
    """Readable names of users, items, entities and relations."""

    def __init__(self, names: dict[str, Any], n_relations: int):
        self.users, self.items = names["user_ids"], names["item_ids"]
        self.entities = names["entity_ids"]
        self.relations = list(names["relation_names"])
        self.relations += [SELF_RELATION_NAME] * (n_relations - len(self.relations))

    def entity(self, e: int) -> str:
        return f"item {self.items[e]}" if e < len(self.items) else f"entity {self.entities[e]}"

    def path(self, entities: list, rels: list, level: int, pos: int) -> list[str]:
        """'relation -> entity' steps from the root to tree node ``pos`` at ``level``."""
        s = entities[1].shape[-1] if len(entities) > 1 else 1
        steps = []
        for h in range(level, 0, -1):
            steps.append(f"{self.relations[int(rels[h - 1][0, pos])]} -> "
                         f"{self.entity(int(entities[h][0, pos]))}")
            pos //= s
        return steps[::-1]


def explain_pair(net, user_index: int, entity_index: int, names: dict[str, Any],
                 top_relations: int = 5, top_neighbours: int = 8, top_evidence: int = 10,
                 scorer: Scorer | None = None) -> Explanation:
    """Explanation of one (user, item) score of a ``KGNNLSNet``.

    ``entity_index`` is the item's entity (item ``i`` is entity ``i``; a new
    item is any KG entity). ``names`` holds ``user_ids``, ``item_ids``,
    ``entity_ids`` and ``relation_names`` (index -> original id). ``scorer``:
    what scores the pair's probability (a :class:`kgnnls.scoring.Scorer` of
    ``net``, as the recommender passes; None: the network's tensor forward).
    """
    nm = _Names(names, net.relation_emb.shape[0])
    device = net.user_emb.device  # a network on a GPU explains there (kgnnls.device)
    users = torch.tensor([user_index], device=device)
    items = torch.tensor([entity_index], device=device)
    with torch.no_grad():
        logit = (net.score_pairs(users, items) if scorer is None
                 else scorer.score_pairs(users.cpu(), items.cpu()))
        prob = float(torch.sigmoid(logit)[0])
        scores = net.relation_scores(net.user_emb[users])[0]
        weights = torch.softmax(scores, 0)
    relations = [{"relation": nm.relations[r], "weight": float(weights[r]),
                  "score": float(scores[r])}
                 for r in torch.argsort(weights, descending=True)[:top_relations].tolist()]

    entities, rels = net.receptive_field(items, max(net.n_layers, net.label_hops))
    z, log_deg = net.edge_weights(users, entities, rels)
    neighbours = _aggregation_shares(net, entities, rels, z, log_deg, nm)[:top_neighbours]
    # an entity without triples gets only self-loops (kgnnls.graph): hop 1 is all "[self]"
    kg_neighbours = len(rels) == 0 or any(nm.relations[int(r)] != SELF_RELATION_NAME
                                          for r in rels[0][0].tolist())
    evidence, predicted = [], None
    if net.labels is not None and net.label_hops > 0:
        evidence, predicted = _label_evidence(net, users, items, entities, rels, z, log_deg, nm)
    new = entity_index >= len(nm.items)
    item_name = str(nm.entities[entity_index] if new else nm.items[entity_index])
    return Explanation(user=str(nm.users[user_index]), item=item_name, new_item=new,
                       probability=prob,
                       relations=relations, neighbours=neighbours, label_hops=net.label_hops,
                       predicted_label=predicted, evidence=evidence[:top_evidence],
                       kg_neighbours=kg_neighbours)


def _aggregation_shares(net, entities, rels, z, log_deg, nm: _Names) -> list[dict[str, Any]]:
    """Share of the item's aggregation kept by each receptive-field entity.

    Along a path the normalized coefficients multiply; an inner node keeps
    its self-loop fraction and passes the rest to its children, so the shares
    of all nodes sum to 1. Repeated slots of one entity are added up.
    """
    path_share = torch.ones(1, device=z[0].device if z else None)
    kept: dict[tuple[int, int], dict[str, Any]] = {}

    def keep(level: int, shares: torch.Tensor) -> None:
        for pos, value in enumerate(shares.tolist()):
            e = int(entities[level][0, pos])
            row = kept.setdefault((e, level), {"entity": nm.entity(e), "hop": level,
                                               "path": nm.path(entities, rels, level, pos),
                                               "share": 0.0})
            row["share"] += value

    with torch.no_grad():
        for level in range(net.n_layers):
            self_c, child_c = net.coefficients(z, level, log_deg, symmetric=True)
            child_c = child_c[0]  # [S^level, S]
            own = (torch.ones(child_c.shape[0], device=child_c.device) if self_c is None
                   else self_c[0])
            if net.config.aggregator == "neighbor":
                own = torch.zeros_like(own)
            total = own + child_c.sum(-1)
            keep(level, path_share * own / total)
            path_share = (path_share.unsqueeze(-1) * child_c / total.unsqueeze(-1)).reshape(-1)
        keep(net.n_layers, path_share)
    return sorted(kept.values(), key=lambda r: -r["share"])


def _label_evidence(net, users, items, entities, rels, z, log_deg, nm: _Names
                    ) -> tuple[list[dict[str, Any]], float]:
    """Labelled entities reached by label propagation, with d l_u(v) / d y_ue."""
    init, clamp = net.label_inputs(users, items, entities)
    leaves = [t.clone().requires_grad_(True) for t in init]
    with torch.enable_grad():
        root = net.run_label_propagation(leaves, clamp, z, log_deg)
        root.sum().backward()
    found: dict[int, dict[str, Any]] = {}
    for h in range(1, len(init)):
        for pos in torch.nonzero(clamp[h][0]).flatten().tolist():
            e = int(entities[h][0, pos])
            row = found.setdefault(e, {"item": str(nm.items[e]), "label": int(init[h][0, pos]),
                                       "hop": h, "path": nm.path(entities, rels, h, pos),
                                       "influence": 0.0})
            row["influence"] += float(leaves[h].grad[0, pos])
    ranked = sorted(found.values(), key=lambda r: -abs(r["influence"]))
    return ranked, float(root.detach()[0])
