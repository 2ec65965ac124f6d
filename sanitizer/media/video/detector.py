"""The small detector interface video scanning needs, and the adapters that provide it.

A video frame is scanned in several *looks* (a downscaled whole frame, native-resolution
bands; see scan.py), whose boxes are merged and then cleaned once per frame:

    vdet = video_detector(get_detector(cfg.detect))
    parts = [vdet.look(image) for image in looks]     # raw boxes in each image's pixels
    faces = vdet.finish(merged)                        # minimum face size + NMS, once

`CenterFaceLooks` runs one raw CenterFace pass per look (`infer` at the detector's own
threshold) and its `finish` once per frame: the image path's extra passes (mirror, 2x) would
cost 2-3x per frame, and tracking supplies the temporal second opinion instead. Any other
detector (`WholeImageLooks`) runs its own `detect` per look, and boxes are only merged by NMS.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from sanitizer.records import Detections

MERGE_IOU = 0.3  # NMS overlap that merges boxes of overlapping looks (detectors without finish)


@runtime_checkable
class VideoDetector(Protocol):
    """What video scanning needs from a detector."""

    # True when looks may run on several threads at once (one inference session per thread)
    parallel_safe: bool

    def look(self, image: np.ndarray) -> Detections:
        """Raw faces in an HxWx3 uint8 RGB image, boxes in its pixels, before `finish`."""
        ...

    def finish(self, dets: Detections) -> Detections:
        """The frame's merged raw boxes (frame pixels) -> its final faces."""
        ...


class CenterFaceLooks:
    """CenterFace: relies only on `infer(image, threshold)` (one raw pass at the image's size),
    `finish(dets)` (minimum face size + NMS) and `threshold`."""

    parallel_safe = True  # CenterFace keeps one onnxruntime session per thread

    def __init__(self, detector) -> None:
        self.detector = detector

    @property
    def precision(self) -> str:
        """The precision the network runs ("int8", "fp32"; "" when it does not say)."""
        return getattr(self.detector, "precision", "")

    def look(self, image: np.ndarray) -> Detections:
        return self.detector.infer(image, self.detector.threshold)

    def finish(self, dets: Detections) -> Detections:
        return self.detector.finish(dets) if len(dets) else Detections.empty()


class WholeImageLooks:
    """Any detector with `detect(image) -> Detections` (e.g. Haar): its full method per look."""

    parallel_safe = False  # not known to be thread-safe

    def __init__(self, detector) -> None:
        self.detector = detector

    def look(self, image: np.ndarray) -> Detections:
        return self.detector.detect(image)

    def finish(self, dets: Detections) -> Detections:
        if not len(dets):
            return Detections.empty()
        from sanitizer.detect import nms

        return dets[nms(dets.boxes, dets.scores, MERGE_IOU)]


def video_detector(detector) -> VideoDetector:
    """The video interface of `detector`: itself if it already is one, CenterFaceLooks for
    CenterFace (`name == "centerface"`), WholeImageLooks for any other detector."""
    if isinstance(detector, VideoDetector):
        return detector
    if getattr(detector, "name", "") == "centerface":
        return CenterFaceLooks(detector)
    return WholeImageLooks(detector)
