"""Named datasets and :func:`load_dataset`, the one way to get a Dataset.

A dataset is found, in order: in a local directory (``data_dir`` argument,
then ``$KGNNLS_DATA``; either the files themselves or a sub-directory named
after the dataset or an alias), inside the package (Last.FM), or in the
download cache (fetched on first use with SHA-256 verification). Any other
string is taken as the path of a directory in one of the three layouts.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kgnnls.data.dataset import Dataset
from kgnnls.data.download import RemoteFile, cache_root, fetch, sha256_of
from kgnnls.data.readers import detect_layout, read_directory
from kgnnls.data.sampling import sample_negatives
from kgnnls.errors import DataError

log = logging.getLogger(__name__)

_KGNNLS_RAW = "https://raw.githubusercontent.com/hwwang55/KGNN-LS/3afd76361b623e9e38b822861c79bcd61dae41aa/data/music/"
_SARC_RAW = "https://raw.githubusercontent.com/weifeng-ai/SARC/4bc0fed41fae1811197b7a0e7bb6b371b0722e33/data/book/"


@dataclass(frozen=True)
class DatasetSpec:
    """How to obtain one named dataset."""

    name: str
    title: str
    preset: str
    aliases: tuple[str, ...] = ()
    embedded: str | None = None
    files: dict[str, RemoteFile] = field(default_factory=dict)
    how_to_get: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec(
        name="lastfm", title="Last.FM (HetRec 2011) + Microsoft Satori sub-KG, KGNN-LS release",
        preset="lastfm", aliases=("music", "last.fm"), embedded="lastfm.tar.xz",
        files={
            "user_artists.dat": RemoteFile(_KGNNLS_RAW + "user_artists.dat",
                                           "254272fa721c3935e8be286d28c051b206844307128698ab4eaa41d483379416"),
            "item_index2entity_id.txt": RemoteFile(_KGNNLS_RAW + "item_index2entity_id.txt",
                                                   "f9693bdde538f755d09b9931b0be662a98965e538658a00c2050912c0adf487b"),
            "kg.txt": RemoteFile(_KGNNLS_RAW + "kg.txt",
                                 "f62bbc8f717c9f68e66dff6faeaa71025092acc11a0f1b4878b953eb05f946a9"),
        }),
    DatasetSpec(
        name="book-crossing",
        title="Book-Crossing + Satori sub-KG, RippleNet/MKR preprocessed release",
        preset="book-crossing", aliases=("book", "bx"),
        files={
            "ratings_final.txt": RemoteFile(_SARC_RAW + "ratings_final.txt",
                                            "a2dbed819fe3691fb0c5f58bd0ba018ad493339c1270d331e1c5f52cffe3df37"),
            "kg.txt": RemoteFile(_SARC_RAW + "kg_final.txt",
                                 "60a4a2c2e6f101fbbd5763c72be3ed4f565498e7f6c8660eb19fe598dc7158b2"),
            "item_index2entity_id.txt": RemoteFile(_SARC_RAW + "item_index2entity_id.txt",
                                                   "923eae9ed0c253e3f45076288ef7f18c19801ee441bb4bb2866c766019a266e3"),
        }),
    DatasetSpec(
        name="movielens-20m", title="MovieLens-20M + Satori sub-KG (raw layout, local only)",
        preset="movielens-20m", aliases=("movie", "ml-20m"),
        how_to_get="put ratings.csv from https://files.grouplens.org/datasets/movielens/ml-20m.zip "
                   "beside data/movie/item_index2entity_id.txt and kg.txt of hwwang55/KGNN-LS, "
                   "then pass that directory as --data-dir (or set KGNNLS_DATA)"),
    DatasetSpec(
        name="dianping-food", title="Dianping-Food (Meituan-Dianping release, local only)",
        preset="dianping-food", aliases=("restaurant",),
        how_to_get="unzip data/restaurant/Dianping-Food.zip of hwwang55/KGNN-LS and pass that "
                   "directory as --data-dir (or set KGNNLS_DATA)"),
]}


def find_spec(name: str) -> DatasetSpec | None:
    """The registry entry for ``name`` or one of its aliases (case-insensitive)."""
    key = name.strip().lower()
    for spec in REGISTRY.values():
        if key in spec.names:
            return spec
    return None


def _local_dir(spec: DatasetSpec, data_dir: str | Path | None) -> Path | None:
    roots = [Path(r) for r in (data_dir, os.environ.get("KGNNLS_DATA")) if r]
    for root in roots:
        for cand in [root, *(root / n for n in spec.names)]:
            if cand.is_dir():
                try:
                    detect_layout(cand)
                except DataError:
                    continue
                return cand
    if data_dir is not None:
        raise DataError(f"no {spec.name} files found here or in a sub-directory named "
                        f"{' / '.join(spec.names)}", data_dir)
    return None


def _read_embedded(spec: DatasetSpec, **options: Any) -> Dataset:
    archive = resources.files("kgnnls.data") / "embedded" / spec.embedded
    with tempfile.TemporaryDirectory(prefix="kgnnls-") as tmp, \
            resources.as_file(archive) as path, tarfile.open(path, "r:xz") as tar:
        tar.extractall(tmp, filter="data")
        for fname, remote in spec.files.items():
            if sha256_of(Path(tmp) / fname) != remote.sha256:
                raise DataError(f"embedded {fname} does not match its recorded checksum; "
                                "the installation is damaged", path)
        return read_directory(Path(tmp), name=spec.name, **options)


def _read_downloaded(spec: DatasetSpec, progress: bool, **options: Any) -> Dataset:
    target = cache_root() / spec.name
    for fname, remote in spec.files.items():
        fetch(remote, target / fname, progress=progress)
    return read_directory(target, name=spec.name, **options)


def load_dataset(name_or_path: str | Path, *, seed: int = 0, data_dir: str | Path | None = None,
                 threshold: float | None = None, download: bool = True,
                 progress: bool = True, ratings: str = "positives-only",
                 unlinked: str = "entity") -> Dataset:
    """Load a registered dataset or a directory, with negatives in place.

    ``seed`` drives negative sampling when the source has no negatives (the
    same seed gives the same rows); ``threshold`` and the ``ratings`` policy
    turn explicit ratings into labels where a layout has ratings;
    ``unlinked`` says what a RecBole item without a KG entity becomes (the
    ``Config`` fields of the same names; see README, Datasets).
    """
    options: dict[str, Any] = {"threshold": threshold, "ratings": ratings, "unlinked": unlinked}
    spec = find_spec(str(name_or_path))
    if spec is None:
        path = Path(name_or_path)
        if not path.is_dir():
            known = ", ".join(REGISTRY)
            raise DataError(f"unknown dataset {str(name_or_path)!r}: neither a registered name "
                            f"({known}) nor a directory")
        ds = read_directory(path, **options)
    else:
        local = _local_dir(spec, data_dir)
        if local is not None:
            ds = read_directory(local, name=spec.name, **options)
        elif spec.embedded:
            ds = _read_embedded(spec, **options)
        elif spec.files and download:
            ds = _read_downloaded(spec, progress, **options)
        else:
            how = spec.how_to_get or "pass --data-dir"
            raise DataError(f"dataset {spec.name!r} is not available locally: {how}")
    if not ds.has_negatives:
        ds = sample_negatives(ds, seed)
    return ds
