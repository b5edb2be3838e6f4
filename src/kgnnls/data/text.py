"""Strict, fast reading of delimited text tables.

Each function either returns clean columns or raises :class:`DataError`
naming the file, the 1-based line and the problem. Blank lines are skipped
(many published files end with one) but keep their place in the numbering.

Parsing uses ``pyarrow.csv``: multi-threaded, in C++, and already installed
with pandas/pyarrow stacks; it reads MovieLens-20M's 533 MB ``ratings.csv`` in
about a second, and it can skip unused columns (the timestamp) without
building them. (polars would be as fast but is a second dataframe engine for
one job; pyarrow's dictionary encoding is also what makes the columns lean,
see below.) Quoting and escaping are turned off so a cell means exactly what
the strict reader below makes of it.

Every column is kept dictionary-encoded: ``Column.codes`` (int32, one per
row) index ``Column.values``, the distinct cells in order of first appearance.
Stripping, unquoting and number parsing then run over the distinct values
only (138 k user ids instead of 20 M cells), and no per-row Python string is
ever made.

Strictness: whenever the fast pass finds anything irregular (a row with the
wrong number of cells, invalid UTF-8, an empty cell, a bare carriage return)
the file is read again by the original line-by-line reader, which finds the
first bad line and raises ``file:line: problem``. Line numbers of clean files
(for later, semantic errors) are worked out only when an error needs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from kgnnls.errors import DataError

_BOM = b"\xef\xbb\xbf"
_SCAN_BLOCK = 1 << 24


@dataclass
class Column:
    """A column as ``codes`` (int32 per row) into its distinct ``values`` (str)."""

    codes: np.ndarray
    values: np.ndarray

    def strings(self) -> np.ndarray:
        """One string per row (small tables only: this materialises every cell)."""
        return self.values[self.codes]


class Table:
    """Rows of a text table as dictionary-encoded columns, with their file lines."""

    def __init__(self, path: Path, columns: list[Column], n_rows: int, header: list[str],
                 lines: np.ndarray | None = None, header_line: int = 0):
        self.path = path
        self.columns = columns
        self.header = header
        self._n_rows = n_rows
        self._lines = lines
        self._header_line = header_line

    def __len__(self) -> int:
        return self._n_rows

    def line(self, row: int) -> int:
        """1-based file line of table row ``row`` (computed on first use)."""
        if self._lines is None:
            self._lines = _data_line_numbers(self.path, self._header_line)
        return int(self._lines[row])

    def fail(self, row: int, problem: str) -> DataError:
        """A DataError located at table row ``row``."""
        return DataError(problem, self.path, self.line(row))

    def first_row_of(self, col: int, value_index: int) -> int:
        """First row whose cell in ``col`` is distinct value ``value_index``."""
        return int(np.argmax(self.columns[col].codes == value_index))

    def ints(self, col: int, what: str) -> np.ndarray:
        """Column ``col`` parsed as int64; a non-integer cell is a DataError."""
        c = self.columns[col]
        try:
            return c.values.astype(np.int64)[c.codes]
        except (ValueError, OverflowError):
            pass
        for k, v in enumerate(c.values.tolist()):  # distinct values, first appearance first
            try:
                ok = -(2 ** 63) <= int(v) < 2 ** 63
            except ValueError:
                ok = False
            if not ok:
                raise self.fail(self.first_row_of(col, k),
                                f"{what} must be an integer (64-bit), got {v!r}")
        raise AssertionError("unreachable")  # pragma: no cover

    def float_values(self, col: int, what: str) -> np.ndarray:
        """The distinct values of ``col`` as float64 (index them with its codes)."""
        c = self.columns[col]
        try:
            out = c.values.astype(np.float64)
        except ValueError:
            out = None
        if out is not None and np.isfinite(out).all():
            return out
        for k, v in enumerate(c.values.tolist()):
            try:
                ok = bool(np.isfinite(float(v)))
            except ValueError:
                ok = False
            if not ok:
                raise self.fail(self.first_row_of(col, k),
                                f"{what} must be a finite number, got {v!r}")
        raise AssertionError("unreachable")  # pragma: no cover

    def floats(self, col: int, what: str) -> np.ndarray:
        """Column ``col`` parsed as float64; non-numeric or non-finite cells fail."""
        return self.float_values(col, what)[self.columns[col].codes]


def read_table(path: Path, n_cols: int, sep: str = "\t", header: bool = False,
               strip_quotes: bool = False, min_cols: int | None = None,
               usecols: tuple[int, ...] | None = None) -> Table:
    """Read ``path`` as a table of ``n_cols`` columns separated by ``sep``.

    ``min_cols`` allows rows with extra trailing columns (ignored) as long as
    they have at least that many; by default the count must be exact.
    ``usecols`` keeps only those columns (in that order); the others are
    still checked for presence, never built.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    keep = tuple(range(n_cols)) if usecols is None else tuple(usecols)
    fast = None if min_cols is not None else _fast_table(path, n_cols, sep, header,
                                                         strip_quotes, keep)
    if fast is not None:
        return fast
    table = _strict_table(path, n_cols, sep, header, strip_quotes, min_cols)
    table.columns = [table.columns[c] for c in keep]
    return table


