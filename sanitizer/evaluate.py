"""Privacy efficacy on labelled photos: detection recall/precision and redaction coverage.

    gt = load_ground_truth("faces_dev.json")            # or a WIDER FACE *_bbx_gt.txt
    report = evaluate(gt, "path/to/images/root", cfg)   # -> EvalReport (to_dict / rows)

Redaction coverage is measured on the mask that redaction actually paints
(`redact.mask_for` with the configured shape and margin), with the same rule as the
independent pixel check `shared/tools/coverage.py`: a ground-truth face is *protected* when
at least 70% of the ellipse inscribed in its box is masked, counting only the ellipse's
bright pixels (max channel > 40 in the original) when they are at least 30% of it (pixels
that are already black cannot show a solid fill; when they are not, pixels already black in
the original count as covered, as in a solid-filled output). Face size = sqrt(w * h) of the GT
box. `evaluate_outputs` applies the same rule to the pixels a run actually wrote.

Detection recall/precision match detections to ground truth greedily by score at an IoU
threshold; an unmatched detection is bucketed by its own size, a matched one by its face's.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sanitizer import storage
from sanitizer.detect import iou_matrix
from sanitizer.errors import ConfigError, SanitizerError
from sanitizer.records import Detections

BUCKETS: list[tuple[float, float, str]] = [
    (0, 16, "<16"),
    (16, 32, "16-32"),
    (32, 64, "32-64"),
    (64, math.inf, ">=64"),
]
ROWS = ["<16", "16-32", "32-64", ">=64", ">=16", "all"]
PROTECTED_AT = 0.7
BRIGHT, DARK = 40, 24  # coverage.py's "original was bright" and "output is black" levels
IOUS = (0.5, 0.3)


# -- ground truth ------------------------------------------------------------------------
@dataclass(slots=True)
class GTImage:
    file: str  # key relative to the images root, '/'-separated
    boxes: np.ndarray  # (n, 4) x, y, w, h in pixels of the stored file
    set: str = ""

    @property
    def negative(self) -> bool:
        return len(self.boxes) == 0


def load_ground_truth(path: str | Path) -> list[GTImage]:
    """Read faces_dev.json-style JSON or a WIDER FACE `*_bbx_gt.txt` file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read ground truth {p}: {exc}") from None
    if text.lstrip().startswith("{"):
        return parse_json_gt(text, str(p))
    return parse_wider_gt(text, str(p))


def parse_json_gt(text: str, where: str = "ground truth") -> list[GTImage]:
    try:
        data = json.loads(text)
        out = []
        for im in data["images"]:
            boxes = np.asarray(im.get("boxes") or [], np.float64).reshape(-1, 4)
            out.append(GTImage(str(im["file"]).replace("\\", "/"), boxes, str(im.get("set", ""))))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{where}: not a faces_dev.json-style file ({type(exc).__name__}: {exc})"
        ) from None
    return out


def parse_wider_gt(text: str, where: str = "ground truth") -> list[GTImage]:
    """WIDER FACE: a file name line, a count line, then `count` lines of
    `x y w h blur expression illumination invalid occlusion pose` (one dummy line of zeros when
    the count is 0). Boxes flagged invalid or with no area are dropped, as in WIDER's own eval."""
    lines = [ln.strip() for ln in text.splitlines()]
    out: list[GTImage] = []
    i = 0
    try:
        while i < len(lines):
            name = lines[i]
            i += 1
            if not name:
                continue
            n = int(lines[i])
            i += 1
            boxes = []
            block = lines[i : i + max(n, 1)]
            if n < 0 or len(block) < max(n, 1):
                raise ValueError(f"{name}: {n} boxes announced, {len(block)} lines follow")
            for ln in block:
                vals = [float(v) for v in ln.split()]
                if len(vals) < 4:
                    raise ValueError(f"short box line {ln!r}")
                invalid = len(vals) >= 8 and vals[7] == 1
                if vals[2] > 0 and vals[3] > 0 and not invalid:
                    boxes.append(vals[:4])
            i += max(n, 1)
            out.append(
                GTImage(
                    name.replace("\\", "/"),
                    np.asarray(boxes, np.float64).reshape(-1, 4),
                    name.split("/")[0] if "/" in name else "",
                )
            )
    except (ValueError, IndexError) as exc:
        raise ConfigError(
            f"{where}: not a WIDER FACE bbx_gt file near line {i + 1} ({exc})"
        ) from None
    if not out:
        raise ConfigError(f"{where}: no images in ground truth")
    return out


def bucket_of(side: float) -> str:
    return next(name for lo, hi, name in BUCKETS if lo <= side < hi)


