"""Recall benchmark: redaction coverage and detection recall by face size, per profile, and
how face-like redacted faces still look to the detector (irreversibility).

    python benchmarks/recall.py                 # ../shared/data, all profiles + irreversibility
    python benchmarks/recall.py --limit 40 --skip-irreversibility

Prints Markdown tables (the "Recall" section of BENCHMARKS.md is pasted from them).
Coverage is `sanitizer.evaluate`'s, which agrees with `../shared/tools/coverage.py`.
Images/s is decode + detect + mask in one process with one inference thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PROFILES = {
    "default": None,
    "fast": REPO / "configs" / "fast.yaml",
    "strict": REPO / "configs" / "strict.yaml",
    "haar": "haar",
}


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def recall_tables(gt, limit: int | None) -> list[str]:
    from sanitizer import evaluate as ev
    from sanitizer.config import load

    lines = [
        "| profile | <16 | 16-32 | 32-64 | >=64 | >=16 | all | recall@.5 all | precision@.5 all | face-free masked | images/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, src in PROFILES.items():
        overrides = {"redact": {"method": "solid"}}
        if src == "haar":
            cfg = load(None, {**overrides, "detect": {"detector": "haar"}})
        else:
            cfg = load(src, overrides)
        rep = ev.evaluate(gt, str(DATA), cfg, limit=limit)
        cov = {r["bucket"]: r["coverage"] for r in rep.rows}
        allrow = rep.row("all")
        neg = rep.negatives_masked_share
        lines.append(
            f"| {name} | "
            + " | ".join(pct(cov[b]) for b in ev.ROWS)
            + f" | {pct(allrow['recall@0.5'])} | {pct(allrow['precision@0.5'])}"
            + f" | {'-' if neg is None else f'{100 * neg:.3f}%'} | {rep.images_per_s:.1f} |"
        )
        print(f"  {name}: done in {rep.seconds:.0f}s", file=sys.stderr)
    return lines


BIG = 32  # px: faces large enough to be recognisable


def irreversibility(gt, limit: int | None) -> list[str]:
    """Redact each photo's detected faces in memory with each method, then look for those
    faces again: a plain native pass at the detection threshold (0.2) and the full default
    detector. A face counts as found again when a box overlaps its box with IoU >= 0.3."""
    from sanitizer import storage
    from sanitizer.config import load
    from sanitizer.detect import get_detector, iou_matrix, nms
    from sanitizer.evaluate import _read_rgb
    from sanitizer.redact import params_from_config, redact

    cfg = load(None)
    det = get_detector(cfg.detect)
    root = storage.location(str(DATA))
    base = params_from_config(cfg.redact)
    variants = {
        "none (original)": None,
        "gaussian, blur_strength 0.5 (default)": base,
        "gaussian, blur_strength 0.25": dataclasses.replace(
            base, method="gaussian", blur_strength=0.25
        ),
        "gaussian, blur_strength 0.1": dataclasses.replace(
            base, method="gaussian", blur_strength=0.1
        ),
        "pixelate, 4 blocks (default)": dataclasses.replace(base, method="pixelate"),
        "pixelate, 8 blocks": dataclasses.replace(base, method="pixelate", blocks=8),
        "solid (default)": dataclasses.replace(base, method="solid"),
        # the mask shape before 2026-11-26: an ellipse keeps the head's outline
        "gaussian 0.5, ellipse mask": dataclasses.replace(base, shape="ellipse"),
        "pixelate 4 blocks, ellipse mask": dataclasses.replace(
            base, method="pixelate", shape="ellipse"
        ),
        "solid, ellipse mask": dataclasses.replace(base, method="solid", shape="ellipse"),
    }
    thr = cfg.detect.threshold
    stats = {
        k: {"faces": 0, "plain": 0, "full": 0, "big": 0, "big_plain": 0, "scores": []}
        for k in variants
    }
    items = (
        [g for g in gt if not g.negative][:limit] if limit else [g for g in gt if not g.negative]
    )
    for g in items:
        rgb = _read_rgb(root, g.file)
        faces = det.detect(rgb)
        if not len(faces):
            continue
        for name, params in variants.items():
            img = rgb if params is None else redact(rgb, faces.boxes, params)
            plain = det.infer(img, thr)
            plain = plain[nms(plain.boxes, plain.scores, 0.3)] if len(plain) else plain
            full = det.detect(img)
            s = stats[name]
            s["faces"] += len(faces)
            big = np.sqrt(np.prod(faces.boxes[:, 2:] - faces.boxes[:, :2], axis=1)) >= BIG
            s["big"] += int(big.sum())
            for found, key in ((plain, "plain"), (full, "full")):
                if len(found):
                    iou = iou_matrix(faces.boxes, found.boxes)
                    hit = iou.max(1) >= 0.3
                    s[key] += int(hit.sum())
                    if key == "plain":
                        s["big_plain"] += int((hit & big).sum())
                    if key == "plain":
                        best = np.where(iou >= 0.3, found.scores[None, :], 0).max(1)
                        s["scores"] += [float(v) for v in best[hit]]
    lines = [
        f"| redaction | faces | found again, native pass @{thr:g} | faces >= {BIG} px found again, native pass | "
        "found again, default detector | median / max score when found (native pass) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in stats.items():
        n = max(1, s["faces"])
        sc = s["scores"]
        med = f"{np.median(sc):.2f} / {max(sc):.2f}" if sc else "-"
        nb = max(1, s["big"])
        lines.append(
            f"| {name} | {s['faces']} | {s['plain']} ({100 * s['plain'] / n:.1f}%) | "
            f"{s['big_plain']}/{s['big']} ({100 * s['big_plain'] / nb:.1f}%) | "
            f"{s['full']} ({100 * s['full'] / n:.1f}%) | {med} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--skip-irreversibility", action="store_true")
    ap.add_argument("--skip-recall", action="store_true")
    a = ap.parse_args()
    if not (DATA / "faces_dev.json").is_file():
        print(f"no ground truth at {DATA}/faces_dev.json", file=sys.stderr)
        return 2
    from sanitizer.evaluate import load_ground_truth

    gt = load_ground_truth(DATA / "faces_dev.json")
    t0 = time.time()
    n_faces = sum(len(g.boxes) for g in (gt[: a.limit] if a.limit else gt))
    print(
        f"### Redaction coverage by face size (% of faces protected), {DATA.name}/faces_dev.json, "
        f"{len(gt[: a.limit] if a.limit else gt)} images, {n_faces} faces, --method solid\n"
    )
    if not a.skip_recall:
        print("\n".join(recall_tables(gt, a.limit)))
    if not a.skip_irreversibility:
        print("\n### Irreversibility: redacted faces found again by the detector\n")
        print("\n".join(irreversibility(gt, a.limit)))
    print(f"\n({time.time() - t0:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
