"""Redacting a video frame's boxes: every box painted against only the covering ones.

    python benchmarks/redaction.py CLIP [--frames 12] [--runs 3]

Runs the product's video pipeline on CLIP (in this process, the configured detector, solid
fill) and keeps the first --frames frames that reach the redaction stage with the boxes the
tracker gave them (`pipeline.redact_yuv420p` is wrapped to see them; the output is thrown
away). Then, for each redaction method, times on copies of those frames: every box painted in
the three planes (the stage's `redact_yuv420p` with `redact.covering` swapped for "keep
every box", what it did before) and the stage as it is (covering boxes only); best of --runs
per frame, ms per frame. Prints the boxes per frame and how many cover the rest. A crowd pan
(e.g. a `pan_video.py --grid 8x8` clip) has hundreds of boxes per frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def capture(clip: str, frames: int) -> list[tuple[list[np.ndarray], int, int, np.ndarray]]:
    from sanitizer.config import Config
    from sanitizer.detect import get_detector
    from sanitizer.media.video import pipeline
    from sanitizer.redact import params_from_config

    cfg = Config()
    cfg.redact.method = "solid"
    kept = []
    real = pipeline.redact_yuv420p

    def seen(frame, boxes, params):
        if len(kept) < frames and len(boxes):
            planes = [np.array(p, copy=True) for p in frame.planes]
            kept.append((planes, frame.width, frame.height, np.array(boxes, copy=True)))
        return real(frame, boxes, params)

    pipeline.redact_yuv420p = seen
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pipeline.sanitize(
                clip,
                str(Path(tmp) / "out.mp4"),
                get_detector(cfg.detect),
                params_from_config(cfg.redact),
                cfg.video,
            )
    finally:
        pipeline.redact_yuv420p = real
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import av

    from sanitizer.media.video import yuv
    from sanitizer.redact import RedactParams, covering

    kept = capture(args.clip, args.frames)
    if not kept:
        sys.exit(f"{args.clip}: no frame with a face box")
    n_boxes = [len(b) for *_, b in kept]
    n_cover = [len(covering(b, RedactParams(), w, h, 16)) for _, w, h, b in kept]
    print(
        f"{Path(args.clip).name}: {len(kept)} frames, boxes per frame {min(n_boxes)}–"
        f"{max(n_boxes)}, covering ones {min(n_cover)}–{max(n_cover)}"
    )

    def timed(planes, w, h, boxes, params) -> float:
        best = float("inf")
        for _ in range(args.runs):
            frame = av.VideoFrame(w, h, "yuv420p")
            for p, a in zip(frame.planes, planes, strict=True):
                np.frombuffer(p, np.uint8)[:] = a.reshape(-1)
            t = time.perf_counter()
            yuv.redact_yuv420p(frame, boxes, params)
            best = min(best, time.perf_counter() - t)
        return best

    def ms_per_frame(params) -> float:
        return sum(timed(*k, params) for k in kept) / len(kept) * 1000

    for method in ("gaussian", "pixelate", "solid"):
        params = RedactParams(method=method)
        yuv.covering = lambda boxes, *_: boxes  # the stage as it was: every box painted
        try:
            every = ms_per_frame(params)
        finally:
            yuv.covering = covering
        cover = ms_per_frame(params)
        print(f"  {method:9s} every box {every:6.1f} ms/frame, covering boxes {cover:6.1f}")


if __name__ == "__main__":
    main()
