"""Datasets built in memory: from pandas DataFrames, NumPy arrays or a SciPy CSR matrix.

Three entry points, exposed as :meth:`Dataset.from_frames`,
:meth:`Dataset.from_arrays` and :meth:`Dataset.from_csr`:

* :func:`from_frames`: original ids (strings or non-negative integers) in
  DataFrames: interactions (user, item and label or rating), an optional KG
  (head, relation, tail) and an optional item-to-entity link table. Users,
  items, entities and relations are indexed as the readers do (first
  appearance; items first among entities).
* :func:`from_arrays`: dense integer indices already: ``users[i]``,
  ``items[i]`` (and ``labels[i]``), KG triples of entity indices where item
  ``i`` *is* entity ``i`` (the ``final`` layout's convention).
* :func:`from_csr`: a user x item matrix whose stored entries are the
  interactions (``implicit``'s input), plus integer KG triples.

Shared rules, those of the file readers: bad input raises
:class:`~kgnnls.errors.DataError` naming the input, column and row; a
(user, item) pair given twice with different labels is refused (exact
repeats are kept); an item without a KG entity gets an entity of its own with
no KG edges (RecBole's convention, :func:`own_item_entities`), which the
graph gives a self-loop so it aggregates only itself; when no row is a
negative, one negative per positive is sampled per user, seeded
(:func:`kgnnls.data.sampling.sample_negatives`).

pandas is imported only by :func:`from_frames` (``pip install pandas``); the
other two need only NumPy and SciPy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from kgnnls.data.dataset import Dataset
from kgnnls.data.sampling import sample_negatives
from kgnnls.data.text import first_appearance_codes
from kgnnls.errors import DataError
from kgnnls.extras import require_extra

log = logging.getLogger(__name__)

#: Column names recognised for each role, in order of preference; a RecBole
#: ``name:type`` header matches by its name.
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "uid"),
    "item": ("item", "item_id", "itemid", "iid"),
    "label": ("label", "labels", "click", "clicked"),
    "rating": ("rating", "ratings", "score"),
    "head": ("head", "head_id", "h"),
    "relation": ("relation", "relation_id", "r", "rel"),
    "tail": ("tail", "tail_id", "t"),
    "entity": ("entity", "entity_id", "eid"),
}
#: Prefix of the entity an unlinked item gets (made longer on a clash with a KG name).
OWN_ENTITY_PREFIX = "[unlinked item] "


# ---------------------------------------------------------------- shared helper
def own_item_entities(item_ids: np.ndarray, link_items: np.ndarray, link_entities: np.ndarray,
                      kg_entities: np.ndarray) -> tuple[np.ndarray, int]:
    """The KG entity name of every item: its linked entity, or one of its own.

    RecBole's convention for items missing from the link table: such an item
    keeps its place and becomes an entity of its own with no KG edges (the
    graph gives it a self-loop, so its vector is its own embedding). Its
    entity name is ``OWN_ENTITY_PREFIX + item_id`` (the RecBole reader's display
    name too), the prefix repeated until no KG entity or linked entity has
    that name. Pure array code, no file format: the RecBole reader can call it
    as is.

    ``item_ids``: every item (index order); ``link_items``/``link_entities``:
    the link table's pairs (unique on both sides; items not in ``item_ids``
    are ignored); ``kg_entities``: entity names used by the KG. Returns the
    entity name per item and how many items were unlinked.
    """
    item_ids = np.asarray(item_ids, dtype=str)
    link_items = np.asarray(link_items, dtype=str)
    link_entities = np.asarray(link_entities, dtype=str)
    entities = np.empty(len(item_ids), dtype=object)
    linked = np.zeros(len(item_ids), dtype=bool)
    if len(link_items):
        sorter = np.argsort(link_items)
        pos = np.minimum(np.searchsorted(link_items, item_ids, sorter=sorter), len(link_items) - 1)
        linked = link_items[sorter[pos]] == item_ids
        entities[linked] = link_entities[sorter[pos[linked]]]
    n_own = int((~linked).sum())
    if n_own:
        taken = np.union1d(np.asarray(kg_entities, dtype=str), link_entities)
        entities[~linked] = unlinked_entity_names(item_ids[~linked], taken)
    return entities.astype(str), n_own


def unlinked_entity_names(item_ids: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """``OWN_ENTITY_PREFIX + item_id`` for items without a KG entity, the prefix
    repeated until none of the names is in ``taken`` (the KG's entity names)."""
    item_ids, taken = np.asarray(item_ids, dtype=str), np.asarray(taken, dtype=str)
    prefix = OWN_ENTITY_PREFIX
    while True:  # a prefix no existing name starts with cannot clash
        own = np.char.add(prefix, item_ids)
        if not np.isin(own, taken).any():
            return own
        prefix += OWN_ENTITY_PREFIX


# ---------------------------------------------------------------- from_frames
def from_frames(interactions: Any, kg: Any = None, item_entities: Any = None, *,
                columns: Mapping[str, str] | None = None, threshold: float | None = None,
                name: str = "frames", seed: int = 0) -> Dataset:
    """A dataset from pandas DataFrames of original ids (needs ``pandas``).

    ``interactions``: a user column, an item column and either a ``label``
    column (0/1) or a ``rating`` column with ``threshold`` (ratings >= it are
    positives, the others labelled negatives, as RecBole's ``threshold``);
    with neither, every row is a positive. ``kg``: head, relation, tail
    columns of entity and relation names (None: no KG; every item is then an
    entity of its own). ``item_entities``: item and entity columns linking
    items to KG entities; without it an item is the KG entity of the same id.
    Items without an entity get their own (:func:`own_item_entities`).

    Column names are found among :data:`COLUMN_NAMES` (case-insensitive;
    RecBole's ``name:type`` headers too) unless ``columns`` maps a role
    (user, item, label, rating, head, relation, tail, entity) to a name.
    Ids may be strings or non-negative integers (a negative integer or a
    NaN is refused: those are usual "missing" markers). ``seed`` draws the
    negatives when no row is one. Rows in error messages are 0-based
    positions (with the index label when the frame has its own index).
    """
    require_extra("pandas", "Dataset.from_frames")
    cols = dict(columns or {})
    users = _id_column(interactions, "interactions", "user", cols)
    items = _id_column(interactions, "interactions", "item", cols)
    labels = _frame_labels(interactions, cols, threshold)
    link = (None if item_entities is None else
            (_id_column(item_entities, "item_entities", "item", cols),
             _id_column(item_entities, "item_entities", "entity", cols)))
    if link is not None:
        for values, role in zip(link, ("item", "entity"), strict=True):
            _refuse_repeats(item_entities, "item_entities", _column_name(item_entities, role, cols),
                            values)
    triples = None if kg is None else tuple(_id_column(kg, "kg", r, cols)
                                            for r in ("head", "relation", "tail"))
    return _assemble(users, items, labels, link, triples, interactions, name, seed)


def _assemble(users: np.ndarray, items: np.ndarray, labels: np.ndarray,
              link: tuple[np.ndarray, np.ndarray] | None,
              triples: tuple[np.ndarray, np.ndarray, np.ndarray] | None, frame: Any, name: str,
              seed: int) -> Dataset:
    """Index string ids (items: interactions first, then link-only ones) and build."""
    item_codes, item_ids = first_appearance_codes(items)
    user_codes, user_ids = first_appearance_codes(users)
    if link is not None:  # catalogue items of the link table without interactions
        extra = link[0][~np.isin(link[0], item_ids)]
        item_ids = np.concatenate([item_ids, extra])
    heads, rels, tails = triples if triples is not None else (np.array([], str),) * 3
    kg_names = np.concatenate([heads, tails])
    link_items, link_entities = link if link is not None else (item_ids, item_ids)
    item_entity, n_own = own_item_entities(item_ids, link_items, link_entities, kg_names)
    codes, entity_ids = first_appearance_codes(np.stack([heads, tails], axis=1).reshape(-1),
                                               preset=item_entity)
    rel_codes, relation_names = first_appearance_codes(rels)
    kg_rows = np.stack([codes[0::2], rel_codes, codes[1::2]], axis=1).reshape(-1, 3)
    n_items = len(item_ids)
    rows = _checked_rows(user_codes, item_codes, labels, n_items, frame, user_ids, item_ids)
    if len(kg_rows):
        _check_items_in_kg(kg_rows, n_items, name, n_own)
    ds = Dataset(name=name, user_ids=user_ids, item_ids=item_ids, entity_ids=entity_ids,
                 relation_names=relation_names, ratings=rows, kg=kg_rows.astype(np.int64),
                 source=name, negatives="given" if (rows[:, 2] == 0).any() else "none")
    return _finish(ds, seed)


def _check_items_in_kg(kg: np.ndarray, n_items: int, name: str, n_own: int) -> None:
    """Refuse a KG that reaches no item (ids named differently); log edgeless items."""
    ends = kg[:, [0, 2]].reshape(-1)
    touched = np.unique(ends[ends < n_items])
    if len(touched) == 0:
        raise DataError("no KG triple mentions any item's entity: are items named as in the "
                        "KG? link them with item_entities", "kg")
    if len(touched) < n_items:
        log.info("%s: %d of %d items have no KG edge (%d without a linked entity get one of "
                 "their own)", name, n_items - len(touched), n_items, n_own)


def _finish(ds: Dataset, seed: int) -> Dataset:
    """Validate (an empty KG is allowed: every item is then its own entity) and
    sample 1:1 negatives when the input had none, as :func:`load_dataset` does."""
    ds.validate(allow_empty_kg=True)
    return ds if ds.has_negatives else sample_negatives(ds, seed)


def _checked_rows(users: np.ndarray, items: np.ndarray, labels: np.ndarray, n_items: int,
                  frame: Any, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """``(user, item, label)`` rows; a pair given twice with different labels is an error
    naming both rows (exact repeats are kept, as the readers keep them)."""
    keys = users * np.int64(n_items) + items
    order = np.argsort(keys, kind="stable")
    sk, sl = keys[order], labels[order]
    clash = np.flatnonzero((sk[1:] == sk[:-1]) & (sl[1:] != sl[:-1]))
    if len(clash):
        a, b = sorted((int(order[clash[0]]), int(order[clash[0] + 1])))
        u, i = str(user_ids[users[a]]), str(item_ids[items[a]])
        raise DataError(f"rows {_row(frame, a)} and {_row(frame, b)}: duplicate (user, item) "
                        f"pair ({u!r}, {i!r}) with conflicting labels", "interactions")
    return np.stack([users, items, labels], axis=1).astype(np.int64)


# ---------------------------------------------------------------- frame columns
def _column_name(frame: Any, role: str, columns: dict[str, str]) -> str:
    """The column of ``frame`` playing ``role``: given, or found by name."""
    if role in columns:
        if columns[role] not in frame.columns:
            raise DataError(f"no column {columns[role]!r} (given for {role}); columns: "
                            f"{', '.join(map(str, frame.columns))}")
        return columns[role]
    by_name = {str(c).split(":")[0].strip().lower(): c for c in frame.columns}
    for candidate in COLUMN_NAMES[role]:
        if candidate in by_name:
            return by_name[candidate]
    raise DataError(f"no {role} column among {', '.join(map(str, frame.columns))}: name one "
                    f"{' / '.join(COLUMN_NAMES[role][:2])} or pass columns={{'{role}': NAME}}")


def _row(frame: Any, pos: int) -> str:
    """Position ``pos`` of ``frame``, with its index label when that differs."""
    index = getattr(frame, "index", None)
    if index is None or (index.dtype.kind == "i" and index.equals(_range(len(frame)))):
        return str(pos)
    label = index[pos]
    return f"{pos} (index {getattr(label, 'item', lambda: label)()!r})"  # plain Python repr


def _range(n: int) -> Any:
    import pandas as pd

    return pd.RangeIndex(n)


def _id_column(frame: Any, where: str, role: str, columns: dict[str, str]) -> np.ndarray:
    """Original ids of a column as strings; refuses missing values and negative or
    fractional numbers (integral floats, e.g. from a column that once held NaN,
    read as integers: 3.0 is id "3")."""
    col = _column_name(frame, role, columns)
    series = frame[col]
    missing = np.flatnonzero(series.isna().to_numpy())
    if len(missing):
        raise DataError(f"column {col!r}, row {_row(frame, int(missing[0]))}: missing value",
                        where)
    values = series.to_numpy()
    if values.dtype.kind in "iuf":
        return _integral(values, frame, where, col).astype(str)
    if values.dtype.kind == "b":
        raise DataError(f"column {col!r}: booleans are not ids", where)
    return values.astype(str)


def _integral(values: np.ndarray, frame: Any, where: str, col: str) -> np.ndarray:
    """``values`` as int64; DataError at the first non-integer or negative one."""
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            raise DataError(f"column {col!r}, row {_row(frame, int(bad[0]))}: non-integer id "
                            f"{float(values[bad[0]])!r}", where)
    ints = values.astype(np.int64)
    neg = np.flatnonzero(ints < 0)
    if len(neg):
        raise DataError(f"column {col!r}, row {_row(frame, int(neg[0]))}: negative id "
                        f"{int(ints[neg[0]])}", where)
    return ints


def _refuse_repeats(frame: Any, where: str, col: str, values: np.ndarray) -> None:
    _, first, counts = np.unique(values, return_index=True, return_counts=True)
    if (counts > 1).any():
        v = str(values[first[counts > 1][0]])
        second = int(np.flatnonzero(values == v)[1])
        raise DataError(f"column {col!r}, row {_row(frame, second)}: {v!r} appears twice (an "
                        "item links to one entity, an entity to one item)", where)


def _frame_labels(frame: Any, columns: dict[str, str], threshold: float | None) -> np.ndarray:
    """0/1 labels from a label column, a rating column and ``threshold``, or all ones."""
    has = {r: _has_role(frame, r, columns) for r in ("label", "rating")}
    if not has["label"] and not has["rating"]:
        return np.ones(len(frame), dtype=np.int64)
    role = "label" if has["label"] else "rating"
    col = _column_name(frame, role, columns)
    values = frame[col].to_numpy()
    if values.dtype.kind not in "iufb":
        raise DataError(f"column {col!r}: {role}s must be numbers, got {values.dtype}",
                        "interactions")
    values = values.astype(np.float64)
    missing = np.flatnonzero(np.isnan(values))
    if len(missing):
        raise DataError(f"column {col!r}, row {_row(frame, int(missing[0]))}: missing value",
                        "interactions")
    if role == "label":
        bad = np.flatnonzero((values != 0) & (values != 1))
        if len(bad):
            raise DataError(f"column {col!r}, row {_row(frame, int(bad[0]))}: label must be 0 "
                            f"or 1, got {values[bad[0]]:g}", "interactions")
        return values.astype(np.int64)
    if threshold is None:
        raise DataError(f"column {col!r} holds ratings but no threshold was given: pass "
                        "threshold=VALUE (ratings >= VALUE are positives)", "interactions")
    return (values >= threshold).astype(np.int64)


def _has_role(frame: Any, role: str, columns: dict[str, str]) -> bool:
    try:
        _column_name(frame, role, columns)
    except DataError:
        if role in columns:
            raise
        return False
    return True


# ---------------------------------------------------------------- integer inputs
def from_arrays(users: Any, items: Any, labels: Any = None, kg_triples: Any = None, *,
                n_users: int | None = None, n_items: int | None = None,
                n_entities: int | None = None, name: str = "arrays", seed: int = 0) -> Dataset:
    """A dataset from integer index arrays (no pandas needed).

    ``users[i]``, ``items[i]``: dense non-negative indices of row ``i``;
    ``labels[i]``: 0/1 (None: every row is a positive). ``kg_triples``:
    ``[n, 3]`` integer ``(head, relation, tail)`` where item ``i`` is entity
    ``i`` and other entities follow (the ``final`` layout's convention), so
    an item no triple names is an entity of its own without edges. Sizes
    default to the largest index + 1; a given ``n_items`` / ``n_entities``
    makes larger indices errors (a triple naming an unknown entity names
    its row and column). Original ids are the indices as strings.
    """
    users = _int_array(users, "users")
    items = _int_array(items, "items")
    if len(users) != len(items):
        raise DataError(f"{len(users)} users but {len(items)} items", "arrays")
    labels = (np.ones(len(users), np.int64) if labels is None
              else _int_array(labels, "labels", negative_ok=True))
    if len(labels) != len(users):
        raise DataError(f"{len(labels)} labels for {len(users)} rows", "arrays")
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise DataError(f"row {bad[0]}: label must be 0 or 1, got {labels[bad[0]]}", "labels")
    n_users = _size(users, n_users, "users", "n_users")
    n_items = _size(items, n_items, "items", "n_items")
    kg = _triples(kg_triples, n_entities)
    n_ent = max(n_items, int(kg[:, [0, 2]].max()) + 1 if len(kg) else 0, n_entities or 0)
    n_rel = int(kg[:, 1].max()) + 1 if len(kg) else 0
    rows = _checked_rows(users, items, labels, n_items, None, np.arange(n_users).astype(str),
                         np.arange(n_items).astype(str))
    if len(kg):
        _check_items_in_kg(kg, n_items, name, 0)
    ds = Dataset(name=name, user_ids=np.arange(n_users).astype(str),
                 item_ids=np.arange(n_items).astype(str), entity_ids=np.arange(n_ent).astype(str),
                 relation_names=np.arange(n_rel).astype(str), ratings=rows, kg=kg, source=name,
                 negatives="given" if (rows[:, 2] == 0).any() else "none")
    return _finish(ds, seed)


def from_csr(user_items: Any, kg_triples: Any = None, *, n_entities: int | None = None,
             name: str = "csr", seed: int = 0) -> Dataset:
    """A dataset from a ``scipy.sparse`` users x items matrix, as ``implicit`` takes.

    Stored entries > 0 are positives (a count or confidence is not a label:
    any positive value is one positive row); entries < 0 are labelled
    negatives; stored zeros are ignored. The matrix shape gives the number
    of users and items (items without entries are still in the catalogue).
    ``kg_triples``: as :func:`from_arrays`.
    """
    from scipy import sparse

    if not sparse.issparse(user_items):
        raise DataError(f"expected a scipy.sparse matrix, got {type(user_items).__name__}",
                        "user_items")
    m = sparse.csr_matrix(user_items)
    m.sum_duplicates()
    users = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    nan = np.flatnonzero(np.isnan(m.data.astype(np.float64)))
    if len(nan):
        raise DataError(f"row {users[nan[0]]}, column {m.indices[nan[0]]}: NaN", "user_items")
    keep = m.data != 0
    return from_arrays(users[keep], m.indices[keep], (m.data[keep] > 0).astype(np.int64),
                       kg_triples, n_users=m.shape[0], n_items=m.shape[1],
                       n_entities=n_entities, name=name, seed=seed)


def _int_array(values: Any, what: str, negative_ok: bool = False) -> np.ndarray:
    """``values`` as a 1-D int64 array; DataError at a NaN, fraction or negative."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise DataError(f"expected a 1-D array, got shape {a.shape}", what)
    if a.dtype.kind not in "iufb":
        raise DataError(f"expected integers, got dtype {a.dtype}", what)
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        if len(bad):
            v = a[bad[0]]
            problem = "missing value" if np.isnan(v) else f"non-integer value {float(v)!r}"
            raise DataError(f"row {bad[0]}: {problem}", what)
    a = a.astype(np.int64)
    if not negative_ok and (a < 0).any():
        r = int(np.flatnonzero(a < 0)[0])
        raise DataError(f"row {r}: negative index {a[r]}", what)
    return a


def _size(index: np.ndarray, given: int | None, what: str, arg: str) -> int:
    """``given`` (checked against the largest index) or the largest index + 1."""
    top = int(index.max()) + 1 if len(index) else 0
    if given is None:
        return top
    if top > given:
        r = int(np.flatnonzero(index >= given)[0])
        raise DataError(f"row {r}: index {index[r]} >= {arg}={given}", what)
    return int(given)


def _triples(kg: Any, n_entities: int | None) -> np.ndarray:
    """Integer ``[n, 3]`` triples; DataError naming row and column of a bad entry."""
    if kg is None:
        return np.zeros((0, 3), dtype=np.int64)
    a = np.asarray(kg)
    if a.ndim != 2 or a.shape[1] != 3:
        raise DataError(f"expected [n, 3] (head, relation, tail), got shape {a.shape}",
                        "kg_triples")
    names = ("head", "relation", "tail")
    out = np.stack([_int_array(a[:, c], f"kg_triples column {names[c]}") for c in range(3)],
                   axis=1)
    if n_entities is not None:
        for c in (0, 2):
            unknown = np.flatnonzero(out[:, c] >= n_entities)
            if len(unknown):
                r = int(unknown[0])
                raise DataError(f"row {r}, column {names[c]}: unknown entity {out[r, c]} "
                                f"(n_entities={n_entities})", "kg_triples")
    return out
