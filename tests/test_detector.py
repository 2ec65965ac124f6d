"""CenterFace precision: the int8 network (derived once per machine) agrees with the fp32 file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sanitizer.config import ConfigError, from_dict
from sanitizer.detect import iou_matrix, quantize
from sanitizer.detect.centerface import CenterFaceDetector
from tests.conftest import astronaut


def _scenes() -> list[np.ndarray]:
    """Pictures that are not in the calibration set: a mirrored, shrunk portrait on noise, and
    a crowd of heads from 20 to 90 px on a gradient."""
    rng = np.random.default_rng(3)
    face = astronaut()[:, ::-1]
    one = rng.integers(0, 255, (600, 800, 3), np.uint8)
    one[100:407, 200:507] = cv2.resize(face, (307, 307))
    crowd = np.tile(np.linspace(40, 220, 1024, dtype=np.uint8)[None, :, None], (640, 1, 3))
    head = face[20:230, 180:370]
    x, y = 10, 10
    for s in (90, 70, 56, 44, 36, 28, 24, 20):
        h = cv2.resize(head, (s, int(s * 1.1)))
        if x + s > 1024:
            x, y = 10, y + 110
        crowd[y : y + h.shape[0], x : x + s] = h
        x += int(s * 1.7)
    return [one, np.ascontiguousarray(crowd)]


@pytest.fixture
def int8_on(monkeypatch):
    """Run the int8 network whatever this CPU (quantize.int8_supported would pick fp32 without VNNI)."""
    from sanitizer.detect import centerface

    monkeypatch.setenv("SANITIZER_INT8", "1")
    centerface._network.cache_clear()
    yield
    monkeypatch.delenv("SANITIZER_INT8")
    centerface._network.cache_clear()


def test_int8_finds_the_faces_fp32_finds(int8_on):
    fp32 = CenterFaceDetector(precision="fp32")
    int8 = CenterFaceDetector(precision="int8")
    assert fp32.model_sha256 != int8.model_sha256 and len(int8.model_sha256) == 64
    for image in _scenes():
        a, b = fp32.detect(image), int8.detect(image)
        strong_a, strong_b = a[a.scores >= 0.5], b[b.scores >= 0.5]
        assert len(strong_a) >= 1
        # every confident face of one network is found by the other (at any score above its threshold)
        assert (iou_matrix(strong_a.boxes, b.boxes).max(1) >= 0.6).all()
        assert (iou_matrix(strong_b.boxes, a.boxes).max(1) >= 0.6).all()


def test_int8_model_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITIZER_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(quantize, "build_int8", lambda fp32: calls.append(1) or b"int8:" + fp32)
    assert quantize.int8_model(b"net", "ab" * 32) == b"int8:net"
    assert quantize.int8_model(b"net", "ab" * 32) == b"int8:net"
    assert len(calls) == 1
    assert quantize.cache_path("ab" * 32).read_bytes() == b"int8:net"


def test_int8_unusable_cache_builds_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # the cache folder cannot be created under a file (even as root)
    monkeypatch.setenv("SANITIZER_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(quantize, "build_int8", lambda fp32: b"q")
    assert quantize.int8_model(b"net", "cd" * 32) == b"q"


def test_quantization_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITIZER_CACHE", str(tmp_path))

    def broken(fp32):
        raise RuntimeError("boom")

    monkeypatch.setattr(quantize, "build_int8", broken)
    with pytest.raises(quantize.DetectorError, match="precision: fp32"):
        quantize.int8_model(b"net", "ef" * 32)


def test_precision_option_validated():
    assert from_dict({"detect": {"precision": "fp32"}}).detect.precision == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        from_dict({"detect": {"precision": "fp16"}})


def test_cpu_without_int8_dot_product_runs_fp32(monkeypatch):
    """u8s8 int8 kernels can saturate on CPUs without VNNI: there the detector runs fp32."""
    from sanitizer.detect import centerface

    monkeypatch.setenv("SANITIZER_INT8", "0")
    centerface._network.cache_clear()
    try:
        det = CenterFaceDetector(precision="int8")
        assert det.model_sha256 == CenterFaceDetector(precision="fp32").model_sha256
        assert centerface.int8_ready()
    finally:
        monkeypatch.delenv("SANITIZER_INT8")
        centerface._network.cache_clear()
