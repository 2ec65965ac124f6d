"""Typed configuration: defaults < YAML file < CLI overrides, and a stable fingerprint.

The fingerprint hashes only the sections that change output pixels (detect, redact,
video, output), so two runs with the same fingerprint produce the same redaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sanitizer.errors import ConfigError


@dataclass(slots=True)
class InputConfig:
    include_hidden: bool = False  # list files and folders whose name starts with "."
    storage_options: dict[str, Any] = field(default_factory=dict)  # passed to fsspec for SRC
    # Limits per file (0 = no limit). A file over one fails, with the limit named in its row.
    max_bytes: int = 16 * 1024**3  # bytes of the file (images are read into memory whole)
    max_pixels: int = 178_956_970  # pixels of one image or video frame (Pillow's bomb limit)
    # decoded pixels of all frames/pages of one image file together (they are held at once)
    max_image_pixels: int = 1024**3
    max_frames: int = 1_000_000  # frames of a video, frames/pages of an image
    max_duration_s: float = 6 * 3600.0  # a video's duration as its container declares it
    # wall-clock seconds for one file, image or video (README: Hostile and unusual input)
    file_timeout_s: float = 3600.0


INPUT_LIMITS = (
    "max_bytes",
    "max_pixels",
    "max_image_pixels",
    "max_frames",
    "max_duration_s",
    "file_timeout_s",
)
PRECISIONS = ("int8", "fp32")  # detect.precision values (centerface.py runs them)
# redact.method / redact.shape values (redact.py implements them). Named here so that checking
# a config does not import OpenCV: the run's first worker starts spawning right after it.
REDACT_METHODS = ("gaussian", "pixelate", "solid")
REDACT_SHAPES = ("ellipse", "box")


@dataclass(slots=True)
class DetectConfig:
    # centerface | haar | a plug-in's name (entry-point group sanitizer.detectors)
    detector: str = "centerface"
    # Default profile (chosen on ../shared/data/faces_dev.json, see BENCHMARKS.md "Recall"):
    # two CenterFace passes per image, native size and 1.5x upscaled (images under
    # `upscale_below` px; faces under `upscale_max_face` px only), plus a second-opinion vote.
    threshold: float = 0.2  # score threshold of the native (1x) and mirrored passes
    upscale: float = 1.5  # 0 or 1 = no upscaled pass
    upscale_below: int = 1100  # long side (px) under which the upscaled pass runs
    upscale_threshold: float = 0.25  # upscaled passes produce more false positives
    upscale_max_face: float = (
        96  # px (original image); bigger boxes of the upscaled pass are dropped
    )
    # Run the upscaled pass only when the native pass shows a face-like response scoring
    # >= `upscale_hint` under `upscale_max_face` px (no small faces → no upscaling); 0 = always.
    upscale_hint: float = 0.03
    # Small images (thumbnails): the upscaled pass zooms at least enough for the image's long
    # side to reach this many px (at most max_side); 0 = just `upscale`.
    upscale_min_side: int = 0
    # Square images (photos resized for model training without keeping the aspect ratio,
    # thumbnails): also scan the image stretched `aspect_wide` times in width, and narrowed so
    # that it is `aspect_tall` times taller than wide, so squashed faces look like faces again
    # (0 or 1 = no such pass). An image is square when |width / height - 1| <= `aspect_square_tol`.
    # 1.5 / 1.25 undo the squash of 3:2 landscapes / 4:5 portraits (BENCHMARKS.md, 2026-11-29).
    aspect_wide: float = 1.5
    aspect_tall: float = 1.25
    aspect_square_tol: float = 0.01
    aspect_scale: float = 1.0  # zoom of the aspect-corrected passes (before the stretch)
    # score threshold of the aspect-corrected passes (calibrated on the tune half); they do not
    # vote (two stretched copies agree too often on the same stretched non-face)
    aspect_threshold: float = 0.3
    # Very large images are also split into overlapping tiles of `tile_size` px at native scale.
    tile_above: int = 2400
    tile_size: int = 1280
    tile_overlap: int = 160
    hflip: bool = False  # also detect on the mirrored native image (a second opinion, ~+30% time)
    # Second opinions: a box scoring only >= `vote_threshold` is kept when every one of
    # `vote_passes` passes found it (IoU >= 0.3). Needs that many passes; 0 = off.
    vote_threshold: float = 0.1
    vote_passes: int = 2
    # Crowds: when the first passes find at least `rescan_small` faces smaller than
    # `rescan_small_side` px, look again at `rescan_scale` times the size (0 = never).
    rescan_small: int = 0
    rescan_small_side: int = 24
    rescan_scale: float = 3.0
    rescan_threshold: float = 0.5
    nms_iou: float = 0.3
    # px: a face box smaller than this grows to enclose the boxes NMS merged into it (passes
    # and anchors see a small face slightly shifted); faces < 16 px protected on the report
    # half 92.7 -> 94.9 %, squashed 416x416 87.7 -> 93.8 %, for ~8 % more masked area on
    # photos with faces (BENCHMARKS.md, 2026-12-03). 0 = plain NMS.
    grow_small: float = 32
    min_face: int = 4  # px; smaller boxes are dropped
    max_side: int = 1920  # long side for the 1x pass; bigger images are downscaled (or tiled)
    threads: int = 1  # inference threads per worker process
    # CenterFace network precision: int8 (statically quantized once per machine from the
    # wheel's fp32 file; 1.6-1.7x faster, same dev-set recall; CPUs without int8 dot-product
    # instructions run fp32 instead, see detect/quantize.py) or fp32 (the file as shipped)
    precision: str = "int8"
    haar_scale_factor: float = 1.1
    haar_min_neighbors: int = 4


@dataclass(slots=True)
class RedactConfig:
    method: str = "gaussian"  # gaussian | pixelate | solid
    # box (default) | ellipse: a redacted ellipse keeps a head's outline, and the detector finds
    # 5-13 % of such faces >= 32 px again; box masks 0.3-1.7 % (BENCHMARKS.md "Verify and irreversibility")
    shape: str = "box"
    margin: float = 1.5  # mask = detection box enlarged this many times, clipped to the image
    blocks: int = 4  # pixelate: blocks across a face (more blocks leave more faces re-detectable)
    blur_strength: float = 0.5  # gaussian: sigma = strength * face side (irreversible at 0.5)
    color: tuple[int, int, int] = (0, 0, 0)  # solid fill colour, RGB


# environment of a worker process: the cores it has to itself (video.detect_threads: 0)
WORKER_CORES_ENV = "SANITIZER_WORKER_CORES"


@dataclass(slots=True)
class VideoConfig:
    codec: str = "libx264"  # H.264 for mp4/mov/mkv/avi; WebM uses libvpx-vp9
    preset: str = "veryfast"
    crf: int = 20
    # Scanning (media/video/scan.py): every frame gets a cheap look (the whole frame at
    # `scan_side` px) and one native-resolution band; the frame is cut into
    # cycle = ceil(pixels / native_pixels) bands (at most max_cycle), so every region is
    # scanned at native resolution at least every `cycle` frames (4 at 1080p, 12 at 4K).
    scan_side: int = 640  # long side of the cheap whole-frame look (every frame)
    native_pixels: int = 600_000  # upright-frame pixels per native band (about)
    max_cycle: int = 12  # most frames between two native looks at a region (bands grow instead)
    # least rows neighbouring bands share (more when the cheap look is coarse)
    band_overlap: int = 32
    # a frame shown longer than this x the nominal frame interval (variable frame rate,
    # slideshow stills) is scanned whole at native resolution
    long_frame: float = 1.5
    # keep and lead are at least the scan cycle (a face is covered back to the previous native
    # look of its region and on to the next one)
    track_keep: int = 8  # frames a track stays covered after its last detection
    track_lead: int = 4  # frames a track is covered before its first detection (look-ahead)
    track_iou: float = 0.2  # association threshold between a track and a new detection
    # codec threads, for decoding and for encoding (0 = FFmpeg decides: at 4K that cost ~100 MB
    # more per worker than 2, at the same speed on 2 cores; BENCHMARKS.md, Video)
    threads: int = 2
    # Detection threads per file (onnxruntime releases the GIL), at most 2 (scan.CROP_LAG);
    # 0 = the cores the worker has to itself: the embedded cluster starts fewer workers than
    # cores when a run has fewer shards (one video: both cores on it, 1.34x faster at 1080p);
    # on an existing cluster, the SANITIZER_WORKER_CORES environment of its workers (else 1).
    # Above 1080p, 1 for frames over 4K (int8 network) or 3200x1800 (fp32) (memory: pipeline.py).
    # The output does not depend on it.
    detect_threads: int = 0
    vp9_crf: int = 32  # WebM outputs (VP9): quality, 0-63, lower = better and bigger
    vp9_speed: int = 8  # WebM outputs (VP9): libvpx cpu-used in realtime mode, 0-8, higher = faster
    # H.264: quantizer offset inside redacted regions, as a fraction of x264's QP range (0.2 =
    # +10 QP). What is left there is a blur: x264 spends fewer bits and less time on it.
    redacted_qoffset: float = 0.2
    # A video that cannot be fully decoded (a file cut mid-stream, packets the decoder rejects)
    # fails by default; true publishes the decodable part, dropped packets counted in the row.
    allow_partial: bool = False


@dataclass(slots=True)
class OutputConfig:
    jpeg_quality: int = 92
    webp_quality: int = 90
    png_compress_level: int = (
        3  # zlib level of PNG outputs (0-9): 3 is ~2.5x faster than 6, ~3% bigger
    )
    storage_options: dict[str, Any] = field(default_factory=dict)  # passed to fsspec for DST
    # A file that fails (or whose source cannot be read) keeps the output an earlier run
    # published at its key, and its row says so; false removes that output (the row says so).
    keep_last_good: bool = True


@dataclass(slots=True)
class ExecutionConfig:
    workers: int = 0  # 0 = one per core
    threads_per_worker: int = 1
    scheduler: str = ""  # address of an existing Dask scheduler, "" = embedded LocalCluster
    shard_bytes: int = 64 * 1024 * 1024  # target bytes of input per task
    shard_files: int = 64  # at most this many files per task
    retries: int = 1  # retries of a shard whose worker died
    # skip files whose source sha256 and config fingerprint match an output already published
    # at DST by an earlier run (nightly runs redo only what changed); --force turns it off
    skip_unchanged: bool = True
    memory_limit: str = "auto"
    # an unchanged source is recognised by its size and mtime (or S3 ETag) as recorded, without
    # reading it; true re-hashes every source instead (--verify-hashes)
    verify_hashes: bool = False


@dataclass(slots=True)
class RecordConfig:
    """GDPR Art. 30 record-of-processing fields written to every run row.

    Only the controller can state them: every field is empty until configured (the run row's
    `security_measures` adds what the tool itself did, see sanitizer/record.py)."""

    controller: str = ""
    dpo_contact: str = ""
    purpose: str = ""
    legal_basis: str = ""
    data_categories: str = ""
    data_subjects: str = ""
    recipients: str = ""
    retention: str = ""
    transfers: str = ""
    security_measures: str = ""  # the controller's own measures, beyond what the tool did
    # true: `run` exits 2 before processing anything while controller, purpose or
    # legal_basis is empty (same as `run --require-record`)
    required: bool = False


@dataclass(slots=True)
class Config:
    input: InputConfig = field(default_factory=InputConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    redact: RedactConfig = field(default_factory=RedactConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, redact_secrets: bool = True) -> str:
        """JSON of the effective config; credentials in storage options are masked."""
        d = self.to_dict()
        if redact_secrets:
            for section in ("input", "output"):
                d[section]["storage_options"] = _mask_secrets(d[section]["storage_options"])
        return json.dumps(d, sort_keys=True, default=list)

    def fingerprint(self) -> str:
        """sha256 (16 hex) over the sections that affect output pixels."""
        d = self.to_dict()
        relevant = {k: d[k] for k in ("detect", "redact", "video", "output")}
        relevant["detect"].pop("threads", None)
        relevant["video"].pop("threads", None)
        relevant["video"].pop("detect_threads", None)  # the output does not depend on it
        relevant["output"].pop("storage_options", None)
        relevant["output"].pop("keep_last_good", None)  # which outputs stay, not their pixels
        blob = json.dumps(relevant, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "sas")


def _mask_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "***"
            if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, dict)
            else _mask_secrets(v)
            for k, v in value.items()
        }
    return value


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_class(name: str) -> type:
    return {
        "input": InputConfig,
        "detect": DetectConfig,
        "redact": RedactConfig,
        "video": VideoConfig,
        "output": OutputConfig,
        "execution": ExecutionConfig,
        "record": RecordConfig,
    }[name]


def _coerce(section: str, name: str, value: Any, default: Any) -> Any:
    where = f"{section}.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ConfigError(f"{where} must be a list of {len(default)} numbers, got {value!r}")
        return tuple(int(v) for v in value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(data: dict[str, Any] | None, base: Config | None = None) -> Config:
    """Apply a nested mapping onto `base` (defaults if None), validating names and types."""
    cfg = base if base is not None else Config()
    for section, values in (data or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r} (known: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        obj = getattr(cfg, section)
        known = {f.name for f in dataclasses.fields(_section_class(section))}
        for name, value in values.items():
            if name not in known:
                raise ConfigError(
                    f"unknown option {section}.{name} (known: {', '.join(sorted(known))})"
                )
            setattr(obj, name, _coerce(section, name, value, getattr(obj, name)))
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at `path`, then `overrides` ({"section": {"opt": v}})."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {p}: {str(exc).splitlines()[0]}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        cfg = from_dict(data, cfg)
    return from_dict(overrides or {}, cfg)


def validate(cfg: Config) -> None:
    d, r, v = cfg.detect, cfg.redact, cfg.video
    if r.method not in REDACT_METHODS:
        raise ConfigError(
            f"unknown redaction method {r.method!r} (known: {', '.join(REDACT_METHODS)})"
        )
    if r.shape not in REDACT_SHAPES:
        raise ConfigError(f"unknown mask shape {r.shape!r} (known: {', '.join(REDACT_SHAPES)})")
    if d.precision not in PRECISIONS:
        raise ConfigError(
            f"unknown detect.precision {d.precision!r} (known: {', '.join(PRECISIONS)})"
        )
    if not 0.0 < d.threshold < 1.0:
        raise ConfigError(f"detect.threshold must be between 0 and 1, got {d.threshold}")
    if r.margin < 1.0:
        raise ConfigError(
            f"redact.margin must be >= 1.0 (a mask never smaller than the face), got {r.margin}"
        )
    if not 1 <= r.blocks <= 8:
        raise ConfigError(
            f"redact.blocks must be 1..8 (more blocks leave a face recognisable), got {r.blocks}"
        )
    if v.scan_side < 32 or v.native_pixels < 4096 or v.band_overlap < 0:
        raise ConfigError(
            "video.scan_side must be >= 32, video.native_pixels >= 4096, video.band_overlap >= 0"
        )
    if not 1 <= v.max_cycle <= 32:
        raise ConfigError(
            f"video.max_cycle must be 1..32 (frames held in memory), got {v.max_cycle}"
        )
    if v.long_frame <= 1:
        raise ConfigError(f"video.long_frame must be > 1, got {v.long_frame}")
    if not 0 <= v.redacted_qoffset <= 1:
        raise ConfigError(
            f"video.redacted_qoffset must be 0..1 (a fraction of the QP range), got {v.redacted_qoffset}"
        )
    if cfg.execution.workers < 0:
        raise ConfigError("execution.workers must be >= 0")
    for name in INPUT_LIMITS:
        if getattr(cfg.input, name) < 0:
            raise ConfigError(f"input.{name} must be >= 0 (0 = no limit)")
