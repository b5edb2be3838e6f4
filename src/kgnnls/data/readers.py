"""Readers for the three on-disk layouts a dataset can come in.

* ``raw``: the authors' raw release (``user_artists.dat`` for Last.FM,
  ``ratings.csv`` for MovieLens, ``BX-Book-Ratings.csv`` for Book-Crossing,
  each beside ``item_index2entity_id.txt`` and a ``kg.txt`` of
  ``head<TAB>relation<TAB>tail`` strings). Preprocessing follows the paper's
  Appendix A and the authors' ``preprocess.py``.
* ``final``: ``ratings_final.txt`` (``user item label`` integers) and an integer
  ``kg.txt``/``kg_final.txt``, as published for Book-Crossing (RippleNet/MKR)
  and Dianping-Food.
* ``recbole``: RecBole atomic files ``NAME.inter``, ``NAME.kg``, ``NAME.link``.

Each reader returns a :class:`Dataset`; when the source holds no negative
rows, :func:`kgnnls.data.sampling.sample_negatives` adds them later.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kgnnls.data.dataset import Dataset
from kgnnls.data.text import Table, first_appearance_codes, read_table
from kgnnls.errors import DataError

log = logging.getLogger(__name__)

#: Rating files of the authors' raw layout: separator, header, quoting and
#: the paper's positive threshold (None: every row is a positive).
RAW_RATING_FILES: dict[str, dict] = {
    "user_artists.dat": {"sep": "\t", "cols": 3, "threshold": None, "quotes": False},
    "ratings.csv": {"sep": ",", "cols": 4, "threshold": 4.0, "quotes": False},
    "BX-Book-Ratings.csv": {"sep": ";", "cols": 3, "threshold": 0.0, "quotes": True},
}
ITEM_MAP = "item_index2entity_id.txt"
FINAL_RATINGS = "ratings_final.txt"
FINAL_KG = ("kg_final.txt", "kg.txt")


# --------------------------------------------------------------- detection
def detect_layout(path: Path) -> str:
    """Name the layout of directory ``path`` from its file names."""
    path = Path(path)
    if not path.is_dir():
        raise DataError("not a directory", path)
    names = {p.name for p in path.iterdir()}
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    if FINAL_RATINGS in names:
        return "final"
    if ITEM_MAP in names and "kg.txt" in names and names & set(RAW_RATING_FILES):
        return "raw"
    raise DataError(
        "no dataset layout recognised: expected RecBole atomic files (NAME.inter, NAME.kg, "
        f"NAME.link), or {FINAL_RATINGS} + kg.txt, or one of {sorted(RAW_RATING_FILES)} + "
        f"{ITEM_MAP} + kg.txt", path)


def read_directory(path: Path, name: str | None = None, threshold: float | None = None) -> Dataset:
    """Read a dataset directory in whichever layout it holds."""
    path = Path(path)
    layout = detect_layout(path)
    name = name or path.name
    if layout == "raw":
        return read_raw(path, name=name, threshold=threshold)
    if layout == "final":
        return read_final(path, name=name)
    return read_recbole(path, name=name, threshold=threshold)


# --------------------------------------------------------------- shared steps
def _labelled_rows(users: np.ndarray, items: np.ndarray, labels: np.ndarray, n_items: int,
                   table: Table, rows: np.ndarray) -> np.ndarray:
    """Stack ``(user, item, label)`` rows; reject a pair given conflicting labels.

    Exact duplicates are kept, as the published files have them (Book-Crossing
    repeats 153 sampled negatives) and the paper's Table 2 counts them.
    ``rows`` gives, for each entry, its row in ``table`` (for error lines).
    """
    keys = users * np.int64(n_items) + items
    order = np.argsort(keys, kind="stable")
    sk, sl = keys[order], labels[order]
    dup = np.flatnonzero(sk[1:] == sk[:-1]) + 1
    if len(dup):
        conflict = dup[sl[dup] != sl[dup - 1]]
        if len(conflict):
            r = int(rows[order[conflict[0]]])
            raise table.fail(r, "duplicate (user, item) pair with a conflicting label")
        log.info("%s: %d repeated (user, item, label) rows kept", table.path, len(dup))
    return np.stack([users, items, labels], axis=1).astype(np.int64)


def _kg_from_strings(table: Table, item_entities: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer triples with items first among entities (authors' re-indexing)."""
    heads, rels, tails = table.columns
    pairs = np.stack([heads, tails], axis=1).reshape(-1)
    codes, entities = first_appearance_codes(pairs, preset=item_entities)
    rel_codes, relations = first_appearance_codes(rels)
    kg = np.stack([codes[0::2], rel_codes, codes[1::2]], axis=1)
    return kg, entities, relations


