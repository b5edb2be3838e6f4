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
from kgnnls.data.frames import unlinked_entity_names
from kgnnls.data.text import (
    Table,
    dense_codes,
    first_appearance_codes,
    first_occurrences,
    read_table,
)
from kgnnls.errors import DataError

log = logging.getLogger(__name__)

#: Rating files of the authors' raw layout: separator, header, quoting and
#: the paper's positive threshold (None: every row is a positive).
RAW_RATING_FILES: dict[str, dict] = {
    "user_artists.dat": {"sep": "\t", "cols": 3, "threshold": None, "quotes": False},
    "ratings.csv": {"sep": ",", "cols": 4, "threshold": 4.0, "quotes": False},
    "BX-Book-Ratings.csv": {"sep": ";", "cols": 3, "threshold": 0.0, "quotes": True},
}
RATINGS_POLICIES = ("positives-only", "threshold-labels")
UNLINKED_POLICIES = ("entity", "error")
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


def read_directory(path: Path, name: str | None = None, threshold: float | None = None,
                   ratings: str = "positives-only", unlinked: str = "entity") -> Dataset:
    """Read a dataset directory in whichever layout it holds.

    ``threshold`` and ``ratings`` apply to explicit ratings (raw layout and
    ``.inter`` rating columns), ``unlinked`` to RecBole items without a link.
    """
    path = Path(path)
    if ratings not in RATINGS_POLICIES:
        raise ValueError(f"ratings must be one of {RATINGS_POLICIES}, got {ratings!r}")
    if unlinked not in UNLINKED_POLICIES:
        raise ValueError(f"unlinked must be one of {UNLINKED_POLICIES}, got {unlinked!r}")
    layout = detect_layout(path)
    name = name or path.name
    if layout == "raw":
        return read_raw(path, name=name, threshold=threshold, ratings=ratings)
    if layout == "final":
        return read_final(path, name=name)
    return read_recbole(path, name=name, threshold=threshold, ratings=ratings, unlinked=unlinked)


# --------------------------------------------------------------- shared steps
def _check_labels_agree(keys: np.ndarray, labels: np.ndarray, table: Table,
                        rows: np.ndarray) -> None:
    """Reject a (user, item) pair given conflicting labels (one hash pass).

    Exact duplicates are kept, as the published files have them (Book-Crossing
    repeats 153 sampled negatives) and the paper's Table 2 counts them.
    ``rows`` gives, for each key, its row in ``table`` (for the error line).
    """
    if first_occurrences(keys).all():  # the common case: one sort, no hash table
        return
    codes, distinct = dense_codes(keys)
    first = first_occurrences(codes)
    label_of = np.empty(len(distinct), dtype=labels.dtype)
    label_of[codes[first]] = labels[first]
    conflict = np.flatnonzero(labels != label_of[codes])
    if len(conflict):
        raise table.fail(int(rows[conflict[0]]),
                         "duplicate (user, item) pair with a conflicting label")
    log.info("%s: %d repeated (user, item, label) rows kept", table.path,
             len(keys) - len(distinct))


def _stack_rows(users: np.ndarray, items: np.ndarray, labels: np.ndarray | int) -> np.ndarray:
    """``(user, item, label)`` int64 rows without stacking temporaries."""
    rows = np.empty((len(users), 3), dtype=np.int64)
    rows[:, 0], rows[:, 1], rows[:, 2] = users, items, labels
    return rows


