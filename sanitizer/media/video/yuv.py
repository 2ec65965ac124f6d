"""Work in the decoded frame's own yuv420p planes: redaction, steady masks, native crops.

Frames never go through a full-size RGB round trip: redaction paints the Y, U and V planes
(so colours, range and colorspace stay exactly as decoded), and detection gets RGB copies of
only the parts it looks at (`crop_rgb`) or a downscaled whole frame.
"""

from __future__ import annotations

import av
import cv2
import numpy as np

from sanitizer.redact import RedactParams, covering, redact_inplace

# Mask regions in video frames are aligned to H.264's 16-px macroblocks (luma; 8 px in the
# half-size chroma planes): see redact_inplace's `grid`
MASK_GRID = 16


def plane(frame: av.VideoFrame, i: int, w: int, h: int) -> np.ndarray:
    """Plane `i` of a yuv420p frame as a (h, w) uint8 view (no copy)."""
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:h, :w]


def crop_rgb(frame: av.VideoFrame, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """RGB copy of the stored-frame rectangle [x1, x2) x [y1, y2) of a yuv420p frame, at
    native resolution (BT.601; detection does not need exact colours). x1 and y1 must be
    even. Only the rectangle is converted: a 4K or 8K frame is never converted whole."""
    w, h = frame.width, frame.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    y = plane(frame, 0, w, h)[y1:y2, x1:x2]
    u = plane(frame, 1, cw, ch)[y1 // 2 : (y2 + 1) // 2, x1 // 2 : (x2 + 1) // 2]
    v = plane(frame, 2, cw, ch)[y1 // 2 : (y2 + 1) // 2, x1 // 2 : (x2 + 1) // 2]
    size = (u.shape[1] * 2, u.shape[0] * 2)
    u = cv2.resize(u, size, interpolation=cv2.INTER_NEAREST)[: y.shape[0], : y.shape[1]]
    v = cv2.resize(v, size, interpolation=cv2.INTER_NEAREST)[: y.shape[0], : y.shape[1]]
    return cv2.cvtColor(cv2.merge([y, u, v]), cv2.COLOR_YUV2RGB)


def _yuv_params(
    params: RedactParams, full_range: bool = False
) -> tuple[RedactParams, RedactParams, RedactParams]:
    """Per-plane parameters: a solid colour becomes its BT.601 Y, U, V values."""
    if params.method != "solid":
        return params, params, params
    r, g, b = (float(c) for c in params.color)
    if full_range:
        y = 0.299 * r + 0.587 * g + 0.114 * b
        u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
        v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    else:
        y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
        u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
        v = 128 + 0.439 * r - 0.368 * g - 0.071 * b

    def mk(c: float) -> RedactParams:
        return RedactParams(
            params.method,
            params.shape,
            params.margin,
            params.blocks,
            params.blur_strength,
            (int(round(c)),) * 3,
        )

    return mk(y), mk(u), mk(v)


def redact_yuv420p(
    frame: av.VideoFrame, boxes: np.ndarray, params: RedactParams
) -> list[tuple[int, int, int, int]]:
    """Redact `boxes` (stored-frame pixels) in a yuv420p frame's planes, in place; returns the
    regions painted (frame pixels, on the macroblock grid). The frame is made writable first,
    so a decoder's reference buffer is never touched."""
    if not len(boxes):
        return []
    frame.make_writable()
    w, h = frame.width, frame.height
    # the chroma planes' regions are the luma ones halved (same grid in their pixels): what
    # covers a box in one plane covers it in all three
    boxes = covering(boxes, params, w, h, MASK_GRID)
    py, pu, pv = _yuv_params(params, full_range=frame.color_range == 2)
    regions = redact_inplace(plane(frame, 0, w, h), boxes, py, MASK_GRID)
    cw, ch = (w + 1) // 2, (h + 1) // 2
    half = np.asarray(boxes, np.float32) / 2
    redact_inplace(plane(frame, 1, cw, ch), half, pu, MASK_GRID // 2)
    redact_inplace(plane(frame, 2, cw, ch), half, pv, MASK_GRID // 2)
    return regions


class SteadyMasks:
    """Box masks that stay put while a face moves a little (box-shaped masks only).

    Per track, the box a frame's mask is painted for is the previous frame's box as long as
    that still contains the face's new box and is at most `max_area` times its area; otherwise
    the new box grown by `slack` (room for the next frames' jitter). The painted box always
    contains the face's box, so masks only grow. A mask that stays put for several frames
    (same region, same blur) lets the encoder reuse it instead of re-coding a region that
    shifts with every pixel of detector jitter and tracking interpolation."""

    def __init__(self, slack: float = 1.1, max_area: float = 1.6) -> None:
        self.slack, self.max_area = float(slack), float(max_area)
        self._last: dict[int, np.ndarray] = {}

    def __call__(self, boxes: np.ndarray, track_ids: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = b.copy()
        last: dict[int, np.ndarray] = {}
        for i, (box, tid) in enumerate(
            zip(b, np.asarray(track_ids).reshape(-1).tolist(), strict=True)
        ):
            prev = self._last.get(tid)
            if (
                prev is not None
                and _contains(prev, box)
                and _area(prev) <= self.max_area * _area(box)
            ):
                out[i] = prev
            else:
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                hw, hh = (box[2] - box[0]) * self.slack / 2, (box[3] - box[1]) * self.slack / 2
                out[i] = (cx - hw, cy - hh, cx + hw, cy + hh)
            last[tid] = out[i]
        self._last = last  # tracks not in this frame are forgotten
        return out


def _contains(outer: np.ndarray, inner: np.ndarray) -> bool:
    return bool(
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and outer[2] >= inner[2]
        and outer[3] >= inner[3]
    )


def _area(b: np.ndarray) -> float:
    return float(max(1e-6, (b[2] - b[0]) * (b[3] - b[1])))


def pad_to_even(frame: av.VideoFrame) -> av.VideoFrame:
    """A yuv420p frame with an odd width or height, one pixel wider/taller: the last column
    and row repeated (H.264 codes 4:2:0 in whole chroma samples, so x264 takes even sides
    only). The chroma planes already cover the extra pixel and are copied as they are. A frame
    with even sides is returned as it is."""
    w, h = frame.width, frame.height
    ew, eh = w + w % 2, h + h % 2
    if (ew, eh) == (w, h):
        return frame
    out = av.VideoFrame(ew, eh, "yuv420p")
    y = plane(out, 0, ew, eh)
    y[:h, :w] = plane(frame, 0, w, h)
    y[:h, w:] = y[:h, w - 1 : w]
    y[h:, :] = y[h - 1 : h, :]
    cw, ch = (w + 1) // 2, (h + 1) // 2
    for i in (1, 2):
        plane(out, i, cw, ch)[:] = plane(frame, i, cw, ch)
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    out.color_range, out.colorspace = frame.color_range, frame.colorspace
    out.color_primaries, out.color_trc = frame.color_primaries, frame.color_trc
    return out
