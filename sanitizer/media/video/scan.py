"""Scan scheduling: which parts of which frame the detector looks at, at what resolution.

Every frame gets a look (VideoConfig, defaults in config.py):

- a *cheap look*: the whole frame downscaled to `scan_side` px on its long side (made by the
  decode thread), for big and fast faces;
- one *native band*: a full-width strip of the upright frame at native resolution. The frame
  is cut into `cycle` = ceil(width x height / native_pixels) bands (at most `max_cycle`; the
  bands grow instead), scanned in turn, one per frame, so every region of every frame is
  scanned at native resolution at least every `cycle` frames. Neighbouring bands overlap by
  at least the size of the smallest face the cheap look finds reliably (16 px in its image),
  so every face is either whole inside one band or big enough for the cheap look.

A frame small enough for the native budget (cycle 1) is scanned whole at native resolution
every frame, with no cheap look. A frame shown for longer than `long_frame` x the stream's
frame interval (variable frame rate, slideshow stills) gets a *full look*: every band.

Between native looks, small faces stay tracked at native resolution: every face the tracker
followed in the last `cycle` frames that is too small for the cheap look gets a native *track
crop* around its predicted position (overlapping crops merged), unless this frame's band holds it.

The tracker (tracking.py) covers a face from `cycle` frames before its first detection (its
look-ahead) to `cycle` frames after its last, so a face first found by a band look is
covered back to the previous native look of its region, and stays covered until the next.
Where the cycle is longer than the tracker's own look-ahead (`track_lead`: above 1080p), a
face too small for the cheap look is also *looked back for*: when a native look finds it for
the first time, native crops follow it backwards through the frames still held for the
look-ahead, so the frames before its first detection are masked where the face was, not
where a box carried back from that detection guesses it was (a small face moves its own
size in a few frames of a pan).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import av
import numpy as np

from sanitizer.detect.graph import STRIDE
from sanitizer.media.tracking import FrameBoxes, TemporalCoverage, Track, match_faces
from sanitizer.media.video.detector import VideoDetector
from sanitizer.media.video.geometry import stored_to_upright, upright_to_stored
from sanitizer.media.video.stages import END, get, put
from sanitizer.media.video.yuv import crop_rgb
from sanitizer.records import Detections

CHEAP_MIN_FACE = 16  # px in the cheap look's image: faces it finds reliably
CROP_PAD = 16  # least margin (px) of a track crop around the face's predicted box
CROP_MARGIN = 0.6  # ... and its margin as a share of the face's side (a face moves < 1/4 side
# per frame: tracking.Track.velocity)
MERGE_WASTE = 1.3  # two crops are merged when their union is at most this x their two areas
# A look bigger than this (a 1080p, 4K or 8K band) runs as side-by-side pieces sharing the
# bands' overlap: onnxruntime's working memory grows with the input (4K: -175 MB peak RSS
# with pieces of 0.5 MP instead of whole 1.06 MP bands, and another -220 MB with two
# detection threads at 0.3 MP, at the same speed: BENCHMARKS.md, Video)
MAX_LOOK_PIXELS = 300_000
# Track crops of frame t follow the tracker as it stood after frame t - CROP_LAG, however many
# threads scan: up to CROP_LAG frames are scanned at once, and the output does not depend on
# thread timing or on the number of detection threads.
CROP_LAG = 2
MAX_DETECT_THREADS = CROP_LAG
# Looking back for a new small face stops after this many frames in a row without it (a
# one-frame gap between two detections is interpolated).
LOOK_BACK_MISSES = 2
LOOK_BACK_REACH = 0.75  # most distance (x its side) of a face's centres in neighbouring frames


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """The looks of one video's frames (all sizes in the upright frame's pixels)."""

    width: int
    height: int
    cheap: (
        tuple[int, int] | None
    )  # (w, h) of the cheap look, stored orientation; None: no cheap look
    bands: tuple[tuple[int, int, int, int], ...]  # native bands x1, y1, x2, y2
    overlap: int  # rows shared by neighbouring bands

    @property
    def cycle(self) -> int:
        """Frames between two native looks at any one region."""
        return len(self.bands)

    @classmethod
    def for_frame(cls, width: int, height: int, vcfg, turns: int = 0) -> ScanPlan:
        """The plan for an upright `width` x `height` frame (`turns`: quarter turns from the
        stored frame, which the cheap look is made from)."""
        area = width * height
        cycle = min(max(1, int(vcfg.max_cycle)), max(1, math.ceil(area / vcfg.native_pixels)))
        long_side = max(width, height)
        cheap = None
        overlap = 0
        if cycle > 1:
            scale = min(1.0, vcfg.scan_side / long_side)
            cw, ch = _align(width * scale), _align(height * scale)
            cheap = (ch, cw) if turns % 2 else (cw, ch)
            # a face the cheap look may miss (< CHEAP_MIN_FACE px there) is whole in one band
            overlap = max(int(vcfg.band_overlap), math.ceil(CHEAP_MIN_FACE * long_side / cw))
            overlap = -(-overlap // 16) * 16
        step = math.ceil(height / cycle)
        bands = tuple(
            (0, max(0, i * step - overlap), width, min(height, (i + 1) * step))
            for i in range(cycle)
        )
        return cls(width, height, cheap, bands, overlap)

    def bands_for(self, index: int, full: bool) -> tuple[tuple[int, int, int, int], ...]:
        """The native bands frame `index` is scanned in (all of them for a full look)."""
        return self.bands if full else (self.bands[index % self.cycle],)


def track_crops(
    plan: ScanPlan, boxes: np.ndarray, bands: tuple[tuple[int, int, int, int], ...]
) -> list[tuple[int, int, int, int]]:
    """Native crops around the predicted `boxes` of faces too small for the cheap look
    (< plan.overlap px) that are not inside one of this frame's `bands`; crops that overlap
    are merged when little is wasted. A crop leaves CROP_MARGIN x the face's side (at least
    CROP_PAD px) around it."""
    if plan.cheap is None:
        return []
    rects = []
    for box in np.asarray(boxes, np.float64).reshape(-1, 4):
        x1, y1, x2, y2 = box
        side = _side(box)
        if side >= plan.overlap:
            continue
        pad = max(CROP_MARGIN * side, CROP_PAD)
        r = (
            max(0, int(x1 - pad)),
            max(0, int(y1 - pad)),
            min(plan.width, math.ceil(x2 + pad)),
            min(plan.height, math.ceil(y2 + pad)),
        )
        if r[2] - r[0] < 2 or r[3] - r[1] < 2 or any(_inside(r, b) for b in bands):
            continue
        rects.append(r)
    return _merge(rects)


def _pieces(rect: tuple[int, int, int, int], plan: ScanPlan) -> list[tuple[int, int, int, int]]:
    """`rect` cut into side-by-side pieces of at most about MAX_LOOK_PIXELS that share the
    plan's overlap columns (a face up to the overlap is whole in one of them; a bigger one is
    the cheap look's). A frame scanned whole (no cheap look) is one piece: a face of any size
    must be whole in it."""
    if plan.cheap is None:
        return [rect]
    overlap = plan.overlap
    x1, y1, x2, y2 = rect
    n = math.ceil((x2 - x1) * (y2 - y1) / MAX_LOOK_PIXELS)
    if n <= 1:
        return [rect]
    step = math.ceil((x2 - x1) / n)
    return [
        (max(x1, x1 + i * step - overlap), y1, min(x2, x1 + (i + 1) * step), y2) for i in range(n)
    ]


def _inside(r: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return b[0] <= r[0] and b[1] <= r[1] and r[2] <= b[2] and r[3] <= b[3]


def same_faces(boxes: np.ndarray, dets: Detections) -> list[int | None]:
    """For each of `boxes` (faces one frame away), the index of its detection in `dets`, or
    None (tracking.match_faces: any overlap counts, then centres less than LOOK_BACK_REACH x
    the face's side apart; a small face's box jitters, and in a pan it moves a good part of
    its side per frame)."""
    out: list[int | None] = [None] * len(boxes)
    if len(dets) and len(boxes):
        a = np.asarray(boxes, np.float64).reshape(-1, 4)
        any_overlap = np.nextafter(0.0, 1.0)
        for i, j in match_faces(a, dets.boxes.astype(np.float64), any_overlap, LOOK_BACK_REACH):
            out[i] = j
    return out


def _merge(rects: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Overlapping rectangles replaced by their union while it covers at most MERGE_WASTE x
    their two areas (each look has a fixed cost; a union of far-apart crops scans empty
    pixels at full price). Pairs merge in order: always the first pair (i, j), i < j, that
    can; a grown rectangle is first tried against the ones before it (every other pair
    before it was tried already), then its row is tried again. A crowd has hundreds of
    crops a frame."""
    out = list(rects)
    i = 0
    while i < len(out):
        j = next((j for j in range(i + 1, len(out)) if _mergeable(out[i], out[j])), None)
        if j is None:
            i += 1
            continue
        out[i] = _union(out[i], out.pop(j))
        while (k := next((k for k in range(i) if _mergeable(out[k], out[i])), None)) is not None:
            out[k] = _union(out[k], out.pop(i))
            i = k
    return out


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _mergeable(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    if not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]):
        return False
    u = _union(a, b)
    area = (u[2] - u[0]) * (u[3] - u[1])
    return area <= MERGE_WASTE * ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]))


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def _align(side: float) -> int:
    """Sides of 256 px and more go to the nearest multiple of the network's stride, 32 (ties
    down): the network pads its input to /32, so 360 px would cost as much as 384 (the aspect
    changes by < 5 %)."""
    if side < 256:
        return max(2, int(round(side)))
    return int((side + STRIDE // 2 - 1) // STRIDE) * STRIDE


def upright_crop(
    frame: av.VideoFrame, rect: tuple[int, int, int, int], turns: int
) -> tuple[np.ndarray, float, float]:
    """Native-resolution upright RGB of the upright-frame rectangle `rect` of a yuv420p frame,
    and the upright position of its top-left pixel (the crop may start 1 px early: chroma)."""
    w, h = frame.width, frame.height
    s = upright_to_stored(np.asarray([rect], np.float32), turns, w, h)[0]
    x1, y1 = int(s[0]) // 2 * 2, int(s[1]) // 2 * 2
    x2, y2 = min(w, math.ceil(s[2])), min(h, math.ceil(s[3]))
    rgb = crop_rgb(frame, x1, y1, x2, y2)
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, turns))
    u = stored_to_upright(np.asarray([[x1, y1, x2, y2]], np.float32), turns, w, h)[0]
    return rgb, float(u[0]), float(u[1])


