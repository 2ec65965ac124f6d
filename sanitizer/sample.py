"""A small built-in sample for `sanitizer demo`: public-domain photos shipped in scikit-image."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from sanitizer.errors import StorageError


def write_samples(folder: Path) -> list[Path]:
    """Write sample media (no network needed) and return the paths."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        astronaut = data.astronaut()  # Eileen Collins, NASA, public domain
        camera = data.camera()  # "cameraman", public domain
        cat = data.chelsea()  # no face: stays untouched
        for name, arr, kw in (
            ("photos/astronaut.jpg", astronaut, {"quality": 92}),
            ("photos/cameraman.png", camera, {}),
            ("photos/no_face_cat.jpg", cat, {"quality": 92}),
        ):
            p = folder / name
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p, **kw)
            written.append(p)
        # a phone-style photo: rotated pixels + EXIF orientation 6 + a GPS tag to be stripped
        p = folder / "photos/phone_rotated_with_gps.jpg"
        rotated = Image.fromarray(np.rot90(astronaut, 1))
        exif = Image.Exif()
        exif[0x0112] = 6
        exif[0x010F] = "PhoneMaker"
        exif[0x0110] = "Model X"
        gps = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
        exif[0x8825] = gps
        rotated.save(p, quality=92, exif=exif)
        written.append(p)
        p = folder / "notes.txt"
        p.write_text("not media: listed in the audit as skipped, never copied\n")
        written.append(p)
        p = folder / "clips/astronaut_pan.mp4"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_sample_clip(astronaut, p)
        written.append(p)
    except (OSError, av.error.FFmpegError) as exc:
        raise StorageError(f"cannot write samples to {folder}: {exc}") from None
    return written


def write_sample_clip(image: np.ndarray, path: Path, seconds: float = 2.0, fps: int = 25) -> None:
    """A short H.264 + AAC clip panning and zooming over `image` (a 440 Hz tone as audio), so
    the demo shows a face moving across frames and the audio stream being kept."""
    h, w = image.shape[:2]
    size = 320
    n = int(seconds * fps)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        audio.layout = "mono"
        for i in range(n):
            crop = int(w * (0.9 - 0.3 * i / n))  # zoom in
            x = int((w - crop) * i / n)
            y = int((h - crop) * 0.2)
            frame = cv2.resize(
                np.ascontiguousarray(image[y : y + crop, x : x + crop]), (size, size)
            )
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        t = np.arange(int(seconds * 44100)) / 44100
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = tone[None, start : start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = 44100
            frame.pts = start
            for packet in audio.encode(frame):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
