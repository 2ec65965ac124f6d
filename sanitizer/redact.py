"""Irreversible redaction: masks and methods. Pure functions that return new arrays.

Images are numpy arrays in RGB(A) order, HxW (gray), HxWx3 or HxWx4, uint8 or uint16.
Alpha is never changed. Each face is handled in its own region of interest, so the cost
grows with the face area, not the frame size.

OpenCV is imported where it is used: a run's driver builds RedactParams but never redacts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sanitizer.config import REDACT_SHAPES, RedactConfig

_DEFAULT = RedactConfig()  # one source of truth for the defaults: config.py


@dataclass(frozen=True, slots=True)
class RedactParams:
    method: str = _DEFAULT.method
    shape: str = _DEFAULT.shape
    margin: float = _DEFAULT.margin
    blocks: int = _DEFAULT.blocks
    blur_strength: float = _DEFAULT.blur_strength
    color: tuple[int, int, int] = _DEFAULT.color


SHAPES = REDACT_SHAPES


def expand_boxes(boxes: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """Enlarge (n,4) x1,y1,x2,y2 boxes about their centre by `margin`, clip, round outward."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    hw, hh = (b[:, 2] - b[:, 0]) * margin / 2, (b[:, 3] - b[:, 1]) * margin / 2
    out = np.stack([np.floor(cx - hw), np.floor(cy - hh), np.ceil(cx + hw), np.ceil(cy + hh)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out.astype(np.int64)


def _region_mask(shape: str, box: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask of one (unclipped, enlarged) face inside the clipped `roi` x1,y1,x2,y2."""
    import cv2

    x1, y1, x2, y2 = roi
    h, w = y2 - y1, x2 - x1
    if shape == "box":
        return np.ones((h, w), bool)
    m = np.zeros((h, w), np.uint8)
    bx1, by1, bx2, by2 = box
    # sub-pixel ellipse: cv2 shift=4 gives 1/16 px precision
    s = 16
    center = (int(round(((bx1 + bx2) / 2 - x1) * s)), int(round(((by1 + by2) / 2 - y1) * s)))
    axes = (max(1, int(round((bx2 - bx1) / 2 * s))), max(1, int(round((by2 - by1) / 2 * s))))
    cv2.ellipse(m, center, axes, 0, 0, 360, 1, -1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def mask_for(
    boxes: np.ndarray,
    height: int,
    width: int,
    shape: str = _DEFAULT.shape,
    margin: float = _DEFAULT.margin,
) -> np.ndarray:
    """Full-size boolean mask of all faces (used by evaluation and tests)."""
    mask = np.zeros((height, width), bool)
    for box, roi, _ in _regions(boxes, margin, width, height):
        x1, y1, x2, y2 = roi
        mask[y1:y2, x1:x2] |= _region_mask(shape, box, roi)
    return mask


def _rois(
    boxes: np.ndarray, margin: float, width: int, height: int, grid: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The enlarged boxes (unclipped, float) and their clipped integer regions, widened to
    multiples of `grid` px when grid > 1."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    hw, hh = (b[:, 2] - b[:, 0]) * margin / 2, (b[:, 3] - b[:, 1]) * margin / 2
    big = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], 1)
    rois = expand_boxes(boxes, margin, width, height)
    if grid > 1:
        rois[:, :2] = rois[:, :2] // grid * grid
        rois[:, 2:] = -(-rois[:, 2:] // grid) * grid
        rois[:, [0, 2]] = rois[:, [0, 2]].clip(0, width)
        rois[:, [1, 3]] = rois[:, [1, 3]].clip(0, height)
    return big, rois


def _regions(boxes: np.ndarray, margin: float, width: int, height: int, grid: int = 0):
    """(enlarged box, clipped region, face side) of every box whose region is not empty."""
    big, rois = _rois(boxes, margin, width, height, grid)
    sides = _sides(big, margin, grid).tolist()
    for box, (x1, y1, x2, y2), side in zip(big, rois.tolist(), sides, strict=True):
        if x2 > x1 and y2 > y1:
            yield box, (x1, y1, x2, y2), side


def _sides(big: np.ndarray, margin: float, grid: int) -> np.ndarray:
    """The face side each enlarged box's redaction is scaled to (blur sigma, block size); on
    a grid (video) in quarter-octave steps, rounded up: the blur changes only when the face
    does."""
    area = (big[:, 2] - big[:, 0]) * (big[:, 3] - big[:, 1])
    side = np.sqrt(np.maximum(1.0, area)) / margin
    if grid > 1:
        side = 2 ** (np.ceil(np.log2(side) * 4) / 4)
    return side


_COVER_ROWS = 1024  # regions compared at once with all the others (bounds the memory)


def covering(
    boxes: np.ndarray, params: RedactParams, width: int, height: int, grid: int = 0
) -> np.ndarray:
    """The boxes whose masks `redact_inplace` must paint to redact all of `boxes`. With box
    masks, a box whose region lies inside another box's region, with a face side no bigger
    than that box's, is covered by that box's mask (with a blur or pixel block at least as
    strong) and is left out; of identical regions the first one stays. A crowd's tracks give
    video frames hundreds of regions nested in one another (BENCHMARKS.md, Video)."""
    b = np.asarray(boxes).reshape(-1, 4)  # as given: float32 and float64 boxes round alike
    if params.shape != "box" or len(b) < 2:
        return b
    big, rois = _rois(b, params.margin, width, height, grid)
    sides = _sides(big, params.margin, grid)
    _, first = np.unique(np.column_stack([rois, sides]), axis=0, return_index=True)
    first.sort()
    r, s = rois[first], sides[first]
    covered = np.zeros(len(first), bool)
    for i in range(0, len(first), _COVER_ROWS):  # [i, j]: is region i inside region j?
        ri, si = r[i : i + _COVER_ROWS, None], s[i : i + _COVER_ROWS, None]
        inside = ri[..., 0] >= r[None, :, 0]
        inside &= ri[..., 1] >= r[None, :, 1]
        inside &= ri[..., 2] <= r[None, :, 2]
        inside &= ri[..., 3] <= r[None, :, 3]
        inside &= si <= s[None, :]
        # distinct rows: no two regions are inside each other, none but itself is i
        np.fill_diagonal(inside[:, i:], False)
        covered[i : i + _COVER_ROWS] = inside.any(axis=1)
    return b[first[~covered]]


def _gaussian(roi: np.ndarray, side: float, p: RedactParams) -> np.ndarray:
    """Blur with sigma = strength * face side: downscale, blur, upscale (constant cost)."""
    import cv2

    h, w = roi.shape[:2]
    sigma = max(1.0, p.blur_strength * side)
    scale = min(1.0, 2.0 / sigma)
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    # Averaging a big face down to a few pixels reads every pixel (~1 ms for a 600 px face);
    # an 8x8 grid of samples per output pixel gives the same few averages for ~1/50 the cost.
    step = int(1 / scale) // 8
    if step > 1:
        roi = roi[::step, ::step]
    small = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(
        small, (0, 0), sigmaX=max(0.5, sigma * scale), borderType=cv2.BORDER_REPLICATE
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape((h, w, *roi.shape[2:]))


def _pixelate(roi: np.ndarray, side: float, p: RedactParams) -> np.ndarray:
    """At most `blocks` blocks across the face: block side = ceil(face side / blocks)."""
    import cv2

    h, w = roi.shape[:2]
    block = max(1, int(np.ceil(side / max(1, p.blocks))))
    sw, sh = max(1, int(np.ceil(w / block))), max(1, int(np.ceil(h / block)))
    small = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).reshape(roi.shape)


def _solid(roi: np.ndarray, side: float, p: RedactParams) -> np.ndarray:
    out = np.empty_like(roi)
    color = np.asarray(p.color, np.float64)
    if roi.dtype == np.uint16:
        color = color * 257
    if roi.ndim == 2 or roi.shape[2] == 1:
        out[...] = int(round(float(color @ [0.299, 0.587, 0.114])))
    else:
        out[...] = color[: roi.shape[2]].astype(roi.dtype)
    return out


METHODS: dict[str, Callable[[np.ndarray, float, RedactParams], np.ndarray]] = {
    "gaussian": _gaussian,
    "pixelate": _pixelate,
    "solid": _solid,
}


def redact(image: np.ndarray, boxes: np.ndarray, params: RedactParams) -> np.ndarray:
    """Return a copy of `image` with every face box redacted. Alpha channels are kept."""
    out = image.copy()
    redact_inplace(out, boxes, params)
    return out


def redact_inplace(
    image: np.ndarray, boxes: np.ndarray, params: RedactParams, grid: int = 0
) -> list[tuple[int, int, int, int]]:
    """Redact `image` in place (for frame buffers the caller owns); returns the x1, y1, x2, y2
    regions it painted (e.g. to tell a video encoder where the redacted areas are).

    grid > 1 (video frames): every region is widened outward to multiples of `grid` px and
    the blur's face side is rounded up to quarter-octave steps, so a mask that follows a
    moving face changes in whole macroblocks instead of shimmering with each pixel of box
    jitter; x264 encodes such frames ~8 % faster (BENCHMARKS.md). Masks only grow."""
    try:
        method = METHODS[params.method]
    except KeyError:
        raise ValueError(
            f"unknown redaction method {params.method!r} (known: {', '.join(METHODS)})"
        ) from None
    if params.shape not in SHAPES:
        raise ValueError(f"unknown mask shape {params.shape!r} (known: {', '.join(SHAPES)})")
    h, w = image.shape[:2]
    color_channels = 3 if image.ndim == 3 and image.shape[2] == 4 else None
    if image.ndim == 3 and image.shape[2] == 2:  # gray + alpha
        color_channels = 1
    painted = []
    for box, roi, side in _regions(boxes, params.margin, w, h, grid):
        painted.append(roi)
        x1, y1, x2, y2 = roi
        view = image[y1:y2, x1:x2]
        if color_channels is not None:
            view = view[..., :color_channels]
        region = np.ascontiguousarray(view)
        redacted = method(region, side, params)
        if params.shape == "box":  # the whole region: a plain copy, no boolean indexing
            view[...] = redacted
        else:
            m = _region_mask(params.shape, box, roi)
            view[m] = redacted[m]
    return painted


def params_from_config(cfg) -> RedactParams:  # cfg: sanitizer.config.RedactConfig
    return RedactParams(
        method=cfg.method,
        shape=cfg.shape,
        margin=cfg.margin,
        blocks=cfg.blocks,
        blur_strength=cfg.blur_strength,
        color=tuple(cfg.color),
    )
