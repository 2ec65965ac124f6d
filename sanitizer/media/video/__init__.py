"""Video: redact every face in every frame (PyAV decode → scan → track → redact → encode).

Where things are:

    pipeline.py   `sanitize`: the decode / redact / encode threads, muxing, audio, errors
    stages.py     the threads' plumbing: bounded queues, stop, stall and stuck detection
    scan.py       scan scheduling: which parts of which frame are looked at, at what
                  resolution (the coverage guarantee is stated there and in README.md)
    detector.py   the small detector interface scanning needs (VideoDetector) + adapters
    yuv.py        redaction in the decoded YUV planes, steady masks, native-resolution crops
    marking.py    redacted regions marked for the encoder (x264 spends fewer bits there)
    geometry.py   display rotation; boxes between the stored and the upright frame
    ../tracking.py  temporal coverage: faces covered between and around their detections
"""

from sanitizer.media.video.detector import (
    CenterFaceLooks,
    VideoDetector,
    WholeImageLooks,
    video_detector,
)
from sanitizer.media.video.geometry import rotation_turns, stored_to_upright, upright_to_stored
from sanitizer.media.video.marking import RegionMarker
from sanitizer.media.video.pipeline import (
    EXTENSIONS,
    MUXERS,
    OnDetections,
    VideoOutcome,
    sanitize,
)
from sanitizer.media.video.scan import ScanPlan
from sanitizer.media.video.yuv import MASK_GRID, SteadyMasks, redact_yuv420p

__all__ = [
    "EXTENSIONS",
    "MASK_GRID",
    "MUXERS",
    "CenterFaceLooks",
    "OnDetections",
    "RegionMarker",
    "ScanPlan",
    "SteadyMasks",
    "VideoDetector",
    "VideoOutcome",
    "WholeImageLooks",
    "redact_yuv420p",
    "rotation_turns",
    "sanitize",
    "stored_to_upright",
    "upright_to_stored",
    "video_detector",
]