def scan_frame(
    vdet: VideoDetector,
    plan: ScanPlan,
    frame: av.VideoFrame,
    turns: int,
    small: np.ndarray | None,
    rects: list[tuple[int, int, int, int]],
) -> Detections:
    """One frame's looks: the cheap one (`small`, upright RGB) and the native `rects` (bands
    and track crops); the frame's faces in upright pixels."""
    parts = []
    if small is not None:
        d = vdet.look(small)
        if len(d):
            sx, sy = plan.width / small.shape[1], plan.height / small.shape[0]
            parts.append(Detections(d.boxes * np.array([sx, sy, sx, sy], np.float32), d.scores))
    for rect in (piece for r in rects for piece in _pieces(r, plan)):
        crop, ox, oy = upright_crop(frame, rect, turns)
        d = vdet.look(crop)
        if len(d):
            parts.append(Detections(d.boxes + np.array([ox, oy, ox, oy], np.float32), d.scores))
    return vdet.finish(Detections.merge(parts))


@dataclass(slots=True)
class Frame:
    """A decoded frame on its way through the pipeline."""

    index: int
    frame: av.VideoFrame  # yuv420p, stored orientation
    pts: int
    small: np.ndarray | None  # upright RGB of the cheap look (None when there is none)
    duration: int = 0  # pts units until the next frame (known once that one is decoded)


