"""Face detectors: a one-method protocol and a registry of names.

    detector = get_detector(cfg.detect)      # by name: "centerface" (default) | "haar"
    faces = detector.detect(rgb_uint8_image)  # -> Detections (may be empty, never None)

Images given to detectors are HxWx3 uint8 RGB arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from sanitizer.errors import ConfigError
from sanitizer.records import Detections


@runtime_checkable
class Detector(Protocol):
    name: str
    model_sha256: str

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in an HxWx3 uint8 RGB image, boxes in its pixel coordinates."""
        ...


def _centerface(cfg) -> Detector:
    from sanitizer.detect.centerface import CenterFaceDetector

    return CenterFaceDetector.from_config(cfg)


def _haar(cfg) -> Detector:
    from sanitizer.detect.haar import HaarDetector

    return HaarDetector.from_config(cfg)


REGISTRY: dict[str, Callable[..., Detector]] = {"centerface": _centerface, "haar": _haar}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the audit records of a detector: its name and model hash."""

    name: str
    model_sha256: str


def describe(cfg) -> ModelInfo:
    """The name and model hash of the detector `get_detector(cfg)` would build. CenterFace is
    described without loading its network (a run's driver needs no inference session: ~0.4 s
    of CPU it would take from the first worker's start); other detectors are built."""
    if cfg.detector == "centerface":
        from sanitizer.detect.centerface import describe as centerface

        return ModelInfo(*centerface(cfg))
    det = get_detector(cfg)
    return ModelInfo(det.name, det.model_sha256)


def get_detector(cfg) -> Detector:
    """Build the detector named by `cfg.detector` (a sanitizer.config.DetectConfig)."""
    try:
        factory = REGISTRY[cfg.detector]
    except KeyError:
        raise ConfigError(
            f"unknown detector {cfg.detector!r} (known: {', '.join(REGISTRY)})"
        ) from None
    return factory(cfg)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        ovr = inter / np.maximum(1e-9, areas[i] + areas[rest] - inter)
        order = rest[ovr < iou]
    return np.asarray(keep, np.int64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n,4) and (m,4) x1,y1,x2,y2 boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.maximum(
        0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    )
    h = np.maximum(
        0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    )
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(1e-9, area_a[:, None] + area_b[None, :] - inter)


__all__ = [
    "Detector",
    "Detections",
    "ModelInfo",
    "REGISTRY",
    "describe",
    "get_detector",
    "nms",
    "iou_matrix",
]
