"""Shared fixtures: the real datasets beside the checkout, and tiny synthetic ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KGNNLS_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset_dir(name: str) -> Path:
    """``../shared/data/NAME`` or a clean skip naming what is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset not available: {path} is absent (set KGNNLS_SHARED_DATA to "
                    "the directory holding music/ and book/)")
    return path


@pytest.fixture(scope="session")
def book_dir() -> Path:
    return shared_dataset_dir("book")


@pytest.fixture(scope="session")
def music_dir() -> Path:
    return shared_dataset_dir("music")


@pytest.fixture(scope="session")
def lastfm():
    from kgnnls import load_dataset

    return load_dataset("lastfm", seed=0)


@pytest.fixture(scope="session")
def planted():
    from kgnnls.data.synthetic import planted_dataset

    return planted_dataset(seed=0)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    # never touch the user's cache or pick up their data directory
    monkeypatch.setenv("KGNNLS_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("KGNNLS_DATA", raising=False)
    monkeypatch.delenv("KGNNLS_MIRROR", raising=False)
    np.seterr(all="raise", under="ignore")
    yield
    np.seterr(all="warn")


def write_final_layout(ds, path: Path) -> Path:
    """Write a Dataset in the RippleNet 'final' layout (integer ids)."""
    path.mkdir(parents=True, exist_ok=True)
    np.savetxt(path / "ratings_final.txt", ds.ratings, fmt="%d", delimiter="\t")
    np.savetxt(path / "kg.txt", ds.kg, fmt="%d", delimiter="\t")
    return path


def seen_items(model, user: str | int) -> list[str]:
    """The items ``user`` has as training positives in a fitted ``KGNNLS`` (original
    ids): what ``recommend`` excludes by default."""
    u = model.user_index(user)
    return model.item_ids[model._seen_items[model._seen_ptr[u]:model._seen_ptr[u + 1]]].tolist()
