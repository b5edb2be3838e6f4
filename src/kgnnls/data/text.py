"""Strict reading of delimited text tables.

Each function either returns clean columns or raises :class:`DataError`
naming the file, the 1-based line and the problem. Blank lines are skipped
(many published files end with one) but keep their place in the numbering.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kgnnls.errors import DataError


class Table:
    """Rows of a text table as string columns, with their file line numbers."""

    def __init__(self, path: Path, columns: list[np.ndarray], lines: np.ndarray, header: list[str]):
        self.path = path
        self.columns = columns
        self.lines = lines
        self.header = header

    def __len__(self) -> int:
        return len(self.lines)

    def ints(self, col: int, what: str) -> np.ndarray:
        """Column ``col`` parsed as int64; non-numeric cells are a DataError."""
        values = self.columns[col]
        try:
            return values.astype(np.int64)
        except (ValueError, OverflowError):
            pass
        for i, v in enumerate(values):
            try:
                ok = -(2 ** 63) <= int(v) < 2 ** 63
            except ValueError:
                ok = False
            if not ok:
                raise DataError(f"{what} must be an integer (64-bit), got {str(v)!r}", self.path,
                                int(self.lines[i]))
        raise AssertionError("unreachable")  # pragma: no cover

    def floats(self, col: int, what: str) -> np.ndarray:
        """Column ``col`` parsed as float64; non-numeric or non-finite cells fail."""
        values = self.columns[col]
        try:
            out = values.astype(np.float64)
        except ValueError:
            out = None
        if out is not None and np.isfinite(out).all():
            return out
        for i, v in enumerate(values):
            try:
                ok = np.isfinite(float(v))
            except ValueError:
                ok = False
            if not ok:
                raise DataError(f"{what} must be a finite number, got {str(v)!r}", self.path,
                                int(self.lines[i]))
        raise AssertionError("unreachable")  # pragma: no cover

    def fail(self, row: int, problem: str) -> DataError:
        """A DataError located at table row ``row``."""
        return DataError(problem, self.path, int(self.lines[row]))


def read_table(path: Path, n_cols: int, sep: str = "\t", header: bool = False,
               strip_quotes: bool = False, min_cols: int | None = None) -> Table:
    """Read ``path`` as a table of ``n_cols`` columns separated by ``sep``.

    ``min_cols`` allows rows with extra trailing columns (ignored) as long as
    they have at least that many; by default the count must be exact.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x})", path, line) from None
    if "\r\n" in text:  # Windows line ends (the Last.FM item map has them)
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    first = 0
    head: list[str] = []
    if header:
        while first < len(lines) and not lines[first].strip():
            first += 1
        if first == len(lines):
            raise DataError("empty file (no header line)", path)
        head = lines[first].rstrip("\r").split(sep)
        first += 1
    fast = _fast_columns(lines, first, n_cols, sep, strip_quotes, min_cols)
    if fast is not None:
        return Table(path, fast[0], fast[1], head)
    rows: list[list[str]] = []
    numbers: list[int] = []
    lo = n_cols if min_cols is None else min_cols
    for k in range(first, len(lines)):
        line = lines[k].rstrip("\r")
        if not line.strip():
            continue
        cells = line.split(sep)
        if len(cells) < lo or (min_cols is None and len(cells) != n_cols):
            raise DataError(f"expected {n_cols} columns separated by {sep!r}, found {len(cells)}",
                            path, k + 1)
        cells = [c.strip() for c in cells[:n_cols]]
        if strip_quotes:
            cells = [c[1:-1] if len(c) >= 2 and c[0] == c[-1] == '"' else c for c in cells]
        if any(c == "" for c in cells):
            raise DataError("empty field", path, k + 1)
        rows.append(cells)
        numbers.append(k + 1)
    if not rows:
        raise DataError("empty file (no data rows)", path)
    columns = [np.array([r[c] for r in rows]) for c in range(n_cols)]
    return Table(path, columns, np.asarray(numbers, dtype=np.int64), head)


def _fast_columns(lines: list[str], first: int, n_cols: int, sep: str, strip_quotes: bool,
                  min_cols: int | None) -> tuple[list[np.ndarray], np.ndarray] | None:
    """Vectorized parse of a clean table; None sends the caller to the strict path.

    Clean means: no quoting, exact column counts, no blank line before the
    end, no empty cell, no padding whitespace.
    """
    if strip_quotes or min_cols is not None:
        return None
    body = lines[first:]
    while body and body[-1] == "":
        body.pop()
    if not body:
        return None
    flat = sep.join(body).split(sep)
    if len(flat) != len(body) * n_cols:
        return None
    cells = np.array(flat)
    if cells.dtype.kind != "U":
        return None
    lengths = np.char.str_len(cells)
    if (lengths == 0).any() or (np.char.strip(cells) != cells).any():
        return None
    table = cells.reshape(len(body), n_cols)
    # a line with too many separators plus one with too few would still add
    # up: check the count per line directly
    counts = np.fromiter((line.count(sep) for line in body), dtype=np.int64, count=len(body))
    if (counts != n_cols - 1).any():
        return None
    numbers = np.arange(first + 1, first + 1 + len(body), dtype=np.int64)
    return [np.ascontiguousarray(table[:, c]) for c in range(n_cols)], numbers


def first_appearance_codes(values: np.ndarray, preset: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Map values to dense codes in order of first appearance.

    ``preset`` lists values that take codes ``0..len(preset)-1`` first (e.g.
    the items among KG entities); the remaining values follow in order of
    first appearance in ``values``. Returns ``(codes, vocabulary)``.
    """
    preset = np.array([], dtype=str) if preset is None else np.asarray(preset, dtype=str)
    allv = np.concatenate([preset, np.asarray(values, dtype=str)])
    uniq, first, inverse = np.unique(allv, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    codes = rank[inverse.reshape(-1)]
    return codes[len(preset):].astype(np.int64), uniq[order]
