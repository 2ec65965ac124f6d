"""The scan policy: which inference passes run on an image, and how their boxes are merged.

A `ScanDetector` wraps any `Model` (detect/__init__.py). Per image, `passes()` chooses:

- the native pass (downscaled to `max_side`);
- an upscaled pass for small images (`upscale`, or enough zoom for the long side to reach
  `upscale_min_side`); it keeps only boxes under `upscale_max_face` px: big faces are the
  native pass's job, and upscaled passes hallucinate big faces;
- for square images (photos resized for model training, thumbnails), aspect-corrected passes:
  the image made `aspect_wide` times wider (stretched) and `aspect_tall` times taller relative
  to its width (by narrowing it: fewer pixels than stretching its height, and as many faces
  found), so that faces squashed by a resize that did not keep the aspect ratio look like faces
  again; boxes are mapped back;
- native tiles for very large images; optionally the mirrored native image;
- a re-scan at a larger scale for crowd photos.

`candidates()` collects every pass's raw boxes; `select()` keeps those above their pass's
threshold plus weaker ones (>= `vote_threshold`) that `vote_passes` passes agree on, then NMS;
a kept box under `grow_small` px grows to enclose the boxes it suppressed (passes and anchors
see a small face slightly shifted, and the best-scoring box alone often misses part of it).
`select(delta)` shifts all thresholds at once (used for calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sanitizer.detect import Model, iou_matrix, nms
from sanitizer.records import Detections

VOTE_IOU = 0.3
FLOOR = 0.02  # lowest score ever asked of a model


@dataclass(frozen=True, slots=True)
class Pass:
    """One inference pass: resize by `scale` (and `scale_y` vertically when set), optionally
    mirrored or tiled; keep scores >= `threshold`."""

    name: str
    scale: float
    threshold: float
    flip: bool = False
    tiled: bool = False
    max_face: float = math.inf  # px in the original image; larger boxes are another pass's job
    upscaled: bool = False
    scale_y: float | None = None  # None: the same as `scale` (aspect ratio kept)
    votes: bool = True  # takes part in the second-opinion vote


@dataclass(slots=True)
class Candidates:
    """Raw detections of all passes before thresholding and NMS (for calibration and audit).

    `need[i]` is the score threshold of the pass that produced box i, `source[i]` its index in
    `passes`. `select(delta)` applies every pass's threshold shifted by `delta` and merges.
    """

    dets: Detections
    need: np.ndarray
    source: np.ndarray
    passes: list[Pass]


def _sides(boxes: np.ndarray) -> np.ndarray:
    """sqrt(w * h) of (n, 4) x1, y1, x2, y2 boxes."""
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    return np.sqrt(np.maximum(0, np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)))


# the DetectConfig options a ScanDetector reads (the others belong to models)
OPTIONS = (
    "threshold",
    "upscale",
    "upscale_below",
    "upscale_min_side",
    "upscale_threshold",
    "upscale_max_face",
    "upscale_hint",
    "aspect_wide",
    "aspect_tall",
    "aspect_square_tol",
    "aspect_scale",
    "aspect_threshold",
    "tile_above",
    "tile_size",
    "tile_overlap",
    "hflip",
    "vote_threshold",
    "vote_passes",
    "rescan_small",
    "rescan_small_side",
    "rescan_scale",
    "rescan_threshold",
    "nms_iou",
    "grow_small",
    "min_face",
    "max_side",
)


class ScanDetector:
    """The scan policy of a DetectConfig over a model. Besides `detect`, it offers what video
    needs: `infer(image, threshold)` (one raw pass of the model), `finish(dets)` (min-face
    filter + NMS) and `threshold` (the native pass's)."""

    def __init__(self, model: Model, cfg) -> None:
        self.model = model
        for name in OPTIONS:
            setattr(self, name, getattr(cfg, name))

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def model_sha256(self) -> str:
        return self.model.model_sha256

    @property
    def precision(self) -> str:
        """The numeric precision the model actually runs ("" when it does not say)."""
        return getattr(self.model, "precision", "")

    # -- passes -------------------------------------------------------------------------
    def infer(self, image: np.ndarray, threshold: float) -> Detections:
        """One raw pass of the model over the image at its own size."""
        h, w = image.shape[:2]
        dets = self.model.infer(image, threshold)
        if len(dets):
            dets.boxes[:, [0, 2]] = dets.boxes[:, [0, 2]].clip(0, w)
            dets.boxes[:, [1, 3]] = dets.boxes[:, [1, 3]].clip(0, h)
        return dets

    def _at_scale(self, image: np.ndarray, sx: float, sy: float, threshold: float) -> Detections:
        if sx == 1.0 and sy == 1.0:
            return self.infer(image, threshold)
        h, w = image.shape[:2]
        size = (max(32, int(round(w * sx))), max(32, int(round(h * sy))))
        import cv2  # not at module level: the driver reads `describe` without OpenCV

        interp = cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, size, interpolation=interp)
        dets = self.infer(resized, threshold)
        return Detections(
            dets.boxes / np.array([size[0] / w, size[1] / h] * 2, np.float32), dets.scores
        )

    def _tiled(self, image: np.ndarray, threshold: float) -> Detections:
        """Native-resolution overlapping tiles (faces cut by a tile edge are found whole in
        the neighbouring tile as long as they are smaller than the overlap)."""
        h, w = image.shape[:2]
        step = max(32, self.tile_size - self.tile_overlap)
        parts = []
        for y in range(0, max(1, h - self.tile_overlap), step):
            for x in range(0, max(1, w - self.tile_overlap), step):
                tile = image[y : y + self.tile_size, x : x + self.tile_size]
                d = self.infer(np.ascontiguousarray(tile), threshold)
                if len(d):
                    d.boxes += np.array([x, y, x, y], np.float32)
                    parts.append(d)
        return Detections.merge(parts)

    def upscale_factor(self, long_side: int) -> float:
        """Zoom of the upscaled pass for an image with this long side (<= 1: no such pass)."""
        if long_side >= self.upscale_below or self.upscale <= 1:
            return 0.0
        target = min(self.upscale_min_side, self.max_side) / max(1, long_side)
        return max(self.upscale, target)

    def is_square(self, height: int, width: int) -> bool:
        return abs(width / max(1, height) - 1) <= self.aspect_square_tol

    def passes(self, height: int, width: int) -> list[Pass]:
        """The passes always run on an image of this size (the rescan pass is decided later)."""
        long_side = max(height, width)
        base = min(1.0, self.max_side / long_side)
        out = [Pass("1x" if base == 1.0 else f"{base:.2f}x", base, self.threshold)]
        up = self.upscale_factor(long_side)
        if up > 1:
            out.append(
                Pass(
                    f"{up:.3g}x",
                    up,
                    self.upscale_threshold,
                    max_face=self.upscale_max_face or math.inf,
                    upscaled=True,
                )
            )
        if self.is_square(height, width):
            zoom = base * self.aspect_scale
            for stretch, wide in ((self.aspect_wide, True), (self.aspect_tall, False)):
                if stretch > 1:
                    # the tall correction narrows the image instead of stretching its height:
                    # 0.64x the pixels, every size bucket as well covered (BENCHMARKS.md,
                    # 2026-12-03); widening the wide one is kept (narrowing it lost faces)
                    sx, sy = (zoom * stretch, zoom) if wide else (zoom / stretch, zoom)
                    name = f"{'wide' if wide else 'tall'}{stretch:g}"
                    # no vote: with it, square face-free photos get masked (BENCHMARKS.md,
                    # 2026-11-29); an aspect pass's box must reach aspect_threshold on its own
                    out.append(Pass(name, sx, self.aspect_threshold, scale_y=sy, votes=False))
        if long_side > self.tile_above:
            out.append(Pass("tiles", 1.0, self.threshold, tiled=True))
        if self.hflip:
            # mirror the native pass only: a cheap second opinion with independent errors
            out += [Pass(p.name + "+flip", p.scale, p.threshold, flip=True) for p in out[:1]]
        return out

    def _run(self, image: np.ndarray, p: Pass, threshold: float) -> Detections:
        sy = p.scale if p.scale_y is None else p.scale_y
        if p.tiled:
            d = self._tiled(image, threshold)
        elif not p.flip:
            d = self._at_scale(image, p.scale, sy, threshold)
        else:
            w = image.shape[1]
            d = self._at_scale(np.ascontiguousarray(image[:, ::-1]), p.scale, sy, threshold)
            if len(d):
                d.boxes[:, [0, 2]] = w - d.boxes[:, [2, 0]]
        if len(d) and math.isfinite(p.max_face):
            d = d[_sides(d.boxes) < p.max_face]
        return d

    def _floor(self, p: Pass, slack: float) -> float:
        low = min(p.threshold, self.vote_threshold) if self.vote_threshold > 0 else p.threshold
        return max(FLOOR, low - slack)

    def candidates(self, image: np.ndarray, slack: float = 0.0) -> Candidates:
        """Every pass's raw boxes with scores >= (its threshold - `slack`), before NMS."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        planned = self.passes(h, w)
        # native pass first; with `upscale_hint`, it also looks for faint small responses
        first = self._floor(planned[0], slack)
        hint = self.upscale_hint
        native = self._run(image, planned[0], min(first, hint) if hint > 0 else first)
        small = (
            bool(((native.scores >= hint) & (_sides(native.boxes) < self.upscale_max_face)).any())
            if hint > 0
            else True
        )
        passes, parts = [planned[0]], [native[native.scores >= first]]
        for p in planned[1:]:
            if p.upscaled and not small:
                continue  # no small face-like response at native size: skip the upscaled pass
            passes.append(p)
            parts.append(self._run(image, p, self._floor(p, slack)))
        if (
            self.rescan_small > 0
            and self.rescan_scale > 1
            and max(h, w) * self.rescan_scale <= 2 * self.max_side
        ):
            # second opinion for crowds: many small confirmed faces → look again at a larger scale
            found = self.finish(
                Detections.merge(
                    [d[d.scores >= p.threshold] for p, d in zip(passes, parts, strict=True)]
                )
            )
            if int((_sides(found.boxes) < self.rescan_small_side).sum()) >= self.rescan_small:
                p = Pass(
                    f"{self.rescan_scale:g}x-rescan",
                    self.rescan_scale,
                    self.rescan_threshold,
                    max_face=self.rescan_small_side * 2,
                )
                passes.append(p)
                parts.append(self._run(image, p, self._floor(p, slack)))
        need = np.concatenate(
            [np.full(len(d), p.threshold, np.float32) for p, d in zip(passes, parts, strict=True)]
        )
        source = np.concatenate([np.full(len(d), i, np.int16) for i, d in enumerate(parts)])
        return Candidates(Detections.merge(parts), need, source, passes)

    def select(self, cands: Candidates, delta: float = 0.0) -> Detections:
        """Keep boxes scoring at least their pass's threshold + `delta`, and weaker boxes
        (>= vote_threshold + delta) that `vote_passes` voting passes found (IoU >= 0.3);
        drop tiny ones; NMS. `delta` shifts every threshold (calibration)."""
        d = cands.dets
        if not len(d):
            return Detections.empty()
        keep = d.scores >= cands.need + delta
        voters = [s for s, p in enumerate(cands.passes) if p.votes]
        if self.vote_threshold > 0 and self.vote_passes >= 2 and len(voters) >= self.vote_passes:
            low = d.scores >= max(FLOOR, self.vote_threshold + delta)
            # one representative per face and pass (per-pass NMS), then count agreeing passes
            reps = []
            for s in voters:
                idx = np.nonzero(low & (cands.source == s))[0]
                reps.append(
                    idx[nms(d.boxes[idx], d.scores[idx], self.nms_iou)] if idx.size else idx
                )
            for s, idx in enumerate(reps):
                weak = idx[~keep[idx]]
                if not weak.size:
                    continue
                support = np.zeros(weak.size, np.int64)
                for t, other in enumerate(reps):
                    if t != s and other.size:
                        support += iou_matrix(d.boxes[weak], d.boxes[other]).max(1) >= VOTE_IOU
                keep[weak[support >= self.vote_passes - 1]] = True
        return self.finish(d[keep], self.grow_small)

    def detect(self, image: np.ndarray) -> Detections:
        return self.select(self.candidates(image))

    def finish(self, dets: Detections, grow_below: float = 0.0) -> Detections:
        """Drop boxes under `min_face` px, then NMS (the last step of `select`; video calls it on
        one raw pass). A kept box under `grow_below` px grows to enclose every box it
        suppressed (IoU >= nms_iou)."""
        if not len(dets):
            return dets
        wh = np.minimum(dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1])
        dets = dets[wh >= self.min_face]
        kept = dets[nms(dets.boxes, dets.scores, self.nms_iou)]
        small = np.nonzero(_sides(kept.boxes) < grow_below)[0]
        if small.size:
            kept = Detections(kept.boxes.copy(), kept.scores)
            overlap = iou_matrix(kept.boxes[small], dets.boxes) >= self.nms_iou
            for k, group in zip(small, overlap, strict=True):
                boxes = dets.boxes[group]  # the kept box itself among them
                kept.boxes[k] = [*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)]
        return kept
