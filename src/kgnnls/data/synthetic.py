"""Synthetic datasets with a planted, KG-mediated signal.

Every item is linked to one "genre" entity (relation 0); every user prefers
one genre and draws most positives from it. A model that learns which
relation matters to a user (and the genre entities' embeddings) can predict
held-out positives, including items the user never saw; popularity cannot,
because genres are equally popular. Used by the tests (a model must learn
it) and by ``kgnnls data synth`` for scale benchmarks.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import draw_negatives, sample_negatives
from kgnnls.seeding import rng as make_rng


def planted_dataset(n_users: int = 60, n_items: int = 80, n_genres: int = 4,
                    positives_per_user: int = 12, affinity: float = 0.9,
                    n_noise_entities: int = 20, n_relations: int = 3, noise_triples: int = 120,
                    seed: int = 0, name: str = "planted") -> Dataset:
    """A small dataset whose positives follow each user's favourite genre.

    ``affinity`` is the share of a user's positives drawn from the favourite
    genre; the rest are uniform. Entities: items ``0..n_items-1``, genres,
    then noise entities linked to random items by relations ``1..`` .
    """
    r = make_rng(seed, "synthetic")
    genre_of_item = np.arange(n_items) % n_genres
    r.shuffle(genre_of_item)
    genre_entity = n_items + np.arange(n_genres)
    noise_entity = n_items + n_genres + np.arange(n_noise_entities)
    favourite = r.integers(0, n_genres, n_users)

    # positives: favourite-genre items with probability `affinity`, else any item
    rows = []
    for_genre = [np.flatnonzero(genre_of_item == g) for g in range(n_genres)]
    k_fav = min(round(affinity * positives_per_user), min(len(x) for x in for_genre))
    fav_items = np.stack([r.choice(for_genre[g], k_fav, replace=False) for g in favourite])
    rows.append(np.column_stack([np.repeat(np.arange(n_users), k_fav), fav_items.ravel()]))
    n_other = positives_per_user - k_fav
    if n_other > 0:
        keys = np.unique(rows[0][:, 0] * n_items + rows[0][:, 1])
        extra = draw_negatives(np.full(n_users, n_other), keys, n_items, r)
        rows.append(extra)
    pos = np.concatenate(rows)
    ratings = np.column_stack([pos, np.ones(len(pos), np.int64)])

    kg = [np.column_stack([np.arange(n_items), np.zeros(n_items, np.int64),
                           genre_entity[genre_of_item]])]
    if n_noise_entities and noise_triples and n_relations > 1:
        kg.append(np.column_stack([r.integers(0, n_items, noise_triples),
                                   r.integers(1, n_relations, noise_triples),
                                   r.choice(noise_entity, noise_triples)]))
    kg = np.concatenate(kg)
    n_entities = n_items + n_genres + n_noise_entities
    ds = Dataset(name=name, user_ids=np.array([f"u{i}" for i in range(n_users)]),
                 item_ids=np.array([f"i{i}" for i in range(n_items)]),
                 entity_ids=np.array([f"e{i}" for i in range(n_entities)]),
                 relation_names=np.array(["genre"] + [f"noise.{i}" for i in range(1, n_relations)]),
                 ratings=ratings, kg=kg, source="synthetic", negatives="none")
    ds.validate()
    return sample_negatives(ds, seed)


def grow_kg(ds: Dataset, factor: int, seed: int = 0) -> Dataset:
    """``ds`` with its KG grown to ``factor`` times as many triples (Figure 6).

    Each added triple copies the head and relation of a uniformly drawn
    existing triple (keeping the relation distribution and the heads' degree
    distribution) and takes as tail either an existing tail of that relation,
    drawn by frequency, or a new entity, at the rate at which that relation
    introduces distinct tails in the real KG.
    """
    if factor < 1:
        raise ValueError("factor must be >= 1")
    if factor == 1:
        return ds
    r = make_rng(seed, "grow-kg")
    kg = ds.kg
    n_new = (factor - 1) * len(kg)
    drawn = kg[r.integers(0, len(kg), n_new)]
    rel = drawn[:, 1]
    per_rel = np.bincount(kg[:, 1], minlength=ds.n_relations)
    distinct = np.bincount(np.unique(kg[:, [1, 2]], axis=0)[:, 0], minlength=ds.n_relations)
    fresh = r.random(n_new) < (distinct[rel] / np.maximum(per_rel[rel], 1))
    by_rel = kg[np.argsort(kg[:, 1], kind="stable")]
    start = np.concatenate([[0], np.cumsum(per_rel)])[rel]
    tails = by_rel[start + (r.random(n_new) * per_rel[rel]).astype(np.int64), 2]
    tails[fresh] = ds.n_entities + np.arange(int(fresh.sum()))
    new_ids = np.array([f"synthetic:{i}" for i in range(int(fresh.sum()))], dtype=str)
    return replace(ds, kg=np.concatenate([kg, np.column_stack([drawn[:, 0], rel, tails])]),
                   entity_ids=np.concatenate([ds.entity_ids.astype(str), new_ids]),
                   name=f"{ds.name}-kg-x{factor}")
