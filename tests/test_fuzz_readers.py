"""Property-based: generated, mutated and truncated files at every reader.

Each reader either returns a valid dataset or raises DataError naming the
problem; nothing else may escape (no IndexError, ValueError, UnicodeError...).
Inputs start from real files (Last.FM raw, Book-Crossing final, a RecBole
export), cut to a few hundred lines so each example runs in milliseconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kgnnls import Config, ConfigError, DataError, RunOptions
from kgnnls.config import split_settings
from kgnnls.data import read_final, read_raw, read_recbole
from kgnnls.data.writers import write_recbole
from kgnnls.storage import load_checkpoint

# KGNNLS_FUZZ_EXAMPLES=5000 KGNNLS_FUZZ_RANDOM=1 for a longer, randomized campaign
EXAMPLES = int(os.environ.get("KGNNLS_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    derandomize="KGNNLS_FUZZ_RANDOM" not in os.environ,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("drop_line"), st.floats(0, 1)),
    st.tuples(st.just("dup_line"), st.floats(0, 1)),
    st.tuples(st.just("bytes"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("field"), st.floats(0, 1), st.sampled_from(
        ["", "x", "-1", "1e309", "nan", "0.5", "2", "\t", " ", "\"", "99999999999999999999",
         "\u00e9", "1\t2"])),
    st.tuples(st.just("swap"), st.floats(0, 1)),
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    for op in ops:
        kind, where = op[0], op[1]
        if kind == "truncate":
            data = data[: int(len(data) * where)]
            continue
        lines = data.split(b"\n")
        i = min(int(len(lines) * where), len(lines) - 1)
        if kind == "drop_line":
            del lines[i]
        elif kind == "dup_line":
            lines.insert(i, lines[i])
        elif kind == "bytes":
            pos = int(len(data) * where)
            data = data[:pos] + op[2] + data[pos:]
            continue
        elif kind == "field":
            cells = lines[i].split(b"\t")
            cells[min(int(len(cells) * where), len(cells) - 1)] = op[2].encode()
            lines[i] = b"\t".join(cells)
        elif kind == "swap":
            cells = lines[i].split(b"\t")
            lines[i] = b"\t".join(reversed(cells))
        data = b"\n".join(lines)
    return data


def _head(path: Path, n: int) -> bytes:
    return b"\n".join(path.read_bytes().split(b"\n")[:n]) + b"\n"


_SOURCES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _sources(tmp_path_factory, music_dir, book_dir, planted):
    # module state, not a fixture argument: hypothesis would print all of it
    _SOURCES.update(_build_sources(tmp_path_factory.mktemp("sources"), music_dir, book_dir,
                                   planted))


def _build_sources(root, music_dir, book_dir, planted):
    raw = {"user_artists.dat": _head(music_dir / "user_artists.dat", 400),
           "item_index2entity_id.txt": _head(music_dir / "item_index2entity_id.txt", 300),
           "kg.txt": _head(music_dir / "kg.txt", 400)}
    final = {"ratings_final.txt": _head(book_dir / "ratings_final.txt", 300),
             "kg.txt": _head(book_dir / "kg.txt", 400)}
    write_recbole(planted, root / "rb", name="p", ratings=(5.0, 1.0))
    recbole = {p.name: p.read_bytes() for p in (root / "rb").iterdir()}
    return {"raw": raw, "final": final, "recbole": recbole}


def _check(reader, files: dict[str, bytes], target: str, ops: list[tuple], **kw) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kgnnls-fuzz-"))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(mutate(data, ops) if name == target else data)
        try:
            ds = reader(tmp, **kw)
        except DataError as e:
            assert str(e)  # a message, naming the file
            assert e.path is None or Path(e.path).name in files or e.path == str(tmp)
            return
        ds.validate()
    finally:
        shutil.rmtree(tmp)


@SETTINGS
@given(target=st.sampled_from(["user_artists.dat", "item_index2entity_id.txt", "kg.txt"]),
       ops=st.lists(mutation, min_size=1, max_size=4))
def test_raw_reader_loads_or_raises_data_error(target, ops):
    _check(read_raw, _SOURCES["raw"], target, ops)


@SETTINGS
@given(target=st.sampled_from(["ratings_final.txt", "kg.txt"]),
       ops=st.lists(mutation, min_size=1, max_size=4))
def test_final_reader_loads_or_raises_data_error(target, ops):
    _check(read_final, _SOURCES["final"], target, ops)


@SETTINGS
@given(target=st.sampled_from(["p.inter", "p.kg", "p.link"]),
       ops=st.lists(mutation, min_size=1, max_size=4), threshold=st.sampled_from([None, 3.0]))
def test_recbole_reader_loads_or_raises_data_error(target, ops, threshold):
    _check(read_recbole, _SOURCES["recbole"], target, ops, threshold=threshold)


@SETTINGS
@given(overrides=st.dictionaries(
    st.sampled_from(["dim", "d", "lambda", "variant", "topk", "ls_hops", "lr", "bogus",
                     "negatives", "extra.x", "threshold", "seed", "threads", "device"]),
    st.text(max_size=12), max_size=4))
def test_config_overrides_apply_or_raise_config_error(overrides):
    config_part, options_part = split_settings(overrides)  # as --set routes them
    try:
        Config().with_overrides(config_part).validate()
        RunOptions().with_overrides(options_part).validate()
    except ConfigError as e:
        assert str(e)


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_checkpoint_loader_rejects_garbage(tmp_path, data):
    from kgnnls import CheckpointError

    path = tmp_path / "model.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
