"""All file and object-store access (the only module that imports fsspec).

A `Location` is a root URL (a local folder, `s3://bucket/prefix`, `memory://x`, any fsspec
URL) plus its filesystem. Keys are '/'-separated paths relative to the root; they are
checked so that no key can escape its root.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from sanitizer.errors import StorageError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Location:
    url: str  # as given by the user
    root: str  # filesystem path of the root, without a trailing slash
    fs: Any  # fsspec.AbstractFileSystem

    @property
    def protocol(self) -> str:
        p = self.fs.protocol
        return p[0] if isinstance(p, tuple | list) else p

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def uri(self, key: str) -> str:
        """A full URL for `key`, usable to open it again."""
        path = self.path(key)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def path(self, key: str) -> str:
        return f"{self.root}/{safe_key(key)}" if key else self.root


def location(url: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Resolve a folder path or an fsspec URL. Raises StorageError with a plain reason."""
    try:
        if "://" not in url:
            url = str(Path(url).expanduser().resolve())
        fs, root = url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        raise StorageError(f"{url}: support for this URL is not installed ({exc}); "
                           "for s3:// run: pip install 'sanitizer[s3]'") from None
    except (ValueError, OSError) as exc:
        raise StorageError(f"{url}: {exc}") from None
    return Location(url, root.rstrip("/") or "/", fs)


def safe_key(key: str) -> str:
    """Reject keys that are absolute or climb out of their root."""
    if not key or key.startswith("/") or "\\" in key:
        raise StorageError(f"unsafe key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"unsafe key {key!r}")
    return key


def is_inside(inner: Location, outer: Location) -> bool:
    """True when `inner` equals `outer` or lies below it (same filesystem)."""
    if inner.protocol != outer.protocol:
        return False
    a, b = inner.root.rstrip("/"), outer.root.rstrip("/")
    if inner.is_local:
        a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/")


def walk(loc: Location, include_hidden: bool = False) -> Iterator[tuple[str, int]]:
    """Yield (key, size) of every file under the root, sorted by key."""
    fs = loc.fs
    try:
        if not fs.exists(loc.root):
            raise StorageError(f"{loc.url}: no such file or folder")
        if fs.isfile(loc.root):
            raise StorageError(f"{loc.url}: is a file; give the folder that holds it")
        found = fs.find(loc.root, detail=True, withdirs=False)
    except StorageError:
        raise
    except (OSError, ValueError) as exc:
        raise StorageError(f"{loc.url}: cannot list ({exc})") from None
    prefix = loc.root.rstrip("/") + "/"
    for path in sorted(found):
        info = found[path]
        if info.get("type", "file") != "file":
            continue
        key = path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
        if not key or (not include_hidden and any(p.startswith(".") for p in key.split("/"))):
            continue
        yield key, int(info.get("size") or 0)


def read_head(loc: Location, key: str, n: int = 64) -> bytes:
    try:
        with loc.fs.open(loc.path(key), "rb") as f:
            return f.read(n)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{key}: cannot read ({exc})") from None


def read_bytes(loc: Location, key: str) -> bytes:
    try:
        return loc.fs.cat_file(loc.path(key))
    except (OSError, ValueError) as exc:
        raise StorageError(f"{key}: cannot read ({exc})") from None


def sha256_of(loc: Location, key: str) -> str:
    h = hashlib.sha256()
    try:
        with loc.fs.open(loc.path(key), "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{key}: cannot read ({exc})") from None
    return h.hexdigest()


@contextlib.contextmanager
def local_copy(loc: Location, key: str) -> Iterator[tuple[str, str]]:
    """A local path holding the object's bytes (the file itself when local), and its sha256."""
    if loc.is_local:
        yield loc.path(key), sha256_of(loc, key)
        return
    with tempfile.TemporaryDirectory(prefix="sanitizer-in-") as tmp:
        dst = os.path.join(tmp, "src" + posixpath.splitext(key)[1])
        h = hashlib.sha256()
        try:
            with loc.fs.open(loc.path(key), "rb") as f, open(dst, "wb") as out:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except (OSError, ValueError) as exc:
            raise StorageError(f"{key}: cannot download ({exc})") from None
        yield dst, h.hexdigest()


def put_bytes(loc: Location, key: str, data: bytes) -> str:
    """Write atomically: a temporary name then rename (local) or a single PUT (object stores)."""
    path = loc.path(key)
    try:
        if loc.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            loc.fs.pipe_file(path, data)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{key}: cannot write output ({exc})") from None
    return loc.uri(key)


def put_file(loc: Location, key: str, local_path: str) -> str:
    """Move/upload a finished local file to `key` atomically."""
    path = loc.path(key)
    try:
        if loc.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                shutil.copyfile(local_path, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            loc.fs.put_file(local_path, path)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{key}: cannot write output ({exc})") from None
    return loc.uri(key)


def remove(loc: Location, key: str) -> None:
    """Delete `key` if present (a stale output of an earlier run that now failed)."""
    path = loc.path(key)
    try:
        if loc.fs.exists(path):
            loc.fs.rm_file(path)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{key}: cannot remove stale output ({exc})") from None


def exists(loc: Location, key: str) -> bool:
    try:
        return bool(loc.fs.exists(loc.path(key)))
    except (OSError, ValueError):
        return False


def makedirs(loc: Location, key: str = "") -> None:
    try:
        loc.fs.makedirs(loc.path(key) if key else loc.root, exist_ok=True)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{loc.url}: cannot create ({exc})") from None


def open_file(loc: Location, key: str, mode: str = "rb"):
    return loc.fs.open(loc.path(key), mode)


def list_prefix(loc: Location, key: str) -> list[str]:
    """Keys of files below `key` (for reading back audit parts)."""
    base = loc.path(key)
    try:
        if not loc.fs.exists(base):
            return []
        paths = loc.fs.find(base)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{loc.url}: cannot list {key} ({exc})") from None
    prefix = loc.root.rstrip("/") + "/"
    return sorted(p[len(prefix):] for p in paths if p.startswith(prefix))


__all__ = ["Location", "location", "fsspec"]
