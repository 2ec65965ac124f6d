"""Second pass over published outputs: is any face left?

    report = verify("DST", cfg)          # -> VerifyReport; rows go to DST/_audit/verify/

Every image and every frame of every video under DST (or every `frame_stride`-th frame of a
video, for a quicker spot check) is scanned again
with the configured detector at a *lower* threshold than the run used (every pass's
threshold shifted down by the same amount). Each detection is classified against the run's
own detections (`_audit/detections`) and mask (the run's shape and margin):

- `redacted`: a face the run redacted, found again (reported: how face-like the fill is).
- `residual`: anywhere else — a face the run missed (or a false positive to look at).
  Residuals scoring >= `fail_score` (default 0.6; faces in unredacted photos typically score
  0.7-0.95, while the strongest residual on the redacted dev set scored 0.51) count against
  the limit; weaker ones are suspects listed in the table.
- `mask_edge`: on the edge of the run's mask but not a face it redacted (ignored).

An output whose sha256 differs from the one the run recorded in `_audit/files` (replaced or
edited after the run) gets no credit for the run's redaction: all its detections are residual.
Files with no detection get one `clean` row, unreadable ones an `error` row, so the table
shows that every output was checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sanitizer import audit, storage
from sanitizer.errors import ConfigError, MediaError, SanitizerError
from sanitizer.records import Detections

DEFAULT_DROP = 0.05  # verify threshold = run threshold - this, unless given
FAIL_SCORE = 0.6  # residual detections scoring at least this count against the limit
SAME_FACE_IOU = 0.3  # a verify box this close to a box the run redacted is that face
EDGE_SHARE = 0.25  # share of a verify box on the run's mask that makes it a mask-edge artefact


@dataclass(slots=True)
class VerifyReport:
    verify_id: str
    destination: str
    threshold: float  # native-pass threshold of the verify scan
    run_threshold: float  # the run's native-pass threshold (detection threshold)
    n_files: int = 0
    n_frames: int = 0
    n_residual: int = 0  # detections outside redacted areas
    n_residual_at_run_threshold: int = 0  # ... scoring at or above the run's threshold
    n_residual_confident: int = 0  # ... scoring at or above `fail_score`
    fail_score: float = FAIL_SCORE
    n_mask_edge: int = 0  # detections on the edge of a fill (not a face the run redacted)
    n_redacted_redetected: int = 0  # redacted faces found again (any verify score)
    n_redacted_at_run_threshold: int = 0  # ... scoring at or above the run's threshold
    files_with_residuals: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)  # outputs whose sha256 is not the run's
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    audit_uri: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def residual_faces(self) -> int:
        """What the limit applies to: confident residual detections (score >= fail_score).
        Weaker ones are listed in the table as suspects to review."""
        return self.n_residual_confident


def lowered(dcfg, threshold: float):
    """A copy of a DetectConfig with every pass's threshold moved by (threshold - dcfg.threshold)."""
    delta = threshold - dcfg.threshold
    changes: dict[str, Any] = {"threshold": threshold}
    for name in ("upscale_threshold", "rescan_threshold", "aspect_threshold"):
        if hasattr(dcfg, name):
            changes[name] = min(0.99, max(0.02, getattr(dcfg, name) + delta))
    if getattr(dcfg, "vote_threshold", 0) > 0:
        changes["vote_threshold"] = max(0.02, dcfg.vote_threshold + delta)
    return dataclasses.replace(dcfg, **changes)


def _run_redact_params(runs, run_id: str, default):
    """(shape, margin) the run used, from its effective config; `default` otherwise."""
    if runs is None or runs.empty or not run_id:
        return default.shape, default.margin
    rows = runs[runs["run_id"] == run_id]
    if rows.empty:
        return default.shape, default.margin
    try:
        red = json.loads(rows.iloc[0]["config_json"])["redact"]
        return str(red["shape"]), float(red["margin"])
    except (ValueError, KeyError, TypeError):
        return default.shape, default.margin


def _run_threshold(runs, default: float) -> float:
    if runs is None or runs.empty:
        return default
    try:
        latest = runs.sort_values("started").iloc[-1]
        return float(json.loads(latest["config_json"])["detect"]["threshold"])
    except (ValueError, KeyError, TypeError):
        return default


