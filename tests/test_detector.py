"""Detectors: CenterFace precision (the int8 network, derived once per machine and pinned, agrees
with the fp32 file), the scan policy over any model, and plug-in models by entry point."""

from __future__ import annotations

import hashlib
import os

import cv2
import numpy as np
import pytest

from sanitizer.config import ConfigError, DetectConfig, from_dict
from sanitizer.detect import get_detector, iou_matrix, quantize
from sanitizer.detect.graph import (
    INPUT,
    OUTPUTS,
    PACKED,
    SERVING_INPUT,
    SERVING_OUTPUTS,
    feeder,
    serving_graph,
    to_blob,
    to_packed,
)
from sanitizer.records import Detections
from tests.conftest import astronaut


def shipped(**detect) -> object:
    """The detector of the shipped default profile (config.py), with these options changed."""
    return get_detector(from_dict({"detect": detect}).detect)


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
    fp32 = shipped(precision="fp32")
    int8 = shipped(precision="int8")
    assert fp32.model_sha256 != int8.model_sha256 and len(int8.model_sha256) == 64
    for image in _scenes():
        a, b = fp32.detect(image), int8.detect(image)
        strong_a, strong_b = a[a.scores >= 0.5], b[b.scores >= 0.5]
        assert len(strong_a) >= 1
        # every confident face of one network is found by the other (at any score above its threshold)
        assert (iou_matrix(strong_a.boxes, b.boxes).max(1) >= 0.6).all()
        assert (iou_matrix(strong_b.boxes, a.boxes).max(1) >= 0.6).all()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_serving_graph_gives_the_network_graphs_outputs(precision, int8_on):
    """Sessions run the serving graph (fed the uint8 image, no landmarks head): its outputs
    equal the network graph's bit for bit, at sizes on and off the /32 grid. The int8 one
    skips the input quantization (an identity) instead of converting the image to float, and
    takes the image packed in 2x2 blocks, its first convolution rewritten to match."""
    import onnx
    import onnxruntime as ort

    from sanitizer.detect import centerface

    path = str(centerface.model_path())
    network, _, got = centerface._network(path, precision)
    assert got.startswith(precision)
    serving = centerface._serving(path, precision)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    a, b = (
        ort.InferenceSession(g, opts, providers=["CPUExecutionProvider"])
        for g in (network, serving)
    )
    assert [i.name for i in b.get_inputs()] == [SERVING_INPUT]
    assert [o.name for o in b.get_outputs()] == SERVING_OUTPUTS
    channels = b.get_inputs()[0].shape[-1]
    assert channels == (PACKED if precision == "int8" else 3)
    ops = {n.op_type for n in onnx.load_from_string(serving).graph.node}
    assert ("Cast" in ops) == (precision == "fp32")
    assert "QuantizeLinear" not in ops or precision == "int8"
    feed = feeder(channels)
    for scene in _scenes():
        for h, w in ((scene.shape[0], scene.shape[1]), (416, 333), (320, 704), (97, 150), (3, 5)):
            image = np.ascontiguousarray(scene[:h, :w])
            want = a.run(OUTPUTS[:3], {INPUT: to_blob(image)})
            have = b.run(SERVING_OUTPUTS, {SERVING_INPUT: feed(image)})
            if image.shape == scene.shape:
                assert want[0].max() > 0.5  # the scene's faces respond
            for x, y in zip(want, have, strict=True):
                np.testing.assert_array_equal(x, y)


def _tiny_int8_network(stride: int) -> bytes:
    """A QDQ graph shaped like the int8 network's head: the float image quantized with scale
    1 and zero point 0, then a 3x3 convolution (`stride`, 1 px of padding) over its 3 channels
    with per-channel int8 weights, its result quantized; three outputs named as CenterFace's."""
    from onnx import TensorProto, helper, numpy_helper

    def c(name: str, value) -> object:
        return numpy_helper.from_array(np.asarray(value), name)

    rng = np.random.default_rng(0)
    inits = [
        c("one", np.float32(1)),
        c("zero", np.uint8(0)),
        c("w", rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)),
        c("w_scale", rng.uniform(1e-5, 5e-5, 4).astype(np.float32)),
        c("w_zero", np.zeros(4, np.int8)),
        c("out_scale", np.float32(0.05)),
    ]
    mk = helper.make_node
    nodes = [
        mk("QuantizeLinear", [INPUT, "one", "zero"], ["xq"]),
        mk("DequantizeLinear", ["xq", "one", "zero"], ["x"]),
        mk("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wf"], axis=0),
        mk("Conv", ["x", "wf"], ["y"], kernel_shape=[3, 3], strides=[stride] * 2, pads=[1] * 4),
        mk("QuantizeLinear", ["y", "out_scale", "zero"], ["yq"]),
        *(mk("DequantizeLinear", ["yq", "out_scale", "zero"], [name]) for name in OUTPUTS[:3]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in OUTPUTS[:3]],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.mark.parametrize(("stride", "packed"), [(2, True), (1, False)])
