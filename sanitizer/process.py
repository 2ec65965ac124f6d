"""One file end to end → (FileResult row, detection rows). Never raises for a bad file.

Knows nothing about Dask: `execute` calls `process_item` on workers, tests call it directly.
Fail closed: the output is written only after the whole file was decoded, scanned and
redacted, and only to the run's staging area (`storage.staging_key`): the driver publishes it
at its key once the file's audit row is written (README "Commit protocol"). On any error the
result is `failed` and nothing is staged; an output an earlier run published at the key is
never touched here (the row says whether one is there and stays).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sanitizer import audit, phash, storage
from sanitizer.config import Config
from sanitizer.errors import DecodeError, SanitizerError, StorageError
from sanitizer.manifest import HEAD_BYTES, sniff
from sanitizer.records import UNCHANGED, Detections, FileResult, MediaItem
from sanitizer.redact import RedactParams, params_from_config


@dataclass
class Context:
    """What every file of a run shares (built once per worker)."""

    run_id: str
    cfg: Config
    detector: Any  # sanitizer.detect.Detector
    dst: storage.Location
    src: storage.Location
    fingerprint: str
    params: RedactParams
    # key -> source sha256 of files an earlier run already published with this fingerprint
    previous: dict[str, str] = field(default_factory=dict)
    # asked right before an output is written; False when the run was stopped meanwhile
    may_publish: Callable[[], bool] | None = None
    # key -> source_stat recorded with those outputs (size and mtime or ETag)
    previous_stat: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        run_id: str,
        cfg: Config,
        detector,
        src: storage.Location,
        dst: storage.Location,
        previous: dict[str, str] | None = None,
    ) -> Context:
        return cls(
            run_id,
            cfg,
            detector,
            dst,
            src,
            cfg.fingerprint(),
            params_from_config(cfg.redact),
            previous or {},
        )


class _Unchanged(Exception):
    """The source and the config are those of an output already published at DST."""


class _OtherKind(Exception):
    """The file's bytes are another kind than the manifest guessed from its name."""

    def __init__(self, kind: str, fmt: str) -> None:
        super().__init__(kind)
        self.kind, self.format = kind, fmt


def _sniffed(item: MediaItem, head: bytes) -> str:
    """The format the file's first bytes show (the manifest may have gone by the extension);
    raises _OtherKind when they show another kind (or no media at all)."""
    kind, fmt = sniff(head[:HEAD_BYTES])
    if kind != item.kind:
        raise _OtherKind(kind, fmt)
    return fmt


class _Stopped(Exception):
    """The run was stopped before this file's output was written."""


def _check_may_publish(ctx: Context) -> None:
    if ctx.may_publish is not None and not ctx.may_publish():
        raise _Stopped


def _skip_if_unchanged(item: MediaItem, ctx: Context, digest: str) -> None:
    known = ctx.previous.get(storage.printable(item.key))
    if known == digest and storage.exists(ctx.dst, item.key):
        raise _Unchanged


def _skip_if_same_stat(item: MediaItem, ctx: Context, res: FileResult) -> None:
    """Before reading the source: a source whose size and mtime (or ETag) are those recorded
    with its published output is unchanged, without being read and hashed again (unless
    execution.verify_hashes)."""
    res.source_stat = storage.stat_token(ctx.src, item.key)
    key = storage.printable(item.key)  # `previous` is keyed as the audit holds keys
    if ctx.cfg.execution.verify_hashes or key not in ctx.previous:
        return
    if res.source_stat and ctx.previous_stat.get(key) == res.source_stat:
        res.source_sha256 = ctx.previous[key]
        if storage.exists(ctx.dst, item.key):
            raise _Unchanged