def _check_kg_mentions_items(kg: np.ndarray, n_items: int, path: Path) -> None:
    touches = (kg[:, 0] < n_items) | (kg[:, 2] < n_items)
    if not touches.any():
        raise DataError("no KG triple mentions any item: is this the KG of this dataset?", path)
    ends = kg[:, [0, 2]].reshape(-1)
    mentioned = np.zeros(n_items, dtype=bool)
    mentioned[ends[ends < n_items]] = True
    isolated = int((~mentioned).sum())
    if isolated:
        log.warning("%s: %d items have no KG triple; they aggregate only themselves", path,
                    isolated)


def _item_map(path: Path) -> Table:
    table = read_table(path, 2)
    for c, what in ((0, "item id"), (1, "entity id")):
        _, first, counts = np.unique(table.columns[c], return_index=True, return_counts=True)
        if (counts > 1).any():
            dup_value = table.columns[c][first[counts > 1][0]]
            rows = np.flatnonzero(table.columns[c] == dup_value)
            raise table.fail(int(rows[1]), f"duplicate {what} {str(dup_value)!r}")
    return table


# --------------------------------------------------------------- raw layout
def read_raw(path: Path, name: str | None = None, threshold: float | None = None) -> Dataset:
    """Read the authors' raw layout and preprocess it as their ``preprocess.py``.

    Rows whose item is not in ``item_index2entity_id.txt`` are dropped; rows at
    or above the threshold are positives (Last.FM: every row); rows below it
    are remembered as touched so they are never sampled as negatives. Users
    are indexed in order of their first positive row, items in line order of
    the item map, entities items first then in order of first appearance in
    the KG, relations in order of first appearance.
    """
    path = Path(path)
    rating_name = next((n for n in RAW_RATING_FILES if (path / n).is_file()), None)
    if rating_name is None:
        raise DataError(f"no rating file ({', '.join(RAW_RATING_FILES)})", path)
    fmt = RAW_RATING_FILES[rating_name]
    if threshold is None:
        threshold = fmt["threshold"]

    item_map = _item_map(path / ITEM_MAP)
    item_ids, item_entities = item_map.columns
    n_items = len(item_ids)

    ratings = read_table(path / rating_name, fmt["cols"], sep=fmt["sep"], header=True,
                         strip_quotes=fmt["quotes"])
    weights = ratings.floats(2, "rating")
    sorter = np.argsort(item_ids)
    pos = np.searchsorted(item_ids, ratings.columns[1], sorter=sorter)
    pos = np.minimum(pos, n_items - 1)
    known = item_ids[sorter[pos]] == ratings.columns[1]
    items = sorter[pos]
    positive = known & (np.ones(len(weights), bool) if threshold is None else weights >= threshold)
    below = known & ~positive
    if not positive.any():
        raise DataError("no positive rating for any item of the item map", ratings.path)

    pos_rows = np.flatnonzero(positive)
    users, user_ids = first_appearance_codes(ratings.columns[0][pos_rows])
    pos_items = items[pos_rows].astype(np.int64)
    rows = _labelled_rows(users, pos_items, np.ones(len(pos_rows), np.int64), n_items, ratings,
                          pos_rows)
    # the authors keep a set of positives per user: a repeated row counts once
    _, first = np.unique(rows[:, 0] * np.int64(n_items) + rows[:, 1], return_index=True)
    rows = rows[np.sort(first)]

    # touched-but-not-positive pairs, for users that have positives
    below_rows = np.flatnonzero(below)
    excluded = np.zeros((0, 2), dtype=np.int64)
    if len(below_rows):
        uid_sorter = np.argsort(user_ids)
        b_users = ratings.columns[0][below_rows]
        p = np.minimum(np.searchsorted(user_ids, b_users, sorter=uid_sorter), len(user_ids) - 1)
        has = user_ids[uid_sorter[p]] == b_users
        excluded = np.stack([uid_sorter[p][has], items[below_rows][has]], axis=1).astype(np.int64)
        n = np.int64(n_items)
        clash = np.isin(excluded[:, 0] * n + excluded[:, 1], rows[:, 0] * n + rows[:, 1])
        if clash.any():
            r = int(below_rows[np.flatnonzero(has)[np.flatnonzero(clash)[0]]])
            raise ratings.fail(r, "duplicate (user, item) pair with a conflicting label "
                                  f"(rated both >= and < the threshold {threshold})")
        excluded = np.unique(excluded, axis=0)

    kg_table = read_table(path / "kg.txt", 3)
    kg, entities, relations = _kg_from_strings(kg_table, item_entities)
    _check_kg_mentions_items(kg, n_items, kg_table.path)
    ds = Dataset(name=name or path.name, user_ids=user_ids, item_ids=item_ids, entity_ids=entities,
                 relation_names=relations, ratings=rows, kg=kg, excluded=excluded,
                 source=str(path), negatives="none")
    ds.validate()
    return ds


