#!/usr/bin/env python3
"""Video throughput (and coverage) of sanitizer against its physical limit and deface.

On one clip, in one run:
  (a) the whole `sanitizer run SRC DST` on a folder holding only that clip (Dask start-up,
      manifest, audit included), plus the per-file time `video.sanitize` reports inside it;
  (b) decode + encode only: the same PyAV pipeline and settings (threaded decode, same codec,
      preset, CRF, audio copy) with a null detector (no model runs; the scan's crops are
      still cut and converted);
  (c) deface --keep-audio, when a deface executable is given (--deface or $DEFACE).

    python benchmarks/video.py CLIP [--deface /work/deface-venv/bin/deface] [--method solid]
                                    [--set video.native_pixels=600000 ...] [--gt CLIP.gt.json]

With --gt (a pan_video.py ground-truth file), both tools run in solid mode (deface with
`--replacewith solid --boxes`, as in ../shared/tools/README.md) and the share of face-frames
each one covers is scored with pan_video.py (--pan-tool), per face-size bucket (< 16, 16-32,
32-64, >= 64 px, all). Clips are copied to a temporary folder, never into the repository.
Prints fps, ratios and peak memory (the high-water RSS of the largest process of the run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitizer.config import Config, from_dict  # noqa: E402
from sanitizer.media import video  # noqa: E402
from sanitizer.records import Detections  # noqa: E402
from sanitizer.redact import params_from_config  # noqa: E402


class NullDetector:
    """A VideoDetector that finds nothing (decode + scan plumbing + encode, no model)."""

    name = "null"
    model_sha256 = ""
    parallel_safe = False

    def look(self, image):
        return Detections.empty()

    def finish(self, dets):
        return dets

    def detect(self, image):
        return Detections.empty()


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        n = c.streams.video[0].frames
        if n:
            return n
        return sum(1 for _ in c.demux(video=0) if _.size)


def overrides(pairs: list[str]) -> dict:
    out: dict = {}
    for p in pairs:
        key, _, raw = p.partition("=")
        section, _, name = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


class PeakRSS:
    """Peak RSS (MiB) of the largest process below this one while the block runs: each
    descendant's high-water mark (VmHWM) polled every 0.2 s. getrusage's RUSAGE_CHILDREN is
    not used: its maximum carries the largest process an ancestor shell ran before."""

    def __init__(self) -> None:
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            for p in me.children(recursive=True):
                try:
                    with open(f"/proc/{p.pid}/status") as f:
                        hwm = next(ln for ln in f if ln.startswith("VmHWM:"))
                    self.mb = max(self.mb, int(hwm.split()[1]) / 1024)
                except (OSError, StopIteration, ValueError):
                    pass  # gone meanwhile
            if self._stop.wait(0.2):
                return


def run_sanitizer(clip: Path, work: Path, cfg_overrides: dict, method: str, workers: int) -> dict:
    import yaml

    src, dst = work / "src", work / "dst"
    src.mkdir()
    shutil.copy(clip, src / clip.name)
    cfg_file = work / "bench.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg_overrides or {}))
    cmd = [
        sys.executable,
        "-m",
        "sanitizer",
        "run",
        str(src),
        str(dst),
        "--method",
        method,
        "--workers",
        str(workers),
        "--config",
        str(cfg_file),
    ]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with PeakRSS() as peak:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = _cpu(ru0, ru1)
    if r.returncode != 0:
        raise SystemExit(f"sanitizer run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    import pyarrow.parquet as pq

    files = pq.read_table(dst / "_audit" / "files").to_pandas()
    row = files[files.key == clip.name].iloc[0]
    if row.status != "ok":
        raise SystemExit(f"sanitizer failed on the clip: {row.error}")
    return dict(
        wall=wall,
        file_s=row.duration_ms / 1000,
        out=dst / clip.name,
        frames=int(row.frames),
        rss_mb=peak.mb,
        cores=cpu / wall,
        cpu=cpu,
    )


def run_decode_encode(clip: Path, work: Path, cfg: Config) -> dict:
    out = work / ("dec_enc" + clip.suffix)
    vcfg = cfg.video
    fmt = {
        ".mp4": "mp4",
        ".m4v": "mp4",
        ".mov": "mov",
        ".mkv": "mkv",
        ".webm": "webm",
        ".avi": "avi",
    }
    t = time.perf_counter()
    res = video.sanitize(
        str(clip),
        str(out),
        NullDetector(),
        params_from_config(cfg.redact),
        vcfg,
        container=fmt.get(clip.suffix.lower(), "mp4"),
    )
    return dict(wall=time.perf_counter() - t, frames=res.frames)


def run_deface(deface: str, clip: Path, work: Path, solid: bool) -> dict:
    out = work / ("deface" + clip.suffix)
    cmd = [deface, str(clip), "--keep-audio", "-o", str(out)]
    if solid:
        cmd += ["--replacewith", "solid", "--boxes"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0 or not out.exists():
        raise SystemExit(f"deface failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dict(wall=wall, out=out, cpu=_cpu(ru0, ru1))


def _cpu(ru0, ru1) -> float:
    """CPU seconds (user + system) of the children reaped between two getrusage calls."""
    return (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)


BUCKETS = ["<16", "16-32", "32-64", ">=64", ">=16", "all"]


def score(pan_tool: str, gt: Path, redacted: Path) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, pan_tool, "score", str(gt), str(redacted)], capture_output=True, text=True
    )
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(\S+)\s+(\d+)/\s*(\d+) face-frames protected\s+([\d.]+)", line.strip())
        if m:
            out[m.group(1)] = float(m.group(4))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("clip", type=Path)
    ap.add_argument(
        "--deface", default=os.environ.get("DEFACE", ""), help="deface executable (or $DEFACE)"
    )
    ap.add_argument(
        "--method", default="gaussian", help="redaction method for (a) (solid with --gt)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.OPTION=VALUE",
        help="config override for sanitizer, e.g. video.native_pixels=600000 (repeatable)",
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--skip-baseline", action="store_true", help="skip (b), the decode + encode baseline"
    )
    ap.add_argument("--gt", type=Path, help="pan_video.py ground truth: also score coverage")
    ap.add_argument("--pan-tool", default=str(REPO.parent / "shared" / "tools" / "pan_video.py"))
    ap.add_argument("--json", type=Path, help="append the figures as one JSON line to this file")
    a = ap.parse_args()

    clip = a.clip.resolve()
    ov = overrides(a.set)
    cfg = from_dict(ov, Config())
    method = "solid" if a.gt else a.method
    frames = count_frames(clip)
    with av.open(str(clip)) as c:
        v = c.streams.video[0]
        size = f"{v.codec_context.width}x{v.codec_context.height}"
    print(f"clip {clip.name}: {size}, {frames} frames; video config {cfg.video}")
    result: dict = dict(clip=clip.name, size=size, frames=frames, overrides=ov, method=method)
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        work = Path(tmp)
        (work / "a").mkdir()
        (work / "b").mkdir()
        (work / "c").mkdir()
        s = run_sanitizer(clip, work / "a", ov, method, a.workers)
        result.update(
            run_fps=frames / s["wall"],
            file_fps=frames / s["file_s"],
            peak_rss_mb=s["rss_mb"],
            cores_busy=s["cores"],
        )
        print(
            f"(a) sanitizer run : {s['wall']:6.1f} s  {frames / s['wall']:6.1f} fps whole run, "
            f"{frames / s['file_s']:6.1f} fps per file (video.sanitize); peak RSS {s['rss_mb']:.0f} MB; "
            f"{s['cores']:.2f} cores busy on average"
        )
        if not a.skip_baseline:
            de = run_decode_encode(clip, work / "b", from_dict(ov, Config()))
            result.update(dec_enc_fps=frames / de["wall"])
            print(
                f"(b) decode+encode : {de['wall']:6.1f} s  {frames / de['wall']:6.1f} fps "
                f"(preset {cfg.video.preset}, crf {cfg.video.crf})"
            )
            print(
                f"    ratio run/(b) {s['wall'] and de['wall'] / s['wall']:.2f}, per-file/(b) {de['wall'] / s['file_s']:.2f}"
            )
            result.update(
                ratio_run_vs_dec_enc=de["wall"] / s["wall"],
                ratio_file_vs_dec_enc=de["wall"] / s["file_s"],
            )
        if a.deface:
            d = run_deface(a.deface, clip, work / "c", solid=bool(a.gt))
            result.update(
                deface_fps=frames / d["wall"],
                speedup_run_vs_deface=d["wall"] / s["wall"],
                speedup_file_vs_deface=d["wall"] / s["file_s"],
                sanitizer_cpu_s=s["cpu"],
                deface_cpu_s=d["cpu"],
                speedup_cpu_vs_deface=d["cpu"] / s["cpu"],
            )
            print(f"(c) deface        : {d['wall']:6.1f} s  {frames / d['wall']:6.1f} fps")
            print(
                f"    speed-up vs deface: {d['wall'] / s['wall']:.2f}x whole run, {d['wall'] / s['file_s']:.2f}x per file; "
                f"CPU time {s['cpu']:.0f} s vs {d['cpu']:.0f} s = {d['cpu'] / s['cpu']:.2f}x (the fair figure on a shared machine)"
            )
        else:
            print("(c) deface        : skipped (no --deface / $DEFACE)")
        if a.gt:
            ours = score(a.pan_tool, a.gt, s["out"])
            result["coverage_sanitizer"] = ours
            theirs = score(a.pan_tool, a.gt, d["out"]) if a.deface else {}
            result["coverage_deface"] = theirs
            print("face-frames protected (solid fill), by face size:")
            print(f"    {'bucket':8} {'sanitizer':>10} {'deface':>8}")
            for b in BUCKETS:
                if b in ours:
                    print(f"    {b:8} {ours[b]:10.3f} {theirs.get(b, float('nan')):8.3f}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
