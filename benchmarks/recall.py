"""Recall benchmark with a validation discipline: tune on one half of the labelled photos,
report on the other half and on sets derived from it, per face-size bucket.

    python benchmarks/halves.py ../shared/data/faces_dev.json /work/bench/halves   # once
    python benchmarks/recall.py --halves /work/bench/halves --work /tmp/recall-sets \
        [--variants default,before,...] [--sets report,square416,...] [--json OUT.json]
    python benchmarks/recall.py --halves /work/bench/halves --calibrate   # thresholds, on TUNE
    python benchmarks/recall.py --dev-tables       # the older per-profile tables on all of
                                                  # faces_dev.json + irreversibility

Derived sets (made once under --work from the report half, or from the tune half with a
`tune-` prefix, e.g. `tune-square416`; ground truth mapped accordingly):
`down50` (half size), `square416` (squashed to 416x416 without keeping the aspect ratio, as
datasets prepared for training are), `jpeg25` (JPEG-recompressed at quality 25), `thumb320`
(long side 320 px). Each row gives coverage (share of faces protected, `sanitizer.evaluate`'s
rule, which agrees with ../shared/tools/coverage.py) per bucket, the masked share of face-free
photos, and ms per photo (detection + mask, one inference thread).

CPU is scarce: every model pass is cached by the content of the image it ran on (in
--work/passes-<model>.pkl), so variants that share passes, and later runs, re-run only what is
new. ms per photo charges each cached pass the time it took when it actually ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import pickle
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


# -- validation discipline: halves and derived sets ---------------------------------------

# The default profile of main before 2026-11-29 (the options this benchmark compares).
BEFORE = {
    "threshold": 0.2,
    "upscale": 1.5,
    "upscale_threshold": 0.25,
    "upscale_min_side": 0,
    "aspect_wide": 0.0,
    "aspect_tall": 0.0,
    "aspect_threshold": 0.25,
    "aspect_square_tol": 0.02,
    "hflip": False,
    "grow_small": 0,
}
VARIANTS: dict[str, dict] = {
    "before": BEFORE,
    "default": {},
    "default+flip": {"hflip": True},
    "default+aspect1.5x": {"aspect_scale": 1.5},
    "default+wide1.33": {"aspect_wide": 1.33},
    "default+aspect0.25": {"aspect_threshold": 0.25},
    "+aspect": {**BEFORE, "aspect_wide": 1.5, "aspect_tall": 1.25},
    "+aspect@1.5x": {**BEFORE, "aspect_wide": 1.5, "aspect_tall": 1.25, "aspect_scale": 1.5},
    "+small1248": {**BEFORE, "upscale_min_side": 1248},
    "+small960": {**BEFORE, "upscale_min_side": 960},
    "+flip": {**BEFORE, "hflip": True},
    "+aspect+flip": {**BEFORE, "aspect_wide": 1.5, "aspect_tall": 1.25, "hflip": True},
    "+aspect+small1248": {
        **BEFORE,
        "aspect_wide": 1.5,
        "aspect_tall": 1.25,
        "upscale_min_side": 1248,
    },
    "default-tall": {"aspect_tall": 0.0},
    "default-wide": {"aspect_wide": 0.0},
    "default-grow": {"grow_small": 0},  # plain NMS (before 2026-12-03)
    "strict": "strict",
}
SETS = ("report", "down50", "square416", "jpeg25", "thumb320")


def derive(kind: str, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(image, boxes x,y,w,h in its pixels, file suffix) of a derived set."""
    import cv2

    h, w = rgb.shape[:2]
    if kind in ("report", "tune"):
        return rgb, boxes, ".png"
    if kind == "jpeg25":
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 25])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1], boxes, ".jpg"
    if kind == "down50":
        size = (max(1, round(w * 0.5)), max(1, round(h * 0.5)))
    elif kind == "square416":
        size = (416, 416)
    elif kind == "thumb320":
        f = min(1.0, 320 / max(h, w))  # a thumbnail never enlarges
        size = (max(1, round(w * f)), max(1, round(h * f)))
    else:
        raise ValueError(f"unknown derived set {kind!r}")
    sx, sy = size[0] / w, size[1] / h
    out = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    b = np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])
    return out, b, ".png"