# ------------------------------------------------------------------ fast pass
def _fast_table(path: Path, n_cols: int, sep: str, header: bool, strip_quotes: bool,
                keep: tuple[int, ...]) -> Table | None:
    """Parse with pyarrow; None sends the caller to the strict pass."""
    start, head, header_line = _header(path, sep) if header else (0, [], 0)
    if start is None or _has_bare_cr(path):
        return None
    names = [f"c{i}" for i in range(n_cols)]
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = pacsv.read_csv(
                f, read_options=pacsv.ReadOptions(column_names=names, use_threads=True),
                parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False,
                                                 double_quote=False, escape_char=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    include_columns=[names[c] for c in keep], strings_can_be_null=False))
    except (pa.ArrowException, OSError, ValueError):
        return None
    if data.num_rows == 0:
        return None
    pending = [data.column(c) for c in range(len(keep))]
    del data
    columns = []
    while pending:  # encode one column at a time, freeing its strings before the next
        enc = pending.pop(0).dictionary_encode().combine_chunks()
        column = _normalise(Column(enc.indices.to_numpy().astype(np.int32, copy=False),
                                   np.asarray(enc.dictionary.to_pylist(), dtype=str)),
                            strip_quotes)
        if column is None:
            return None
        columns.append(column)
    return Table(path, columns, len(columns[0].codes), head, header_line=header_line)


def _header(path: Path, sep: str) -> tuple[int | None, list[str], int]:
    """Byte offset after the header line, its cells and its 1-based line number.

    Leading blank lines are skipped as the strict reader does; an undecodable
    or missing header gives ``None`` (the strict pass reports it).
    """
    with path.open("rb") as f:
        for number, raw in enumerate(iter(f.readline, b""), start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return None, [], 0
            if text.strip():
                return f.tell(), text.rstrip("\r\n").split(sep), number
    return None, [], 0


def _has_bare_cr(path: Path) -> bool:
    """Whether ``path`` holds a carriage return outside a CRLF pair.

    pyarrow takes a lone CR for a line end, the strict reader for a character
    of the cell; such files go to the strict pass so both agree.
    """
    prev_cr = False
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_SCAN_BLOCK), b""):
            if prev_cr and not block.startswith(b"\n"):
                return True
            if b"\r" in block:  # memchr: clean files pay almost nothing
                body = block[:-1] if block.endswith(b"\r") else block
                if body.count(b"\r") != body.count(b"\r\n"):
                    return True
            prev_cr = block.endswith(b"\r")
    return prev_cr


