"""How well `audit find --like` separates near-copies from other photos: for every photo of a
folder, the pHash distance between it and a resized, re-encoded copy of it (what a data subject
sends in), and its smallest distance to any other photo of the folder.

    python benchmarks/phash_like.py /work/shared/data/images [--scale 0.6] [--quality 60]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sanitizer import phash
from sanitizer.errors import SanitizerError

EXTS = {".jpg", ".jpeg", ".png", ".webp"}


def near_copy(data: bytes, scale: float, quality: int) -> bytes:
    from PIL import ImageOps

    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")  # as sent: upright
    im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--scale", type=float, default=0.6)
    ap.add_argument("--quality", type=int, default=60)
    args = ap.parse_args()
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in EXTS)
    hashes, copies = {}, {}
    for p in paths:
        data = p.read_bytes()
        try:
            hashes[p] = phash.of_image_bytes(data)
            copies[p] = phash.of_image_bytes(near_copy(data, args.scale, args.quality))
        except (SanitizerError, OSError):
            continue
    same = np.array([phash.distance(copies[p], hashes[p]) for p in hashes])
    other = np.array(
        [min(phash.distance(copies[p], hashes[q]) for q in hashes if q != p) for p in hashes]
    )
    d = phash.DEFAULT_MAX_DISTANCE
    print(
        f"{len(hashes)} photos under {args.folder}; copies at {args.scale:g}x, JPEG q{args.quality}"
    )
    print(
        f"copy -> its source:        max {same.max()}, p95 {np.percentile(same, 95):.0f}, median {np.median(same):.0f} bits"
    )
    print(
        f"copy -> nearest other one: min {other.min()}, p5 {np.percentile(other, 5):.0f}, median {np.median(other):.0f} bits"
    )
    print(
        f"at --max-distance {d}: source found {int((same <= d).sum())}/{len(same)}, "
        f"copies matching another photo too {int((other <= d).sum())}/{len(other)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