# -- coverage maths ----------------------------------------------------------------------
def ellipse_mask(box_xywh: Iterable[float], height: int, width: int) -> np.ndarray:
    """The ellipse inscribed in a GT box, drawn exactly as coverage.py draws it (full size)."""
    m = np.zeros((height, width), bool)
    sl, local = _ellipse_local(box_xywh, height, width)
    m[sl] = local
    return m


def _ellipse_local(
    box_xywh: Iterable[float], height: int, width: int
) -> tuple[tuple[slice, slice], np.ndarray]:
    """The inscribed ellipse drawn in a small window around it: (window slices, bool mask)."""
    x, y, w, h = box_xywh
    cx, cy = int(round(x + w / 2)), int(round(y + h / 2))
    ax, ay = max(1, int(round(w / 2))), max(1, int(round(h / 2)))
    x0, y0 = max(0, cx - ax - 1), max(0, cy - ay - 1)
    x1, y1 = min(width, cx + ax + 2), min(height, cy + ay + 2)
    if x1 <= x0 or y1 <= y0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.ellipse(m, (cx - x0, cy - y0), (ax, ay), 0, 0, 360, 1, -1)
    return (slice(y0, y1), slice(x0, x1)), m.astype(bool)


def face_coverage(
    mask: np.ndarray, gt_boxes: np.ndarray, bright: np.ndarray | None = None
) -> np.ndarray:
    """Share of each GT face's inscribed ellipse covered by `mask` (HxW bool).

    With `bright` (HxW bool, original max channel > 40), only the ellipse's bright pixels
    count when they are at least 30% of it, as in coverage.py."""
    h, w = mask.shape
    out = np.zeros(len(gt_boxes), np.float64)
    for i, box in enumerate(np.asarray(gt_boxes, np.float64).reshape(-1, 4)):
        if box[2] <= 0 or box[3] <= 0:
            continue
        sl, sel = _ellipse_local(box, h, w)
        if bright is not None:
            selb = sel & bright[sl]
            if selb.sum() >= 0.3 * max(1, sel.sum()):
                sel = selb
        n = int(sel.sum())
        out[i] = float(mask[sl][sel].mean()) if n else 0.0
    return out


