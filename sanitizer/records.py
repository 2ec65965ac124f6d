"""Data types that flow through the job, and the explicit Parquet schemas of the audit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
# `error` of the `skipped` row of a source already published with the same bytes and config
UNCHANGED = "unchanged: already published with the same source and config"


@dataclass(slots=True, frozen=True)
class MediaItem:
    """One file of the manifest. `key` is the path relative to SRC, always with '/'."""

    key: str
    uri: str
    kind: str  # image | video | other
    format: str  # sniffed container/format name, e.g. "jpeg", "mp4", "" for other
    size: int
    sha256: str
    skip: str = ""  # why the entry is only recorded, as `skipped` (a link, FIFO, hidden file...)
    refuse: str = ""  # why the file is refused, recorded as `failed` (an unsafe or reserved name)
    stat: str = ""  # size and mtime (local) or ETag (S3) from the listing (storage.stat_token)


@dataclass(slots=True)
class Detections:
    """Faces found in one image: parallel arrays, `boxes` as (n, 4) x1, y1, x2, y2 pixels."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        if len(self.boxes) != len(self.scores):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")

    @classmethod
    def empty(cls) -> Detections:
        return cls()

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: Any) -> Detections:
        return Detections(self.boxes[index], self.scores[index])

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts])
        )


@dataclass(slots=True)
class FileResult:
    """Exactly one per manifest item, whatever happened to it."""

    run_id: str
    key: str
    source_uri: str
    source_sha256: str
    size: int
    kind: str
    status: str  # ok | failed | skipped
    error: str = ""
    n_faces: int = 0
    output_uri: str = ""
    output_sha256: str = ""
    detector: str = ""
    model_sha256: str = ""
    config_fingerprint: str = ""
    started: float = 0.0  # unix seconds
    finished: float = 0.0
    duration_ms: float = 0.0
    frames: int = 0
    fps: float = 0.0
    media_duration_ms: float = 0.0
    audio_kept: bool = False
    dropped_packets: int = 0
    worker: str = ""
    raw_key: str = ""  # the key's exact bytes, percent-encoded (`key` escapes non-UTF-8 bytes)
    n_images: int = 0  # images written (every frame/page of an image file); videos: tracks
    # perceptual hash of the source (16 hex; videos: a few keyframes, space-separated), for
    # `sanitizer audit find --like` (sanitizer/phash.py); "" when not computed
    phash: str = ""
    precision: str = ""  # what the detector's model ran at on this worker: int8 | fp32 | ...
    storage_retries: int = 0  # transient storage errors retried while reading/writing this file
    source_stat: str = ""  # size and mtime (local) or ETag (S3) of the source when it was read
    # not a column: staged detection parts of this file (audit.DetectionSink), for the driver
    detection_parts: list[str] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RunRecord:
    run_id: str
    tool_version: str
    started: float
    finished: float
    source: str
    destination: str
    config_json: str
    config_fingerprint: str
    detector: str
    model_sha256: str
    n_files: int
    n_ok: int
    n_failed: int
    n_skipped: int
    n_faces: int
    # GDPR Art. 30 record-of-processing fields, from the config's `record` section
    controller: str = ""
    dpo_contact: str = ""
    purpose: str = ""
    legal_basis: str = ""
    data_categories: str = ""
    data_subjects: str = ""
    recipients: str = ""
    retention: str = ""
    transfers: str = ""
    security_measures: str = ""
    host: str = ""
    scheduler: str = ""
    status: str = "complete"  # running (while it runs) | complete | interrupted | error

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def _meta(table: str) -> dict[bytes, bytes]:
    return {
        b"sanitizer.schema_version": str(SCHEMA_VERSION).encode(),
        b"sanitizer.table": table.encode(),
    }


FILES_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("run_id", pa.string()),
        ("key", pa.string()),
        ("source_uri", pa.string()),
        ("source_sha256", pa.string()),
        ("size", pa.int64()),
        ("kind", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("n_faces", pa.int64()),
        ("output_uri", pa.string()),
        ("output_sha256", pa.string()),
        ("detector", pa.string()),
        ("model_sha256", pa.string()),
        ("config_fingerprint", pa.string()),
        ("started", pa.timestamp("ms", tz="UTC")),
        ("finished", pa.timestamp("ms", tz="UTC")),
        ("duration_ms", pa.float64()),
        ("frames", pa.int64()),
        ("fps", pa.float64()),
        ("media_duration_ms", pa.float64()),
        ("audio_kept", pa.bool_()),
        ("dropped_packets", pa.int64()),
        ("worker", pa.string()),
        ("raw_key", pa.string()),
        ("n_images", pa.int64()),
        ("phash", pa.string()),
        ("precision", pa.string()),
        ("storage_retries", pa.int64()),
        ("source_stat", pa.string()),
    ],
    metadata=_meta("files"),
)

