"""sanitizer verify: classification of re-scan detections, threshold lowering, and the real
CLI on a DST where one output was replaced by its original."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sanitizer.config import DetectConfig
from sanitizer.records import VERIFY_SCHEMA, Detections
from sanitizer.redact import mask_for
from sanitizer.verify import classify, lowered


def test_lowered_moves_every_pass_threshold_by_the_same_amount() -> None:
    d = DetectConfig(
        threshold=0.2,
        upscale_threshold=0.3,
        vote_threshold=0.1,
        rescan_threshold=0.5,
        aspect_threshold=0.3,
    )
    low = lowered(d, 0.15)
    assert low.aspect_threshold == pytest.approx(0.25)  # the stretched passes of square images
    assert low.threshold == 0.15
    assert low.upscale_threshold == pytest.approx(0.25)
    assert low.vote_threshold == pytest.approx(0.05)
    assert low.rescan_threshold == pytest.approx(0.45)
    assert d.threshold == 0.2  # the original is not changed


def test_classify_against_what_the_run_redacted() -> None:
    run_boxes = np.array([[10, 10, 40, 40]], float)
    mask = mask_for(run_boxes, 100, 100, "ellipse", 1.5)
    found = Detections(
        np.array(
            [
                [12, 11, 41, 42],  # the redacted face, found again
                [15, 38, 35, 58],  # below the fill: overlaps the mask, not the face
                [70, 70, 90, 90],  # elsewhere: residual
            ],
            float,
        ),
        np.array([0.3, 0.3, 0.9]),
    )
    assert classify(found, run_boxes, mask) == ["redacted", "mask_edge", "residual"]
    assert classify(found, None, None) == ["residual"] * 3


@pytest.mark.parametrize(("swap", "code"), [(False, 0), (True, 1)])
@pytest.mark.integration
def test_verify_cli_fails_when_an_output_is_replaced_by_its_original(
    photo_dir: Path, tmp_path: Path, cli, swap: bool, code: int
) -> None:
    dst = tmp_path / "dst"
    run = cli("run", str(photo_dir), str(dst), "--workers", "1", "--method", "solid")
    assert run.returncode == 1, run.stderr  # photo_dir holds one broken file on purpose
    if swap:
        shutil.copyfile(photo_dir / "astronaut.jpg", dst / "astronaut.jpg")
    res = cli("verify", str(dst))
    assert res.returncode == code, res.stdout + res.stderr
    table = pd.read_parquet(dst / "_audit" / "verify")
    assert set(table.columns) == set(VERIFY_SCHEMA.names)
    keys = set(table["key"])
    assert {"astronaut.jpg", "nested/astronaut.png", "nested/deeper/cat.jpg"} <= keys
    left = table[(table["key"] == "astronaut.jpg") & (table["status"] == "residual")]
    if swap:
        assert "residual: astronaut.jpg" in res.stdout and "modified after the run" in res.stdout
        assert len(left) >= 1 and left["score"].max() >= 0.6
        assert (left["w"] > 20).all()
    else:
        assert "verify passed" in res.stdout
        assert (table[table["status"] == "residual"]["score"] < 0.6).all()


@pytest.mark.integration
def test_verify_cli_on_real_photos(shared_data: Path, tmp_path: Path, cli) -> None:
    data = json.loads((shared_data / "faces_dev.json").read_text())
    pick = [im["file"] for im in data["images"] if len(im["boxes"]) >= 2][:6]
    src = tmp_path / "src"
    for f in pick:
        (src / Path(f).name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / f, src / Path(f).name)
    dst = tmp_path / "dst"
    assert cli("run", str(src), str(dst), "--workers", "1").returncode == 0
    ok = cli("verify", str(dst))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    victim = Path(pick[0]).name
    shutil.copyfile(src / victim, dst / victim)
    bad = cli("verify", str(dst), "--max-residual", "0")
    assert bad.returncode == 1
    assert f"residual: {victim}" in bad.stdout
    # a generous limit lets it pass, the verify table keeps every verify pass
    assert cli("verify", str(dst), "--max-residual", "1000").returncode == 0
    table = pd.read_parquet(dst / "_audit" / "verify")
    assert table["run_id"].nunique() == 3


@pytest.mark.integration
def test_verify_cli_checks_every_video_frame_or_a_stride(
    shared_data: Path, tmp_path: Path, cli
) -> None:
    clip = shared_data / "videos" / "liveportrait_d0_greenscreen_noaudio.mp4"
    if not clip.is_file():
        pytest.skip("test clip not present")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    shutil.copyfile(clip, src / clip.name)
    run = cli("run", str(src), str(dst), "--workers", "1")
    if run.returncode != 0:
        pytest.skip(f"video is not processed by this build: {run.stdout[-300:]}")
    ok = cli("verify", str(dst))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "(78 frames)" in ok.stdout  # every frame by default
    shutil.copyfile(clip, dst / clip.name)  # the unredacted original published by mistake
    bad = cli("verify", str(dst), "--frame-stride", "10")
    assert "(8 frames)" in bad.stdout
    assert bad.returncode == 1 and f"residual: {clip.name}" in bad.stdout


def _four_k_clip(path: Path, unredacted: set[int], frames: int = 6) -> None:
    """A 3840x2160 clip with one real face (the astronaut, ~110 px) redacted with a solid box
    on every frame except `unredacted`."""
    import av
    import cv2

    from tests.conftest import astronaut

    face = cv2.resize(astronaut()[20:260, 120:360], (240, 240), interpolation=cv2.INTER_AREA)
    w, h, x, y = 3840, 2160, 2900, 1500
    rng = np.random.default_rng(3)
    base = rng.integers(100, 150, (h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "14"}
        for i in range(frames):
            img = base.copy()
            img[y : y + 240, x : x + 240] = face if i in unredacted else 0
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)


@pytest.mark.integration
def test_verify_finds_a_face_left_for_a_few_frames_of_a_4k_video(tmp_path: Path, cli) -> None:
    """Frames 2-3 of 6 leave the face unredacted: the default (every frame) fails the output;
    a spot check every 4th frame (0 and 4, redacted) passes it, so it is only a spot check."""
    dst = tmp_path / "dst"
    dst.mkdir()
    _four_k_clip(dst / "clip.mp4", unredacted={2, 3})
    bad = cli("verify", str(dst))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "(6 frames)" in bad.stdout and "residual: clip.mp4" in bad.stdout
    frames = pd.read_parquet(dst / "_audit" / "verify").query("status == 'residual'")["frame"]
    assert set(frames) == {2, 3}
    spot = cli("verify", str(dst), "--frame-stride", "4")
    assert spot.returncode == 0 and "(2 frames)" in spot.stdout, spot.stdout + spot.stderr