def classify(
    dets: Detections, redacted_boxes: np.ndarray | None, redacted_mask: np.ndarray | None
) -> list[str]:
    """Status of each verify detection against what the run redacted:

    - `redacted`: the same face the run redacted (IoU >= 0.3 with one of the run's boxes) —
      the redacted face still looks like a face to the detector;
    - `mask_edge`: at least 25% of the box lies on the redaction mask but it is not a redacted
      face (the detector reacting to the edge of a fill, e.g. a black ellipse above a collar);
    - `residual`: elsewhere — a face the run missed, or a false positive to look at.
    """
    from sanitizer.detect import iou_matrix

    out = ["residual"] * len(dets)
    if redacted_boxes is None or not len(redacted_boxes) or not len(dets):
        return out
    best = iou_matrix(dets.boxes, redacted_boxes).max(1)
    h, w = redacted_mask.shape if redacted_mask is not None else (0, 0)
    for i, (x1, y1, x2, y2) in enumerate(dets.boxes):
        if best[i] >= SAME_FACE_IOU:
            out[i] = "redacted"
            continue
        xa, ya = int(max(0, np.floor(x1))), int(max(0, np.floor(y1)))
        xb, yb = int(min(w, np.ceil(x2))), int(min(h, np.ceil(y2)))
        if (
            redacted_mask is not None
            and xb > xa
            and yb > ya
            and redacted_mask[ya:yb, xa:xb].mean() >= EDGE_SHARE
        ):
            out[i] = "mask_edge"
    return out


def _image_frames(data: bytes) -> list[np.ndarray]:
    from sanitizer.media.image import decode, to_rgb8

    return [to_rgb8(f) for f in decode(data).frames]


def _video_frames(
    loc: storage.Location, key: str, stride: int = 1
) -> Iterator[tuple[int, np.ndarray]]:
    """Every `stride`-th upright RGB frame of a video (index, array), decoded one at a time
    (memory stays at a frame or two whatever the length and resolution)."""
    import av

    from sanitizer.media.video import rotation_turns

    stride = max(1, int(stride))
    with storage.local_copy(loc, key) as (path, _):
        try:
            with av.open(path) as c:
                if not c.streams.video:
                    raise MediaError("no video stream")
                stream = c.streams.video[0]
                stream.thread_type = "AUTO"
                for i, frame in enumerate(c.decode(stream)):
                    if i % stride:
                        continue
                    arr = frame.to_ndarray(format="rgb24")
                    turns = rotation_turns(getattr(frame, "rotation", 0) or 0)
                    yield i, (np.ascontiguousarray(np.rot90(arr, turns)) if turns else arr)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"cannot decode video: {exc}") from None