def split_set(name: str) -> tuple[str, str]:
    """(half, derived kind) of a --sets name: `report`, `tune`, a derived set of the report
    half (`square416`) or of the tune half (`tune-square416`, to choose options on)."""
    if name in ("report", "tune"):
        return name, name
    half, _, kind = name.rpartition("-")
    return (half or "report"), kind


def make_set(half: str, kind: str, halves: Path, work: Path) -> tuple[list, Path]:
    """The derived set `kind` of a half, written once under `work` (PNG, or JPEG for jpeg25):
    (ground truth, images root). The GT json sits at root/faces.json."""
    import cv2

    from sanitizer.evaluate import load_ground_truth

    if kind in ("report", "tune"):  # the photos themselves, as `sanitizer eval` reads them
        return load_ground_truth(halves / f"faces_{half}.json"), DATA
    root = work / f"{half}-{kind}"
    gt_path = root / "faces.json"
    if gt_path.is_file():
        return load_ground_truth(gt_path), root
    src = json.loads((halves / f"faces_{half}.json").read_text())
    images = []
    for im in src["images"]:
        bgr = cv2.imread(str(DATA / im["file"]), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        rgb, boxes, suffix = derive(kind, bgr[:, :, ::-1], np.asarray(im["boxes"], np.float64))
        rel = str(Path(im["file"]).with_suffix(suffix))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".jpg":  # the recompressed bytes themselves
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 25])
            (root / rel).write_bytes(buf.tobytes())
        else:
            cv2.imwrite(str(root / rel), np.ascontiguousarray(rgb[:, :, ::-1]))
        images.append(
            {
                "file": rel,
                "boxes": [[round(float(v), 2) for v in b] for b in boxes],
                "set": im.get("set", ""),
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
            }
        )
    gt_path.write_text(json.dumps({"meta": {"half": half, "derived": kind}, "images": images}))
    return load_ground_truth(gt_path), root


class CachingModel:
    """A model whose passes are remembered by the content of the image they ran on."""

    def __init__(self, model, store: dict) -> None:
        self.model = model
        self.name = model.name
        self.model_sha256 = model.model_sha256
        self.precision = getattr(model, "precision", "")
        self.store = store
        self.charged = 0.0  # seconds the passes took when they ran
        self.spent = 0.0  # seconds actually spent in the model in this process

    def infer(self, image: np.ndarray, threshold: float):
        from sanitizer.detect.policy import FLOOR

        key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        hit = self.store.get(key)
        if hit is None or hit[0] > threshold:
            low = min(threshold, FLOOR)
            t0 = time.perf_counter()
            dets = self.model.infer(image, low)
            dt = time.perf_counter() - t0
            self.spent += dt
            hit = (low, dets, dt)
            self.store[key] = hit
        self.charged += hit[2]
        return hit[1][hit[1].scores >= threshold]


def detect_config(variant: str, base=None):
    from sanitizer.config import load

    spec = VARIANTS[variant]
    if spec == "strict":
        return load(REPO / "configs" / "strict.yaml", {"redact": {"method": "solid"}})
    cfg = load(None, {"redact": {"method": "solid"}})
    for k, v in spec.items():
        setattr(cfg.detect, k, v)
    return cfg