def detection_rows(
    run_id: str, key: str, frame: int, t_ms: float, faces: Detections, track_ids=None, detected=None
) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(faces)):
        x1, y1, x2, y2 = (float(v) for v in faces.boxes[i])
        rows.append(
            dict(
                run_id=run_id,
                key=key,
                frame=int(frame),
                t_ms=float(t_ms),
                x=x1,
                y=y1,
                w=x2 - x1,
                h=y2 - y1,
                score=float(faces.scores[i]),
                track_id=int(track_ids[i]) if track_ids is not None else -1,
                detected=bool(detected[i]) if detected is not None else True,
            )
        )
    return rows


def file_result(ctx: Context, item: MediaItem, **kw) -> FileResult:
    """The files row of an item in this run, with the run's detector and the key's exact bytes;
    `kw` gives the status and what happened."""
    return FileResult(
        run_id=ctx.run_id,
        key=item.key,
        source_uri=item.uri,
        source_sha256=item.sha256,
        size=item.size,
        kind=item.kind,
        detector=ctx.detector.name if ctx.detector else "",
        model_sha256=getattr(ctx.detector, "model_sha256", "") if ctx.detector else "",
        precision=getattr(ctx.detector, "precision", "") if ctx.detector else "",
        config_fingerprint=ctx.fingerprint,
        worker=socket.gethostname(),
        raw_key=storage.raw_key(item.key),
        **kw,
    )


def unchanged_row(item: MediaItem, ctx: Context, source_sha256: str) -> dict[str, Any]:
    """The row of a source the driver found unchanged from SRC's listing
    (`job.unchanged_by_listing`): the row `process_item` writes for it, without reading it."""
    now = time.time()
    res = file_result(ctx, item, status="skipped", error=UNCHANGED, started=now, finished=now)
    res.source_sha256, res.source_stat = source_sha256, item.stat
    res.output_uri = ctx.dst.uri(item.key)
    return res.to_row()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]


def failure(item: MediaItem, ctx: Context, reason: str) -> dict[str, Any]:
    """A `failed` row for an item whose task could not run at all."""
    now = time.time()
    res = file_result(ctx, item, status="failed", error=reason, started=now, finished=now)
    res.error += _earlier_output_note(ctx, item)
    return res.to_row()


def _earlier_output_note(ctx: Context, item: MediaItem) -> str:
    """What happens to an output an earlier run published at this key, for a failed row."""
    try:
        there = storage.exists(ctx.dst, item.key)
    except StorageError:
        there = False
    if not there:
        return ""
    if ctx.cfg.output.keep_last_good:
        return "; the earlier output at this key is kept (output.keep_last_good)"
    return "; the earlier output at this key is removed (output.keep_last_good: false)"


