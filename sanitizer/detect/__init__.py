"""Face detection: a scan policy over a face model.

    detector = get_detector(cfg.detect)      # by name: "centerface" (default) | "haar" | a plug-in
    faces = detector.detect(rgb_uint8_image)  # -> Detections (may be empty, never None)

Two layers:

- a **model** (the `Model` protocol, one method): `infer(image, threshold)` runs the network
  once on an image at its own size and returns every box scoring >= threshold. CenterFace on
  onnxruntime (centerface.py) and OpenCV's Haar cascade (haar.py) are models.
- the **scan policy** (policy.py, `ScanDetector`): which passes to run on an image (native
  size, upscaled, aspect-corrected, tiles, mirrored), per-pass thresholds, the second-opinion
  vote and NMS. Every policy option applies to every model.

Models are found by name in the `sanitizer.detectors` entry-point group (pyproject.toml): a
user's own model plugs in without forking, from any installed package declaring e.g.

    [project.entry-points."sanitizer.detectors"]
    mymodel = "mypackage.detector:build"     # build(cfg: DetectConfig) -> Model

Images given to detectors are HxWx3 uint8 RGB arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Protocol, runtime_checkable

import numpy as np

from sanitizer.errors import ConfigError, DetectorError
from sanitizer.records import Detections

ENTRY_POINTS = "sanitizer.detectors"


@runtime_checkable
class Model(Protocol):
    """A face model: what a plug-in implements (see the module docstring)."""

    name: str
    model_sha256: str  # hash of the weights actually run (the audit records it)

    def infer(self, image: np.ndarray, threshold: float) -> Detections:
        """One pass over an HxWx3 uint8 RGB image at its own size: boxes (x1, y1, x2, y2 in
        its pixels) scoring >= threshold, before NMS."""
        ...


@runtime_checkable
class Detector(Protocol):
    name: str
    model_sha256: str

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in an HxWx3 uint8 RGB image, boxes in its pixel coordinates."""
        ...


def _centerface(cfg) -> Model:
    from sanitizer.detect.centerface import CenterFaceModel

    return CenterFaceModel.from_config(cfg)


def _haar(cfg) -> Model:
    from sanitizer.detect.haar import HaarModel

    return HaarModel.from_config(cfg)


# The built-in models (also declared as entry points in pyproject.toml; listed here so that a
# source tree that was never pip-installed still finds them).
BUILTIN: dict[str, Callable[..., Model]] = {"centerface": _centerface, "haar": _haar}


def registry() -> dict[str, Callable[..., Model]]:
    """Every known model factory by name: the built-ins, then the entry points (a plug-in may
    not take a built-in's name)."""
    out = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINTS):
        if ep.name not in out:
            out[ep.name] = ep.load
    return out


def _factory(name: str) -> Callable[..., Model]:
    known = registry()
    if name not in known:
        raise ConfigError(f"unknown detector {name!r} (known: {', '.join(sorted(known))})")
    if name in BUILTIN:
        return BUILTIN[name]
    try:
        return known[name]()  # the entry point's target: build(cfg) -> Model
    except Exception as exc:  # a plug-in can fail to import in any way
        raise DetectorError(f"cannot load detector plug-in {name!r}: {exc}") from exc


def get_model(cfg) -> Model:
    """The model named by `cfg.detector` (a sanitizer.config.DetectConfig)."""
    model = _factory(cfg.detector)(cfg)
    if not isinstance(model, Model):
        raise DetectorError(
            f"detector plug-in {cfg.detector!r} returned {type(model).__name__}, which has no "
            "name, model_sha256 and infer(image, threshold)"
        )
    return model


def get_detector(cfg):
    """The detector `cfg` (a DetectConfig) describes: its scan policy over its model
    (a policy.ScanDetector: detect, infer, finish, threshold, name, model_sha256)."""
    from sanitizer.detect.policy import ScanDetector

    return ScanDetector(get_model(cfg), cfg)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the audit records of a detector: its name, model hash and precision."""

    name: str
    model_sha256: str
    precision: str = ""


def describe(cfg) -> ModelInfo:
    """The name, model hash and precision of the detector `get_detector(cfg)` would build.
    CenterFace is described without loading its network (a run's driver needs no inference
    session: ~0.4 s of CPU it would take from the first worker's start); other models are
    built."""
    if cfg.detector == "centerface":
        from sanitizer.detect.centerface import describe as centerface

        return ModelInfo(*centerface(cfg))
    model = get_model(cfg)
    return ModelInfo(model.name, model.model_sha256, getattr(model, "precision", ""))


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
    "ENTRY_POINTS",
    "Detector",
    "Detections",
    "Model",
    "ModelInfo",
    "BUILTIN",
    "describe",
    "get_detector",
    "get_model",
    "registry",
    "nms",
    "iou_matrix",
]
