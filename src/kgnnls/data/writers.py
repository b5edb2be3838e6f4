"""Write a Dataset as RecBole atomic files (``.inter``, ``.kg``, ``.link``).

So that RecBole users can take our exact data (and split) to RecBole, and so
that the RecBole reader can be checked end to end against the native one.
Rows and triples keep their order, which makes a round trip through
:func:`kgnnls.data.readers.read_recbole` reproduce every index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kgnnls.data.dataset import Dataset
from kgnnls.storage import atomic_write_text


def _lines(header: list[str], columns: list[np.ndarray]) -> str:
    body = np.char.add(columns[0].astype(str), "")
    for col in columns[1:]:
        body = np.char.add(np.char.add(body, "\t"), col.astype(str))
    return "\t".join(header) + "\n" + "\n".join(body.tolist()) + "\n"


def _inter(ds: Dataset, rows: np.ndarray, ratings: tuple[float, float] | None) -> str:
    users, items = ds.user_ids[rows[:, 0]], ds.item_ids[rows[:, 1]]
    if ratings is None:
        return _lines(["user_id:token", "item_id:token", "label:float"], [users, items, rows[:, 2]])
    values = np.where(rows[:, 2] == 1, ratings[0], ratings[1])
    return _lines(["user_id:token", "item_id:token", "rating:float"], [users, items, values])


def write_recbole(ds: Dataset, path: str | Path, name: str | None = None,
                  rows: np.ndarray | None = None, ratings: tuple[float, float] | None = None,
                  entity_prefix: str = "", parts: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``ds`` (or its ``rows``) as ``NAME.inter``, ``NAME.kg``, ``NAME.link``.

    ``ratings=(positive, negative)`` writes a ``rating`` column with those
    values instead of a ``label`` column (read back with a threshold between
    them). ``entity_prefix`` is prepended to entity ids, e.g. ``"m."``.
    ``parts={"train": rows, ...}`` writes RecBole's pre-split benchmark files
    ``NAME.train.inter`` etc. (``benchmark_filename``) instead of ``NAME.inter``;
    their ``.link`` then lists only the items that occur in some part, because
    RecBole skips its link filtering for pre-split files and fails on a linked
    item without interactions.
    """
    path = Path(path)
    name = name or ds.name
    if parts is not None and rows is not None:
        raise ValueError("give rows or parts, not both")
    linked = np.arange(ds.n_items)
    if parts is None:
        parts = {"": ds.ratings if rows is None else rows}
    else:
        linked = np.unique(np.concatenate([r[:, 1] for r in parts.values()]))
    for part, part_rows in parts.items():
        suffix = f".{part}.inter" if part else ".inter"
        atomic_write_text(path / f"{name}{suffix}", _inter(ds, part_rows, ratings))
    entities = np.char.add(entity_prefix, ds.entity_ids.astype(str))
    kg = _lines(["head_id:token", "relation_id:token", "tail_id:token"],
                [entities[ds.kg[:, 0]], ds.relation_names[ds.kg[:, 1]], entities[ds.kg[:, 2]]])
    link = _lines(["item_id:token", "entity_id:token"], [ds.item_ids[linked], entities[linked]])
    atomic_write_text(path / f"{name}.kg", kg)
    atomic_write_text(path / f"{name}.link", link)
    return path
