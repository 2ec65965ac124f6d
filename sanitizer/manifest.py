"""SRC → MediaItem rows: list every file, sniff its kind from magic bytes, size and hash.

`run` lists with `trust_extensions=True`: files with a media extension are classified by it
without being opened (one ranged read per object made listing a bucket of millions take
minutes), and the worker that reads the file anyway re-sniffs its bytes (`sniff`) and goes by
those (process.py); only files without a known extension are sniffed here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sanitizer import storage
from sanitizer.errors import StorageError
from sanitizer.records import MANIFEST_SCHEMA, MediaItem, to_table

# enough to see two MPEG-TS packets (188 bytes; 192 in .m2ts) and an MXF partition key
HEAD_BYTES = 512

# extension -> (kind, format) as `sniff` names them
EXTENSIONS = {
    ".jpg": ("image", "jpeg"),
    ".jpeg": ("image", "jpeg"),
    ".jpe": ("image", "jpeg"),
    ".png": ("image", "png"),
    ".gif": ("image", "gif"),
    ".webp": ("image", "webp"),
    ".tif": ("image", "tiff"),
    ".tiff": ("image", "tiff"),
    ".bmp": ("image", "bmp"),
    ".heic": ("image", "heif"),
    ".heif": ("image", "heif"),
    ".avif": ("image", "avif"),
    ".mp4": ("video", "mp4"),
    ".m4v": ("video", "mp4"),
    ".mov": ("video", "mov"),
    ".mkv": ("video", "mkv"),
    ".webm": ("video", "webm"),
    ".avi": ("video", "avi"),
    ".3gp": ("video", "mp4"),  # ISO base media, like MP4 (sniffed by its ftyp box)
    ".3g2": ("video", "mp4"),
    ".ts": ("video", "mpegts"),
    ".mts": ("video", "mpegts"),
    ".m2ts": ("video", "mpegts"),
    ".m2t": ("video", "mpegts"),
    ".mxf": ("video", "mxf"),
}

_FTYP_IMAGE = {
    b"heic",
    b"heix",
    b"hevc",
    b"hevx",
    b"heim",
    b"heis",
    b"mif1",
    b"msf1",
    b"avif",
    b"avis",
}
_MOV_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def sniff(head: bytes) -> tuple[str, str]:
    """(kind, format) from the first bytes of a file; ("other", "") when not media."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", "avi"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image", "tiff"
    if head[:2] == b"BM" and len(head) >= 14:
        return "image", "bmp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _FTYP_IMAGE:
            return "image", "avif" if brand in (b"avif", b"avis") else "heif"
        return "video", "mov" if brand == b"qt  " else "mp4"
    if head[4:8] in _MOV_ATOMS:
        return "video", "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video", "webm" if b"webm" in head else "mkv"
    if _is_mpegts(head, 188, 0) or _is_mpegts(head, 192, 4):  # camcorder .mts/.m2ts: 192
        return "video", "mpegts"
    if head[:4] == _MXF_KEY and head[4:8] == b"\x02\x05\x01\x01":  # an MXF partition pack
        return "video", "mxf"
    return "other", ""


_MXF_KEY = b"\x06\x0e\x2b\x34"


def _is_mpegts(head: bytes, packet: int, offset: int) -> bool:
    """MPEG transport stream: a 0x47 sync byte at the start of (at least) two packets."""
    starts = range(offset, len(head), packet)
    return len(starts) >= 2 and all(head[i] == 0x47 for i in starts)


def build(
    src: storage.Location,
    *,
    include_hidden: bool = False,
    with_hash: bool = True,
    trust_extensions: bool = False,
    threads: int = 16,
    on_item: Callable[[MediaItem], None] | None = None,
) -> list[MediaItem]:
    """List every entry of SRC. Hashing reads every byte; `run` leaves it to the workers
    (with_hash=False) and so is sniffing of files with a media extension
    (trust_extensions=True). Entries that are not regular files, hidden and empty files come
    back as kind "other" with `skip` set; keys that cannot be published (unsafe or reserved
    names) with `refuse` set. None of these is opened."""
    entries = list(storage.entries(src, include_hidden))

    def one(entry: storage.Entry) -> MediaItem:
        key, size = entry.key, entry.size
        refuse = entry.fail or ("" if entry.skip else storage.refused(key))
        if entry.skip or refuse:
            item = MediaItem(key, _uri(src, key), "other", "", size, "", entry.skip, refuse)
        else:
            try:
                by_name = (
                    EXTENSIONS.get(os.path.splitext(key)[1].lower()) if trust_extensions else None
                )
                kind, fmt = by_name or sniff(storage.read_head(src, key, HEAD_BYTES))
                digest = storage.sha256_of(src, key) if with_hash else ""
            except StorageError:
                kind, fmt, digest = "other", "", ""
            item = MediaItem(key, src.uri(key), kind, fmt, size, digest, stat=entry.stat)
        if on_item:
            on_item(item)
        return item

    if len(entries) <= 1 or threads <= 1:
        return [one(e) for e in entries]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, entries))


def _uri(src: storage.Location, key: str) -> str:
    """The URI of an entry, also for a key `Location.uri` refuses (only recorded, never opened)."""
    try:
        return src.uri(key)
    except StorageError:
        return f"{src.url.rstrip('/')}/{key}"


def to_parquet_table(items: list[MediaItem]):
    return to_table(
        [
            dict(
                key=i.key,
                uri=i.uri,
                kind=i.kind,
                format=i.format,
                size=i.size,
                sha256=i.sha256,
                raw_key=storage.raw_key(i.key),
            )
            for i in items
        ],
        MANIFEST_SCHEMA,
    )