def score(gt, root: Path, cfg, cache: CachingModel) -> dict:
    """Coverage per bucket, face-free masked share and ms per photo of one profile on a set."""
    from sanitizer import evaluate as ev
    from sanitizer.detect.policy import ScanDetector

    det = ScanDetector(cache, cfg.detect)
    images, faces, busy, masked = [], [], 0.0, []
    sroot = ev.storage.location(str(root))
    for g in gt:
        rgb = ev._read_rgb(sroot, g.file)
        spent0, charged0 = cache.spent, cache.charged
        t0 = time.perf_counter()
        dets = det.detect(rgb)
        mask = ev._redaction_mask(dets.boxes, *rgb.shape[:2], cfg.redact)
        wall = time.perf_counter() - t0
        if len(g.boxes):
            masked.append(float(mask.mean()))
        busy += wall - (cache.spent - spent0) + (cache.charged - charged0)
        level = rgb.max(axis=2)
        res, fr, _ = ev.evaluate_image(g, level > ev.BRIGHT, dets, cfg.redact, level <= ev.DARK)
        images.append(res)
        faces += fr
    rows = {r["bucket"]: r for r in ev.summarize(images, faces)}
    negs = [r.masked_share for r in images if r.n_gt == 0]
    return {
        "coverage": {b: rows[b]["coverage"] for b in ev.ROWS},
        "faces": {b: rows[b]["faces"] for b in ev.ROWS},
        "precision@0.5": rows["all"]["precision@0.5"],
        "negatives_masked_share": float(np.mean(negs)) if negs else None,
        # utility: the share of a photo with faces that is masked (faces, margins, false boxes)
        "faces_masked_share": float(np.mean(masked)) if masked else None,
        "ms_per_photo": 1000 * busy / max(1, len(images)),
        "images": len(images),
    }


def load_store(work: Path, model) -> tuple[dict, Path]:
    path = work / f"passes-{model.name}-{model.model_sha256[:12]}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes()), path
    return {}, path


def validation(a) -> int:
    from sanitizer.detect import get_model

    halves, work = Path(a.halves), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    variants = a.variants.split(",")
    sets = a.sets.split(",")
    model = None
    results: dict[str, dict[str, dict]] = {}
    for kind in sets:
        half, derived = split_set(kind)
        gt, root = make_set(half, derived, halves, work)
        for v in variants:
            cfg = detect_config(v)
            if model is None:
                model = get_model(cfg.detect)
                store, store_path = load_store(work, model)
            cache = CachingModel(model, store)
            r = score(gt, root, cfg, cache)
            results.setdefault(v, {})[kind] = r
            c = r["coverage"]
            print(
                f"  {kind:10s} {v:22s} >=16 {pct(c['>=16'])} all {pct(c['all'])} "
                f"({time.strftime('%H:%M:%S')})",
                file=sys.stderr,
            )
            store_path.write_bytes(pickle.dumps(store))
    from sanitizer import evaluate as ev

    print(
        "| set | profile | "
        + " | ".join(ev.ROWS)
        + " | face-free masked | photos with faces masked | precision@.5 all | ms/photo |"
    )
    print("| --- | --- | " + " | ".join("---" for _ in ev.ROWS) + " | --- | --- | --- | --- |")
    for kind in sets:
        for v in variants:
            r = results[v][kind]
            neg = r["negatives_masked_share"]
            print(
                f"| {kind} | {v} | "
                + " | ".join(pct(r["coverage"][b]) for b in ev.ROWS)
                + f" | {'-' if neg is None else f'{100 * neg:.3f}%'}"
                + f" | {pct(r['faces_masked_share'])}%"
                + f" | {pct(r['precision@0.5'])} | {r['ms_per_photo']:.0f} |"
            )
    first = next(iter(results.values()))
    print(
        "\nfaces per bucket: "
        + "; ".join(
            f"{k}: " + ", ".join(f"{b} {n}" for b, n in r["faces"].items())
            for k, r in first.items()
        )
    )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


