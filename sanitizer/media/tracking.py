"""Temporal coverage: keep a face covered in the frames where the detector misses it.

Detections (upright-frame pixels) are associated into tracks across frames, greedily by
IoU with a centre-distance fallback for small, fast faces, never to a box of a very
different size (that is another face, e.g. across a cut). A frame is *finalised* only
once the detections of the next `lead` frames are known (a small look-ahead buffer), so
for every track each frame gets one of:

- the detected box (``detected=True``);
- a box linearly interpolated between the detections on either side of a gap;
- a box carried forward from the last detection for up to `keep` frames;
- a box carried backward from the first detection for up to `lead` frames;

carried boxes (``detected=False``) are extrapolated with the track's velocity and grown a
little per frame of distance from a real detection, because a face keeps moving while the
detector is blind. Memory is bounded: old detections are pruned as frames are finalised.

    cov = TemporalCoverage(keep=8, lead=4)
    for t, dets in frames:                       # dets: Detections, or None if not scanned
        for frame in cov.push(t, dets): ...      # finalised frames, in order
    for frame in cov.flush(): ...
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sanitizer.detect import iou_matrix
from sanitizer.records import Detections

MAX_SIZE_CHANGE = 1.6  # most a face's box side may grow or shrink between two associated scans


def grow(box: np.ndarray, factor: float) -> np.ndarray:
    """Enlarge an x1,y1,x2,y2 box about its centre."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float64)


def _least_size(box: np.ndarray, detected: np.ndarray, least: float = 0.5) -> np.ndarray:
    """An extrapolated box keeps at least `least` x the size of the detection it was carried
    from, about its own centre. Each edge moves with its own velocity, so a face shrinking
    at the frame's border (one edge still, the other moving) would otherwise be carried into
    an empty or inverted box (x2 < x1): no mask, and a negative width in the audit."""
    w, h = box[2] - box[0], box[3] - box[1]
    mw, mh = (detected[2] - detected[0]) * least, (detected[3] - detected[1]) * least
    if w >= mw and h >= mh:
        return box
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = max(w, mw), max(h, mh)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float64)


def match_faces(
    pred: np.ndarray, boxes: np.ndarray, iou_min: float, reach: np.ndarray | float
) -> list[tuple[int, int]]:
    """Pairs (i, j) of `pred[i]` (where faces are expected) and `boxes[j]` (detections) that
    are the same face, one to one, greedily: boxes overlapping by IoU >= `iou_min` first (the
    most overlapping), then centres less than `reach` x the expected face's side apart (a
    small face may move more than its size), never boxes of very different sizes."""
    m = iou_matrix(pred, boxes)
    pc = (pred[:, None, :2] + pred[:, None, 2:]) / 2
    dc = (boxes[None, :, :2] + boxes[None, :, 2:]) / 2
    dist = np.linalg.norm(pc - dc, axis=2)
    side = np.maximum(pred[:, None, 2] - pred[:, None, 0], pred[:, None, 3] - pred[:, None, 1])
    reach = reach * np.maximum(side, 1.0)
    near = dist < reach
    score = np.where(m >= iou_min, 1.0 + m, np.where(near, 1.0 - dist / reach, 0.0))
    # a face does not change size by more than MAX_SIZE_CHANGE between two scans: a box that
    # did is another face (typically across a cut), and interpolating towards it would pull
    # the mask off the face in the frames between
    ds = np.sqrt(np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0), axis=1))
    ps = np.sqrt(np.prod(np.maximum(pred[:, 2:] - pred[:, :2], 1.0), axis=1))
    ratio = np.maximum(ps[:, None] / ds[None, :], ds[None, :] / ps[:, None])
    score = np.where(ratio <= MAX_SIZE_CHANGE, score, 0.0)
    pairs: list[tuple[int, int]] = []
    used_p: set[int] = set()
    used_b: set[int] = set()
    for flat in np.argsort(-score, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(boxes))
        if score[i, j] <= 0:
            break
        if i not in used_p and j not in used_b:
            used_p.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return pairs


