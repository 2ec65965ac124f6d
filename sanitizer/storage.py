"""All file and object-store access (the only module that imports fsspec).

A `Location` is a root URL (a local folder, `s3://bucket/prefix`, `memory://x`, any fsspec
URL) plus its filesystem. Keys are '/'-separated paths relative to the root; they are
checked so that no key can escape its root.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import os
import posixpath
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import split_protocol, url_to_fs

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
    """Resolve a folder path or an fsspec URL. Raises StorageError with a plain reason.

    For s3:// the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL, AWS_PROFILE) apply as usual, `storage_options` go to s3fs, and
    `s3_options` fills in bounded timeouts and S3-compatible checksum settings.
    """
    try:
        if "://" not in url:
            url = str(Path(url).expanduser().resolve())
        options = dict(storage_options or {})
        is_s3 = split_protocol(url)[0] in S3_PROTOCOLS
        if is_s3:
            options = s3_options(options)
        fs, root = url_to_fs(url, **options)
        if is_s3 and hasattr(fs, "retries"):
            fs.retries = S3FS_RETRIES  # s3fs's own retry loop, on top of botocore's attempts
    except ImportError as exc:
        raise StorageError(
            f"{url}: support for this URL is not installed ({_why(exc)}); "
            "for s3:// run: pip install 'sanitizer[s3]'"
        ) from None
    except (TypeError, *_io_errors()) as exc:  # TypeError: an option the filesystem does not take
        raise StorageError(f"{url}: {_why(exc)}") from None
    return Location(url, root.rstrip("/") or "/", fs)


S3_PROTOCOLS = ("s3", "s3a")
S3FS_RETRIES = 2
# Defaults for botocore's Config: bounded waits (a dead or silent endpoint fails within
# about S3FS_RETRIES x max_attempts x read_timeout = 60 s, a refused connection within
# seconds), and checksums only when the operation requires them - the behaviour before
# botocore 1.36, which S3-compatible stores (seaweedfs, older MinIO, Ceph) expect.
S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 10,
    "retries": {"total_max_attempts": 3, "mode": "standard"},  # 3 requests in all
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}
_S3_CONFIG_ENV = {  # botocore also reads these; an explicit environment setting wins
    "request_checksum_calculation": "AWS_REQUEST_CHECKSUM_CALCULATION",
    "response_checksum_validation": "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "retries": "AWS_MAX_ATTEMPTS",
}


def s3_options(storage_options: dict[str, Any]) -> dict[str, Any]:
    """`storage_options` with sanitizer's botocore defaults under `config_kwargs`;
    values the user gave (in the options or in the AWS_* environment) win."""
    options = copy.deepcopy(storage_options)  # botocore rewrites a `retries` dict in place
    config = options.get("config_kwargs") or {}
    for name, value in S3_CONFIG_DEFAULTS.items():
        if name not in config and not os.environ.get(_S3_CONFIG_ENV.get(name, "")):
            config[name] = copy.deepcopy(value)
    options["config_kwargs"] = config
    return options


def _io_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this storage operation failed". botocore's own errors
    (endpoint unreachable, no credentials, timeouts) are not OSErrors; they can only occur
    once s3fs has imported botocore, so it is never imported here just to catch them."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError)
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None:
        errors += (boto.BotoCoreError, boto.ClientError)
    return errors


def _why(exc: BaseException) -> str:
    """A one-line reason, with a hint for the usual object-store mistakes."""
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    name = type(exc).__name__
    if isinstance(exc, PermissionError) or name in (
        "NoCredentialsError",
        "PartialCredentialsError",
    ):
        text += (
            "; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            "storage_options key/secret) and that they may access this bucket"
        )
    elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
        text += "; check the endpoint (AWS_ENDPOINT_URL or storage_options endpoint_url) and the network"
    return text


def safe_key(key: str) -> str:
    """Reject keys that are absolute or climb out of their root. A backslash is an ordinary
    character of a name on POSIX file systems and object stores (dumps made on Windows have
    them); it is refused only where it separates folders (Windows)."""
    if not key or key.startswith("/") or "\x00" in key or (os.sep == "\\" and "\\" in key):
        raise StorageError(f"unsafe key {printable(key)!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"unsafe key {printable(key)!r}")
    return key


# Top-level names of DST that belong to sanitizer (the audit, its staging area, leases): a SRC
# key whose first component starts with one of them (in any letter case) is refused, so that
# no source file can land in or next to DST's audit.
RESERVED_PREFIXES = ("_audit", "_staging", "_sanitizer")
NAME_MAX = 255  # bytes of one name component (ext4, XFS, APFS, NTFS; S3 keys: 1024 in all)


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes of a name that is not UTF-8 (which Python holds as lone
    surrogates, "surrogateescape") become `\\xNN`; for the lossless form see `raw_key`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that does not stand for a byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def raw_key(key: str) -> str:
    """The key's exact bytes, percent-encoded (RFC 3986; '/' kept): lossless for any name,
    `urllib.parse.unquote_to_bytes` gives the bytes back."""
    from urllib.parse import quote

    return quote(
        os.fsencode(key) if os.name == "posix" else key.encode("utf-8", "surrogatepass"), safe="/"
    )


def refused(key: str) -> str:
    """Why a SRC key cannot be processed and published ("" when it can)."""
    try:
        safe_key(key)
    except StorageError:
        return "refused: unsafe name (empty, absolute, '.' or '..' component, or a NUL byte)"
    first = key.split("/", 1)[0].lower()
    if first.startswith(RESERVED_PREFIXES):
        return (
            "refused: reserved name (top-level names starting with _audit, _staging or "
            "_sanitizer belong to sanitizer's audit and staging area in DST)"
        )
    try:
        too_long = any(len(os.fsencode(p)) > NAME_MAX for p in key.split("/"))
    except UnicodeEncodeError:
        too_long = False
    if too_long:
        return f"refused: a name component is longer than {NAME_MAX} bytes"
    return ""


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
    for key, size, kind, _ in _listing(loc):
        if kind != "file":
            continue
        if not include_hidden and any(p.startswith(".") for p in key.split("/")):
            continue
        yield key, size


@dataclass(frozen=True)
class Entry:
    """One entry of SRC: a regular file to process (`skip` empty), or something that is only
    recorded (`skip` says why: a link, a FIFO, a device, a hidden or an empty file)."""

    key: str
    size: int
    skip: str = ""
    fail: str = ""  # why an entry that may hold media cannot be read (e.g. an unlistable folder)
    stat: str = ""  # its `stat_token`, from the listing itself


HIDDEN_SKIP = "hidden (input.include_hidden is false)"


def entries(loc: Location, include_hidden: bool = False) -> Iterator[Entry]:
    """Every entry under the root, sorted by key, none opened: regular files to process and,
    with the reason, everything else (nothing is followed or read, so a FIFO cannot hang the
    listing and a link cannot lead outside SRC)."""
    if loc.is_local:
        if not os.path.exists(loc.root):
            raise StorageError(f"{loc.url}: no such file or folder")
        if not os.path.isdir(loc.root):
            raise StorageError(f"{loc.url}: is a file; give the folder that holds it")
        yield from sorted(_local_entries(loc.root, "", include_hidden, False), key=_sort_key)
        return
    for key, size, kind, token in _listing(loc):
        hidden = any(p.startswith(".") for p in key.split("/"))
        if hidden and not include_hidden:
            yield Entry(key, size, HIDDEN_SKIP)
        elif kind != "file":
            yield Entry(key, size, f"not a regular file ({kind})")
        elif size == 0:
            yield Entry(key, 0, "empty file")
        else:
            yield Entry(key, size, stat=token)


def _sort_key(entry: Entry) -> bytes:
    return os.fsencode(entry.key) if os.name == "posix" else entry.key.encode("utf-8", "replace")


def _local_entries(root: str, rel: str, include_hidden: bool, in_hidden: bool) -> Iterator[Entry]:
    import stat

    folder = f"{root}/{rel}" if rel else root
    try:
        with os.scandir(folder) as it:
            listing = list(it)
    except OSError as exc:
        if not rel:
            raise StorageError(f"{root}: cannot list ({_why(exc)})") from None
        yield Entry(rel, 0, fail=f"folder cannot be listed ({_why(exc)})")
        return
    for e in listing:
        key = f"{rel}/{e.name}" if rel else e.name
        hidden = in_hidden or (e.name.startswith(".") and not include_hidden)
        try:
            st = e.stat(follow_symlinks=False)
        except OSError as exc:
            yield Entry(key, 0, fail=f"cannot be read ({_why(exc)})")
            continue
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            yield from _local_entries(root, key, include_hidden, hidden)
            continue
        if hidden:
            reason = HIDDEN_SKIP
        elif stat.S_ISLNK(mode):
            reason = "symbolic link (not followed)"
        elif stat.S_ISFIFO(mode):
            reason = "named pipe (FIFO)"
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            reason = "device file"
        elif stat.S_ISSOCK(mode):
            reason = "socket"
        elif not stat.S_ISREG(mode):
            reason = "not a regular file"
        elif st.st_size == 0:
            reason = "empty file"
        else:
            reason = ""
        # the token fsspec's LocalFileSystem.info gives (os.stat without following links)
        token = "" if reason else _token({"size": st.st_size, "mtime": st.st_mtime})
        yield Entry(key, int(st.st_size), reason, stat=token)


def _listing(loc: Location) -> list[tuple[str, int, str, str]]:
    """(key, size, type, stat token) of every object under the root, through fsspec, sorted
    by key."""
    fs = loc.fs
    try:
        fs.invalidate_cache()  # a cached filesystem instance must not answer from an old listing
        if not fs.exists(loc.root):
            raise StorageError(f"{loc.url}: no such file or folder")
        if fs.isfile(loc.root):
            raise StorageError(f"{loc.url}: is a file; give the folder that holds it")
        found = fs.find(loc.root, detail=True, withdirs=False)
    except StorageError:
        raise
    except _io_errors() as exc:
        raise StorageError(f"{loc.url}: cannot list ({_why(exc)})") from None
    prefix = loc.root.rstrip("/") + "/"
    out = []
    for path in sorted(found):
        info = found[path]
        kind = info.get("type", "file")
        if kind == "directory":
            continue
        key = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        if key:
            out.append((key, int(info.get("size") or 0), kind, _token(info)))
    return out


def stat_token(loc: Location, key: str) -> str:
    """What identifies the current bytes of `key` without reading them: size and modification
    time (local), size and ETag (S3), "" when the filesystem gives neither."""
    try:
        info = retrying(lambda: loc.fs.info(loc.path(key)))
    except _io_errors():
        return ""
    return _token(info)


def _token(info: dict[str, Any]) -> str:
    """`stat_token` of an fsspec info dict (from `info` or from a listing: the same fields)."""
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return f"{size}:{tag}" if size is not None and tag else ""


def read_head(loc: Location, key: str, n: int = 64) -> bytes:
    try:
        with loc.fs.open(loc.path(key), "rb") as f:
            return f.read(n)
    except _io_errors() as exc:
        raise StorageError(f"{key}: cannot read ({_why(exc)})") from None


def read_bytes(loc: Location, key: str) -> bytes:
    try:
        return retrying(lambda: loc.fs.cat_file(loc.path(key)))
    except _io_errors() as exc:
        raise StorageError(f"{key}: cannot read ({_why(exc)})") from None


def sha256_of(loc: Location, key: str) -> str:
    def digest() -> str:
        h = hashlib.sha256()
        with loc.fs.open(loc.path(key), "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    try:
        return retrying(digest)
    except _io_errors() as exc:
        raise StorageError(f"{key}: cannot read ({_why(exc)})") from None


@contextlib.contextmanager
def local_copy(loc: Location, key: str) -> Iterator[tuple[str, str]]:
    """A local path holding the object's bytes (the file itself when local), and its sha256."""
    if loc.is_local:
        yield loc.path(key), sha256_of(loc, key)
        return
    with tempfile.TemporaryDirectory(prefix="sanitizer-in-") as tmp:
        dst = os.path.join(tmp, "src" + posixpath.splitext(key)[1])

        def download() -> str:
            h = hashlib.sha256()
            with loc.fs.open(loc.path(key), "rb") as f, open(dst, "wb") as out:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            return h.hexdigest()

        try:
            digest = retrying(download)
        except _io_errors() as exc:
            raise StorageError(f"{key}: cannot download ({_why(exc)})") from None
        yield dst, digest


