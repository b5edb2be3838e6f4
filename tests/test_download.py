"""Downloads: a local HTTP server on 127.0.0.1 stands in for the canonical source."""

from __future__ import annotations

import functools
import shutil
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kgnnls import DataError, load_dataset
from kgnnls.data.download import RemoteFile, cache_root, fetch
from kgnnls.data.registry import REGISTRY


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """Serve tmp_path/www over HTTP and point KGNNLS_MIRROR at it."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("KGNNLS_MIRROR", f"http://127.0.0.1:{server.server_port}")
    yield root
    server.shutdown()
    server.server_close()


def _place(root: Path, url: str, source: Path) -> Path:
    parts = urllib.parse.urlsplit(url)
    dest = root / parts.netloc / parts.path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest


def test_book_crossing_downloads_verifies_and_caches(mirror, book_dir, monkeypatch):
    spec = REGISTRY["book-crossing"]
    for name, remote in spec.files.items():
        _place(mirror, remote.url, book_dir / name)
    ds = load_dataset("book-crossing", progress=False)
    assert ds.stats()["interactions"] == 139746
    assert sorted(p.name for p in (cache_root() / "book-crossing").iterdir()) == sorted(spec.files)
    # offline now: the verified cache is enough
    monkeypatch.setenv("KGNNLS_MIRROR", "http://127.0.0.1:9")
    assert load_dataset("book-crossing", progress=False).fingerprint() == ds.fingerprint()


def test_checksum_mismatch_keeps_nothing(mirror, tmp_path):
    src = tmp_path / "payload.txt"
    src.write_text("tampered\n")
    url = "https://example.org/data/payload.txt"
    _place(mirror, url, src)
    dest = tmp_path / "cache" / "payload.txt"
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(RemoteFile(url, "0" * 64), dest, progress=False)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))


def test_unreachable_source_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KGNNLS_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(DataError, match="download failed"):
        fetch(RemoteFile("https://example.org/x.txt", "0" * 64), tmp_path / "x.txt",
              progress=False, timeout=5)
