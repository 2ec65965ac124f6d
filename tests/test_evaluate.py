"""sanitizer eval: ground-truth parsing, coverage maths, matching, calibration, vote logic,
and the real CLI on ../shared/data (agreement with the independent coverage checker)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sanitizer import evaluate as ev
from sanitizer.errors import ConfigError
from sanitizer.records import Detections

# -- ground truth ----------------------------------------------------------------------


def test_json_ground_truth(tmp_path: Path) -> None:
    p = tmp_path / "gt.json"
    p.write_text(
        json.dumps(
            {
                "meta": {},
                "images": [
                    {
                        "file": "images/a.jpg",
                        "boxes": [[1, 2, 30, 40], [50, 60, 10, 12]],
                        "set": "crowd",
                    },
                    {"file": "images/neg.png", "boxes": [], "set": "negative_no_face"},
                ],
            }
        )
    )
    gt = ev.load_ground_truth(p)
    assert [g.file for g in gt] == ["images/a.jpg", "images/neg.png"]
    np.testing.assert_array_equal(gt[0].boxes, [[1, 2, 30, 40], [50, 60, 10, 12]])
    assert gt[0].set == "crowd" and not gt[0].negative
    assert gt[1].negative and gt[1].boxes.shape == (0, 4)


WIDER = """0--Parade/0_Parade_marchingband_1_849.jpg
1
449 330 122 149 0 0 0 0 0 0
0--Parade/0_Parade_Parade_0_904.jpg
3
361 98 263 339 0 0 0 0 0 0
10 10 0 12 0 0 0 0 0 0
20 20 8 9 2 0 0 1 0 0
1--Handshaking/empty.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/last.jpg
1
5 6 7 8 1 0 0 0 0 0
"""


def test_wider_ground_truth(tmp_path: Path) -> None:
    p = tmp_path / "wider_face_val_bbx_gt.txt"
    p.write_text(WIDER)
    gt = ev.load_ground_truth(p)
    assert [g.file for g in gt] == [
        "0--Parade/0_Parade_marchingband_1_849.jpg",
        "0--Parade/0_Parade_Parade_0_904.jpg",
        "1--Handshaking/empty.jpg",
        "1--Handshaking/last.jpg",
    ]
    np.testing.assert_array_equal(gt[0].boxes, [[449, 330, 122, 149]])
    # zero-width and invalid-flagged boxes are dropped, as in WIDER's own evaluation
    np.testing.assert_array_equal(gt[1].boxes, [[361, 98, 263, 339]])
    assert gt[2].negative  # count 0 is followed by one dummy line that must be skipped
    np.testing.assert_array_equal(gt[3].boxes, [[5, 6, 7, 8]])
    assert gt[0].set == "0--Parade"


@pytest.mark.parametrize(
    "text", ['{"images": [{"boxes": []}]}', "a.jpg\nnot-a-number\n", "a.jpg\n2\n1 2 3 4\n"]
)
def test_bad_ground_truth_is_a_config_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "gt.txt"
    p.write_text(text)
    with pytest.raises(ConfigError):
        ev.load_ground_truth(p)


# -- coverage maths --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "bucket"),
    [
        (0, "<16"),
        (15.99, "<16"),
        (16, "16-32"),
        (31.9, "16-32"),
        (32, "32-64"),
        (64, ">=64"),
        (500, ">=64"),
    ],
)
def test_buckets(side: float, bucket: str) -> None:
    assert ev.bucket_of(side) == bucket


def test_ellipse_matches_coverage_py_drawing() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = rng.uniform(-20, 120, 2)
        w, h = rng.uniform(1, 60, 2)
        ref = np.zeros((100, 130), np.uint8)
        cx, cy = int(round(x + w / 2)), int(round(y + h / 2))
        cv2.ellipse(
            ref, (cx, cy), (max(1, int(round(w / 2))), max(1, int(round(h / 2)))), 0, 0, 360, 1, -1
        )
        np.testing.assert_array_equal(ev.ellipse_mask((x, y, w, h), 100, 130), ref.astype(bool))


def test_face_coverage_on_synthetic_masks() -> None:
    h, w = 100, 100
    boxes = np.array([[20, 20, 40, 40], [70, 70, 20, 20]], float)
    full = np.ones((h, w), bool)
    none = np.zeros((h, w), bool)
    np.testing.assert_allclose(ev.face_coverage(full, boxes), [1, 1])
    np.testing.assert_allclose(ev.face_coverage(none, boxes), [0, 0])
    left = np.zeros((h, w), bool)
    left[:, :40] = True  # left half of face 0 (x 20..60, centre 40), none of face 1
    cov = ev.face_coverage(left, boxes)
    assert 0.4 < cov[0] < 0.6 and cov[1] == 0
    # only bright pixels count when they are >= 30% of the ellipse (black pixels cannot show a fill)
    bright = np.ones((h, w), bool)
    bright[:, 40:] = False
    assert ev.face_coverage(left, boxes, bright)[0] == pytest.approx(1.0)
    dark = np.zeros((h, w), bool)  # all dark: falls back to the whole ellipse
    assert ev.face_coverage(left, boxes, dark)[0] == pytest.approx(cov[0])


def test_evaluate_image_counts_protection_and_matches() -> None:
    from types import SimpleNamespace

    from sanitizer.evaluate import GTImage

    gt = GTImage("a.png", np.array([[10, 10, 20, 20], [60, 60, 30, 30]], float))
    dets = Detections(np.array([[10, 10, 30, 30], [0, 80, 8, 90]], float), np.array([0.9, 0.3]))
    bright = np.ones((100, 100), bool)
    res, faces, cov = ev.evaluate_image(
        gt, bright, dets, SimpleNamespace(shape="ellipse", margin=1.3)
    )
    assert [f.protected for f in faces] == [True, False]
    assert [f.hit50 for f in faces] == [True, False]
    assert res.tp50 == 1 and res.n_det == 2 and res.det_tp50 == [True, False]
    assert faces[0].bucket == "16-32" and faces[1].bucket == "16-32"
    rows = {r["bucket"]: r for r in ev.summarize([res], faces)}
    assert rows["all"]["coverage"] == 0.5 and rows["all"]["precision@0.5"] == 0.5
    assert rows[">=64"]["faces"] == 0 and rows[">=64"]["coverage"] is None


def test_greedy_matching_prefers_high_scores() -> None:
    gt = np.array([[0, 0, 10, 10]], float)
    det = np.array([[0, 0, 10, 10], [1, 1, 10, 10]], float)
    hit, det_gt = ev.match(gt, det, np.array([0.2, 0.9]), 0.5)
    assert hit.tolist() == [True]
    assert det_gt.tolist() == [-1, 0]  # the higher-scoring box takes the face


# -- calibration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "target", "expected"),
    [
        ([0.9, 0.8, 0.7, 0.6], 1.0, 0.6),
        ([0.9, 0.8, 0.7, 0.6], 0.75, 0.7),
        ([0.9, 0.8, 0.7, 0.6], 0.5, 0.8),
        ([0.9, 0.8, 0.0, 0.0], 0.75, None),  # two faces are never protected
        ([], 0.9, None),
    ],
)
def test_calibrate_on_synthetic_scores(
    scores: list[float], target: float, expected: float | None
) -> None:
    got = ev.calibrate(np.array(scores), target)
    assert got == expected if expected is None else math.isclose(got, expected)


# -- second-opinion vote (no model needed) ---------------------------------------------


class _NoModel:
    name, model_sha256 = "none", ""

    def infer(self, image, threshold):
        return Detections.empty()


def _bare_detector(**kw):
    """The shipped default policy (vote of 3 passes here) over a model that is never run."""
    from sanitizer.config import DetectConfig
    from sanitizer.detect.policy import ScanDetector

    cfg = DetectConfig()
    for k, v in {"vote_passes": 3, **kw}.items():
        setattr(cfg, k, v)
    return ScanDetector(_NoModel(), cfg)


def _cands(rows):
    from sanitizer.detect.policy import Candidates, Pass

    passes = [Pass("1x", 1, 0.2), Pass("2x", 2, 0.3), Pass("1x+flip", 1, 0.2, flip=True)]
    boxes = [r[1] for r in rows]
    return Candidates(
        Detections(np.array(boxes, float), np.array([r[2] for r in rows])),
        np.array([passes[r[0]].threshold for r in rows], np.float32),
        np.array([r[0] for r in rows], np.int16),
        passes,
    )


def test_vote_keeps_weak_boxes_found_by_every_pass() -> None:
    face = [10, 10, 30, 30]
    lonely = [60, 60, 80, 80]
    cands = _cands(
        [
            (0, face, 0.12),
            (1, [11, 10, 31, 30], 0.15),
            (2, [10, 11, 30, 31], 0.11),  # 3 passes agree
            (0, lonely, 0.15),
            (2, [61, 60, 81, 80], 0.15),  # only 2 of 3 passes
            (0, [100, 100, 120, 120], 0.5),  # strong: kept alone
        ]
    )
    kept = _bare_detector().select(cands)
    centres = sorted(((kept.boxes[:, 0] + kept.boxes[:, 2]) / 2).round().tolist())
    assert len(centres) == 2 and abs(centres[0] - 20) <= 1 and centres[1] == 110
    assert len(_bare_detector(vote_threshold=0.0).select(cands)) == 1  # vote off
    assert len(_bare_detector().select(cands, delta=0.05)) == 1  # thresholds shifted up


def test_aspect_passes_do_not_vote() -> None:
    """A weak box that the native pass and an aspect-corrected pass both found is not kept:
    on square face-free photos they agree on stretched non-faces (BENCHMARKS.md 2026-11-29)."""
    from sanitizer.detect.policy import Candidates, Pass

    passes = [Pass("1x", 1, 0.2), Pass("wide1.5", 1.5, 0.3, scale_y=1, votes=False)]
    rows = [(0, [10, 10, 30, 30], 0.15), (1, [10, 10, 30, 30], 0.2), (1, [60, 60, 80, 80], 0.35)]
    cands = Candidates(
        Detections(np.array([r[1] for r in rows], float), np.array([r[2] for r in rows])),
        np.array([passes[r[0]].threshold for r in rows], np.float32),
        np.array([r[0] for r in rows], np.int16),
        passes,
    )
    kept = _bare_detector(vote_passes=2).select(cands)
    assert kept.boxes.tolist() == [[60, 60, 80, 80]]  # only the aspect box above its threshold
    voting = Candidates(cands.dets, cands.need, cands.source, [passes[0], Pass("2x", 2, 0.3)])
    assert len(_bare_detector(vote_passes=2).select(voting)) == 2  # the same boxes, voting


# -- the real CLI on ../shared/data ----------------------------------------------------

SUBSET = 14  # images of faces_dev.json used by the integration tests (the full set is a benchmark)


def _subset(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A temporary copy of a few labelled photos (never inside the repo) and their GT."""
    data = json.loads((shared_data / "faces_dev.json").read_text())
    faces = [im for im in data["images"] if im["boxes"]]
    negs = [im for im in data["images"] if not im["boxes"]]
    pick = faces[:: max(1, len(faces) // (SUBSET - 2))][: SUBSET - 2] + negs[:2]
    root = tmp_path / "data"
    for im in pick:
        dst = root / im["file"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / im["file"], dst)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"meta": {}, "images": pick}))
    return gt, root


