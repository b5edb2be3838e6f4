"""Explanations and cold-start scoring."""

from __future__ import annotations

import collections
import json

import pytest
import torch

from kgnnls import KGNNLS, Config
from kgnnls.cli import main
from kgnnls.data.synthetic import planted_dataset

FIT = dict(dim=8, n_neighbors=4, lr=0.02, batch_size=32, epochs=15, patience=15, l2_weight=1e-5)


@pytest.fixture(scope="module")
def noisy_model():
    # every item: one planted 'genre' link and ~4 random 'noise' links
    ds = planted_dataset(seed=0, noise_triples=320, n_noise_entities=40)
    return KGNNLS(Config(seed=0, **FIT)).fit(ds)


def test_planted_relation_comes_out_on_top(noisy_model):
    m = noisy_model
    tops = collections.Counter(m.explain(u, "i0").relations[0]["relation"] for u in m.user_ids)
    assert tops.most_common(1)[0][0] == "genre"
    with torch.no_grad():
        net = m.network
        mean_weight = torch.softmax(net.relation_scores(net.user_emb), -1).mean(0)
    assert int(mean_weight.argmax()) == list(m.relation_names).index("genre")


def test_explanation_parts_are_consistent(noisy_model):
    m = noisy_model
    user = "u3"
    for item in m.item_ids[:20]:
        e = m.explain(user, item)
        assert e.probability == pytest.approx(float(m.score([user], [item])[0]), abs=1e-6)
        assert sum(r["weight"] for r in e.relations) <= 1 + 1e-6
        shares = [n["share"] for n in e.neighbours]
        assert all(0 <= s <= 1 for s in shares) and shares == sorted(shares, reverse=True)
        for ev in e.evidence:  # evidence is the user's own training labels, never the item's
            assert ev["item"] != item and ev["label"] in (0, 1)
    full = m.explain(user, "i1", top=3).to_dict()
    assert len(full["relations"]) == 3 and full["label_propagation"]["hops"] == 2


def test_label_evidence_accounts_for_the_propagated_label(noisy_model):
    # propagation is linear in the labels and its weights sum to 1, so the
    # propagated label is 0.5 + sum(influence * (label - 0.5)) over the evidence
    m = noisy_model
    hits = [m.explain(u, i) for u in m.user_ids[:15] for i in m.item_ids[:15]]
    assert any(e.evidence for e in hits)  # the planted genre entities link items
    for e in hits:
        assert len(e.evidence) < 10  # not truncated here
        implied = 0.5 + sum(ev["influence"] * (ev["label"] - 0.5) for ev in e.evidence)
        assert e.predicted_label == pytest.approx(implied, abs=1e-5)


def test_new_item_scored_from_its_kg_entity(noisy_model, tmp_path, capsys):
    m = noisy_model
    genre = "e80"  # the first genre entity: linked to items, never an item itself
    recs = m.recommend("u1", k=3, candidates=["i0", "i1"], new_items={"fresh": genre})
    assert {i for i, _ in recs} == {"i0", "i1", "fresh"}
    e = m.explain("u1", entity=genre)
    assert e.new_item and e.neighbours
    run = tmp_path / "run"
    m.save(run / "model.pt")
    cands = tmp_path / "cands.tsv"
    cands.write_text("# candidates\ni0\nfresh\te80\n")
    assert main(["recommend", str(run), "--user", "u1", "--candidates", str(cands), "--json"]) == 0
    assert {r["item"] for r in json.loads(capsys.readouterr().out)} == {"i0", "fresh"}
    cands.write_text("i0\nunknown-item\n")
    assert main(["recommend", str(run), "--user", "u1", "--candidates", str(cands)]) == 2
    assert "cands.tsv:2: unknown item 'unknown-item'" in capsys.readouterr().err
    assert main(["explain", str(run), "--user", "u1", "--item", "i2"]) == 0
    assert "relations that matter to user u1" in capsys.readouterr().out
