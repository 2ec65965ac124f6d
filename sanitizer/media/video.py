"""Video: PyAV decode → detect → track → redact → H.264 encode, audio copied. (stub)"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sanitizer.errors import MediaError
from sanitizer.records import Detections


@dataclass(slots=True)
class VideoOutcome:
    # one entry per frame with faces: (frame index, t_ms, boxes+scores, track ids, detected flags)
    detections: list[tuple[int, float, Detections, np.ndarray, np.ndarray]] = field(default_factory=list)
    frames: int = 0
    fps: float = 0.0
    duration_ms: float = 0.0
    audio_kept: bool = False
    dropped_packets: int = 0


def sanitize(src_path: str, out_path: str, detector, params, vcfg, container: str = "") -> VideoOutcome:
    raise MediaError("video support is not built yet")