def calibrate(a) -> int:
    """Per-pass-kind thresholds (native, upscaled, aspect) searched on the TUNE half and its
    derived sets from cached candidates (one network run per image and pass)."""
    from sanitizer import evaluate as ev
    from sanitizer.detect import get_model
    from sanitizer.detect.policy import Candidates, ScanDetector

    halves, work = Path(a.halves), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = detect_config(a.variants.split(",")[0])
    model = get_model(cfg.detect)
    store, store_path = load_store(work, model)
    det = ScanDetector(CachingModel(model, store), cfg.detect)
    sweep = []
    for kind in a.sets.split(","):
        gt, root = make_set("tune", kind if kind != "report" else "tune", halves, work)
        sroot = ev.storage.location(str(root))
        for g in gt:
            rgb = ev._read_rgb(sroot, g.file)
            level = rgb.max(axis=2)
            sweep.append((kind, g, level > ev.BRIGHT, level <= ev.DARK, det.candidates(rgb, 0.2)))
        store_path.write_bytes(pickle.dumps(store))

    def kind_of(p) -> str:
        return "aspect" if p.scale_y is not None else "up" if p.upscaled else "native"

    grid = {
        "native": (0.2, 0.25, 0.3),
        "up": (0.25, 0.3, 0.35),
        "aspect": (0.25, 0.3, 0.35, 0.45),
        "vote": (0.1, 0.15, 0.2),
    }
    print(
        "| native | upscaled | aspect | vote | "
        + " | ".join(f"{k} >=16 / all" for k in a.sets.split(","))
        + " | face-free masked |"
    )
    print("| --- " * (5 + len(a.sets.split(","))) + "|")
    for combo in itertools.product(*grid.values()):
        thr = dict(zip(grid, combo, strict=True))
        det.vote_threshold = thr["vote"]
        per: dict[str, list] = {}
        negs = []
        for kind, g, bright, dark, c in sweep:
            need = np.array([thr[kind_of(p)] for p in c.passes], np.float32)[c.source]
            dets = det.select(Candidates(c.dets, need, c.source, c.passes))
            res, fr, _ = ev.evaluate_image(g, bright, dets, cfg.redact, dark)
            per.setdefault(kind, []).extend(fr)
            if res.n_gt == 0:
                negs.append(res.masked_share)
        cells = []
        for fs in per.values():
            ge = [f.protected for f in fs if f.bucket != "<16"]
            cells.append(f"{pct(np.mean(ge))} / {pct(np.mean([f.protected for f in fs]))}")
        print(
            f"| {thr['native']} | {thr['up']} | {thr['aspect']} | {thr['vote']} | "
            + " | ".join(cells)
            + f" | {100 * np.mean(negs):.3f}% |"
        )
    return 0


def timing(a) -> int:
    """ms per photo of each variant without the pass cache, variants interleaved image by image
    (A/B/A/B on a shared machine), per set: detection + mask, one inference thread."""
    from sanitizer import evaluate as ev
    from sanitizer.detect import get_detector

    halves, work = Path(a.halves), Path(a.work)
    variants = a.variants.split(",")
    dets = {v: (detect_config(v), get_detector(detect_config(v).detect)) for v in variants}
    print("| set | " + " | ".join(f"{v} ms/photo" for v in variants) + " |")
    print("| --- " * (1 + len(variants)) + "|")
    for kind in a.sets.split(","):
        gt, root = make_set("report", kind, halves, work)
        sroot = ev.storage.location(str(root))
        spent = dict.fromkeys(variants, 0.0)
        for i, g in enumerate(gt):
            rgb = ev._read_rgb(sroot, g.file)
            order = variants[i % len(variants) :] + variants[: i % len(variants)]
            for v in order:
                cfg, det = dets[v]
                t0 = time.perf_counter()
                found = det.detect(rgb)
                ev._redaction_mask(found.boxes, *rgb.shape[:2], cfg.redact)
                spent[v] += time.perf_counter() - t0
        print(
            f"| {kind} | "
            + " | ".join(f"{1000 * spent[v] / max(1, len(gt)):.0f}" for v in variants)
            + " |"
        )
    return 0


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark over the halves shares (this one and int8.py)."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--halves", default="/work/bench/halves", help="faces_tune/report.json")
    ap.add_argument("--work", default="/tmp/sanitizer-recall", help="derived sets, pass cache")
    return ap


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--variants", default="before,default")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--json", default="")
    ap.add_argument("--calibrate", action="store_true", help="search thresholds on the TUNE half")
    ap.add_argument("--timing", action="store_true", help="ms/photo without cache, interleaved")
    ap.add_argument("--dev-tables", action="store_true", help="the older all-of-dev tables")
    ap.add_argument("--limit", type=int, default=None, help="--dev-tables: first N images only")
    ap.add_argument("--skip-irreversibility", action="store_true")
    ap.add_argument("--skip-recall", action="store_true")
    a = ap.parse_args()
    if not (DATA / "faces_dev.json").is_file():
        print(f"no ground truth at {DATA}/faces_dev.json", file=sys.stderr)
        return 2
    if a.calibrate:
        return calibrate(a)
    if a.timing:
        return timing(a)
    if not a.dev_tables:
        return validation(a)
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
