"""The two halves of the labelled photos in ../shared/data: tune on one, report on the other.

A photo's half is fixed by its path alone (first byte of the sha256 of its `file` entry: even ->
"tune", odd -> "report"), so every benchmark, clip builder and profile search agrees on it
without a list to keep in sync. Figures measured on the tune half overstate what users see;
BENCHMARKS.md says which half each figure comes from.

    python benchmarks/halves.py ../shared/data/faces_dev.json OUTDIR
        -> OUTDIR/faces_tune.json, OUTDIR/faces_report.json (same format, same `file` paths,
           so `sanitizer eval`, ../shared/tools/coverage.py and pan_video.py take them with
           the original root)
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

HALVES = ("tune", "report")


def half_of(file: str) -> str:
    """'tune' or 'report' for a photo's `file` path as written in faces_dev.json."""
    return HALVES[hashlib.sha256(file.encode()).digest()[0] % 2]


def split(gt: dict) -> dict[str, dict]:
    """faces_dev.json's content split into {'tune': {...}, 'report': {...}} of the same format."""
    out = {h: {"meta": {**gt.get("meta", {}), "half": h}, "images": []} for h in HALVES}
    for im in gt["images"]:
        out[half_of(im["file"])]["images"].append(im)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("gt", help="faces_dev.json")
    ap.add_argument("outdir")
    a = ap.parse_args()
    out = Path(a.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for h, data in split(json.loads(Path(a.gt).read_text())).items():
        path = out / f"faces_{h}.json"
        path.write_text(json.dumps(data))
        faces = sum(len(im["boxes"]) for im in data["images"])
        print(f"{path}: {len(data['images'])} photos, {faces} faces")


if __name__ == "__main__":
    main()