def _normalise(column: Column, strip_quotes: bool) -> Column | None:
    """Strip (and unquote) the distinct values as the strict reader strips cells.

    Values that become equal are merged, keeping first-appearance order. An
    empty value gives None: the strict pass reports its line.
    """
    values = column.values
    clean = np.char.strip(values)
    if strip_quotes:
        quoted = (np.char.str_len(clean) >= 2) & np.char.startswith(clean, '"') \
            & np.char.endswith(clean, '"')
        if quoted.any():
            clean = clean.astype(object)
            clean[quoted] = [v[1:-1] for v in clean[quoted]]
            clean = clean.astype(str)
    if len(clean) and (np.char.str_len(clean) == 0).any():
        return None
    if np.array_equal(clean, values):
        return column
    uniq, first, inverse = np.unique(clean, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return Column(rank[inverse.reshape(-1)][column.codes], uniq[order])


def _data_line_numbers(path: Path, header_line: int) -> np.ndarray:
    """1-based numbers of the non-blank lines after line ``header_line``."""
    data = np.fromfile(path, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    if len(data) and data[-1] != 10:
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1])
    length = ends - starts
    cr = length > 0
    cr[cr] = data[ends[cr] - 1] == 13
    length = length - cr
    numbers = np.flatnonzero(length > 0) + 1
    return numbers[numbers > header_line]


# ------------------------------------------------------------------ strict pass
def _strict_table(path: Path, n_cols: int, sep: str, header: bool, strip_quotes: bool,
                  min_cols: int | None) -> Table:
    """Line-by-line reading that names the first bad line (the reference semantics)."""
    raw = path.read_bytes()
    if raw.startswith(_BOM):
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
    columns = [_encode(np.array([r[c] for r in rows])) for c in range(n_cols)]
    return Table(path, columns, len(rows), head, lines=np.asarray(numbers, dtype=np.int64))


def _encode(values: np.ndarray) -> Column:
    """Dictionary-encode a string array, values in order of first appearance."""
    codes, uniq = first_appearance_codes(values)
    return Column(codes.astype(np.int32), uniq)


# ------------------------------------------------------------------ codes
def dense_codes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of integer ``keys`` in order of first appearance.

    Returns ``(codes, distinct)`` with ``distinct[codes] == keys``; a hash
    pass in pyarrow, no sort.
    """
    enc = pa.array(np.ascontiguousarray(keys)).dictionary_encode()
    return (enc.indices.to_numpy().astype(np.int64, copy=False),
            enc.dictionary.to_numpy(zero_copy_only=False))


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Mask of the entries of integer ``keys`` that occur for the first time.

    One in-place sort of ``key << b | position`` (b bits hold a position):
    equal keys end up adjacent in stream order, so each run's head is a
    first occurrence. A hash table is several times slower once the keys
    outgrow the caches (12 M distinct int64: 6.8 s in pyarrow against 0.4 s).
    Keys that do not fit beside a position go through ``dense_codes``.
    """
    n = len(keys)
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    bits = max(int(n - 1).bit_length(), 1)
    lo, hi = int(keys.min()), int(keys.max())
    if lo < 0 or hi.bit_length() + bits > 63:
        codes, _ = dense_codes(keys)
        mask[0] = True
        mask[1:] = codes[1:] > np.maximum.accumulate(codes)[:-1]
        return mask
    packed = keys.astype(np.int64) << np.int64(bits)
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    head = np.empty(n, dtype=bool)
    head[0] = True
    np.not_equal(packed[1:] >> bits, packed[:-1] >> bits, out=head[1:])
    mask[packed[head] & np.int64((1 << bits) - 1)] = True
    return mask


def first_appearance_codes(values: np.ndarray, preset: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Map values to dense codes in order of first appearance.

    ``preset`` lists values that take codes ``0..len(preset)-1`` first (e.g.
    the items among KG entities); the remaining values follow in order of
    first appearance in ``values``. Returns ``(codes, vocabulary)``.
    """
    preset = np.array([], dtype=str) if preset is None else np.asarray(preset, dtype=str)
    allv = np.concatenate([preset, np.asarray(values, dtype=str)])
    enc = pa.array(allv.tolist() if len(allv) else [], type=pa.string()).dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    vocab = np.asarray(enc.dictionary.to_pylist(), dtype=str)
    return codes[len(preset):], vocab