def verify(
    dst: str,
    cfg,
    threshold: float | None = None,
    frame_stride: int = 1,
    fail_score: float = FAIL_SCORE,
    write: bool = True,
    detector=None,
    on_file: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    (
        """Scan every output under `dst` again; write a `verify` audit table (unless `write` is False).

    Videos are checked frame by frame (`frame_stride` > 1: every n-th frame only)."""
        ""
    )
    from sanitizer.detect import get_detector
    from sanitizer.manifest import sniff

    loc = storage.location(dst, cfg.output.storage_options)
    runs = audit.read(loc, "runs")
    files = audit.read(loc, "files")
    dets_tbl = audit.read(loc, "detections")
    run_thr = _run_threshold(runs, cfg.detect.threshold)
    thr = threshold if threshold is not None else max(0.02, run_thr - DEFAULT_DROP)
    if not 0 < thr < 1:
        raise ConfigError(f"verify threshold must be between 0 and 1, got {thr}")
    det = detector if detector is not None else get_detector(lowered(cfg.detect, thr))
    # the latest ok run per key, and its redacted boxes per frame
    latest: dict[str, str] = {}
    written: dict[str, str] = {}  # key -> output sha256 the run recorded
    if not files.empty:
        ok = files[files["status"] == "ok"].sort_values("finished")
        latest = dict(zip(ok["key"], ok["run_id"], strict=True))
        written = dict(zip(ok["key"], ok["output_sha256"], strict=True))
    boxes: dict[tuple[str, str, int], np.ndarray] = {}
    if not dets_tbl.empty:
        for (rid, key, frame), g in dets_tbl.groupby(["run_id", "key", "frame"]):
            xywh = g[["x", "y", "w", "h"]].to_numpy(np.float64)
            boxes[(rid, key, int(frame))] = np.concatenate(
                [xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1
            )
    report = VerifyReport(
        uuid.uuid4().hex[:12],
        loc.url,
        thr,
        run_thr,
        audit_uri=audit.audit_uri(loc),
        fail_score=fail_score,
    )
    keys = [k for k, _ in storage.walk(loc) if not storage.is_reserved(k)]  # not _audit/, _staging/
    t0 = time.perf_counter()
    base = dict(run_id=report.verify_id, threshold=thr)
    for n, key in enumerate(keys):
        rid = latest.get(key, "")
        row0 = dict(
            base,
            checked_run_id=rid,
            key=key,
            frame=-1,
            x=None,
            y=None,
            w=None,
            h=None,
            score=None,
            error="",
        )
        try:
            kind, _ = sniff(storage.read_head(loc, key, 64))
            if kind not in ("image", "video"):
                continue
            # an output that is not the file the run wrote (replaced, edited) gets no credit
            # for the run's redaction: every face found in it is residual
            data = storage.read_bytes(loc, key) if kind == "image" else None  # read once
            if key in written and written[key] != (
                hashlib.sha256(data).hexdigest()
                if data is not None
                else storage.sha256_of(loc, key)
            ):
                report.modified.append(key)
                rid = ""
                row0["checked_run_id"] = ""
                row0["error"] = "output differs from the file the run wrote (sha256)"
            if kind == "image":
                frames = list(enumerate(_image_frames(data)))
            else:
                frames = _video_frames(loc, key, frame_stride)
        except SanitizerError as exc:  # StorageError, MediaError...
            report.errors.append((key, str(exc)))
            report.rows.append(dict(row0, status="error", error=str(exc)[:500]))
            continue
        try:
            found, boxes_in_file = _check_frames(
                report, frames, det, boxes, rid, key, runs, cfg, row0, run_thr, fail_score
            )
        except SanitizerError as exc:  # a video that fails to decode part way
            report.errors.append((key, str(exc)))
            report.rows.append(dict(row0, status="error", error=str(exc)[:500]))
            continue
        report.n_files += 1
        if found:
            report.files_with_residuals.append(key)
        if not boxes_in_file:
            report.rows.append(dict(row0, status="clean"))
        if on_file:
            on_file(n + 1, len(keys))
    report.seconds = time.perf_counter() - t0
    if write and report.rows:
        audit.write_part(loc, "verify", f"verify-{report.verify_id}", report.rows)
    return report


def _check_frames(report, frames, det, boxes, rid, key, runs, cfg, row0, run_thr, fail_score):
    """Re-scan one file's frames into `report`; (confident residuals, all boxes) found."""
    from sanitizer.redact import mask_for

    found = boxes_in_file = 0
    shape, margin = _run_redact_params(runs, rid, cfg.redact)
    for index, rgb in frames:
        report.n_frames += 1
        d = det.detect(rgb)
        if not len(d):
            continue
        prev = boxes.get((rid, key, index))
        mask = mask_for(prev, *rgb.shape[:2], shape, margin) if prev is not None else None
        status = classify(d, prev, mask)
        boxes_in_file += len(d)
        for i in range(len(d)):
            x1, y1, x2, y2 = (float(v) for v in d.boxes[i])
            score = float(d.scores[i])
            report.rows.append(
                dict(
                    row0,
                    status=status[i],
                    frame=int(index),
                    x=x1,
                    y=y1,
                    w=x2 - x1,
                    h=y2 - y1,
                    score=score,
                )
            )
            if status[i] == "residual":
                report.n_residual += 1
                report.n_residual_at_run_threshold += score >= run_thr
                report.n_residual_confident += score >= fail_score
                found += score >= fail_score
            elif status[i] == "redacted":
                report.n_redacted_redetected += 1
                report.n_redacted_at_run_threshold += score >= run_thr
            else:
                report.n_mask_edge += 1
    return found, boxes_in_file