def _rated_rows(table: Table, user_col: int, items: np.ndarray, positive: np.ndarray,
                n_items: int, policy: str, threshold: float | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled rows, user ids and excluded pairs of explicit ratings under ``policy``.

    ``items`` is each row's item index (-1: not an item, the row is dropped);
    ``positive`` whether its rating reaches the threshold. ``positives-only``
    (the paper's Appendix A, the authors' ``preprocess.py``): positives only,
    one per (user, item), users indexed by first positive row; rows below the
    threshold become excluded pairs (never a sampled negative), and a pair
    rated on both sides of the threshold is a positive, as in the authors'
    sets. ``threshold-labels``: every row, label ``rating >= threshold``, users
    indexed by first row; conflicting repeats are an error.
    """
    n = np.int64(n_items)
    ucodes = table.columns[user_col].codes
    known = items >= 0
    if policy == "threshold-labels":
        keep = np.flatnonzero(known)
        users, distinct = dense_codes(ucodes[keep])
        labels = positive[keep].astype(np.int64)
        _check_labels_agree(users * n + items[keep], labels, table, keep)
        rows = _stack_rows(users, items[keep], labels)
        return rows, table.columns[user_col].values[distinct], np.zeros((0, 2), np.int64)
    if policy != "positives-only":
        raise ValueError(f"unknown ratings policy {policy!r}")
    pos_rows = np.flatnonzero(known & positive)
    if not len(pos_rows):
        raise DataError("no positive rating for any item"
                        + ("" if threshold is None else f" (threshold {threshold:g})"),
                        table.path)
    users, distinct = dense_codes(ucodes[pos_rows])
    keys = users * n + items[pos_rows]
    del users
    pos_keys = keys[first_occurrences(keys)]
    if len(pos_keys) < len(keys):  # the authors keep a set of positives per user
        log.info("%s: %d repeated positive rows counted once", table.path,
                 len(keys) - len(pos_keys))
    del keys, pos_rows
    rows = _stack_rows(pos_keys // n, pos_keys % n, 1)
    excluded = _excluded_pairs(ucodes, items, known & ~positive, distinct, pos_keys, n)
    return rows, table.columns[user_col].values[distinct], excluded


def _excluded_pairs(ucodes: np.ndarray, items: np.ndarray, below: np.ndarray,
                    user_codes: np.ndarray, pos_keys: np.ndarray, n: np.int64) -> np.ndarray:
    """Distinct ``(user, item)`` pairs rated below the threshold by users with positives."""
    index_of_code = np.full(int(ucodes.max()) + 1, -1, dtype=np.int64)
    index_of_code[user_codes] = np.arange(len(user_codes))
    below_rows = np.flatnonzero(below)
    users = index_of_code[ucodes[below_rows]]
    has = users >= 0
    keys = users[has] * n + items[below_rows[has]]
    del users, has, below_rows
    # one hash pass: distinct keys after the positives' are the distinct excluded
    # pairs that are not positives (a pair also rated >= threshold is a positive)
    keys = keys[first_occurrences(np.concatenate([pos_keys, keys]))[len(pos_keys):]]
    out = np.empty((len(keys), 2), dtype=np.int64)
    out[:, 0], out[:, 1] = keys // n, keys % n
    return out


def _kg_from_strings(table: Table, item_entities: np.ndarray, n_extra: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer triples with items first among entities (authors' re-indexing).

    Entities are numbered items first (``item_entities``, then ``n_extra``
    reserved slots for items without a KG entity), then in order of first
    appearance along head, tail, head, tail... Only distinct cells are
    compared as strings.
    """
    heads, rels, tails = table.columns
    n_pre, n_h = len(item_entities), len(heads.values)
    joint, vocab = first_appearance_codes(np.concatenate([heads.values, tails.values]),
                                          preset=item_entities)
    seq = np.empty(n_pre + 2 * len(heads.codes), dtype=np.int64)
    seq[:n_pre] = np.arange(n_pre)
    seq[n_pre::2] = joint[:n_h][heads.codes]
    seq[n_pre + 1::2] = joint[n_h:][tails.codes]
    codes, distinct = dense_codes(seq)
    del seq
    codes = codes[n_pre:]
    codes[codes >= n_pre] += n_extra
    kg = np.empty((len(heads.codes), 3), dtype=np.int64)
    kg[:, 0], kg[:, 1], kg[:, 2] = codes[0::2], rels.codes, codes[1::2]
    return kg, vocab[distinct], rels.values


def _check_kg_mentions_items(kg: np.ndarray, n_items: int, path: Path) -> None:
    """Refuse a KG that touches no item; warn about items it does not touch."""
    touches = (kg[:, 0] < n_items) | (kg[:, 2] < n_items)
    if not touches.any():
        raise DataError("no KG triple mentions any item: is this the KG of this dataset?", path)
    mentioned = np.zeros(n_items, dtype=bool)
    for end in (kg[:, 0], kg[:, 2]):
        mentioned[end[end < n_items]] = True
    isolated = int((~mentioned).sum())
    if isolated:
        log.warning("%s: %d items have no KG triple; they aggregate only themselves", path,
                    isolated)


def _check_unique(table: Table, col: int, what: str) -> None:
    """DataError at the first row repeating a value of column ``col``."""
    column = table.columns[col]
    if len(column.values) < len(column.codes):
        row = int(np.argmin(first_occurrences(column.codes)))
        raise table.fail(row, f"duplicate {what} {str(column.values[column.codes[row]])!r}")


def _item_map(path: Path) -> Table:
    table = read_table(path, 2)
    for c, what in ((0, "item id"), (1, "entity id")):
        _check_unique(table, c, what)
    return table


def _lookup(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each of ``values`` in ``keys`` (distinct), -1 where absent."""
    if not len(keys):
        return np.full(len(values), -1, dtype=np.int64)
    sorter = np.argsort(keys)
    pos = np.minimum(np.searchsorted(keys, values, sorter=sorter), len(keys) - 1)
    found = sorter[pos]
    return np.where(keys[found] == values, found, -1)


# --------------------------------------------------------------- raw layout
def read_raw(path: Path, name: str | None = None, threshold: float | None = None,
             ratings: str = "positives-only") -> Dataset:
    """Read the authors' raw layout and preprocess it as their ``preprocess.py``.

    Rows whose item is not in ``item_index2entity_id.txt`` are dropped (the
    paper's preprocessing). Ratings follow the ``ratings`` policy (see
    :func:`_rated_rows`) with the file's own threshold unless one is given
    (MovieLens 4, Book-Crossing 0, Last.FM: every row is a positive). Items
    are indexed in line order of the item map, entities items first then in
    order of first appearance in the KG, relations in order of first
    appearance.
    """
    path = Path(path)
    rating_name = next((n for n in RAW_RATING_FILES if (path / n).is_file()), None)
    if rating_name is None:
        raise DataError(f"no rating file ({', '.join(RAW_RATING_FILES)})", path)
    fmt = RAW_RATING_FILES[rating_name]
    if threshold is None:
        threshold = fmt["threshold"]

    item_map = _item_map(path / ITEM_MAP)
    item_ids, item_entities = (c.strings() for c in item_map.columns)
    table = read_table(path / rating_name, fmt["cols"], sep=fmt["sep"], header=True,
                       strip_quotes=fmt["quotes"], usecols=(0, 1, 2))
    values = table.float_values(2, "rating")  # distinct ratings only
    positive = np.ones(len(values), bool) if threshold is None else values >= threshold
    items = _lookup(item_ids, table.columns[1].values).astype(np.int32)[table.columns[1].codes]
    rows, user_ids, excluded = _rated_rows(table, 0, items,
                                           positive[table.columns[2].codes], len(item_ids),
                                           ratings, threshold)
    del items, table

    kg_table = read_table(path / "kg.txt", 3)
    kg, entities, relations = _kg_from_strings(kg_table, item_entities)
    _check_kg_mentions_items(kg, len(item_ids), kg_table.path)
    ds = Dataset(name=name or path.name, user_ids=user_ids, item_ids=item_ids, entity_ids=entities,
                 relation_names=relations, ratings=rows, kg=kg, excluded=excluded,
                 source=str(path), negatives="given" if (rows[:, 2] == 0).any() else "none")
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
        item_ids = item_map.columns[0].strings()

    users, user_ids = table.columns[0].codes, table.columns[0].values  # first appearance
    _check_labels_agree(users * np.int64(n_items) + items, labels, table, np.arange(len(table)))
    rows = _stack_rows(users, items, labels)
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


def read_recbole(path: Path, name: str | None = None, threshold: float | None = None,
                 ratings: str = "positives-only", unlinked: str = "entity") -> Dataset:
    """Read RecBole atomic files ``NAME.inter`` / ``NAME.kg`` / ``NAME.link``.

    ``.inter`` needs ``user_id`` and ``item_id`` plus ``label`` (0/1 rows, kept
    as given) or ``rating``, which needs a ``threshold`` and follows the
    ``ratings`` policy exactly as the raw layout does (see :func:`_rated_rows`).
    Items are indexed in ``.link`` order and come first among entities. An
    ``.inter`` item without a ``.link`` row (RecBole's published KG datasets
    link only part of their items) gets, with ``unlinked="entity"``, its own
    entity with no KG edge, as RecBole does; ``unlinked="error"`` refuses it.
    If no row is negative, negatives are sampled later.
    """
    path = Path(path)
    inter_path = _atomic_file(path, "inter")
    kg_path = _atomic_file(path, "kg")
    link_path = _atomic_file(path, "link")

    link, lf = _atomic_table(link_path, ("item_id", "entity_id"))
    for what in ("item_id", "entity_id"):
        _check_unique(link, lf[what], what)
    item_ids = link.columns[lf["item_id"]].strings()
    item_entities = link.columns[lf["entity_id"]].strings()

    inter, f = _atomic_table(inter_path, ("user_id", "item_id"))
    item_col = inter.columns[f["item_id"]]
    item_of_value = _lookup(item_ids, item_col.values)
    unknown = np.flatnonzero(item_of_value < 0)  # distinct values, first appearance first
    if len(unknown):
        if unlinked == "error":
            first = inter.first_row_of(f["item_id"], int(unknown[0]))
            n_rows = int(np.isin(item_col.codes, unknown).sum())
            raise inter.fail(first, f"item {str(item_col.values[unknown[0]])!r} is missing from "
                                    f"{link_path.name} ({n_rows} rows have an item without a "
                                    "KG entity): link every item, drop those rows, or pass "
                                    "--set unlinked=entity")
        if unlinked != "entity":
            raise ValueError(f"unknown unlinked policy {unlinked!r}")
        log.warning("%s: %d items have no %s row; each gets its own entity with no KG edge "
                    "(--set unlinked=error refuses them)", inter_path, len(unknown),
                    link_path.name)
        item_of_value[unknown] = len(item_ids) + np.arange(len(unknown))
        item_ids = np.concatenate([item_ids, item_col.values[unknown]])
    items = item_of_value[item_col.codes]
    rows, user_ids, excluded = _inter_rows(inter, f, items, len(item_ids), threshold, ratings)

    kg_table, kf = _atomic_table(kg_path, ("head_id", "relation_id", "tail_id"))
    kg_table.columns = [kg_table.columns[kf[c]] for c in ("head_id", "relation_id", "tail_id")]
    kg, entities, relations = _kg_from_strings(kg_table, item_entities, n_extra=len(unknown))
    n_linked = len(item_entities)
    _check_kg_mentions_items(kg, n_linked, kg_path)
    entities = np.concatenate([entities[:n_linked],
                               unlinked_entity_names(item_ids[n_linked:], entities),
                               entities[n_linked:]])
    ds = Dataset(name=name or path.name, user_ids=user_ids, item_ids=item_ids, entity_ids=entities,
                 relation_names=relations, ratings=rows, kg=kg, excluded=excluded,
                 source=str(path), negatives="given" if (rows[:, 2] == 0).any() else "none")
    ds.validate()
    return ds


def _inter_rows(inter: Table, f: dict[str, int], items: np.ndarray, n_items: int,
                threshold: float | None, ratings: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled rows, user ids and excluded pairs of a ``.inter`` table."""
    if "label" in f:
        values = inter.float_values(f["label"], "label")
        bad = np.flatnonzero((values != 0) & (values != 1))
        if len(bad):
            raise inter.fail(inter.first_row_of(f["label"], int(bad[0])),
                             f"label must be 0 or 1, got {values[bad[0]]:g}")
        labels = values.astype(np.int64)[inter.columns[f["label"]].codes]
        users = inter.columns[f["user_id"]]
        _check_labels_agree(users.codes * np.int64(n_items) + items, labels, inter,
                            np.arange(len(inter)))
        return _stack_rows(users.codes, items, labels), users.values, np.zeros((0, 2), np.int64)
    if "rating" not in f:
        raise DataError("the .inter header has neither a 'label' nor a 'rating' field",
                        inter.path, 1)
    values = inter.float_values(f["rating"], "rating")
    if threshold is None:
        raise DataError("the .inter file has a rating column but no threshold was given: "
                        "pass --set threshold=VALUE (ratings >= VALUE are positives)",
                        inter.path)
    positive = (values >= threshold)[inter.columns[f["rating"]].codes]
    return _rated_rows(inter, f["user_id"], items, positive, n_items, ratings, threshold)
