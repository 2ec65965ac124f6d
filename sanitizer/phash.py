"""Perceptual hashes of source images and video keyframes, for `sanitizer audit find --like`.

A data subject sends in a photo of themselves; the dataset may hold a re-encoded, resized
copy of it. The 64-bit DCT hash (pHash) below survives that: it keeps only the signs of the
lowest 8x8 spatial frequencies of a 32x32 grey thumbnail (is each coarse brightness pattern
above or below the median), so near-copies are a few bits apart and different pictures about
32. Those 64 bits describe the picture's coarsest layout; no face, let alone a person, can be
reconstructed or recognised from them.

Hashes are 16 hex digits; a file's `phash` audit value is one hash (image) or several
separated by spaces (video keyframes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

HASH_SIDE = 32  # grey thumbnail the DCT runs on
LOW = 8  # the LOW x LOW lowest frequencies make the 64 bits
VIDEO_KEYFRAMES = 6  # frames hashed per video, spread over its duration
# bits; copies resized to 0.3-0.6x and re-encoded at JPEG q40-60 were at most 6 bits from their
# source, other photos at least 10 (BENCHMARKS.md "Finding a photo", benchmarks/phash_like.py)
DEFAULT_MAX_DISTANCE = 8


def of_array(rgb: np.ndarray) -> str:
    """pHash of an RGB (or grey) uint8 image as 16 hex digits."""
    import cv2  # here: process.py imports this module on the driver, which decodes nothing

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:  # e.g. 16-bit PNG
        arr = (arr.astype(np.float32) * (255.0 / max(1, int(arr.max())))).astype(np.uint8)
    # every k-th pixel of a big image first (a 12 MP photo: 85 -> ~2 ms); the area resize
    # below still averages >= 8x8 of those per thumbnail pixel
    step = max(1, min(arr.shape[:2]) // (HASH_SIDE * 8))
    arr = arr[::step, ::step]
    grey = cv2.cvtColor(arr[:, :, :3], cv2.COLOR_RGB2GRAY) if arr.ndim == 3 else arr
    small = cv2.resize(grey, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
    freq = cv2.dct(small.astype(np.float32))[:LOW, :LOW].flatten()
    bits = freq > np.median(freq[1:])  # the DC term (overall brightness) is left out
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def of_image_bytes(data: bytes) -> str:
    """pHash of an encoded image, decoded as `run` decodes sources (orientation applied)."""
    from sanitizer.media import image

    return of_array(image.to_rgb8(image.decode(data).frames[0]))


def distance(a: str, b: str) -> int:
    """Hamming distance in bits between two 16-hex-digit hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def nearest(query: str, recorded: str, default: int) -> int:
    """Smallest distance between `query` and the hashes of one audit `phash` value
    (`default` when it holds none)."""
    hashes = recorded.split() if recorded else []
    return min((distance(query, h) for h in hashes), default=default)


class HashingDetector:
    """Wraps a detector and hashes the first image it is asked to scan: the decoded, upright
    source (frame 0), so an image's hash costs no second decode."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.hash = ""

    def detect(self, rgb: np.ndarray):
        if not self.hash:
            self.hash = of_array(rgb)
        return self.detector.detect(rgb)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.detector, name)


def of_video(path: str, n: int = VIDEO_KEYFRAMES) -> str:
    """Hashes of up to `n` keyframes spread over a video file ("" if it cannot be read:
    the hash helps find a file, it never decides whether the file is published)."""
    import av

    hashes: list[str] = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return ""
            stream = container.streams.video[0]
            stream.codec_context.skip_frame = "NONKEY"  # decode keyframes only
            duration = float(container.duration or 0) / av.time_base
            for i in range(n):
                if duration > 0:
                    container.seek(int(duration * i / n * av.time_base), backward=True)
                elif i:
                    break
                for frame in container.decode(stream):
                    rgb = frame.to_ndarray(format="rgb24")
                    turns = int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
                    h = of_array(np.rot90(rgb, turns) if turns else rgb)  # upright, as a photo
                    if h not in hashes:
                        hashes.append(h)
                    break
    except (av.error.FFmpegError, OSError, ValueError):
        return " ".join(hashes)
    return " ".join(hashes)