# --------------------------------------------------------------- final layout
def read_final(path: Path, name: str | None = None) -> Dataset:
    """Read ``ratings_final.txt`` + integer KG (RippleNet/MKR, Dianping-Food).

    Item and entity ids are already indices (items first); users are
    re-indexed in order of first appearance (the identity for the published
    files). ``item_index2entity_id.txt``, when present, supplies the original
    item ids and must map item ``i`` to entity ``i``.
    """
    path = Path(path)
    table = read_table(path / FINAL_RATINGS, 3)
    users_raw = table.ints(0, "user id")
    items = table.ints(1, "item id")
    labels = table.ints(2, "label")
    for values, what in ((users_raw, "user id"), (items, "item id")):
        if (values < 0).any():
            raise table.fail(int(np.flatnonzero(values < 0)[0]), f"negative {what}")
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise table.fail(int(bad[0]), f"label must be 0 or 1, got {labels[bad[0]]}")

    kg_path = next((path / n for n in FINAL_KG if (path / n).is_file()), None)
    if kg_path is None:
        raise DataError(f"no KG file ({' or '.join(FINAL_KG)})", path)
    kg_table = read_table(kg_path, 3)
    kg = np.stack([kg_table.ints(0, "head entity"), kg_table.ints(1, "relation"),
                   kg_table.ints(2, "tail entity")], axis=1)
    if (kg < 0).any():
        raise kg_table.fail(int(np.flatnonzero((kg < 0).any(1))[0]), "negative id")

    n_items = int(items.max()) + 1
    item_ids = np.arange(n_items).astype(str)
    if (path / ITEM_MAP).is_file():
        item_map = _item_map(path / ITEM_MAP)
        entity_of_item = item_map.ints(1, "entity index")
        wrong = np.flatnonzero(entity_of_item != np.arange(len(entity_of_item)))
        if len(wrong):
            raise item_map.fail(int(wrong[0]), "in the final layout item i must be entity i "
                                               "(items first); re-index or use the raw layout")
        if len(item_map) < n_items:
            raise DataError(f"{FINAL_RATINGS} uses item {n_items - 1} but the item map lists "
                            f"only {len(item_map)} items", item_map.path)
        n_items = len(item_map)
        item_ids = item_map.columns[0]

    users, user_ids = first_appearance_codes(table.columns[0])
    rows = _labelled_rows(users, items, labels, n_items, table, np.arange(len(table)))
    n_entities = max(int(kg[:, [0, 2]].max()) + 1, n_items)
    n_relations = int(kg[:, 1].max()) + 1
    _check_kg_mentions_items(kg, n_items, kg_table.path)
    ds = Dataset(name=name or path.name, user_ids=user_ids, item_ids=item_ids,
                 entity_ids=np.arange(n_entities).astype(str),
                 relation_names=np.arange(n_relations).astype(str), ratings=rows, kg=kg,
                 source=str(path), negatives="given" if (labels == 0).any() else "none")
    ds.validate()
    return ds


# --------------------------------------------------------------- RecBole atomic
def _atomic_file(path: Path, suffix: str) -> Path:
    found = sorted(path.glob(f"*.{suffix}"))
    if not found:
        raise DataError(f"no RecBole .{suffix} file", path)
    if len(found) > 1:
        raise DataError(f"several .{suffix} files ({', '.join(p.name for p in found)}); "
                        "keep one dataset per directory", path)
    return found[0]