def match(
    gt_xyxy: np.ndarray, det_xyxy: np.ndarray, scores: np.ndarray, iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching by descending score → (gt matched flags, det matched gt index or -1)."""
    gt_hit = np.zeros(len(gt_xyxy), bool)
    det_gt = np.full(len(det_xyxy), -1, np.int64)
    if len(gt_xyxy) == 0 or len(det_xyxy) == 0:
        return gt_hit, det_gt
    ious = iou_matrix(det_xyxy, gt_xyxy)
    for d in np.argsort(-np.asarray(scores), kind="stable"):
        cand = np.where(~gt_hit, ious[d], -1.0)
        g = int(np.argmax(cand))
        if cand[g] >= iou:
            gt_hit[g] = True
            det_gt[d] = g
    return gt_hit, det_gt


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def calibrate(face_scores: np.ndarray, target: float) -> float | None:
    """Highest threshold t with mean(face_scores >= t) >= target, or None when unreachable.

    `face_scores[i]` is the highest threshold at which face i is still protected (0 = never)."""
    s = np.sort(np.asarray(face_scores, np.float64))[::-1]
    if len(s) == 0:
        return None
    k = int(math.ceil(target * len(s) - 1e-9))  # need at least k faces protected
    if k <= 0:
        return float(s[0])
    if s[k - 1] <= 0:
        return None
    return float(s[k - 1])


# -- evaluation --------------------------------------------------------------------------
@dataclass(slots=True)
class FaceResult:
    file: str
    set: str
    index: int
    side: float
    bucket: str
    coverage: float
    protected: bool
    hit50: bool
    hit30: bool


@dataclass(slots=True)
class ImageResult:
    file: str
    set: str
    width: int
    height: int
    n_gt: int
    n_det: int
    tp50: int  # detections matched at IoU 0.5
    tp30: int
    det_buckets50: list[str]  # bucket of each detection (its face's when matched at 0.5)
    det_tp50: list[bool]
    det_buckets30: list[str]
    det_tp30: list[bool]
    masked_share: float  # share of the image's (bright) pixels masked; face-free images use it
    seconds: float
    error: str = ""


@dataclass(slots=True)
class EvalReport:
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # one per bucket: faces, protected, coverage, recall/precision
    n_images: int
    n_negative: int
    negatives_masked_share: float | None
    images_per_s: float
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    faces: list[FaceResult] = field(default_factory=list)

    def to_dict(self, with_faces: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "faces"}
        if with_faces:
            d["faces"] = [asdict(f) for f in self.faces]
        return d

    def row(self, bucket: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["bucket"] == bucket)


def _redaction_mask(boxes: np.ndarray, h: int, w: int, rcfg) -> np.ndarray:
    from sanitizer.redact import mask_for

    return mask_for(boxes, h, w, rcfg.shape, rcfg.margin)


def _read_rgb(root: storage.Location, key: str) -> np.ndarray:
    from sanitizer.media.image import decode, to_rgb8

    return to_rgb8(decode(storage.read_bytes(root, key)).frames[0])


def evaluate_image(
    gt: GTImage, bright: np.ndarray, dets: Detections, rcfg, dark: np.ndarray | None = None
) -> tuple[ImageResult, list[FaceResult], np.ndarray]:
    """Score one image's detections; `bright` is the original's (max channel > 40) map, `dark`
    its (max channel <= 24) map: a solid-filled output is black there even outside the mask,
    and the pixel check counts such pixels of a mostly dark face as covered, so this does too."""
    h, w = bright.shape
    mask = _redaction_mask(dets.boxes, h, w, rcfg)
    cov = face_coverage(mask if dark is None else mask | dark, gt.boxes, bright)
    gxy = xywh_to_xyxy(gt.boxes)
    sides = np.sqrt(np.maximum(0, gt.boxes[:, 2] * gt.boxes[:, 3]))
    det_sides = (
        np.sqrt(np.maximum(0, np.prod(dets.boxes[:, 2:] - dets.boxes[:, :2], axis=1)))
        if len(dets)
        else np.zeros(0)
    )
    hits, det_b, det_tp = {}, {}, {}
    for iou in IOUS:
        g_hit, d_gt = match(gxy, dets.boxes, dets.scores, iou)
        hits[iou] = g_hit
        det_b[iou] = [bucket_of(sides[g] if g >= 0 else det_sides[i]) for i, g in enumerate(d_gt)]
        det_tp[iou] = [bool(g >= 0) for g in d_gt]
    faces = [
        FaceResult(
            gt.file,
            gt.set,
            i,
            float(sides[i]),
            bucket_of(sides[i]),
            float(cov[i]),
            bool(cov[i] >= PROTECTED_AT),
            bool(hits[0.5][i]),
            bool(hits[0.3][i]),
        )
        for i in range(len(gt.boxes))
    ]
    res = ImageResult(
        gt.file,
        gt.set,
        w,
        h,
        len(gt.boxes),
        len(dets),
        int(hits[0.5].sum()),
        int(hits[0.3].sum()),
        det_b[0.5],
        det_tp[0.5],
        det_b[0.3],
        det_tp[0.3],
        float((mask & bright).mean()),
        0.0,
    )
    return res, faces, cov


def in_bucket(row: str, bucket: str) -> bool:
    """Does a face/detection of size bucket `bucket` belong to table row `row`?"""
    if row == "all":
        return True
    if row == ">=16":
        return bucket != "<16"
    return bucket == row


def summarize(images: list[ImageResult], faces: list[FaceResult]) -> list[dict[str, Any]]:
    rows = []
    for name in ROWS:
        fs = [f for f in faces if in_bucket(name, f.bucket)]
        row: dict[str, Any] = {"bucket": name, "faces": len(fs)}
        row["protected"] = sum(f.protected for f in fs)
        row["coverage"] = row["protected"] / len(fs) if fs else None
        row["mean_covered_share"] = float(np.mean([f.coverage for f in fs])) if fs else None
        for iou, key in ((0.5, "50"), (0.3, "30")):
            hit = sum(f.hit50 if key == "50" else f.hit30 for f in fs)
            row[f"recall@{iou}"] = hit / len(fs) if fs else None
            buckets = [
                b for im in images for b in (im.det_buckets50 if key == "50" else im.det_buckets30)
            ]
            tps = [t for im in images for t in (im.det_tp50 if key == "50" else im.det_tp30)]
            sel = [t for b, t in zip(buckets, tps, strict=True) if in_bucket(name, b)]
            row[f"detections@{iou}"] = len(sel)
            row[f"precision@{iou}"] = sum(sel) / len(sel) if sel else None
        rows.append(row)
    return rows


def evaluate(
    gt: list[GTImage],
    images_root: str,
    cfg,
    detector=None,
    target_recall: float | None = None,
    target_bucket: str = ">=16",
    limit: int | None = None,
    on_image: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run the configured detector and redaction mask over a labelled set."""
    from sanitizer.detect import get_detector

    if target_bucket not in ROWS:
        raise ConfigError(f"unknown bucket {target_bucket!r} (known: {', '.join(ROWS)})")
    root = storage.location(images_root)
    det = detector if detector is not None else get_detector(cfg.detect)
    calib = target_recall is not None and hasattr(det, "candidates")
    if target_recall is not None and not 0 < target_recall <= 1:
        raise ConfigError("--target-recall must be in (0, 1]")
    items = gt[:limit] if limit else gt
    results: list[ImageResult] = []
    faces: list[FaceResult] = []
    failed: list[tuple[str, str]] = []
    sweep: list[tuple[GTImage, np.ndarray, np.ndarray, Any, Any]] = []  # for calibration
    t_all = time.perf_counter()
    busy = 0.0
    for n, g in enumerate(items):
        try:
            t0 = time.perf_counter()
            rgb = _read_rgb(root, g.file)
            if calib:
                cands = det.candidates(rgb, slack=SLACK)
                dets = det.select(cands)
            else:
                dets = det.detect(rgb)
            _redaction_mask(dets.boxes, *rgb.shape[:2], cfg.redact)  # timed as part of the work
            dt = time.perf_counter() - t0
            busy += dt
        except SanitizerError as exc:
            failed.append((g.file, str(exc)))
            continue
        level = rgb.max(axis=2)
        bright, dark = level > BRIGHT, level <= DARK
        res, fr, _ = evaluate_image(g, bright, dets, cfg.redact, dark)
        res.seconds = dt
        results.append(res)
        faces += fr
        if calib:
            sweep.append((g, np.packbits(bright), np.packbits(dark), bright.shape, cands))
        if on_image:
            on_image(n + 1, len(items))
    seconds = time.perf_counter() - t_all
    negs = [r.masked_share for r in results if r.n_gt == 0]
    report = EvalReport(
        config={"detect": asdict(cfg.detect), "redact": asdict(cfg.redact)},
        rows=summarize(results, faces),
        n_images=len(results),
        n_negative=len(negs),
        negatives_masked_share=float(np.mean(negs)) if negs else None,
        images_per_s=len(results) / busy if busy else 0.0,
        seconds=seconds,
        failed=failed,
        faces=faces,
    )
    if target_recall is not None:
        if calib:
            report.calibration = calibrate_threshold(det, sweep, cfg, target_recall, target_bucket)
        else:
            report.calibration = {
                "target": target_recall,
                "bucket": target_bucket,
                "error": f"detector {det.name!r} has no scores to calibrate",
            }
    return report


OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _read_bgr(root: storage.Location, key: str) -> np.ndarray | None:
    """A stored image as OpenCV reads it (the black-box scorer's reader), None if unreadable."""
    try:
        data = storage.read_bytes(root, key)
    except (SanitizerError, OSError):
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _output_key(out_root: storage.Location, key: str) -> str | None:
    """The output of `key` under `out_root`: the same key, or the same stem with an image
    suffix (outputs may be re-encoded to another format)."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    for cand in (key, *(stem + ext for ext in OUTPUT_SUFFIXES)):
        try:
            if storage.exists(out_root, cand):
                return cand
        except (SanitizerError, OSError):
            return None
    return None


def evaluate_outputs(gt: list[GTImage], images_root: str, outputs_root: str) -> EvalReport:
    """Score what a run actually wrote (run it with `--method solid`): a face is protected when
    >= 70% of its inscribed ellipse is black (max channel <= 24) in the output where the
    original is bright, the rule of ../shared/tools/coverage.py, on the same pixels it reads.
    A missing or resized output protects nothing. Detection columns are not measured."""
    root, outs = storage.location(images_root), storage.location(outputs_root)
    results: list[ImageResult] = []
    faces: list[FaceResult] = []
    failed: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    for g in gt:
        orig = _read_bgr(root, g.file)
        if orig is None:
            failed.append((g.file, "cannot read the original"))
            continue
        key = _output_key(outs, g.file)
        out = _read_bgr(outs, key) if key else None
        if out is None or out.shape != orig.shape:
            out = orig  # nothing protected
        masked = out.max(axis=2) <= DARK
        bright = orig.max(axis=2) > BRIGHT
        cov = face_coverage(masked, g.boxes, bright)
        sides = np.sqrt(np.maximum(0, g.boxes[:, 2] * g.boxes[:, 3]))
        h, w = bright.shape
        for i in range(len(g.boxes)):
            if g.boxes[i, 2] <= 0 or g.boxes[i, 3] <= 0:
                continue  # coverage.py skips boxes without area
            faces.append(
                FaceResult(
                    g.file,
                    g.set,
                    i,
                    float(sides[i]),
                    bucket_of(sides[i]),
                    float(cov[i]),
                    bool(cov[i] >= PROTECTED_AT),
                    False,
                    False,
                )
            )
        results.append(
            ImageResult(
                g.file,
                g.set,
                w,
                h,
                len(g.boxes),
                0,
                0,
                0,
                [],
                [],
                [],
                [],
                float((masked & bright).mean()),
                0.0,
            )
        )
    seconds = time.perf_counter() - t0
    negs = [r.masked_share for r in results if r.n_gt == 0]
    rows = summarize(results, faces)
    for r in rows:  # nothing detected here: detection columns do not apply
        for k in list(r):
            if k.startswith(("recall@", "precision@", "detections@")):
                r[k] = None
    return EvalReport(
        config={"outputs": outputs_root},
        rows=rows,
        n_images=len(results),
        n_negative=len(negs),
        negatives_masked_share=float(np.mean(negs)) if negs else None,
        images_per_s=0.0,
        seconds=seconds,
        failed=failed,
        faces=faces,
    )


SLACK = 0.1  # calibration looks at thresholds down to (configured - SLACK)
STEPS = np.round(np.arange(-SLACK, 0.5 + 1e-9, 0.02), 3)


def calibrate_threshold(det, sweep, cfg, target: float, bucket: str) -> dict[str, Any]:
    """Shift every pass's threshold by the same delta; find the largest delta (the highest
    thresholds) whose coverage on `bucket` faces reaches `target`, and report it."""

    def at(delta: float) -> tuple[list[ImageResult], list[FaceResult]]:
        ims, fs = [], []
        for g, packed, packed_dark, shape, cands in sweep:
            n = shape[0] * shape[1]
            bright = np.unpackbits(packed, count=n).reshape(shape).astype(bool)
            dark = np.unpackbits(packed_dark, count=n).reshape(shape).astype(bool)
            r, f, _ = evaluate_image(g, bright, det.select(cands, delta), cfg.redact, dark)
            ims.append(r)
            fs += f
        return ims, fs

    def cov(fs: list[FaceResult]) -> float:
        sel = [f for f in fs if in_bucket(bucket, f.bucket)]
        return sum(f.protected for f in sel) / len(sel) if sel else 0.0

    # coverage is not strictly monotonic in the threshold (NMS, merged masks): scan the grid
    curve = []
    best = None
    for delta in STEPS:
        if cfg.detect.threshold + delta <= 0.02:
            continue
        ims, fs = at(float(delta))
        c = cov(fs)
        negs = [r.masked_share for r in ims if r.n_gt == 0]
        rows = summarize(ims, fs)
        point = {
            "delta": float(delta),
            "threshold": round(cfg.detect.threshold + float(delta), 3),
            "upscale_threshold": round(cfg.detect.upscale_threshold + float(delta), 3),
            "coverage": c,
            "precision@0.5": next(r for r in rows if r["bucket"] == "all")["precision@0.5"],
            "negatives_masked_share": float(np.mean(negs)) if negs else None,
        }
        curve.append(point)
        if c >= target:
            best = point
    return {
        "target": target,
        "bucket": bucket,
        "reached": best is not None,
        "best_coverage": max((p["coverage"] for p in curve), default=0.0),
        "at": best,
        "curve": curve,
    }


def report_table(report: EvalReport) -> list[list[str]]:
    """Rows for a terminal table (strings)."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    out = []
    for r in report.rows:
        out.append(
            [
                r["bucket"],
                str(r["faces"]),
                f"{r['protected']}",
                pct(r["coverage"]),
                pct(r["recall@0.5"]),
                pct(r["precision@0.5"]),
                pct(r["recall@0.3"]),
                pct(r["precision@0.3"]),
            ]
        )
    return out


TABLE_HEADER = ["face px", "faces", "protected", "cover %", "R@.5 %", "P@.5 %", "R@.3 %", "P@.3 %"]


def write_report(report: EvalReport, path: str) -> None:
    """`.json`: the whole report with per-face rows; `.parquet`: the per-bucket table."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".parquet":
        import pandas as pd

        df = pd.DataFrame(report.rows)
        df["negatives_masked_share"] = report.negatives_masked_share
        df["images_per_s"] = report.images_per_s
        df.to_parquet(p, index=False)
    else:
        p.write_text(json.dumps(report.to_dict(with_faces=True), indent=1, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple | set):
        return list(v)
    return str(v)
