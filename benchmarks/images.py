#!/usr/bin/env python3
"""Photo throughput of the whole `sanitizer run` job, and of deface on the same folder.

    python benchmarks/images.py [--folder DIR] [--deface PATH] [--method solid] [--workers N]

Times the real CLI end to end (wall clock, Dask startup included) and reports images/s,
per-file compute from the audit, and — when a `deface` executable is found (option
--deface, $DEFACE, /work/deface-venv/bin/deface or PATH) — deface 1.5 on a copy of the same
folder in the same run, with the ratio. With ground truth (../shared/data/faces_dev.json)
and ../shared/tools/coverage.py present, coverage of both outputs is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def find_deface(explicit: str | None) -> str | None:
    for cand in (
        explicit,
        os.environ.get("DEFACE"),
        "/work/deface-venv/bin/deface",
        shutil.which("deface"),
    ):
        if cand and Path(cand).is_file():
            return cand
    return None


def coverage(out_dir: Path, tmp: Path, name: str, gt: Path, orig: Path) -> dict | None:
    tool = SHARED / "tools" / "coverage.py"
    if not (tool.is_file() and gt.is_file()):
        return None
    js = tmp / f"{name}-coverage.json"
    subprocess.run(
        [
            sys.executable,
            str(tool),
            "--gt",
            str(gt),
            "--orig",
            str(orig),
            "--out",
            str(out_dir),
            "--json",
            str(js),
        ],
        check=True,
        capture_output=True,
    )
    res = json.loads(js.read_text())
    return {
        "ge16": res["rows"]["all|>=16"]["recall"],
        "all": res["rows"]["all|all"]["recall"],
        "negatives_masked": res["negatives_masked_share"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--folder", type=Path, default=SHARED / "data" / "images")
    ap.add_argument("--deface", default=None, help="path of a deface executable (separate venv)")
    ap.add_argument("--method", default="solid")
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    ap.add_argument("--config", default=None)
    ap.add_argument(
        "--gt",
        type=Path,
        default=SHARED / "data" / "faces_dev.json",
        help="ground truth of the photos under --folder (e.g. a half from benchmarks/halves.py)",
    )
    ap.add_argument(
        "--orig",
        type=Path,
        default=None,
        help="folder the ground truth's paths are relative to (default: --folder's parent)",
    )
    a = ap.parse_args()
    orig = a.orig or a.folder.parent
    if not a.folder.is_dir():
        print(f"no folder {a.folder}; pass --folder", file=sys.stderr)
        return 2
    photos = sorted(p for p in a.folder.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    print(f"{len(photos)} photos under {a.folder}, {os.cpu_count()} cores")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmpd:
        tmp = Path(tmpd)
        # layout the coverage tool understands: <out>/images/<set>/<file>
        out = tmp / "sanitizer" / a.folder.name
        cmd = [
            sys.executable,
            "-m",
            "sanitizer",
            "run",
            str(a.folder),
            str(out),
            "--method",
            a.method,
        ]
        if a.workers:
            cmd += ["--workers", str(a.workers)]
        if a.config:
            cmd += ["--config", a.config]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            print(proc.stderr, file=sys.stderr)
            return 1
        import pandas as pd

        files = pd.read_parquet(out / "_audit" / "files")
        ok = files[files.kind == "image"]
        compute = ok.duration_ms.sum() / 1000
        rows.append(
            dict(
                tool="sanitizer",
                images=len(ok),
                wall_s=wall,
                images_per_s=len(ok) / wall,
                compute_s_per_image=compute / max(1, len(ok)),
                coverage=coverage(out.parent, tmp, "sanitizer", a.gt, orig),
            )
        )
        deface = find_deface(a.deface)
        if deface:
            copy = tmp / "deface" / a.folder.name
            shutil.copytree(a.folder, copy)
            inputs = sorted(str(p) for p in copy.rglob("*") if p.suffix.lower() in IMAGE_EXT)
            mode = "solid" if a.method == "solid" else "blur"
            t0 = time.perf_counter()
            subprocess.run(
                [deface, "--replacewith", mode, *inputs], capture_output=True, check=True
            )
            dwall = time.perf_counter() - t0
            # deface writes <stem>_anonymized<ext> next to each input: move them in place
            for p in inputs:
                anon = Path(p).with_name(Path(p).stem + "_anonymized" + Path(p).suffix)
                if anon.exists():
                    os.replace(anon, p)
            rows.append(
                dict(
                    tool="deface 1.5",
                    images=len(inputs),
                    wall_s=dwall,
                    images_per_s=len(inputs) / dwall,
                    compute_s_per_image=dwall / max(1, len(inputs)),
                    coverage=coverage(copy.parent, tmp, "deface", a.gt, orig),
                )
            )
        else:
            print("deface not found: pass --deface PATH to compare (install it in a separate venv)")
    print()
    print(
        "| tool | images | wall s | images/s | s/image (compute) | cov >=16 px | cov all | face-free masked |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["coverage"] or {}
        print(
            f"| {r['tool']} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} | "
            f"{r['compute_s_per_image']:.3f} | {c.get('ge16', float('nan')):.3f} | {c.get('all', float('nan')):.3f} | "
            f"{100 * c.get('negatives_masked', float('nan')):.3f}% |"
        )
    if len(rows) == 2:
        print(
            f"\nsanitizer / deface images/s ratio: {rows[0]['images_per_s'] / rows[1]['images_per_s']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
