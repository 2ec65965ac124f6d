#!/usr/bin/env python3
"""Where a video's CPU time goes: `video.sanitize` in-process, CPU per thread per frame.

    python benchmarks/video_threads.py CLIP [--method solid] [--set video.redacted_qoffset=0]
                                            [--null-detector] [--reps 2]

Runs the pipeline `--reps` times on CLIP (the first run also warms up) and prints, per run,
wall time, fps, process CPU per frame and output size, then CPU ms per frame by thread, read
from /proc (Linux): `sanitizer-decode/-redact/-encode` are the pipeline's stages, `MainThread`
runs detection and tracking, threads named `python` are x264's (it names none of its own),
`av:h264:df` the H.264 decoder's. `--null-detector` gives the decode+encode-only pipeline of
benchmarks/video.py (b). Used for the in-process figures of BENCHMARKS.md (sessions 4 and 5).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import video as video_bench  # noqa: E402  (benchmarks/video.py)

from sanitizer.config import Config, from_dict  # noqa: E402
from sanitizer.execute import _detector  # noqa: E402
from sanitizer.media import video  # noqa: E402
from sanitizer.redact import params_from_config  # noqa: E402


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by native thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_name(tid: str, python_names: dict[str, str]) -> str:
    if tid in python_names:
        return python_names[tid]
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def profile_once(
    clip: str, out: str, det, params, vcfg
) -> tuple[float, float, int, dict[str, float]]:
    """One run; the stages' threads end with it, so they are sampled while it runs."""
    seen: dict[str, tuple[str, float]] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            names = {str(t.native_id): t.name for t in threading.enumerate()}
            for tid, cpu in thread_cpu().items():
                seen[tid] = (seen[tid][0] if tid in seen else thread_name(tid, names), cpu)
            time.sleep(0.05)

    before = thread_cpu()
    sampler = threading.Thread(target=sample, name="profiler")
    sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    res = video.sanitize(clip, out, det, params, vcfg, container="mp4")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    done.set()
    sampler.join()
    by_name: dict[str, float] = {}
    for tid, (name, total) in seen.items():
        if name != "profiler":
            by_name[name] = by_name.get(name, 0.0) + total - before.get(tid, 0.0)
    return wall, cpu, res.frames, by_name


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("clip")
    ap.add_argument("--method", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.OPTION=VALUE")
    ap.add_argument("--null-detector", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    d = Config().to_dict()
    for section, values in video_bench.overrides(a.set).items():
        d[section].update(values)
    if a.method:
        d["redact"]["method"] = a.method
    cfg = from_dict(d)
    det = _detector(d["detect"])
    if a.null_detector:
        det = video_bench.NullDetector()
    params = params_from_config(cfg.redact)
    with tempfile.TemporaryDirectory(prefix="sanitizer-bench-") as tmp:
        out = os.path.join(tmp, "out.mp4")
        for rep in range(a.reps):
            wall, cpu, n, by_name = profile_once(a.clip, out, det, params, cfg.video)
            print(
                f"run {rep}: {wall:.2f} s, {n / wall:.1f} fps, CPU {cpu / n * 1000:.1f} ms/frame, "
                f"output {os.path.getsize(out) / 1e6:.2f} MB"
            )
            print(
                "   ms/frame by thread:",
                "  ".join(
                    f"{k}={v / n * 1000:.1f}"
                    for k, v in sorted(by_name.items(), key=lambda x: -x[1])
                    if v / n > 1e-5
                ),
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