def _replace_local(path: str, fill: Callable[[str], None]) -> None:
    """Write a local file atomically: `fill` writes a temporary sibling, then one rename."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # the temporary name stays within NAME_MAX bytes whatever the length of the final name
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)[:32]}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        fill(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def put_bytes(loc: Location, key: str, data: bytes) -> str:
    """Write atomically: a temporary name then rename (local) or a single PUT (object stores)."""
    path = loc.path(key)
    try:
        if loc.is_local:
            _replace_local(path, lambda tmp: Path(tmp).write_bytes(data))
        else:
            retrying(lambda: loc.fs.pipe_file(path, data))
    except _io_errors() as exc:
        raise StorageError(f"{key}: cannot write output ({_why(exc)})") from None
    return loc.uri(key)


def put_file(loc: Location, key: str, local_path: str) -> str:
    """Move/upload a finished local file to `key` atomically."""
    path = loc.path(key)
    try:
        if loc.is_local:
            _replace_local(path, lambda tmp: shutil.copyfile(local_path, tmp))
        else:
            retrying(lambda: loc.fs.put_file(local_path, path))
    except _io_errors() as exc:
        raise StorageError(f"{key}: cannot write output ({_why(exc)})") from None
    return loc.uri(key)


def remove(loc: Location, key: str) -> None:
    """Delete `key` if present (a stale output of an earlier run that now failed)."""
    path = loc.path(key)
    try:
        if loc.fs.exists(path):
            loc.fs.rm_file(path)
    except _io_errors() as exc:
        raise StorageError(f"{key}: cannot remove stale output ({_why(exc)})") from None


def exists(loc: Location, key: str) -> bool:
    try:
        return bool(loc.fs.exists(loc.path(key)))
    except _io_errors():
        return False


def existing_keys(loc: Location, keys: list[str]) -> set[str]:
    """Which of `keys` exist at `loc`: from one listing on an object store (not a request per
    key), a stat per key on a local disk."""
    if loc.is_local or len(keys) <= 1:
        return {k for k in keys if exists(loc, k)}
    try:
        listed = {key for key, _ in walk(loc, include_hidden=True)}
    except StorageError:  # e.g. no DST yet
        return {k for k in keys if exists(loc, k)}
    return listed.intersection(keys)


def makedirs(loc: Location, key: str = "") -> None:
    """Create the folder (local, memory). Object stores have no folders, but an S3 bucket
    must exist: it is never created behind the user's back (s3fs's makedirs would)."""
    if loc.protocol in S3_PROTOCOLS:
        bucket = loc.root.lstrip("/").split("/", 1)[0]
        try:
            loc.fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise StorageError(
                f"{loc.url}: bucket {bucket!r} does not exist (create it first)"
            ) from None
        except PermissionError:
            pass  # a policy may allow writing objects but not HeadBucket: the first write will tell
        except _io_errors() as exc:
            raise StorageError(f"{loc.url}: {_why(exc)}") from None
        return
    if loc.protocol in BUCKET_PROTOCOLS:
        return
    try:
        loc.fs.makedirs(loc.path(key) if key else loc.root, exist_ok=True)
    except _io_errors() as exc:
        raise StorageError(f"{loc.url}: cannot create ({_why(exc)})") from None


BUCKET_PROTOCOLS = ("gs", "gcs", "az", "abfs", "abfss", "adl")


def open_file(loc: Location, key: str, mode: str = "rb"):
    return loc.fs.open(loc.path(key), mode)


def list_prefix(loc: Location, key: str) -> list[str]:
    """Keys of files below `key` (for reading back audit parts)."""
    base = loc.path(key)
    try:
        loc.fs.invalidate_cache()  # parts written since an earlier listing in this process
        if not loc.fs.exists(base):
            return []
        paths = loc.fs.find(base)
    except _io_errors() as exc:
        raise StorageError(f"{loc.url}: cannot list {key} ({_why(exc)})") from None
    prefix = loc.root.rstrip("/") + "/"
    return sorted(p[len(prefix) :] for p in paths if p.startswith(prefix))


# ---------------------------------------------------------------- staging and promotion
# Outputs are written under STAGING/<run_id>/<key> first; the driver promotes them to <key>
# only after the audit rows that name them are written (README "Commit protocol").
STAGING = "_staging"
RESERVED = ("_audit", STAGING)  # prefixes of DST that hold no outputs


def is_reserved(key: str) -> bool:
    return key.split("/", 1)[0] in RESERVED


def staging_key(run_id: str, key: str) -> str:
    return f"{STAGING}/{run_id}/{safe_key(key)}"


def promote(loc: Location, staged: str, key: str) -> None:
    """Move the staged object `staged` to `key`. Local: one rename (readers see the old file
    or the new one). Object stores have no rename: a server-side copy (a reader sees the old
    object until the copy completes, then the new one, never a partial one), then the staged
    object is deleted."""
    src, dst = loc.path(staged), loc.path(key)
    try:
        if loc.is_local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
        else:
            retrying(lambda: loc.fs.copy(src, dst), f"{key}: promote")
            retrying(lambda: loc.fs.rm_file(src), f"{key}: promote")
    except _io_errors() as exc:
        raise StorageError(f"{key}: cannot publish the staged output ({_why(exc)})") from None


def remove_tree(loc: Location, key: str) -> None:
    """Delete everything below `key` (a run's staging area); nothing there is fine."""
    path = loc.path(key)
    try:
        loc.fs.invalidate_cache()
        if loc.fs.exists(path):
            loc.fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except _io_errors() as exc:
        raise StorageError(f"{key}: cannot remove ({_why(exc)})") from None


def sha256_key(loc: Location, key: str) -> str | None:
    """sha256 of the object at `key`, None when there is none."""
    try:
        return sha256_of(loc, key)
    except StorageError:
        if not exists(loc, key):
            return None
        raise


# ---------------------------------------------------------------- retries
# A transient storage error (timeout, connection reset, throttling, a 5xx) is retried this many
# times with exponential backoff before the operation fails (on top of botocore's own attempts).
RETRIES = 3
BACKOFF = 0.5  # s before the first retry; doubled each time
_retry_state = threading.local()


def is_transient(exc: BaseException) -> bool:
    if isinstance(
        exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError
    ):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if type(exc).__name__ in (
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ClientPayloadError",
        "ServerDisconnectedError",
    ):
        return True
    if isinstance(exc, OSError) and exc.errno in (
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EAGAIN,
        errno.EBUSY,
    ):
        return True
    text = str(exc)
    return any(
        w in text
        for w in ("SlowDown", "RequestTimeout", "Throttl", "InternalError", "ServiceUnavailable")
    )


def retries_so_far() -> int:
    """Transient errors retried by this thread since `reset_retries()`."""
    return getattr(_retry_state, "count", 0)


def reset_retries() -> None:
    _retry_state.count = 0


def retrying(fn: Callable[[], Any], what: str = "", sleep: Callable[[float], None] = time.sleep):
    """fn(), retried on transient errors (RETRIES times, BACKOFF doubling); the last error or
    any other error propagates unchanged."""
    for attempt in range(RETRIES + 1):
        try:
            return fn()
        except _io_errors() as exc:
            if attempt == RETRIES or not is_transient(exc):
                raise
            _retry_state.count = retries_so_far() + 1
            sleep(BACKOFF * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------- lease
LEASE_KEY = f"{STAGING}/lease.json"
LEASE_TTL = 60.0  # s without a heartbeat after which a lease of another host has expired
HEARTBEAT = 10.0  # s between heartbeats


def read_lease(loc: Location) -> dict[str, Any] | None:
    try:
        return json.loads(loc.fs.cat_file(loc.path(LEASE_KEY)))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn or foreign file: nobody holds it
    except _io_errors() as exc:
        raise StorageError(f"{loc.url}: cannot read the run lease ({_why(exc)})") from None


def write_lease(loc: Location, lease: dict[str, Any]) -> None:
    put_bytes(loc, LEASE_KEY, json.dumps(lease).encode())


def remove_lease(loc: Location, run_id: str) -> None:
    """Remove the lease if `run_id` still holds it."""
    held = read_lease(loc)
    if held is not None and held.get("run_id") == run_id:
        remove(loc, LEASE_KEY)


def lease_is_live(lease: dict[str, Any], now: float | None = None) -> bool:
    """A lease is live while its heartbeat is fresh, and (on this host) its process runs."""
    now = time.time() if now is None else now
    if now - float(lease.get("heartbeat", 0)) > LEASE_TTL:
        return False
    if lease.get("host") == socket.gethostname():
        return _pid_alive(int(lease.get("pid", 0)))
    return True


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


__all__ = ["Location", "location", "fsspec"]