def test_the_serving_transform_packs_only_the_convolution_it_can_rewrite(stride, packed):
    """The first convolution is rewritten for the packed image only when it is the 3x3 stride-2
    one; either way the serving graph gives the network graph's outputs bit for bit."""
    import onnxruntime as ort

    network = _tiny_int8_network(stride)
    a, b = (
        ort.InferenceSession(g, providers=["CPUExecutionProvider"])
        for g in (network, serving_graph(network))
    )
    channels = b.get_inputs()[0].shape[-1]
    assert channels == (PACKED if packed else 3)
    rng = np.random.default_rng(1)
    for h, w in ((32, 64), (37, 50), (3, 5)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = a.run(OUTPUTS[:3], {INPUT: to_blob(image)})
        have = b.run(SERVING_OUTPUTS, {SERVING_INPUT: feeder(channels)(image)})
        for x, y in zip(want, have, strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_packed_image_holds_its_2x2_blocks():
    """to_packed: the image padded to /32 and by one pixel all round, block (i, j)'s pixel
    (row, column) in channels (2 * row + column) * 3 + colour."""

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 70, 3), dtype=np.uint8)
    packed = to_packed(image)
    assert packed.shape == (1, 64 // 2 + 1, 96 // 2 + 1, PACKED) and packed.dtype == np.uint8
    padded = np.zeros((66, 98, 3), np.uint8)
    padded[1:38, 1:71] = image
    for row in range(2):
        for col in range(2):
            first = (2 * row + col) * 3
            np.testing.assert_array_equal(
                packed[0, :, :, first : first + 3], padded[row::2, col::2]
            )


def test_a_graph_that_cannot_be_served_is_a_detector_error(tmp_path, monkeypatch):
    """A network graph the serving transform cannot read fails with a DetectorError (a clear
    one-line reason), not onnx's own exception."""
    from sanitizer.detect import centerface
    from sanitizer.errors import DetectorError

    monkeypatch.setenv("SANITIZER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(centerface, "_network", lambda path, precision: (b"not a graph", "", ""))
    with pytest.raises(DetectorError, match="cannot prepare the CenterFace graph"):
        centerface._serving("centerface.onnx", "fp32")


def test_threads_share_one_arena_and_find_what_one_thread_finds():
    """Video scans on two threads, each with its own session over one shared arena (memory):
    running them at once on pictures of different sizes changes no detection."""
    from concurrent.futures import ThreadPoolExecutor

    det = shipped()
    scenes = _scenes() * 3
    alone = [det.detect(image) for image in scenes]
    with ThreadPoolExecutor(2) as pool:
        forward = pool.submit(lambda: [det.detect(image) for image in scenes])
        backward = pool.submit(lambda: [det.detect(image) for image in scenes[::-1]][::-1])
        together = [forward.result(), backward.result()]
    for dets in together:
        for a, b in zip(alone, dets, strict=True):
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    options = det.model._session().get_session_options()
    assert options.get_session_config_entry("session.use_env_allocators") == "1"
    assert not options.enable_mem_pattern


def test_int8_model_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITIZER_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(quantize, "build_int8", lambda fp32: calls.append(1) or b"int8:" + fp32)
    assert quantize.int8_model(b"net", "ab" * 32) == b"int8:net"
    assert quantize.int8_model(b"net", "ab" * 32) == b"int8:net"
    assert len(calls) == 1
    assert quantize.cache_path("ab" * 32).read_bytes() == b"int8:net"


def test_damaged_cached_graph_is_built_again(tmp_path, monkeypatch):
    """A cached graph whose bytes no longer match the sha256 written beside it is rebuilt."""
    monkeypatch.setenv("SANITIZER_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(quantize, "build_int8", lambda fp32: calls.append(1) or b"int8:" + fp32)
    assert quantize.int8_model(b"net", "ab" * 32) == b"int8:net"
    quantize.cache_path("ab" * 32).write_bytes(b"int8:ne")  # cut short
    assert quantize.int8_model(b"net", "ab" * 32) == b"int8:net"
    assert len(calls) == 2


def test_prepared_fp32_graph_is_cached(tmp_path, monkeypatch):
    """Workers running fp32 read the prepared graph from the cache (no onnx import)."""
    from sanitizer.detect import centerface

    monkeypatch.setenv("SANITIZER_CACHE", str(tmp_path / "cache"))
    centerface._prepared_model.cache_clear()
    try:
        data, sha = centerface._prepared_model(str(centerface.model_path()))
        assert quantize.prepared_path(sha).read_bytes() == data
        monkeypatch.setattr(centerface, "_prepare", lambda path: pytest.fail("prepared again"))
        centerface._prepared_model.cache_clear()
        assert centerface._prepared_model(str(centerface.model_path()))[0] == data
    finally:
        centerface._prepared_model.cache_clear()


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
        det = shipped(precision="int8")
        assert det.model_sha256 == shipped(precision="fp32").model_sha256
        assert det.precision == "fp32"
        assert centerface.int8_ready()
    finally:
        monkeypatch.delenv("SANITIZER_INT8")
        centerface._network.cache_clear()


# -- the int8 network is pinned ---------------------------------------------------------


@pytest.mark.parametrize(
    "pinned, precision",
    [
        ("match", "int8"),  # the derived graph is the validated one
        (None, "int8-unpinned"),  # an onnxruntime version nobody validated: run, and say so
        ("0" * 64, "fp32"),  # a different graph even after a rebuild: the fp32 file runs
    ],
)
def test_int8_graph_is_pinned(int8_on, tmp_path, monkeypatch, pinned, precision):
    from sanitizer.detect import centerface, describe

    monkeypatch.setenv("SANITIZER_CACHE", str(tmp_path))
    builds = []
    monkeypatch.setattr(quantize, "build_int8", lambda fp32: builds.append(1) or b"int8 graph")
    expected = hashlib.sha256(b"int8 graph").hexdigest() if pinned == "match" else pinned
    monkeypatch.setattr(quantize, "expected_int8_sha256", lambda fp32_sha: expected)
    centerface._network.cache_clear()
    info = describe(DetectConfig(precision="int8"))
    assert info.precision == precision
    fp32_sha = centerface._file_sha256(str(centerface.model_path()))
    assert (info.model_sha256 == fp32_sha) == (precision == "fp32")
    assert len(builds) == (2 if precision == "fp32" else 1)  # a mismatch is rebuilt once
    centerface._network.cache_clear()
    assert describe(DetectConfig(precision="int8")).precision == precision
    assert len(builds) == (2 if precision == "fp32" else 1)  # ... per machine, not per process
    centerface._network.cache_clear()


def test_shipped_pin_matches_this_machine(int8_on):
    """The graph this machine derives is the pinned one (when this onnxruntime is pinned)."""
    from sanitizer.detect import centerface

    sha = centerface._file_sha256(str(centerface.model_path()))
    if quantize.expected_int8_sha256(sha) is None:
        pytest.skip(f"onnxruntime {quantize._ort_version()} has no pinned int8 graph")
    det = shipped(precision="int8")
    assert det.precision == "int8" and det.model_sha256 == quantize.expected_int8_sha256(sha)


# -- the scan policy over any model -----------------------------------------------------


class Centre:
    """A toy model: one face in the middle third of whatever image it is given."""

    name, model_sha256, precision = "centre", "c" * 64, ""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def infer(self, image, threshold):
        h, w = image.shape[:2]
        self.sizes.append((w, h))
        return Detections(np.array([[w / 3, h / 3, 2 * w / 3, 2 * h / 3]]), np.array([0.9]))


def test_aspect_passes_on_square_images_map_boxes_back():
    from sanitizer.detect.policy import ScanDetector

    cfg = from_dict({"detect": {"aspect_wide": 1.5, "aspect_tall": 1.25, "upscale": 0}}).detect
    model = Centre()
    det = ScanDetector(model, cfg)
    faces = det.detect(np.zeros((416, 416, 3), np.uint8))
    assert model.sizes == [(416, 416), (624, 416), (333, 416)]  # native, wide, tall (narrowed)
    assert len(faces) == 1 and np.allclose(faces.boxes[0], [416 / 3, 416 / 3, 832 / 3, 832 / 3])
    model.sizes.clear()
    det.detect(np.zeros((400, 600, 3), np.uint8))  # not square: native pass only
    assert model.sizes == [(600, 400)]


class Shifted:
    """A toy model seeing each face twice, the second box shifted by a quarter of its side (IoU
    0.39): a small one (20 px) and a big one (90 px)."""

    name, model_sha256, precision = "shifted", "s" * 64, ""

    def infer(self, image, threshold):
        boxes = []
        for x, y, s in ((50, 50, 20), (200, 50, 90)):
            boxes += [[x, y, x + s, y + s], [x + s / 4, y + s / 4, x + s * 5 / 4, y + s * 5 / 4]]
        return Detections(np.array(boxes, np.float32), np.array([0.9, 0.8, 0.9, 0.8], np.float32))


@pytest.mark.parametrize("grow", [32, 0])
def test_small_face_boxes_grow_to_enclose_the_boxes_merged_into_them(grow):
    from sanitizer.detect.policy import ScanDetector

    cfg = from_dict({"detect": {"upscale": 0, "grow_small": grow}}).detect
    faces = ScanDetector(Shifted(), cfg).detect(np.zeros((300, 400, 3), np.uint8))
    assert len(faces) == 2  # one box per face either way (the audit's detections)
    small, big = sorted(faces.boxes.tolist())
    # the small face's box covers both views of it; a big face keeps its best box
    assert small == pytest.approx([50, 50, 75, 75] if grow else [50, 50, 70, 70])
    assert big == pytest.approx([200, 50, 290, 140])


def test_small_images_upscale_to_a_minimum_side():
    from sanitizer.detect.policy import ScanDetector

    cfg = from_dict({"detect": {"upscale_min_side": 960, "upscale_hint": 0.0}}).detect
    model = Centre()
    ScanDetector(model, cfg).detect(np.zeros((240, 320, 3), np.uint8))
    assert model.sizes == [(320, 240), (960, 720)]  # 3x, more than `upscale` (1.5)


# -- a model from another package, by entry point ----------------------------------------

PLUGIN = """
import numpy as np
from sanitizer.records import Detections


class Middle:
    name = "middle"
    model_sha256 = "m" * 64

    def infer(self, image, threshold):
        h, w = image.shape[:2]
        return Detections(np.array([[w / 3, h / 3, 2 * w / 3, 2 * h / 3]]), np.array([0.9]))


def build(cfg):
    return Middle()
"""


@pytest.mark.integration
def test_detector_plugin_by_entry_point(tmp_path):
    """A separate package declaring a `sanitizer.detectors` entry point (a dist-info on
    PYTHONPATH, as pip would install it) is run by `sanitizer run --detector middle`."""
    import pandas as pd
    from PIL import Image

    from tests.conftest import run_cli

    site = tmp_path / "site"
    (site / "middleface").mkdir(parents=True)
    (site / "middleface" / "__init__.py").write_text(PLUGIN)
    info = site / "middleface-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: middleface\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sanitizer.detectors]\nmiddle = middleface:build\n")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(src / "grey.png")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    args = ("run", str(src), str(dst), "--detector", "middle", "--method", "solid")
    proc = run_cli(*args, "--workers", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    out = np.asarray(Image.open(dst / "grey.png").convert("RGB"))
    assert (out[150, 150] == 0).all() and (out[5, 5] == 200).all()
    files = pd.read_parquet(dst / "_audit" / "files")
    assert (files.detector == "middle").all() and (files.model_sha256 == "m" * 64).all()
    # without the package, the name is an unknown detector, said in one line
    proc = run_cli(*args)
    assert proc.returncode != 0 and "unknown detector 'middle'" in proc.stderr
    assert "Traceback" not in proc.stderr
