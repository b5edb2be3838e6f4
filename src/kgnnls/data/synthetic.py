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

from kgnnls.arrays import csr_indptr
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
    start = csr_indptr(kg[:, 1], ds.n_relations)[rel]
    tails = by_rel[start + (r.random(n_new) * per_rel[rel]).astype(np.int64), 2]
    tails[fresh] = ds.n_entities + np.arange(int(fresh.sum()))
    new_ids = np.array([f"synthetic:{i}" for i in range(int(fresh.sum()))], dtype=str)
    return replace(ds, kg=np.concatenate([kg, np.column_stack([drawn[:, 0], rel, tails])]),
                   entity_ids=np.concatenate([ds.entity_ids.astype(str), new_ids]),
                   name=f"{ds.name}-kg-x{factor}")


# ------------------------------------------------------------ shaped like a paper dataset
#: The paper's Table 2 rows; "interactions" are labelled rows (half positives,
#: half sampled negatives).
SHAPES: dict[str, dict[str, int]] = {
    "movielens-20m": dict(users=138_159, items=16_954, interactions=13_501_622,
                          entities=102_569, relations=32, triples=499_474),
}


def shape_at(name: str, scale: float = 1.0) -> dict[str, int]:
    """The counts :func:`synthetic_like` produces for ``name`` at ``scale``.

    Users, items, entities and triples are ``round(count * scale)``; the
    labelled rows are ``2 * round(positives * scale)`` (one sampled negative
    per positive); relations do not scale.
    """
    from kgnnls.data.registry import find_spec

    spec = find_spec(name)
    key = spec.name if spec is not None else name
    if key not in SHAPES:
        raise ValueError(f"no Table 2 shape for {name!r}; known: {', '.join(SHAPES)}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    base = SHAPES[key]
    out = {k: round(v * scale) for k, v in base.items() if k != "relations"}
    out["interactions"] = 2 * round(base["interactions"] // 2 * scale)
    out["relations"] = base["relations"]
    out["name"] = key
    return out


def synthetic_like(name: str = "movielens-20m", scale: float = 1.0, seed: int = 0,
                   affinity: float = 0.8) -> Dataset:
    """A dataset of exactly the Table 2 shape of ``name`` (times ``scale``).

    Planted signal: every item links to one "genre" entity (relation 0); each
    user prefers one genre and draws ``affinity`` of its positives (up to 60 %
    of the genre) from it, the rest uniformly; negatives are drawn uniformly
    from the items the user did not touch (:func:`sample_negatives`). The
    other relations link items to attribute entities (each attribute belongs
    to one relation, popularity Zipf-like): realistic fan-out, no signal.
    Positives per user are log-normal (at least 1, at most 45 % of the items).
    Everything is vectorized; the counts of :func:`shape_at` are exact.
    """
    shape = shape_at(name, scale)
    n_users, n_items, n_ent = shape["users"], shape["items"], shape["entities"]
    n_rel, n_triples, n_pos = shape["relations"], shape["triples"], shape["interactions"] // 2
    n_genres = int(np.clip(n_items // 40, 2, 16))
    n_attr = n_ent - n_items - n_genres
    cap = int(0.45 * n_items)
    if n_attr < n_rel - 1 or n_triples < n_items + n_attr or n_pos > n_users * cap \
            or n_pos < n_users:
        raise ValueError(f"scale {scale} is too small for the shape of {shape['name']}: "
                         f"{n_users} users x {n_items} items cannot hold {n_pos} positives "
                         "plus as many negatives, or the KG is too small")
    r = make_rng(seed, f"synthetic-like:{shape['name']}")

    # ---- positives per user: 1 + a log-normal share of the rest, capped, sums to n_pos
    w = r.lognormal(0.0, 1.0, n_users)
    extra = np.minimum(np.floor(w / w.sum() * (n_pos - n_users)).astype(np.int64), cap - 1)
    while (left := n_pos - n_users - int(extra.sum())) > 0:  # rounds, not users
        room = np.flatnonzero(extra < cap - 1)
        pick = room[np.argsort(-w[room], kind="stable")[:left]]
        extra[pick] += 1
    counts = 1 + extra

    # ---- items: genres of equal size (+-1), laid out genre by genre
    genre_of_item = r.permutation(np.arange(n_items) % n_genres)
    by_genre = np.argsort(genre_of_item, kind="stable")  # items of genre g: a block
    g_start = csr_indptr(genre_of_item, n_genres)
    g_size = int(np.diff(g_start).min())
    favourite = r.integers(0, n_genres, n_users)
    k_fav = np.minimum(np.round(affinity * counts).astype(np.int64), int(0.6 * g_size))
    local = _draw_distinct(k_fav, np.zeros(0, np.int64), g_size, r)  # distinct per user
    fav_items = by_genre[g_start[favourite[local[:, 0]]] + local[:, 1]]
    fav_keys = np.sort(local[:, 0] * np.int64(n_items) + fav_items)
    other = _draw_distinct(counts - k_fav, fav_keys, n_items, r)
    keys = np.sort(np.concatenate([fav_keys, other[:, 0] * np.int64(n_items) + other[:, 1]]))
    pos = np.column_stack([keys // n_items, keys % n_items, np.ones(len(keys), np.int64)])

    # ---- KG: genre links, one link per attribute, then Zipf-popular attribute links
    genre_entity = n_items + np.arange(n_genres)
    attr = n_items + n_genres + np.arange(n_attr)
    attr_rel = 1 + r.permutation(np.arange(n_attr) % (n_rel - 1))  # every relation used
    n_more = n_triples - n_items - n_attr
    popular = attr[np.minimum((n_attr * r.random(n_more) ** 3).astype(np.int64), n_attr - 1)]
    heads = r.integers(0, n_items, n_attr + n_more)
    tails = np.concatenate([attr, popular])
    kg = np.concatenate([
        np.column_stack([np.arange(n_items), np.zeros(n_items, np.int64),
                         genre_entity[genre_of_item]]),
        np.column_stack([heads, attr_rel[tails - n_items - n_genres], tails]),
    ])
    rel_names = ["genre"] + [f"attribute.{i}" for i in range(1, n_rel)]
    ds = Dataset(name=f"synthetic-{shape['name']}-x{scale:g}",
                 user_ids=np.arange(n_users).astype(str), item_ids=np.arange(n_items).astype(str),
                 entity_ids=np.arange(n_ent).astype(str), relation_names=np.array(rel_names),
                 ratings=pos, kg=kg, source="synthetic", negatives="none")
    ds.validate()
    neg = _draw_distinct(counts, keys, n_items, make_rng(seed, "negatives"))
    rows = np.concatenate([pos, np.column_stack([neg, np.zeros(len(neg), np.int64)])])
    return ds.with_ratings(rows, negatives=f"sampled 1:1 (seed {seed})")


def _draw_distinct(need: np.ndarray, forbidden: np.ndarray, n_items: int,
                   r: np.random.Generator) -> np.ndarray:
    """``need[u]`` distinct items per user, uniformly outside sorted ``forbidden`` keys.

    The distribution of :func:`kgnnls.data.sampling.draw_negatives` (a uniform
    subset of the allowed items), but sort-based and oversampled for the
    collisions, so that even users who need most of their allowed items finish
    in a few rounds. Returns ``(user, item)`` rows sorted by user, then item.
    """
    n = np.int64(n_items)
    need = np.asarray(need, dtype=np.int64)
    allowed = n_items - np.bincount(forbidden // n, minlength=len(need))[:len(need)]
    if (need > allowed).any():
        raise ValueError("a user needs more distinct items than it is allowed")
    chosen = np.zeros(0, np.int64)
    remaining = need.copy()
    while remaining.sum() > 0:
        users = np.flatnonzero(remaining)
        free = allowed[users] - (need[users] - remaining[users])
        frac = np.minimum(remaining[users] / free, 0.99)
        # expected uniform draws for that many distinct hits, over the allowed share
        draws = np.ceil(-np.log1p(-frac) * free * 1.15 * n_items / allowed[users]) + 16
        cand = np.repeat(users, draws.astype(np.int64)) * n
        cand += r.integers(0, n_items, len(cand))
        cand.sort()
        cand = cand[np.concatenate([[True], cand[1:] != cand[:-1]])]
        cand = cand[~_in_sorted(forbidden, cand) & ~_in_sorted(chosen, cand)]
        owner = cand // n
        order = np.lexsort((r.random(len(cand)), owner))  # random order within a user
        cand, owner = cand[order], owner[order]
        rank = np.arange(len(cand)) - np.searchsorted(owner, owner, side="left")
        take = rank < remaining[owner]
        remaining -= np.bincount(owner[take], minlength=len(need))
        chosen = np.sort(np.concatenate([chosen, cand[take]]))
    return np.column_stack([chosen // n, chosen % n])


def _in_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _write_ints(path, rows: np.ndarray, chunk: int = 1 << 20) -> None:
    """Tab-separated integer rows, written in chunks (no per-row Python loop)."""
    fmt = "\t".join(["%d"] * rows.shape[1]) + "\n"
    with open(path, "w") as f:
        for s in range(0, len(rows), chunk):
            part = rows[s:s + chunk]
            f.write((fmt * len(part)) % tuple(part.ravel().tolist()))


def write_final(ds: Dataset, path) -> dict[str, str]:
    """Write ``ds`` in the RippleNet "final" layout that ``load_dataset(path)`` reads.

    ``ratings_final.txt`` (user item label, users in index order),
    ``kg_final.txt`` (head relation tail) and ``item_index2entity_id.txt``
    (item i -> entity i, so every item counts even without a row). Files are
    written to temporary names and renamed into place.
    """
    import os
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    order = np.lexsort((ds.ratings[:, 1], ds.ratings[:, 0]))  # user 0 first: ids kept
    files = {"ratings_final.txt": ds.ratings[order], "kg_final.txt": ds.kg,
             "item_index2entity_id.txt": np.column_stack([np.arange(ds.n_items)] * 2)}
    for fname, rows in files.items():
        tmp = path / f".{fname}.tmp"
        _write_ints(tmp, rows)
        os.replace(tmp, path / fname)
    return {k: str(path / k) for k in files}