def scan_loop(q_dec, q_enc, stop, vdet: VideoDetector, vcfg, stats, pool, emit) -> None:
    """The calling thread's stage: frames from the decoder, scanned (on `pool`'s threads when
    given: CROP_LAG frames at once; results consumed in frame order), tracked, and passed on to
    redaction with their boxes (stored pixels). `emit(frame, t_ms, FrameBoxes)` records each
    finalised frame that has faces, in frame order."""
    tb = stats["time_base"]
    nominal = stats["interval"]  # pts units of one frame at the stream's nominal rate
    held: dict[int, Frame] = {}
    cov: TemporalCoverage | None = None
    inflight: deque[tuple[Frame, Future | Detections]] = deque()
    waiting: Frame | None = None  # the newest frame, until the next one tells its duration

    def release(done: list[FrameBoxes]) -> None:
        for fb in done:
            f = held.pop(fb.frame)
            stored = f.frame
            boxes = np.zeros((0, 4), np.float32)
            if len(fb):
                boxes = upright_to_stored(fb.boxes, stats["turns"], stored.width, stored.height)
                emit(fb.frame, float((f.pts - stats["first_pts"]) * tb * 1000), fb)
            put(q_enc, ("v", stored, boxes, f.pts, fb.track_ids), stop)

    def submit(item: Frame) -> None:
        nonlocal cov
        settle(item.index - CROP_LAG)  # the tracker as of CROP_LAG frames back, on any threads
        plan: ScanPlan = stats["plan"]
        if cov is None:
            cov = TemporalCoverage(
                keep=max(vcfg.track_keep, plan.cycle),
                lead=max(vcfg.track_lead, plan.cycle),
                iou_threshold=vcfg.track_iou,
            )
        full = bool(item.duration > vcfg.long_frame * nominal)
        bands = plan.bands_for(item.index, full)
        rects = list(bands) + track_crops(plan, cov.live_boxes(item.index), bands)
        small, item.small = item.small, None
        args = (vdet, plan, item.frame, stats["turns"], small, rects)
        held[item.index] = item
        inflight.append((item, pool.submit(scan_frame, *args) if pool else scan_frame(*args)))

    def settle(through: float) -> None:
        """Push the scanned frames up to index `through` to the tracker, in order (waiting for
        their scans): no later one, so a frame's crops never depend on thread timing."""
        while inflight and inflight[0][0].index <= through:
            item, got = inflight.popleft()
            dets = got.result() if isinstance(got, Future) else got
            look_back(item.index, cov.observe(item.index, dets))
            release(cov.release())

    def look_back(t: int, born: list[Track]) -> None:
        """Follow the faces first detected at frame t backwards with native crops, through
        the frames the tracker has not finalised; what is found is redacted (add_past)."""
        plan: ScanPlan = stats["plan"]
        if plan.cheap is None or plan.cycle <= vcfg.track_lead:
            # every frame is scanned whole, or the look-ahead is the tracker's own (1080p and
            # under): a box carried back that few frames stays on a small face (BENCHMARKS.md,
            # Video: looking back cost +37 % at 1080p for +0.3 points of faces < 16 px)
            return
        # faces the cheap look sees are not followed: it looked at them in every frame
        small = [tr.boxes[0] for tr in born if _side(tr.boxes[0]) < plan.overlap]
        # per face: its box in the frame after k, misses in a row, and what was found
        ahead = [(box, 0, ([], [], [])) for box in small]
        done = []
        for k in cov.look_back_frames(t):
            if not ahead or k not in held:
                break
            boxes = np.stack([box for box, _, _ in ahead])
            dets = scan_frame(
                vdet, plan, held[k].frame, stats["turns"], None, track_crops(plan, boxes, ())
            )
            still = []
            for (box, misses, found), j in zip(ahead, same_faces(boxes, dets), strict=True):
                if j is not None:
                    box, misses = dets.boxes[j].astype(np.float64), 0
                    for seq, value in zip(found, (k, box, float(dets.scores[j])), strict=True):
                        seq.insert(0, value)
                else:
                    misses += 1
                (still if misses < LOOK_BACK_MISSES else done).append((box, misses, found))
            ahead = still
        for _, _, found in done + ahead:
            cov.add_past(*found)

    try:
        while True:
            item = get(q_dec, stop)
            if item is END:
                break
            if isinstance(item, tuple):  # audio packet: straight through
                put(q_enc, item, stop)
                continue
            if waiting is not None:
                waiting.duration = item.pts - waiting.pts
                submit(waiting)
            waiting = item
        if waiting is not None:
            waiting.duration = stats["last_dur"] or nominal
            submit(waiting)
        settle(math.inf)
    finally:
        for _, got in inflight:
            if isinstance(got, Future):
                got.cancel()
    if cov is not None:
        release(cov.flush())
    put(q_enc, END, stop)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def detection_pool(n: int) -> ThreadPoolExecutor | None:
    """A process-wide pool of `n` detection threads (None for n == 1: detect inline), so
    files reuse their threads' onnxruntime sessions."""
    if n <= 1:
        return None
    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sanitizer-detect")
        return _POOLS[n]