@dataclass(slots=True)
class Track:
    id: int
    frames: list[int] = field(default_factory=list)  # frames with a detection, increasing
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    # False for a face's past found by looking back (TemporalCoverage.add_past): its boxes
    # are redacted, but new detections are not associated with it (its face's own track
    # goes on), so looking back only ever adds masks
    follows: bool = True

    def add(self, t: int, box: np.ndarray, score: float) -> None:
        self.frames.append(t)
        self.boxes.append(np.asarray(box, np.float64))
        self.scores.append(float(score))

    def velocity(self, i: int, forward: bool) -> np.ndarray:
        """Per-frame box velocity (in time order) at detection `i`, estimated from the
        detection before it (forward) or after it (backward), clamped to a quarter of the
        box side per frame so one jittery detection cannot throw a carried box away."""
        j = i - 1 if forward else i + 1
        if not 0 <= j < len(self.frames):
            return np.zeros(4)
        dt = self.frames[i] - self.frames[j]
        v = (self.boxes[i] - self.boxes[j]) / dt
        b = self.boxes[i]
        lim = 0.25 * max(1.0, b[2] - b[0], b[3] - b[1])
        return np.minimum(np.maximum(v, -lim), lim)  # np.clip's, at 1/2 the call overhead

    def predict(self, t: int) -> np.ndarray:
        """Where the track's box is expected at frame t >= its last detection."""
        i = len(self.frames) - 1
        return self.boxes[i] + self.velocity(i, True) * (t - self.frames[i])


@dataclass(slots=True)
class FrameBoxes:
    """The boxes to redact in one frame (upright pixels) and where each one came from."""

    frame: int
    boxes: np.ndarray  # (n, 4) float32
    scores: (
        np.ndarray
    )  # (n,) float32: detection score, or the nearest detection's for carried boxes
    track_ids: np.ndarray  # (n,) int64
    detected: np.ndarray  # (n,) bool: False when the box was carried or interpolated

    def __len__(self) -> int:
        return len(self.scores)

    def detections(self) -> Detections:
        return Detections(self.boxes, self.scores)


