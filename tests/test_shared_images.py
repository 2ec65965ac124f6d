"""The real CLI on ../shared/data photos with ground truth (skipped when absent)."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

BROKEN = {
    "pillow_broken.png",
    "pillow_broken_data_stream.png",
    "pillow_truncated_app14.jpg",
    "pillow_truncated_end_chunk.png",
    "pillow_hopper_bad_exif.jpg",
    "pillow_hopper_idat_after_image_end.png",
}


def ellipse_coverage(masked: np.ndarray, bright: np.ndarray, box) -> float:
    """Share of the ellipse inscribed in a GT box that is masked (as ../shared/tools/coverage.py)."""
    x, y, w, h = box
    ell = np.zeros(masked.shape, np.uint8)
    cv2.ellipse(
        ell,
        (int(round(x + w / 2)), int(round(y + h / 2))),
        (max(1, int(round(w / 2))), max(1, int(round(h / 2)))),
        0,
        0,
        360,
        1,
        -1,
    )
    sel = ell.astype(bool)
    if (sel & bright).sum() >= 0.3 * max(1, sel.sum()):
        sel &= bright
    return float(masked[sel].mean()) if sel.any() else 0.0


@pytest.fixture(scope="module")
def solid_run(shared_data, tmp_path_factory):
    dst = tmp_path_factory.mktemp("shared") / "out"
    proc = run_cli("run", str(shared_data / "images"), str(dst), "--method", "solid", timeout=900)
    return dst, proc


def test_photos_all_ok_and_audit_consistent(shared_data, solid_run):
    dst, proc = solid_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = pd.read_parquet(dst / "_audit" / "files")
    dets = pd.read_parquet(dst / "_audit" / "detections")
    n_inputs = sum(1 for p in (shared_data / "images").rglob("*") if p.is_file())
    assert len(files) == n_inputs and (files.status == "ok").all()
    assert len(dets) == files.n_faces.sum()
    for key in files.key:
        assert (dst / key).is_file()


def test_coverage_of_ground_truth_faces(shared_data, solid_run):
    dst, _ = solid_run
    gt = json.loads((shared_data / "faces_dev.json").read_text())["images"]
    hit = tot = 0
    negatives = []
    for im in gt:
        orig = cv2.imread(str(shared_data / im["file"]), cv2.IMREAD_COLOR)
        out = cv2.imread(str(dst / im["file"].removeprefix("images/")), cv2.IMREAD_COLOR)
        assert out is not None and out.shape == orig.shape, im["file"]
        masked, bright = out.max(axis=2) <= 24, orig.max(axis=2) > 40
        if not im["boxes"]:
            negatives.append(float((masked & bright).mean()))
        for box in im["boxes"]:
            if box[2] > 0 and box[3] > 0 and (box[2] * box[3]) ** 0.5 >= 16:
                tot += 1
                hit += ellipse_coverage(masked, bright, box) >= 0.7
    assert tot > 400
    assert hit / tot >= 0.95, f"only {hit}/{tot} faces >= 16 px covered"
    assert np.mean(negatives) < 0.01, "face-free photos must stay almost untouched"


@pytest.fixture(scope="module")
def edge_run(shared_data, tmp_path_factory):
    dst = tmp_path_factory.mktemp("edge") / "out"
    proc = run_cli("run", str(shared_data / "edge"), str(dst), timeout=600)
    return dst, proc


def test_broken_files_fail_closed(edge_run):
    dst, proc = edge_run
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    files = pd.read_parquet(dst / "_audit" / "files").set_index("key")
    for name in BROKEN:
        row = files.loc[name]
        assert row.status == "failed" and row.error, name
        assert not (dst / name).exists(), f"{name}: no output for a broken file"
        assert name in proc.stderr
    ok = files[~files.index.isin(BROKEN)]
    assert (ok.status == "ok").all(), ok[ok.status != "ok"][["status", "error"]]


@pytest.mark.parametrize("n", range(2, 9))
def test_exif_rotated_come_out_upright(shared_data, edge_run, n):
    dst, _ = edge_run
    name = f"exif_orientation_{n}_hopper.jpg"
    with Image.open(shared_data / "edge" / name) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    with Image.open(dst / name) as out_im:
        assert not out_im.getexif()
        out = np.asarray(out_im.convert("RGB")).astype(int)
    assert out.shape == upright.shape
    changed = np.abs(out - upright).max(axis=2) > 60  # the redacted face
    assert 0.02 < changed.mean() < 0.6
    assert np.abs(out - upright)[~changed].mean() < 6, (
        "outside the face the output equals the upright original"
    )
