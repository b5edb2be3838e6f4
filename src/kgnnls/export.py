"""Every user's top-k in one file: ``kgnnls recommend RUN --all --out recs.parquet|recs.csv``.

The file is long-format, one row per recommendation: ``user``, ``rank``
(1 = best), ``item``, ``score`` (predicted probability), users in index
order. Users are ranked in chunks of ``chunk_users`` through the batch path
of :meth:`kgnnls.KGNNLS.recommend`, and each chunk is written before the next
is ranked, so memory stays bounded by the chunk whatever the number of users.
The file appears atomically: it is written to a temporary file beside the
destination, fsynced and renamed (as :func:`kgnnls.storage.atomic_write_bytes`
does for whole files), so an interrupted export leaves no partial file.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kgnnls.errors import ConfigError

#: Output formats, by file suffix.
FORMATS = {".parquet": "parquet", ".csv": "csv"}
COLUMNS = ("user", "rank", "item", "score")


def output_format(path: str | Path) -> str:
    """``parquet`` or ``csv`` from the suffix of ``path``; ConfigError otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out {path}: the file name must end in .parquet or .csv")
    return fmt


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the
    block ends without error (after an fsync), removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; an ordinary file is 0666 - umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_all_recommendations(model: Any, out: str | Path, k: int = 10,
                              exclude_seen: bool = True, chunk_users: int = 2048,
                              progress: bool = True) -> int:
    """Write the top-``k`` of every user of ``model`` to ``out`` (.parquet or .csv).

    Returns the number of rows written (fewer than ``users * k`` where a user
    has fewer eligible items). ``exclude_seen``: leave out training positives.
    """
    fmt = output_format(out)
    users = np.asarray(model.user_ids)
    written = 0
    with atomic_path(out) as tmp, _writer(tmp, fmt) as write, tqdm(
            total=len(users), desc="recommend", unit="user", disable=not progress) as bar:
        for s in range(0, len(users), chunk_users):
            part = users[s:s + chunk_users]
            items, scores = model.recommend(part, k=k, exclude_seen=exclude_seen)
            keep = items != ""  # padding of users with fewer eligible items
            rows, ranks = np.nonzero(keep)
            write({"user": part[rows].astype(str), "rank": (ranks + 1).astype(np.int32),
                   "item": items[keep].astype(str), "score": scores[keep].astype(np.float32)})
            written += len(rows)
            bar.update(len(part))
    return written


@contextlib.contextmanager
def _writer(path: Path, fmt: str) -> Iterator[Any]:
    """A function writing one chunk (a dict of columns) to ``path`` in ``fmt``."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()),
                            ("score", pa.float32())])
        with pq.ParquetWriter(path, schema) as w:
            yield lambda cols: w.write_table(pa.table(cols, schema=schema))
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)

        def write(cols: dict[str, np.ndarray]) -> None:
            w.writerows(zip(cols["user"].tolist(), cols["rank"].tolist(), cols["item"].tolist(),
                            [f"{v:.6g}" for v in cols["score"].tolist()], strict=True))

        yield write