class TemporalCoverage:
    """Streaming tracker with a `lead`-frame look-ahead; see the module docstring.

    keep: frames a track stays covered after its last detection.
    lead: frames a track is covered before its first detection (also the look-ahead depth,
          so a gap between two detections up to keep + lead frames long is interpolated).
    iou_threshold: minimum IoU between a track's predicted box and a detection to associate.
    growth: relative box growth per frame of distance from a detection (carried boxes),
            capped at `max_growth`.
    """

    def __init__(
        self,
        keep: int = 8,
        lead: int = 4,
        iou_threshold: float = 0.2,
        growth: float = 0.03,
        max_growth: float = 1.3,
    ) -> None:
        if keep < 0 or lead < 0:
            raise ValueError("keep and lead must be >= 0")
        self.keep, self.lead = int(keep), int(lead)
        self.iou_threshold = float(iou_threshold)
        self.growth, self.max_growth = float(growth), float(max_growth)
        self._tracks: list[Track] = []
        self._next_id = 0
        self._pending: deque[int] = deque()  # pushed frames not yet finalised
        self._last_pushed = -1

    # -- association ----------------------------------------------------------------------
    def _associate(self, t: int, dets: Detections) -> list[Track]:
        live = [
            tr
            for tr in self._tracks
            if tr.follows and t - tr.frames[-1] <= self.keep + self.lead and tr.frames[-1] < t
        ]
        boxes = dets.boxes.astype(np.float64)
        unmatched = set(range(len(dets)))
        if live and len(dets):
            pred = np.stack([tr.predict(t) for tr in live])
            # the longer the gap since a track's last detection, the further its face may be
            gap = np.array([t - tr.frames[-1] for tr in live], np.float64)[:, None]
            for ti, di in match_faces(
                pred, boxes, self.iou_threshold, np.minimum(2.0, 0.5 + 0.15 * gap)
            ):
                unmatched.discard(di)
                live[ti].add(t, boxes[di], dets.scores[di])
        born = []
        for di in sorted(unmatched):
            tr = Track(self._next_id)
            self._next_id += 1
            tr.add(t, boxes[di], dets.scores[di])
            self._tracks.append(tr)
            born.append(tr)
        return born

    # -- per-frame boxes ----------------------------------------------------------------
    def _box_at(self, tr: Track, t: int) -> tuple[np.ndarray, float, bool] | None:
        frames = tr.frames
        i = int(np.searchsorted(frames, t))  # first detection at or after t
        if i < len(frames) and frames[i] == t:
            return tr.boxes[i], tr.scores[i], True
        prev = i - 1 if i > 0 else None
        nxt = i if i < len(frames) else None
        if (
            prev is not None
            and nxt is not None
            and (t - frames[prev] <= self.keep or frames[nxt] - t <= self.lead)
        ):
            a, b = frames[prev], frames[nxt]
            w = (t - a) / (b - a)
            box = tr.boxes[prev] * (1 - w) + tr.boxes[nxt] * w
            d = min(t - a, b - t)
            return (
                grow(box, min(self.max_growth, 1 + self.growth * d / 2)),
                min(tr.scores[prev], tr.scores[nxt]),
                False,
            )
        if prev is not None and t - frames[prev] <= self.keep:
            d = t - frames[prev]
            box = _least_size(tr.boxes[prev] + tr.velocity(prev, True) * d, tr.boxes[prev])
            return grow(box, min(self.max_growth, 1 + self.growth * d)), tr.scores[prev], False
        if nxt is not None and frames[nxt] - t <= self.lead:
            d = frames[nxt] - t
            box = _least_size(tr.boxes[nxt] - tr.velocity(nxt, False) * d, tr.boxes[nxt])
            return grow(box, min(self.max_growth, 1 + self.growth * d)), tr.scores[nxt], False
        return None

    def _finalise(self, t: int) -> FrameBoxes:
        boxes, scores, ids, detected = [], [], [], []
        for tr in self._tracks:
            got = self._box_at(tr, t)
            if got is not None:
                boxes.append(got[0])
                scores.append(got[1])
                ids.append(tr.id)
                detected.append(got[2])
        out = FrameBoxes(
            t,
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(scores, np.float32),
            np.asarray(ids, np.int64),
            np.asarray(detected, bool),
        )
        # prune what can no longer affect frames after t
        horizon = t + 1 - self.keep
        kept = []
        for tr in self._tracks:
            if tr.frames[-1] >= horizon or tr.frames[-1] > t:
                while len(tr.frames) > 2 and tr.frames[1] < horizon:  # keep one before the horizon
                    del tr.frames[0], tr.boxes[0], tr.scores[0]
                kept.append(tr)
        self._tracks = kept
        return out

    def live_boxes(self, t: int) -> np.ndarray:
        """Where the tracks detected in the `keep` frames before frame t are expected at t
        (predicted boxes): where to look for them again."""
        boxes = [
            tr.predict(t)
            for tr in self._tracks
            if tr.follows and 0 < t - tr.frames[-1] <= self.keep
        ]
        return np.asarray(boxes, np.float64).reshape(-1, 4)

    # -- streaming API ------------------------------------------------------------------
    def push(self, t: int, dets: Detections | None) -> list[FrameBoxes]:
        """Add frame t (frames in increasing order) with its detections, or None if the
        detector did not run on it. Returns the frames that are now final, in order."""
        self.observe(t, dets)
        return self.release()

    def observe(self, t: int, dets: Detections | None) -> list[Track]:
        """The first half of `push`: frame t's detections associated, nothing finalised yet.
        Returns the tracks its detections started: until `release`, a caller may look for
        their faces in the frames before t that are still pending (`look_back_frames`) and
        add what it finds with `add_past`."""
        if t <= self._last_pushed:
            raise ValueError(
                f"frames must be pushed in increasing order ({t} after {self._last_pushed})"
            )
        self._last_pushed = t
        born = self._associate(t, dets) if dets is not None and len(dets) else []
        self._pending.append(t)
        return born

    def add_past(self, frames: list[int], boxes: list[np.ndarray], scores: list[float]) -> None:
        """A face's detections in pending frames before its first one (found by looking
        back; `frames` increasing): redacted like a track's, associated with nothing."""
        oldest = self._pending[0] if self._pending else self._last_pushed + 1
        if frames and frames[0] < oldest:
            raise ValueError(f"frame {frames[0]} is already final")
        if frames:
            tr = Track(self._next_id, follows=False)
            self._next_id += 1
            for t, box, score in zip(frames, boxes, scores, strict=True):
                tr.add(t, box, score)
            self._tracks.append(tr)

    def look_back_frames(self, t: int) -> range:
        """The frames before t, newest first, whose boxes a detection could still change
        (pending, and within `lead` of t)."""
        oldest = max(self._pending[0] if self._pending else t, t - self.lead)
        return range(t - 1, oldest - 1, -1)

    def release(self) -> list[FrameBoxes]:
        """The second half of `push`: the frames that are now final, in order."""
        out = []
        while self._pending and self._pending[0] <= self._last_pushed - self.lead:
            out.append(self._finalise(self._pending.popleft()))
        return out

    def flush(self) -> list[FrameBoxes]:
        """Finalise every pending frame (end of the video)."""
        out = [self._finalise(t) for t in self._pending]
        self._pending.clear()
        return out
