"""The classic OpenCV Haar-cascade face model (Viola-Jones), as in OpenCV's tutorial. It has no
scores: every box scores 1, so the scan policy's thresholds keep them all."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from sanitizer.errors import DetectorError
from sanitizer.records import Detections

CASCADE = "haarcascade_frontalface_default.xml"


@cache
def _cascade_path() -> Path:
    data = getattr(cv2, "data", None)
    if data is None or not hasattr(cv2, "CascadeClassifier"):
        raise DetectorError(
            f"OpenCV {cv2.__version__} has no Haar cascades (removed in 5.0); install opencv-python<5"
        )
    return Path(data.haarcascades) / CASCADE


class HaarModel:
    name = "haar"
    precision = ""

    def __init__(self, scale_factor: float, min_neighbors: int, min_size: int) -> None:
        path = _cascade_path()
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise DetectorError(f"cannot load Haar cascade {path}")
        self.model_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    @classmethod
    def from_config(cls, cfg) -> HaarModel:
        return cls(cfg.haar_scale_factor, cfg.haar_min_neighbors, max(cfg.min_face, 16))

    def infer(self, image: np.ndarray, threshold: float) -> Detections:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        gray = cv2.equalizeHist(gray)
        found = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        if len(found) == 0:
            return Detections.empty()
        xywh = np.asarray(found, np.float32)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        return Detections(boxes, np.ones(len(boxes), np.float32))