@pytest.mark.integration
def test_eval_cli_agrees_with_independent_pixel_check(
    shared_data: Path, tmp_path: Path, cli
) -> None:
    gt, root = _subset(shared_data, tmp_path)
    report = tmp_path / "report.json"
    res = cli("eval", str(gt), str(root), "--method", "solid", "--out", str(report))
    assert res.returncode == 0, res.stderr
    assert "cover %" in res.stdout and "face-free images: 2" in res.stdout
    rep = json.loads(report.read_text())
    rows = {r["bucket"]: r for r in rep["rows"]}
    assert rows["all"]["faces"] == sum(
        len(im["boxes"]) for im in json.loads(gt.read_text())["images"]
    )
    assert rows[">=16"]["coverage"] >= 0.95
    # the same photos through `sanitizer run --method solid`, scored by ../shared/tools/coverage.py
    out = tmp_path / "out"
    run = cli(
        "run", str(root / "images"), str(out / "images"), "--method", "solid", "--workers", "1"
    )
    assert run.returncode == 0, run.stderr
    tool = shared_data.parent / "tools" / "coverage.py"
    if not tool.is_file():
        pytest.skip("../shared/tools/coverage.py is not present")
    js = tmp_path / "cov.json"
    chk = subprocess.run(
        [
            sys.executable,
            str(tool),
            "--gt",
            str(gt),
            "--orig",
            str(root),
            "--out",
            str(out),
            "--json",
            str(js),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chk.returncode == 0, chk.stderr
    ref = json.loads(js.read_text())
    assert abs(ref["rows"]["all|all"]["protected"] - rows["all"]["protected"]) <= 1
    assert abs(ref["rows"]["all|>=16"]["protected"] - rows[">=16"]["protected"]) <= 1
    assert abs(ref["negatives_masked_share"] - rep["negatives_masked_share"]) < 0.002


@pytest.mark.integration
def test_eval_cli_target_recall_and_parquet(shared_data: Path, tmp_path: Path, cli) -> None:
    import pandas as pd

    gt, root = _subset(shared_data, tmp_path)
    out = tmp_path / "table.parquet"
    res = cli(
        "eval",
        str(gt),
        str(root),
        "--target-recall",
        "0.9",
        "--target-bucket",
        "all",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "calibration:" in res.stdout and "threshold" in res.stdout
    df = pd.read_parquet(out)
    assert list(df["bucket"]) == ev.ROWS and "coverage" in df and "images_per_s" in df


@pytest.mark.integration
def test_eval_cli_rejects_bad_input(tmp_path: Path, cli) -> None:
    bad = tmp_path / "gt.txt"
    bad.write_text("a.jpg\nxx\n")
    res = cli("eval", str(bad), str(tmp_path))
    assert res.returncode == 2 and "WIDER" in res.stderr


# -- scoring a run's outputs: the black-box scorer's rule -------------------------------


def _outputs_case(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Originals, solid-redacted outputs (some faces half-covered, one output missing, one
    re-encoded as .jpg) and their ground truth, generated with a seeded generator."""
    import cv2

    rng = np.random.default_rng(11)
    orig, out = tmp_path / "orig", tmp_path / "out"
    images = []
    for i in range(6):
        h, w = 240, 320
        im = rng.integers(60, 255, (h, w, 3), np.uint8)
        red = im.copy()
        boxes = []
        for _ in range(0 if i == 5 else 4):
            s = int(rng.integers(8, 70))
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            boxes.append([x, y, s, int(s * 1.2)])
            cover = rng.choice([0.0, 0.5, 0.8, 1.3])  # share of the box blacked out, from the left
            red[y : y + int(s * 1.2), x : x + int(s * cover)] = 0
        if i == 5:
            red[10:20, 10:40] = 0  # a false positive on the face-free photo
        name = f"images/set/p{i}.png"
        (orig / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(orig / name), im)
        if i == 3:
            cv2.imwrite(
                str(out / name.replace(".png", ".jpg")), red, [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
        elif i != 4:  # p4's output is missing
            cv2.imwrite(str(out / name), red)
        images.append({"file": name, "boxes": boxes, "set": "set" if boxes else "negative"})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images}))
    return gt, orig, out


def test_evaluate_outputs_equals_black_box_scorer(tmp_path: Path) -> None:
    gt, orig, out = _outputs_case(tmp_path)
    rep = ev.evaluate_outputs(ev.load_ground_truth(gt), str(orig), str(out))
    rows = {r["bucket"]: r for r in rep.rows}
    assert rows["all"]["faces"] == 20 and 0 < rows["all"]["protected"] < 20
    tool = Path(__file__).resolve().parents[2] / "shared" / "tools" / "coverage.py"
    if not tool.is_file():
        pytest.skip("../shared/tools/coverage.py is not present")
    res = tmp_path / "cov.json"
    subprocess.run(
        [sys.executable, str(tool), "--gt", str(gt), "--orig", str(orig), "--out", str(out)]
        + ["--json", str(res)],
        check=True,
        capture_output=True,
    )
    theirs = json.loads(res.read_text())
    for bucket in ev.ROWS:
        key = f"all|{bucket}"
        if key in theirs["rows"]:
            assert rows[bucket]["protected"] == theirs["rows"][key]["protected"], bucket
            assert rows[bucket]["faces"] == theirs["rows"][key]["faces"], bucket
    assert round(rep.negatives_masked_share, 5) == theirs["negatives_masked_share"]


def test_dark_face_counts_as_the_pixel_check_counts_it() -> None:
    """A face in shadow (< 30 % of its ellipse bright) with no detection: a solid-filled output
    is black there anyway, and coverage.py counts it protected; so does evaluate_image."""
    from sanitizer.config import RedactConfig

    level = np.full((100, 100), 200, np.uint8)
    level[20:60, 20:60] = 10  # the face's box is dark
    gt = ev.GTImage("x.png", np.array([[20.0, 20.0, 40.0, 40.0]]))
    _, faces, _ = ev.evaluate_image(
        gt, level > ev.BRIGHT, Detections.empty(), RedactConfig(), level <= ev.DARK
    )
    assert faces[0].protected
    _, faces, _ = ev.evaluate_image(gt, level > ev.BRIGHT, Detections.empty(), RedactConfig())
    assert not faces[0].protected  # without the dark map, only the mask counts