def process_item(item: MediaItem, ctx: Context) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Process one manifest item. Returns (files row, detection rows)."""
    started = time.time()
    storage.reset_retries()
    res = file_result(ctx, item, status="failed", started=started)
    dets: list[dict[str, Any]] = []
    stopped = False
    try:
        if item.refuse:  # an unsafe or reserved name: never read, never written
            res.status, res.error = "failed", item.refuse
        elif item.skip:  # a link, FIFO, device, hidden or empty file: recorded only
            res.status, res.error = "skipped", item.skip
        elif item.kind == "other":
            res.status, res.error = "skipped", "not an image or video (by content)"
        elif item.kind == "image":
            dets = _process_image(item, ctx, res)
            res.status = "ok"
        elif item.kind == "video":
            dets = _process_video(item, ctx, res)
            res.status = "ok"
        else:
            res.error = f"unknown kind {item.kind!r}"
    except _Unchanged:
        res.status, res.error, dets = "skipped", UNCHANGED, []
        res.output_uri = ctx.dst.uri(item.key)
    except _OtherKind as other:  # e.g. a text file named .jpg, an MP4 named .jpg: go by the bytes
        return process_item(dataclasses.replace(item, kind=other.kind, format=other.format), ctx)
    except _Stopped:
        res.status, res.error, dets = "failed", "not published: the run was stopped", []
        stopped = True  # not this file's fault: an earlier run's output at this key stays
    except SanitizerError as exc:  # MediaError, StorageError, DetectorError...
        res.status, res.error, dets = "failed", _one_line(exc), []
    except MemoryError:
        res.status, res.error, dets = "failed", "out of memory while processing", []
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected, keep the job alive
        res.status, res.error, dets = (
            "failed",
            f"internal error: {type(exc).__name__}: {_one_line(exc)}",
            [],
        )
    if res.status == "failed":
        res.output_uri = res.output_sha256 = ""
        res.n_faces = 0
        res.detection_parts = []  # staged parts of a failed file are discarded by commit.settle
        if item.kind != "other" and not stopped:
            res.error += _earlier_output_note(ctx, item)
    res.storage_retries = storage.retries_so_far()
    res.finished = time.time()
    res.duration_ms = (res.finished - started) * 1000
    return res.to_row(), dets


# images larger than this are sniffed from a first ranged read before being read whole (small
# ones are read whole at once: one request instead of two on an object store)
SNIFF_FIRST_ABOVE = 1 << 20


class _OverLimit(SanitizerError):
    """The file is over one of the `input` limits."""


def _check_size(item: MediaItem, ctx: Context, size: int | None = None) -> None:
    limit = ctx.cfg.input.max_bytes
    size = item.size if size is None else size
    if limit and size > limit:
        raise _OverLimit(f"over input.max_bytes ({limit}): the file has {size} bytes")


def _process_image(item: MediaItem, ctx: Context, res: FileResult) -> list[dict[str, Any]]:
    from sanitizer.media import image

    _skip_if_same_stat(item, ctx, res)
    limits = image.Limits.from_config(ctx.cfg.input)
    if item.size > SNIFF_FIRST_ABOVE:
        # the first bytes decide before the file is read whole (a huge non-image named .jpg)
        _sniffed(item, storage.read_head(ctx.src, item.key, HEAD_BYTES))
    _check_size(item, ctx)
    data = storage.read_bytes(ctx.src, item.key)
    _check_size(item, ctx, len(data))  # it may have grown since it was listed
    _sniffed(item, data)
    res.source_sha256 = hashlib.sha256(data).hexdigest()
    _skip_if_unchanged(item, ctx, res.source_sha256)
    # compliance (issue 14): the detector wrapper hashes the decoded source (phash.py)
    hashing = phash.HashingDetector(ctx.detector)
    out = image.sanitize(
        data,
        hashing,
        ctx.params,
        opts=image.EncodeOptions.from_config(ctx.cfg.output),
        limits=limits,
    )
    res.n_images = out.n_images
    res.phash = hashing.hash
    rows = []
    for frame, t_ms, faces in out.detections:
        rows += detection_rows(ctx.run_id, item.key, frame, t_ms, faces)
    res.frames = len(out.detections)
    _check_may_publish(ctx)
    storage.put_bytes(ctx.dst, storage.staging_key(ctx.run_id, item.key), out.payload)
    res.output_uri = ctx.dst.uri(item.key)  # where the driver publishes it (see module doc)
    res.output_sha256 = hashlib.sha256(out.payload).hexdigest()
    res.n_faces = len(rows)
    return rows


def _check_complete(out, ctx: Context) -> None:
    """A video that could not be fully decoded (packets the decoder rejected, frames the
    container declared but that could not be read, e.g. a file cut mid-stream) fails, unless
    `video.allow_partial` publishes the decodable part (the row counts the dropped packets)."""
    if out.dropped_packets and not ctx.cfg.video.allow_partial:
        raise DecodeError(
            f"video not fully decodable: {out.dropped_packets} packets or declared frames lost "
            f"({out.frames} frames decoded); nothing published (video.allow_partial: true "
            "publishes the decodable part)"
        )


def _process_video(item: MediaItem, ctx: Context, res: FileResult) -> list[dict[str, Any]]:
    from sanitizer.media import video

    started = time.monotonic()  # input.file_timeout_s counts from here (download included)
    _skip_if_same_stat(item, ctx, res)
    _sniffed(item, storage.read_head(ctx.src, item.key, HEAD_BYTES))  # before any download
    _check_size(item, ctx)
    with storage.local_copy(ctx.src, item.key) as (src_path, digest):
        with open(src_path, "rb") as f:
            container = _sniffed(item, f.read(HEAD_BYTES))
        res.source_sha256 = digest
        _skip_if_unchanged(item, ctx, digest)
        _check_declared(src_path, ctx)
        suffix = os.path.splitext(item.key)[1]
        if not suffix or len(suffix.encode("utf-8", "surrogateescape")) > 16:
            suffix = f".{item.format}"  # the temporary output's name stays short
        res.phash = phash.of_video(src_path)  # compliance (issue 14): keyframe hashes
        with tempfile.TemporaryDirectory(prefix="sanitizer-out-") as tmp:
            out_path = os.path.join(tmp, "out" + suffix)
            # detection rows go to a sink as frames are finalised, which writes a part every
            # DETECTION_PART_ROWS rows: a long video's rows are never all held in memory
            sink = audit.DetectionSink(ctx.dst, ctx.run_id, item.key)
            out = video.sanitize(
                src_path,
                out_path,
                ctx.detector,
                ctx.params,
                ctx.cfg.video,
                container=container,
                on_detections=sink.add_frame,
                timeout_s=ctx.cfg.input.file_timeout_s,
                started=started,
            )
            res.frames, res.fps = _count(out.frames), _sane(out.fps, 0.0, 10_000.0)
            res.media_duration_ms = _sane(out.duration_ms, 0.0, float(INT32_MAX) * 1000)
            res.audio_kept = out.audio_kept
            res.n_images = out.tracks  # video tracks written
            # a damaged index can claim any number of frames: never more dropped packets
            # than bytes in the file
            res.dropped_packets = min(_count(out.dropped_packets), max(0, item.size))
            _check_complete(out, ctx)
            h = hashlib.sha256()
            with open(out_path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            _check_may_publish(ctx)
            storage.put_file(ctx.dst, storage.staging_key(ctx.run_id, item.key), out_path)
            res.output_uri = ctx.dst.uri(item.key)
            res.output_sha256 = h.hexdigest()
    rows = sink.pending()
    res.detection_parts = sink.parts
    res.n_faces = sink.count
    return rows


INT32_MAX = 2**31 - 1


def _count(value: Any) -> int:
    """A counter for the audit: an int in 0..2**31-1 (a damaged header cannot overflow it)."""
    try:
        return int(min(max(int(value), 0), INT32_MAX))
    except (TypeError, ValueError, OverflowError):
        return 0


def _sane(value: Any, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return low
    if v != v:  # NaN
        return low
    return min(max(v, low), high)


def _check_declared(path: str, ctx: Context) -> None:
    """Fail a video before decoding when its container declares more frames or a longer
    duration than input.max_frames / input.max_duration_s, or frames over input.max_pixels."""
    import av

    inp = ctx.cfg.input
    try:
        with av.open(path, metadata_errors="ignore") as container:
            duration_s = (container.duration or 0) / 1_000_000  # av.time_base
            for stream in container.streams.video:
                frames = int(stream.frames or 0)
                if stream.duration and stream.time_base:
                    duration_s = max(duration_s, float(stream.duration * stream.time_base))
                if inp.max_frames and frames > inp.max_frames:
                    raise _OverLimit(
                        f"over input.max_frames ({inp.max_frames}): the container declares "
                        f"{frames} frames"
                    )
                w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
                if inp.max_pixels and w * h > inp.max_pixels:
                    raise _OverLimit(
                        f"over input.max_pixels ({inp.max_pixels}): frames of {w}x{h} pixels"
                    )
    except _OverLimit:
        raise
    except (av.error.FFmpegError, OSError, ValueError, OverflowError):
        return  # the video pipeline reports an unreadable file in its own words
    if inp.max_duration_s and duration_s > inp.max_duration_s:
        raise _OverLimit(
            f"over input.max_duration_s ({inp.max_duration_s:g} s): the container declares "
            f"{duration_s:.0f} s"
        )
