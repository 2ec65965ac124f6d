"""Hostile and unusual inputs: a generated corpus of odd names, links, FIFOs, bombs, truncated
files, multi-image files, odd video sizes and metadata carriers goes through the real CLI twice.
Every entry of SRC gets exactly one audit row with the expected status and reason, only `ok`
files reach DST, no output carries the planted metadata, the run exits 1 and a second run into
the same DST works."""

from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sanitizer import manifest, storage
from tests.conftest import run_cli

MARKER = "HOSTILE-SECRET-7f3a"  # planted in every metadata carrier; must be in no output


def face(size: int = 128) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size)))


def save(im: Image.Image | list[Image.Image], fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    if isinstance(im, list):
        im[0].save(buf, fmt, save_all=True, append_images=im[1:], **kw)
    else:
        im.save(buf, fmt, **kw)
    return buf.getvalue()


def frames(n: int, size: int = 96) -> list[Image.Image]:
    base = face(size)
    return [Image.fromarray(np.roll(base, 7 * i, axis=1)) for i in range(n)]


def exif() -> Image.Exif:
    ex = Image.Exif()
    ex[0x010F] = MARKER  # Make
    ex[0x013B] = MARKER  # Artist
    ex[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}
    return ex


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels and holds a few bytes of them."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def gif_bomb() -> bytes:
    """A 1x1 GIF whose logical screen and image claim 65535 x 65535 pixels."""
    data = bytearray(save(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    i = data.index(b"\x2c")  # image descriptor
    data[i + 5 : i + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def jpeg_bomb() -> bytes:
    """A JPEG whose frame header claims 65500 x 65500 pixels."""
    data = bytearray(save(Image.fromarray(face(16)), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def clip(
    path: Path,
    *,
    size=(96, 64),
    n: int = 12,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
    metadata: dict[str, str] | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """A short video of a moving face (no audio); returns its bytes."""
    w, h = size
    img = np.asarray(Image.fromarray(face(128)).resize((w, h)))
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        if metadata:
            out.metadata.update(metadata)
        vs = out.add_stream(codec, rate=12)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            vs.options = {"preset": "ultrafast"}
        elif codec == "libvpx-vp9":
            vs.options = {"deadline": "realtime", "cpu-used": "8"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.roll(img, i, axis=1), format="rgb24")
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    return path.read_bytes()


@dataclass
class Case:
    """One kind of input: where it goes, how it is made and what its row must say."""

    key: bytes  # the name's bytes, relative to SRC
    make: Callable[[Path], None]  # creates the entry at the given path
    status: str  # ok | failed | skipped
    reason: str = ""  # a substring of the row's error
    n_images: int | None = None  # ok images: images written
    xfail: str = ""  # a known gap of another module (the test reports it, does not fail)


def write(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data() if callable(data) else data)


def corpus() -> list[Case]:
    jpg = save(Image.fromarray(face()), "JPEG", quality=90)
    png = save(Image.fromarray(face()), "PNG")

    def fifo(p: Path) -> None:
        os.mkfifo(p)

    def unix_socket(p: Path) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.fsencode(p))
        s.close()

    def device(p: Path) -> None:
        os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null (root only)

    def link(target: str) -> Callable[[Path], None]:
        return lambda p: os.symlink(target, p)

    def video(**kw) -> Callable[[Path], None]:
        return lambda p: clip(p, **kw)

    def two_tracks(p: Path, cover: bool = False) -> None:
        """An MP4 with a second video stream: a second track, or cover art (not a track)."""
        with av.open(str(p), "w") as out:
            streams = []
            for kind in ("libx264", "mjpeg" if cover else "libx264"):
                s = out.add_stream(kind, rate=12)
                s.width, s.height = 96, 64
                s.pix_fmt = "yuvj420p" if kind == "mjpeg" else "yuv420p"
                streams.append(s)
            if cover:
                streams[1].disposition = av.stream.Disposition.attached_pic
            img = np.asarray(Image.fromarray(face(128)).resize((96, 64)))
            for i in range(6):
                for s in streams[: 1 if cover and i else 2]:
                    frame = av.VideoFrame.from_ndarray(np.roll(img, i, axis=1), format="rgb24")
                    out.mux(s.encode(frame))
            for s in streams:
                out.mux(s.encode(None))

    def truncated_mp4(p: Path) -> None:
        data = clip(p)
        p.write_bytes(data[: len(data) // 2])

    def mp4_named_jpg(p: Path) -> None:
        tmp = p.with_name("tmp-clip.mp4")
        data = clip(tmp)
        tmp.unlink()
        p.write_bytes(data)

    def heic(n: int, **kw) -> Callable[[], bytes]:
        import pillow_heif

        pillow_heif.register_heif_opener()
        return lambda: save(frames(n) if n > 1 else frames(1)[0], "HEIF", **kw)

    def jpeg_all_metadata() -> bytes:
        xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description>{MARKER}</rdf:Description></x:xmpmeta>'
        return save(
            Image.fromarray(face()),
            "JPEG",
            exif=exif(),
            comment=MARKER.encode(),
            xmp=xmp.encode(),
        )

    def png_text() -> bytes:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Comment", MARKER)
        info.add_itxt("Author", MARKER)
        info.add_text("Location", MARKER, zip=True)
        return save(Image.fromarray(face()), "PNG", pnginfo=info, exif=exif())

    ok = "ok"
    return [
        # names: any byte string is data
        Case(b"names/back\\slash face.jpg", write(jpg), ok),
        Case(b"names/caf\xe9 latin-1.jpg", write(jpg), ok),
        Case(b"names/" + b"n" * 246 + b".jpg", write(jpg), ok),  # 250 bytes: a legal name
        Case(b"names/new\nline.jpg", write(jpg), ok),
        Case(b"names/tab\tand\rcr.png", write(png), ok),
        Case(b"names/ spaces .jpg", write(jpg), ok),
        Case(b"names/-dash --option.jpg", write(jpg), ok),
        Case("names/ünïcödé 顔 😀.png".encode(), write(png), ok),
        Case("names/nfd e\u0301.jpg".encode(), write(jpg), ok),
        Case(b"names/percent%41 %E9.jpg", write(jpg), ok),
        Case(b"names/quote'\"*?<>|:.jpg", write(jpg), ok),
        Case(b"names/no extension", write(jpg), ok),
        Case(b"names/UPPER.JPG", write(jpg), ok),
        Case(b"_other/x.jpg", write(jpg), ok),  # only the reserved prefixes are refused
        # names reserved for sanitizer in DST
        Case(b"_audit/files/x.parquet", write(jpg), "failed", "reserved name"),
        Case(b"_audit_staging/x.jpg", write(jpg), "failed", "reserved name"),
        Case(b"_sanitizer.lease", write(jpg), "failed", "reserved name"),
        Case(b"_staging/lease.json", write(jpg), "failed", "reserved name"),
        Case(b"_AUDIT/runs/y.jpg", write(jpg), "failed", "reserved name"),
        # entries that are not regular files, hidden and empty files: recorded as skipped
        Case(b"links/to-file.jpg", link("../names/UPPER.JPG"), "skipped", "symbolic link"),
        Case(b"links/to-outside", link("/etc"), "skipped", "symbolic link"),
        Case(b"links/loop-a", link("loop-b"), "skipped", "symbolic link"),
        Case(b"links/loop-b", link("loop-a"), "skipped", "symbolic link"),
        Case(b"links/dangling.jpg", link("nowhere.jpg"), "skipped", "symbolic link"),
        Case(b"special/fifo.jpg", fifo, "skipped", "named pipe"),
        Case(b"special/sock", unix_socket, "skipped", "socket"),
        Case(b"special/null.jpg", device, "skipped", "device"),
        Case(b".hidden.jpg", write(jpg), "skipped", "hidden"),
        Case(b".git/objects/x.jpg", write(jpg), "skipped", "hidden"),
        Case(b"empty.jpg", write(b""), "skipped", "empty file"),
        # content over a limit (the test's config: max_bytes 3 MB, max_frames 40)
        Case(b"bombs/pixels.png", write(png_bomb(60000, 60000)), "failed", "max_pixels"),
        Case(b"bombs/screen.gif", write(gif_bomb), "failed", "max_pixels"),
        Case(b"bombs/sof.jpg", write(jpeg_bomb), "failed", "max_pixels"),
        Case(b"bombs/frames.gif", write(lambda: save(frames(45, 16), "GIF")), "failed", "max_frames"),
        Case(b"bombs/bytes.png", write(lambda: save(noise_image(1100, 1000), "PNG")), "failed", "max_bytes"),
        Case(b"bombs/text-3mb.jpg", write(b"not an image\n" * 250_000), "skipped", "not an image"),
        # truncated and damaged files
        Case(b"damaged/half.jpg", write(jpg[: len(jpg) // 2]), "failed", "JPEG"),
        Case(b"damaged/half.png", write(png[: len(png) // 2]), "failed", "PNG"),
        Case(b"damaged/crc.png", write(flip(png, len(png) // 2)), "failed", "PNG"),
        Case(b"damaged/half.gif", write(lambda: save(frames(3), "GIF")[:900]), "failed", ""),
        Case(b"damaged/half.mp4", truncated_mp4, "failed", ""),
        Case(b"damaged/header-only.jpg", write(jpg[:20]), "failed", ""),
        # sniffed by content, not by name
        Case(b"sniff/text.jpg", write(b"hello, not a picture\n"), "skipped", "not an image"),
        Case(b"sniff/photo.txt", write(jpg), ok),
        Case(b"sniff/video.jpg", mp4_named_jpg, ok),
        Case(b"sniff/noise.bin", write(bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8))), "skipped", "not an image"),
        # multi-image files: every image kept, and counted
        Case(b"multi/stereo.mpo.jpg", write(lambda: save(frames(2), "MPO")), ok, n_images=2),
        Case(b"multi/burst.heic", write(heic(3)), ok, n_images=3),
        Case(b"multi/pages.tiff", write(lambda: save(frames(3), "TIFF")), ok, n_images=3),
        Case(b"multi/anim.webp", write(lambda: save(frames(3), "WEBP", duration=100)), ok, n_images=3),
        Case(b"multi/anim.gif", write(lambda: save(frames(4), "GIF", duration=80, loop=0)), ok, n_images=4),
        Case(b"multi/anim.png", write(lambda: save(frames(3), "PNG", duration=100)), ok, n_images=3),
        # metadata carriers
        Case(b"meta/all.jpg", write(jpeg_all_metadata), ok, n_images=1),
        Case(b"meta/text.png", write(png_text), ok),
        Case(b"meta/exif.webp", write(lambda: save(Image.fromarray(face()), "WEBP", exif=exif())), ok),
        Case(b"meta/tags.tiff", write(lambda: save(Image.fromarray(face()), "TIFF", tiffinfo={315: MARKER, 270: MARKER})), ok),
        Case(b"meta/exif.heic", write(heic(1, exif=exif())), ok),
        Case(b"meta/tags.mp4", video(metadata={"title": MARKER, "location": "+52.5+013.4/"}), ok),
        # videos: containers and sizes
        Case(b"video/plain.mp4", video(), ok, n_images=1),
        Case(b"video/two-tracks.mp4", two_tracks, "failed", "2 video tracks: only single-track videos are supported"),
        Case(b"video/cover-art.mp4", lambda p: two_tracks(p, cover=True), ok, n_images=1),
        Case(b"video/camera.3gp", video(fmt="3gp"), ok),
        Case(b"video/camcorder.mts", video(fmt="mpegts"), ok),
        Case(b"video/odd-444.mp4", video(size=(511, 383), pix_fmt="yuv444p", n=4), ok),
        Case(b"video/vp9-853.mp4", video(size=(853, 480), codec="libvpx-vp9", pix_fmt="yuv420p", n=3), ok),
    ]  # fmt: skip


def noise_image(w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8))


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


CONFIG = """
input:
  max_bytes: 3000000
  max_frames: 40
redact:
  method: solid
"""


def build(src: Path, cases: list[Case]) -> list[Case]:
    """Create the corpus; cases that cannot be made here (a device without root) are dropped."""
    made = []
    for case in cases:
        path = Path(os.fsdecode(os.path.join(os.fsencode(src), case.key)))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            case.make(path)
        except PermissionError:
            continue
        made.append(case)
    return made


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    src, dst = root / "src", root / "dst"
    src.mkdir()
    cases = build(src, corpus())
    (root / "config.yaml").write_text(CONFIG)
    args = ("run", str(src), str(dst), "--config", str(root / "config.yaml"), "--workers", "2")
    first = run_cli(*args, timeout=300)
    second = run_cli(*args, timeout=300)
    return src, dst, cases, first, second


def rows_by_raw_key(dst: Path) -> dict[bytes, dict]:
    files = pd.read_parquet(dst / "_audit" / "files")
    runs = pd.read_parquet(dst / "_audit" / "runs").sort_values("started")
    first = files[files.run_id == runs.run_id.iloc[0]]
    return {unquote_to_bytes(r["raw_key"]): r for r in first.to_dict("records")}


def test_corpus_has_at_least_40_kinds(hostile):
    _, _, cases, _, _ = hostile
    assert len(cases) >= 40


def test_run_exits_1_without_traceback_and_again(hostile):
    _, dst, _, first, second = hostile
    for proc in (first, second):
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        assert "internal error" not in proc.stdout + proc.stderr
    assert "unchanged since an earlier run" in second.stdout
    runs = pd.read_parquet(dst / "_audit" / "runs")
    assert len(runs) == 2 and set(runs.status) == {"complete"}


def test_every_entry_has_one_row(hostile):
    src, dst, cases, _, _ = hostile
    on_disk = set()
    for folder, dirs, names in os.walk(os.fsencode(src)):
        rel = os.path.relpath(folder, os.fsencode(src))
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            on_disk.add(name if rel == b"." else rel + b"/" + name)
    rows = rows_by_raw_key(dst)
    files = pd.read_parquet(dst / "_audit" / "files")
    runs = pd.read_parquet(dst / "_audit" / "runs").sort_values("started")
    assert (files.run_id == runs.run_id.iloc[0]).sum() == len(rows), "one row per key"
    assert set(rows) == on_disk == {c.key for c in cases}


def test_rows_say_what_happened(hostile):
    _, dst, cases, _, _ = hostile
    rows = rows_by_raw_key(dst)
    wrong, fixed = [], []
    for case in cases:
        row = rows[case.key]
        good = row["status"] == case.status and case.reason in row["error"]
        if case.n_images is not None and row["status"] == "ok":
            good = good and row["n_images"] == case.n_images
        if case.xfail:
            if good:
                fixed.append(case.key)
            continue
        if not good:
            wrong.append((case.key, row["status"], row["error"]))
    assert not wrong, wrong
    if fixed:
        print("now passing (remove their xfail):", fixed)


@pytest.mark.parametrize("key", [b"video/odd-444.mp4", b"video/vp9-853.mp4"])
def test_odd_video_sizes_are_encoded(hostile, key):
    _, dst, _, _, _ = hostile
    assert rows_by_raw_key(dst)[key]["status"] == "ok"


def test_mpegts_camcorder_video_is_processed(hostile):
    _, dst, _, _, _ = hostile
    assert rows_by_raw_key(dst)[b"video/camcorder.mts"]["status"] == "ok"


def test_outputs_only_for_ok_rows_and_nothing_in_the_audit(hostile):
    src, dst, cases, _, _ = hostile
    rows = rows_by_raw_key(dst)
    outputs = set()
    for folder, _, names in os.walk(os.fsencode(dst)):
        rel = os.path.relpath(folder, os.fsencode(dst))
        if rel.split(b"/")[0] == b"_audit":
            continue
        outputs |= {name if rel == b"." else rel + b"/" + name for name in names}
    assert outputs == {k for k, r in rows.items() if r["status"] == "ok"}
    for table in ("files", "detections", "runs", "manifest"):
        pd.read_parquet(dst / "_audit" / table)  # nothing from SRC landed in the audit
    assert {p.name for p in (dst / "_audit").iterdir()} == {
        "files",
        "detections",
        "runs",
        "manifest",
        "index",  # the unchanged check's (audit.refresh_index)
    }
    assert [p.name for p in (dst / "_audit" / "index").iterdir()] == ["latest.parquet"]
    assert not (dst / "_sanitizer.lease").exists()


def test_keys_recorded_losslessly(hostile):
    _, dst, _, _, _ = hostile
    rows = rows_by_raw_key(dst)
    assert rows[b"names/caf\xe9 latin-1.jpg"]["key"] == "names/caf\\xe9 latin-1.jpg"
    assert rows[b"names/back\\slash face.jpg"]["key"] == "names/back\\slash face.jpg"
    assert rows[b"names/percent%41 %E9.jpg"]["key"] == "names/percent%41 %E9.jpg"


def test_no_planted_metadata_in_any_output(hostile):
    _, dst, _, _, _ = hostile
    for path in (Path(p) for p in dst.rglob("*") if p.is_file() and "_audit" not in p.parts):
        assert MARKER.encode() not in path.read_bytes(), path
    with Image.open(dst / "meta" / "all.jpg") as im:
        assert not im.getexif() and "comment" not in im.info and "xmp" not in im.info
    with Image.open(dst / "meta" / "text.png") as im:
        assert not im.text
    with av.open(str(dst / "meta" / "tags.mp4")) as c:
        assert MARKER not in str(dict(c.metadata)) and "location" not in c.metadata


def test_multi_image_outputs_hold_every_image_redacted(hostile):
    _, dst, _, _, _ = hostile
    for name, n in (("stereo.mpo.jpg", 2), ("pages.tiff", 3), ("anim.webp", 3), ("anim.gif", 4)):
        with Image.open(dst / "multi" / name) as im:
            assert im.n_frames == n, name
            for i in range(n):
                im.seek(i)
                arr = np.asarray(im.convert("RGB"))
                # the astronaut's face (frame i is shifted right by 7 i pixels), filled black
                face_area = arr[14:30, 36 + 7 * i : 46 + 7 * i]
                assert (face_area.max(axis=2) < 40).mean() > 0.8, (name, i)


def test_sniffing_reads_the_head_before_the_whole_file(tmp_path, monkeypatch):
    """A large non-image named .jpg is never read whole."""
    from sanitizer import process
    from sanitizer.config import Config
    from sanitizer.records import MediaItem

    (tmp_path / "src").mkdir()
    big = tmp_path / "src" / "big.jpg"
    big.write_bytes(b"x" * (3 << 20))
    src = storage.location(str(tmp_path / "src"))
    dst = storage.location(str(tmp_path / "dst"))
    read_whole = []
    monkeypatch.setattr(storage, "read_bytes", lambda loc, key: read_whole.append(key))
    ctx = process.Context.create("r", Config(), None, src, dst)
    item = MediaItem("big.jpg", src.uri("big.jpg"), "image", "jpeg", 3 << 20, "")
    row, _ = process.process_item(item, ctx)
    assert row["status"] == "skipped" and "not an image" in row["error"]
    assert read_whole == []


def test_video_over_declared_limits_fails_naming_the_limit(tmp_path):
    from sanitizer import process
    from sanitizer.config import Config
    from sanitizer.records import MediaItem

    (tmp_path / "src").mkdir()
    data = clip(tmp_path / "src" / "a.mp4", n=24)
    src = storage.location(str(tmp_path / "src"))
    dst = storage.location(str(tmp_path / "dst"))
    for field, value, words in (
        ("max_duration_s", 1.0, "input.max_duration_s"),
        ("max_frames", 10, "input.max_frames"),
        ("max_pixels", 1000, "input.max_pixels"),
        ("max_bytes", 100, "input.max_bytes"),
    ):
        cfg = Config()
        setattr(cfg.input, field, value)
        ctx = process.Context.create("r", cfg, None, src, dst)
        item = MediaItem("a.mp4", src.uri("a.mp4"), "video", "mp4", len(data), "")
        row, _ = process.process_item(item, ctx)
        assert row["status"] == "failed" and words in row["error"], row["error"]


def test_audit_counters_are_clipped():
    from sanitizer.process import INT32_MAX, _count, _sane

    assert _count(2**40) == INT32_MAX and _count(-5) == 0 and _count(None) == 0
    assert _sane(float("nan"), 0.0, 10.0) == 0.0 and _sane(1e300, 0.0, 10.0) == 10.0


def test_image_timeout_names_the_limit():
    from sanitizer.errors import DecodeError
    from sanitizer.media import image

    limits = image.Limits(deadline=1.0, timeout_s=5.0)  # long past
    with pytest.raises(DecodeError, match="input.file_timeout_s"):
        image.decode(save(Image.fromarray(face(32)), "PNG"), limits)


@pytest.mark.parametrize(
    "head, expected",
    [
        (bytes([0x47]) + bytes(187) + bytes([0x47]) + bytes(187) + bytes([0x47]), "mpegts"),
        (bytes(4) + bytes([0x47]) + bytes(191) + bytes([0x47]) + bytes(191), "mpegts"),
        (b"\x06\x0e\x2b\x34\x02\x05\x01\x01\x0d\x01\x02\x01\x01\x02", "mxf"),
    ],
)
def test_camera_containers_sniffed(head, expected):
    assert manifest.sniff(head) == ("video", expected)


def test_printable_and_raw_keys_are_lossless():
    for name in (b"caf\xe9.jpg", b"a\\b.jpg", "顔.png".encode(), b"x%41.jpg"):
        key = os.fsdecode(name)
        assert unquote_to_bytes(storage.raw_key(key)) == name
        storage.printable(key).encode("utf-8")  # always valid UTF-8