def _atomic_table(path: Path, required: tuple[str, ...]) -> tuple[Table, dict[str, int]]:
    with path.open("rb") as f:
        first = f.readline().decode("utf-8", errors="replace").rstrip("\r\n")
    n_cols = len(first.split("\t"))
    table = read_table(path, n_cols, header=True)
    fields = {}
    for i, h in enumerate(table.header):
        name, _, ftype = h.strip().partition(":")
        if not ftype:
            raise DataError(f"header field {h!r} lacks its ':type' (RecBole atomic format)",
                            path, 1)
        fields[name] = i
    missing = [f for f in required if f not in fields]
    if missing:
        raise DataError(f"header lacks field(s) {', '.join(missing)}; found "
                        f"{', '.join(fields)}", path, 1)
    return table, fields


def read_recbole(path: Path, name: str | None = None, threshold: float | None = None) -> Dataset:
    """Read RecBole atomic files ``NAME.inter`` / ``NAME.kg`` / ``NAME.link``.

    ``.inter`` needs ``user_id`` and ``item_id`` plus ``label`` (0/1) or
    ``rating``; a rating becomes label ``rating >= threshold`` as RecBole's
    own ``threshold`` option does (rows below it are labelled negatives).
    Items are indexed in ``.link`` order and come first among entities; an
    ``.inter`` item without a ``.link`` entry is an error (KGNN-LS needs every
    item in the KG). If no row is negative, negatives are sampled later.
    """
    path = Path(path)
    inter_path = _atomic_file(path, "inter")
    kg_path = _atomic_file(path, "kg")
    link_path = _atomic_file(path, "link")

    link, lf = _atomic_table(link_path, ("item_id", "entity_id"))
    item_ids, item_entities = link.columns[lf["item_id"]], link.columns[lf["entity_id"]]
    for col, what in ((item_ids, "item_id"), (item_entities, "entity_id")):
        _, first, counts = np.unique(col, return_index=True, return_counts=True)
        if (counts > 1).any():
            v = col[first[counts > 1][0]]
            raise link.fail(int(np.flatnonzero(col == v)[1]), f"duplicate {what} {str(v)!r}")
    n_items = len(item_ids)

    inter, f = _atomic_table(inter_path, ("user_id", "item_id"))
    if "label" in f:
        labels = inter.floats(f["label"], "label")
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        if len(bad):
            raise inter.fail(int(bad[0]), f"label must be 0 or 1, got {labels[bad[0]]:g}")
        labels = labels.astype(np.int64)
    elif "rating" in f:
        ratings = inter.floats(f["rating"], "rating")
        if threshold is None:
            raise DataError("the .inter file has a rating column but no threshold was given: "
                            "pass --set threshold=VALUE (ratings >= VALUE are positives)",
                            inter_path)
        labels = (ratings >= threshold).astype(np.int64)
    else:
        raise DataError("the .inter header has neither a 'label' nor a 'rating' field", inter_path,
                        1)

    item_col = inter.columns[f["item_id"]]
    sorter = np.argsort(item_ids)
    p = np.minimum(np.searchsorted(item_ids, item_col, sorter=sorter), n_items - 1)
    known = item_ids[sorter[p]] == item_col
    if not known.all():
        first = int(np.flatnonzero(~known)[0])
        raise inter.fail(first, f"item {str(item_col[first])!r} is missing from "
                                f"{link_path.name} ({int((~known).sum())} rows have an item "
                                "without a KG entity): link every item, or drop those rows")
    keep = np.flatnonzero(known)
    users, user_ids = first_appearance_codes(inter.columns[f["user_id"]][keep])
    rows = _labelled_rows(users, sorter[p][keep].astype(np.int64), labels[keep], n_items, inter,
                          keep)

    kg_table, kf = _atomic_table(kg_path, ("head_id", "relation_id", "tail_id"))
    kg_table.columns = [kg_table.columns[kf[c]] for c in ("head_id", "relation_id", "tail_id")]
    kg, entities, relations = _kg_from_strings(kg_table, item_entities)
    _check_kg_mentions_items(kg, n_items, kg_path)
    ds = Dataset(name=name or path.name, user_ids=user_ids, item_ids=item_ids, entity_ids=entities,
                 relation_names=relations, ratings=rows, kg=kg, source=str(path),
                 negatives="given" if (rows[:, 2] == 0).any() else "none")
    ds.validate()
    return ds
