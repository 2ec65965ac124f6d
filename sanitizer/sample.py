"""A small built-in sample for `sanitizer demo`: public-domain photos shipped in scikit-image."""

from __future__ import annotations

from pathlib import Path

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
        try:
            from sanitizer.media.video import write_sample_clip
        except ImportError:
            write_sample_clip = None
        if write_sample_clip is not None:
            p = folder / "clips/astronaut_pan.mp4"
            p.parent.mkdir(parents=True, exist_ok=True)
            write_sample_clip(astronaut, p)
            written.append(p)
    except OSError as exc:
        raise StorageError(f"cannot write samples to {folder}: {exc}") from None
    return written
