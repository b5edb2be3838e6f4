"""Download public dataset files with SHA-256 verification and a cache.

Files land in ``$KGNNLS_CACHE`` (default ``~/.cache/kgnnls``), one directory
per dataset. A file is only ever moved into place after its checksum
matched, so an interrupted or corrupted download never poisons the cache.
``$KGNNLS_MIRROR`` replaces the URL's scheme and host (a local mirror, or
the 127.0.0.1 server of the tests).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from kgnnls.errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    """A published file: where to get it, and what it must hash to."""

    url: str
    sha256: str


def cache_root() -> Path:
    return Path(os.environ.get("KGNNLS_CACHE", Path.home() / ".cache" / "kgnnls"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mirrored(url: str) -> str:
    mirror = os.environ.get("KGNNLS_MIRROR")
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return mirror.rstrip("/") + "/" + parts.netloc + parts.path


def fetch(remote: RemoteFile, dest: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Make ``dest`` a verified copy of ``remote`` (download unless cached)."""
    dest = Path(dest)
    if dest.is_file() and sha256_of(dest) == remote.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = _mirrored(remote.url)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                raise DataError(f"download failed: {e}", url) from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                          disable=not progress, leave=False) as bar:
                    for block in iter(lambda: resp.read(1 << 16), b""):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != remote.sha256:
            raise DataError(f"checksum mismatch: expected sha256 {remote.sha256}, got "
                            f"{h.hexdigest()}; the file was not kept", url)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