DETECTIONS_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("run_id", pa.string()),
        ("key", pa.string()),
        ("frame", pa.int64()),
        ("t_ms", pa.float64()),
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("w", pa.float32()),
        ("h", pa.float32()),
        ("score", pa.float32()),
        ("track_id", pa.int64()),  # -1 for images
        ("detected", pa.bool_()),  # False: box carried by tracking, not seen by the detector
    ],
    metadata=_meta("detections"),
)

RUNS_SCHEMA = pa.schema(
    [("schema_version", pa.int16())]
    + [
        (name, pa.timestamp("ms", tz="UTC") if name in ("started", "finished") else typ)
        for name, typ in [
            ("run_id", pa.string()),
            ("tool_version", pa.string()),
            ("started", None),
            ("finished", None),
            ("source", pa.string()),
            ("destination", pa.string()),
            ("config_json", pa.string()),
            ("config_fingerprint", pa.string()),
            ("detector", pa.string()),
            ("model_sha256", pa.string()),
            ("n_files", pa.int64()),
            ("n_ok", pa.int64()),
            ("n_failed", pa.int64()),
            ("n_skipped", pa.int64()),
            ("n_faces", pa.int64()),
            ("controller", pa.string()),
            ("dpo_contact", pa.string()),
            ("purpose", pa.string()),
            ("legal_basis", pa.string()),
            ("data_categories", pa.string()),
            ("data_subjects", pa.string()),
            ("recipients", pa.string()),
            ("retention", pa.string()),
            ("transfers", pa.string()),
            ("security_measures", pa.string()),
            ("host", pa.string()),
            ("scheduler", pa.string()),
            ("status", pa.string()),
        ]
    ],
    metadata=_meta("runs"),
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("key", pa.string()),
        ("uri", pa.string()),
        ("kind", pa.string()),
        ("format", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("raw_key", pa.string()),
    ],
    metadata=_meta("manifest"),
)

VERIFY_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("run_id", pa.string()),  # the verify pass (not the run that wrote the outputs)
        ("checked_run_id", pa.string()),  # the run whose outputs were checked ("" if unknown)
        ("key", pa.string()),
        (
            "status",
            pa.string(),
        ),  # residual | redacted | clean | error (one row per file when no box)
        ("frame", pa.int64()),  # -1 on per-file rows
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("w", pa.float32()),
        ("h", pa.float32()),
        ("score", pa.float32()),
        ("threshold", pa.float32()),  # native-pass threshold of the verify scan
        ("error", pa.string()),
    ],
    metadata=_meta("verify"),
)

# `sanitizer erase` (GDPR Art. 17): one row per source erased on request (sanitizer/erase.py)
ERASURES_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("erasure_id", pa.string()),  # one `sanitizer erase` command
        ("erased_at", pa.timestamp("ms", tz="UTC")),
        ("key", pa.string()),  # source key; later runs skip it until --force
        ("source_sha256", pa.string()),
        ("output_uri", pa.string()),
        ("output_sha256", pa.string()),
        ("removed", pa.bool_()),  # an output existed at DST and was removed
        ("matched_by", pa.string()),  # e.g. "key faces/*.jpg", "like 9f3a... (distance 2)"
        ("reason", pa.string()),  # free text: who asked, the request's reference
        ("runs", pa.string()),  # run ids that had processed the source, space-separated
    ],
    metadata=_meta("erasures"),
)

# `sanitizer review --import` (sanitizer/review.py): one row per verdict of a person
REVIEWS_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("review_id", pa.string()),  # one review page
        ("reviewed_at", pa.timestamp("ms", tz="UTC")),
        ("key", pa.string()),
        ("run_id", pa.string()),  # the run whose output was reviewed
        ("output_sha256", pa.string()),
        ("verdict", pa.string()),  # fine | face_left
        ("reviewer", pa.string()),
        ("note", pa.string()),
    ],
    metadata=_meta("reviews"),
)

TIMESTAMP_COLUMNS = ("started", "finished", "erased_at", "reviewed_at")


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) → a table of exactly `schema`; unix-second floats become timestamps."""
    cols: dict[str, list[Any]] = {}
    for f in schema:
        if f.name == "schema_version":
            cols[f.name] = [SCHEMA_VERSION] * len(rows)
        elif f.name in TIMESTAMP_COLUMNS:
            cols[f.name] = [int(round(r[f.name] * 1000)) for r in rows]
        else:
            cols[f.name] = [r[f.name] for r in rows]
    arrays = []
    for f in schema:
        if f.type == pa.string():  # names that are not UTF-8 are escaped (see `_printable`)
            cols[f.name] = [_printable(v) if isinstance(v, str) else v for v in cols[f.name]]
        if f.name in TIMESTAMP_COLUMNS:
            arrays.append(pa.array(cols[f.name], pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(cols[f.name], f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _printable(text: str) -> str:
    """Valid UTF-8 for Parquet: the bytes of a name that is not UTF-8 (held by Python as lone
    surrogates) become `\\xNN` escapes; `raw_key` keeps such names losslessly."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
