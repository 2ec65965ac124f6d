"""Video: PyAV decode → detect → track → redact → encode, audio copied, in four threads.

    decode thread   demux + threaded decode; a small upright RGB copy of every scanned frame
    calling thread  detection (onnxruntime releases the GIL) + temporal coverage (tracking.py);
                    while every face in view is big, most scans run at half the detection size
    redact thread   redaction in the frame's own YUV planes (off the encoder's critical path),
                    box masks held steady while a face moves a little (SteadyMasks)
    encode thread   H.264/VP9 encode, mux (+ audio)

Frames never go through a full-size RGB round trip: detection sees a downscaled upright RGB
image, redaction works on the decoded yuv420p planes (so colours, range and colorspace stay
exactly as decoded), and frames without faces reach the encoder untouched. Queues are
bounded, so memory does not grow with duration.

Output: same container, H.264 yuv420p (VP9 for WebM); every frame keeps its timestamp in the
input's time base, so frame count, rate and duration match; the display rotation is written
back as a display matrix; the first audio stream is copied packet for packet (re-encoded
only if the container cannot hold its codec); subtitles, data, attachments, chapters and
every container/stream metadata tag are dropped, and so is cover art.

Fail closed: any error raises DecodeError/EncodeError and the caller publishes nothing.
Packets the decoder rejects are counted in `dropped_packets` (together with frames the
container declared but that could not be read, e.g. a truncated file); every frame that was
decoded is scanned and redacted, and a file with no decodable frame fails.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np

from sanitizer.errors import DecodeError, EncodeError, MediaError
from sanitizer.manifest import EXTENSIONS as MANIFEST_EXTENSIONS
from sanitizer.media.tracking import FrameBoxes, TemporalCoverage
from sanitizer.records import Detections
from sanitizer.redact import RedactParams, redact_inplace


@dataclass(slots=True)
class VideoOutcome:
    # one entry per frame with faces: (frame index, t_ms, boxes+scores, track ids, detected flags)
    detections: list[tuple[int, float, Detections, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )
    frames: int = 0
    fps: float = 0.0
    duration_ms: float = 0.0
    audio_kept: bool = False
    dropped_packets: int = 0


# sniffed container -> FFmpeg muxer name
MUXERS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "avi": "avi"}
# output extension -> container, when the caller did not say (the manifest's own table)
EXTENSIONS = {ext: fmt for ext, (kind, fmt) in MANIFEST_EXTENSIONS.items() if kind == "video"}
# audio encoder used when the container cannot hold the input's audio codec
FALLBACK_AUDIO = {"webm": "libopus"}

_QUEUE = 6  # frames in flight between stages (each way)
# A stage that waits this long for its neighbour (no frame decoded, detected or encoded) treats
# the pipeline as hung: the file fails instead of holding its worker for ever.
_STALL = 300.0
_JOIN = 5.0  # seconds a stage gets to notice a stop; one that does not is stuck in native code
_MAX_LEAD = 32  # most frames held back by the tracker's look-ahead
# Mask regions in video frames are aligned to H.264's 16-px macroblocks (luma; 8 px in the
# half-size chroma planes): see redact_inplace's `grid`
MASK_GRID = 16
_END = object()


class _Abort(Exception):
    """Another stage failed; unwind quietly (its exception is the one reported)."""


# -- geometry -----------------------------------------------------------------------------
def rotation_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns that make a frame upright, from `frame.rotation`."""
    return int(round(float(rotation) / 90.0)) % 4


def upright_to_stored(boxes: np.ndarray, turns: int, width: int, height: int) -> np.ndarray:
    """Map x1,y1,x2,y2 boxes from the upright frame (np.rot90(stored, turns)) back to the
    stored frame of `width` x `height`."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    if turns == 0:
        out = b.copy()
    elif turns == 1:
        out = np.stack([width - y2, x1, width - y1, x2], 1)
    elif turns == 2:
        out = np.stack([width - x2, height - y2, width - x1, height - y1], 1)
    else:
        out = np.stack([y1, height - x2, y2, height - x1], 1)
    return out.astype(np.float32)


def detect_size(width: int, height: int, vcfg) -> tuple[int, int]:
    """Size of the (stored-orientation) image given to the detector: its long side is
    `detect_scale` x the frame's, clamped to [detect_min_side, detect_max_side], and never
    more than the frame's own (no upscaling); sides aligned to 32 px (see `_align`)."""
    long_side = max(width, height)
    target = long_side * float(vcfg.detect_scale)
    target = min(float(vcfg.detect_max_side), max(float(vcfg.detect_min_side), target))
    scale = min(1.0, target / long_side)
    return _align(width * scale), _align(height * scale)


def _align(side: float) -> int:
    """Sides of 256 px and more go to the nearest multiple of 32 (ties down): the network pads
    its input to /32, so 360 px would cost as much as 384 (the aspect changes by < 5 %)."""
    if side < 256:
        return max(2, int(round(side)))
    return int((side + 15) // 32) * 32


# -- detection ----------------------------------------------------------------------------
class FrameDetector:
    """Detection on one downscaled upright frame.

    CenterFace (anything with `infer(image, threshold)` and `finish(dets)`) gets one raw pass
    at the given size with the detector's own threshold, then its minimum face size and NMS
    (`finish`): tracking supplies the temporal second opinion that the image path gets from
    extra passes (mirror, 2x), which would cost 2-3x per frame. Any other detector's `detect`
    is used as is."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self._raw = all(
            callable(getattr(detector, m, None)) for m in ("infer", "finish")
        ) and hasattr(detector, "threshold")
        self.parallel_safe = self._raw  # CenterFace keeps one onnxruntime session per thread

    def __call__(self, small: np.ndarray, scale_x: float, scale_y: float) -> Detections:
        dets = (
            self.detector.infer(small, self.detector.threshold)
            if self._raw
            else self.detector.detect(small)
        )
        if not len(dets):
            return Detections.empty()
        dets = Detections(
            dets.boxes * np.array([scale_x, scale_y, scale_x, scale_y], np.float32), dets.scores
        )
        return self.detector.finish(dets) if self._raw else dets


# -- redaction in YUV ---------------------------------------------------------------------
def _plane(frame: av.VideoFrame, i: int, w: int, h: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:h, :w]


def _yuv_params(
    params: RedactParams, full_range: bool = False
) -> tuple[RedactParams, RedactParams, RedactParams]:
    """Per-plane parameters: a solid colour becomes its BT.601 Y, U, V values."""
    if params.method != "solid":
        return params, params, params
    r, g, b = (float(c) for c in params.color)
    if full_range:
        y = 0.299 * r + 0.587 * g + 0.114 * b
        u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
        v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    else:
        y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
        u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
        v = 128 + 0.439 * r - 0.368 * g - 0.071 * b

    def mk(c: float) -> RedactParams:
        return RedactParams(
            params.method,
            params.shape,
            params.margin,
            params.blocks,
            params.blur_strength,
            (int(round(c)),) * 3,
        )

    return mk(y), mk(u), mk(v)


def redact_yuv420p(
    frame: av.VideoFrame, boxes: np.ndarray, params: RedactParams
) -> list[tuple[int, int, int, int]]:
    """Redact `boxes` (stored-frame pixels) in a yuv420p frame's planes, in place; returns the
    regions painted (frame pixels, on the macroblock grid). The frame is made writable first,
    so a decoder's reference buffer is never touched."""
    if not len(boxes):
        return []
    frame.make_writable()
    w, h = frame.width, frame.height
    py, pu, pv = _yuv_params(params, full_range=frame.color_range == 2)
    regions = redact_inplace(_plane(frame, 0, w, h), boxes, py, MASK_GRID)
    cw, ch = (w + 1) // 2, (h + 1) // 2
    half = np.asarray(boxes, np.float32) / 2
    redact_inplace(_plane(frame, 1, cw, ch), half, pu, MASK_GRID // 2)
    redact_inplace(_plane(frame, 2, cw, ch), half, pv, MASK_GRID // 2)
    return regions


class SteadyMasks:
    """Box masks that stay put while a face moves a little (box-shaped masks only).

    Per track, the box a frame's mask is painted for is the previous frame's box as long as
    that still contains the face's new box and is at most `max_area` times its area; otherwise
    the new box grown by `slack` (room for the next frames' jitter). The painted box always
    contains the face's box, so masks only grow. A mask that stays put for several frames
    (same region, same blur) lets the encoder reuse it instead of re-coding a region that
    shifts with every pixel of detector jitter and tracking interpolation."""

    def __init__(self, slack: float = 1.1, max_area: float = 1.6) -> None:
        self.slack, self.max_area = float(slack), float(max_area)
        self._last: dict[int, np.ndarray] = {}

    def __call__(self, boxes: np.ndarray, track_ids: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = b.copy()
        last: dict[int, np.ndarray] = {}
        for i, (box, tid) in enumerate(
            zip(b, np.asarray(track_ids).reshape(-1).tolist(), strict=True)
        ):
            prev = self._last.get(tid)
            if (
                prev is not None
                and _contains(prev, box)
                and _area(prev) <= self.max_area * _area(box)
            ):
                out[i] = prev
            else:
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                hw, hh = (box[2] - box[0]) * self.slack / 2, (box[3] - box[1]) * self.slack / 2
                out[i] = (cx - hw, cy - hh, cx + hw, cy + hh)
            last[tid] = out[i]
        self._last = last  # tracks not in this frame are forgotten
        return out


def _contains(outer: np.ndarray, inner: np.ndarray) -> bool:
    return bool(
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and outer[2] >= inner[2]
        and outer[3] >= inner[3]
    )


def _area(b: np.ndarray) -> float:
    return float(max(1e-6, (b[2] - b[0]) * (b[3] - b[1])))


class RegionMarker:
    """Marks a frame's redacted regions for the encoder (FFmpeg's regions-of-interest side data,
    attached by the `addroi` filter; the frame's pixels are not copied): libx264 raises the
    quantizer there by `qoffset` x its QP range. A blurred face needs few bits, and x264 spent
    ~20 % more time on a crowd's blurred faces than on the original ones (BENCHMARKS.md)."""

    def __init__(self, qoffset: float) -> None:
        self.qoffset = Fraction(qoffset).limit_denominator(100)
        self._graph = None
        self._key: tuple = ()

    def __call__(
        self, frame: av.VideoFrame, regions: list[tuple[int, int, int, int]]
    ) -> av.VideoFrame:
        if not regions or not self.qoffset:
            return frame
        try:
            return self._mark(frame, regions)
        except (av.error.FFmpegError, ValueError):
            self.qoffset = Fraction(0)  # an FFmpeg without the filter: encode as is from now on
            return frame

    def _mark(
        self, frame: av.VideoFrame, regions: list[tuple[int, int, int, int]]
    ) -> av.VideoFrame:
        key = tuple(regions)  # a file's frames keep one size and format (a change fails the file)
        if key != self._key:  # steady masks keep the same regions for frames on end
            self._graph, self._key = self._build(frame, regions), key
        self._graph.push(frame)
        return self._graph.pull()

    def _build(self, frame: av.VideoFrame, regions: list[tuple[int, int, int, int]]):
        import av.filter

        graph = av.filter.Graph()
        last = graph.add_buffer(
            width=frame.width,
            height=frame.height,
            format=frame.format.name,
            time_base=frame.time_base or Fraction(1, 25),
        )
        q = f"{self.qoffset.numerator}/{self.qoffset.denominator}"
        for x1, y1, x2, y2 in regions:
            roi = graph.add("addroi", f"x={x1}:y={y1}:w={x2 - x1}:h={y2 - y1}:qoffset={q}")
            last.link_to(roi)
            last = roi
        sink = graph.add("buffersink")
        last.link_to(sink)
        graph.configure()
        return graph


# -- the pipeline -------------------------------------------------------------------------
@dataclass(slots=True)
class _Frame:
    index: int
    frame: av.VideoFrame  # yuv420p, stored orientation
    pts: int
    small: np.ndarray | None  # upright RGB for detection, None when this frame is not scanned


class _Stage(threading.Thread):
    def __init__(self, name: str, target, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.stop = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except _Abort:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            self.error = exc
            self.stop.set()


class _Hung(DecodeError):
    """A stage made no progress for `_STALL` seconds; `stuck` names stage threads that did
    not stop (still inside native code)."""

    stuck: list[str] = []  # noqa: RUF012 - replaced per instance, never mutated


def _stalled(stuck: list[str] | None = None) -> _Hung:
    exc = _Hung(f"video pipeline made no progress for {_STALL:g} s (decoder or encoder hung)")
    exc.stuck = stuck or []
    return exc


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    deadline = time.monotonic() + _STALL
    while True:
        if stop.is_set():
            raise _Abort
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if time.monotonic() > deadline:
                raise _stalled() from None


def _get(q: queue.Queue, stop: threading.Event):
    deadline = time.monotonic() + _STALL
    while True:
        if stop.is_set():
            raise _Abort
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise _stalled() from None


def _muxer(container: str, out_path: str) -> tuple[str, str]:
    kind = (
        container
        if container in MUXERS
        else EXTENSIONS.get(os.path.splitext(out_path)[1].lower(), "")
    )
    if kind not in MUXERS:
        raise EncodeError(
            f"unsupported video container {container or os.path.splitext(out_path)[1]!r}"
        )
    return kind, MUXERS[kind]


def _video_options(kind: str, vcfg) -> tuple[str, dict[str, str]]:
    if kind == "webm":
        return "libvpx-vp9", {
            "crf": str(vcfg.vp9_crf),
            "b": "0",
            "deadline": "realtime",
            "cpu-used": str(vcfg.vp9_speed),
            "row-mt": "1",
        }
    return vcfg.codec, {"crf": str(vcfg.crf), "preset": vcfg.preset}


def sanitize(
    src_path: str, out_path: str, detector, params: RedactParams, vcfg, container: str = ""
) -> VideoOutcome:
    """Redact every face in every frame of the video at `src_path` into `out_path`."""
    kind, muxer = _muxer(container, out_path)
    try:
        inp = av.open(src_path, "r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DecodeError(f"cannot open video: {_reason(exc)}") from None
    try:
        return _run(inp, out_path, kind, muxer, FrameDetector(detector), params, vcfg)
    except BaseException as exc:
        _remove(out_path)  # never leave a partial output behind
        if isinstance(exc, _Hung) and exc.stuck:
            inp = None  # a stage is still inside FFmpeg with it: leave it to that thread
        raise
    finally:
        if inp is not None:
            inp.close()


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _reason(exc: BaseException) -> str:
    # FFmpeg's and the OS's errors: their message, without the errno and the (temporary) path
    text = (
        exc.strerror
        if isinstance(exc, (av.error.FFmpegError, OSError)) and exc.strerror
        else str(exc)
    )
    return " ".join(str(text).split())[:300] or type(exc).__name__


def _run(
    inp, out_path: str, kind: str, muxer: str, fdet: FrameDetector, params: RedactParams, vcfg
) -> VideoOutcome:
    # cover art (an attached picture) is a video stream too: it is neither scanned nor kept
    still = av.stream.Disposition.attached_pic
    videos = [s for s in inp.streams.video if not s.disposition & still]
    if not videos:
        raise DecodeError("no video stream")
    vin = videos[0]
    ain = inp.streams.audio[0] if inp.streams.audio else None
    vin.thread_type = "AUTO"
    if vcfg.threads:
        vin.thread_count = vcfg.threads
    tb = vin.time_base
    rate = vin.average_rate or vin.guessed_rate or vin.base_rate or Fraction(25)
    every = max(1, int(vcfg.detect_every))
    declared = int(vin.frames or 0)

    stop = threading.Event()
    q_dec: queue.Queue = queue.Queue(_QUEUE)
    q_enc: queue.Queue = queue.Queue(_QUEUE)
    q_out: queue.Queue = queue.Queue(_QUEUE)
    stats = {
        "dropped": 0,
        "frames": 0,
        "turns": 0,
        "first_pts": None,
        "last_pts": None,
        "last_dur": 0,
        "audio_kept": False,
    }

    # ---- stage 1: demux + decode ------------------------------------------------------
    def decode() -> None:
        index = 0
        last_pts = None
        size = None
        streams = [vin] + ([ain] if ain is not None else [])
        demux = inp.demux(streams)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.EOFError:
                break
            except av.error.FFmpegError:
                stats["dropped"] += 1  # unreadable data: the demuxer cannot go on
                break
            if packet.stream is not vin:
                if packet.dts is not None and packet.size:
                    _put(q_dec, ("a", packet), stop)
                continue
            if not packet.size:  # demuxer's flush packet; the decoder is flushed below
                continue
            try:
                frames = vin.decode(packet)
            except av.error.FFmpegError:
                stats["dropped"] += 1
                continue
            for fr in frames:
                index, last_pts, size = _emit(fr, index, last_pts, size)
        try:
            for fr in vin.decode(None):
                index, last_pts, size = _emit(fr, index, last_pts, size)
        except av.error.FFmpegError:
            stats["dropped"] += 1
        stats["frames"] = index
        _put(q_dec, _END, stop)

    def _emit(fr: av.VideoFrame, index: int, last_pts, size):
        if size is None:
            size = (fr.width, fr.height)
            stats["turns"] = rotation_turns(fr.rotation)
        if (fr.width, fr.height) != size:
            raise DecodeError(
                f"frame size changes mid-stream ({size[0]}x{size[1]} -> {fr.width}x{fr.height})"
            )
        pts = fr.pts
        if pts is None:
            pts = 0 if last_pts is None else last_pts + max(1, stats["last_dur"] or 1)
        if last_pts is not None and pts <= last_pts:
            pts = last_pts + 1  # the encoder needs strictly increasing timestamps
        if stats["first_pts"] is None:
            stats["first_pts"] = pts
        if last_pts is not None:
            stats["last_dur"] = pts - last_pts
        if fr.duration:
            stats["last_dur"] = fr.duration
        stats["last_pts"] = pts
        small = None
        if index % every == 0:
            sw, sh = detect_size(fr.width, fr.height, vcfg)
            small = fr.reformat(
                width=sw, height=sh, format="rgb24", interpolation="AREA"
            ).to_ndarray()
            if stats["turns"]:
                small = np.ascontiguousarray(np.rot90(small, stats["turns"]))
        if fr.format.name != "yuv420p":
            fr = fr.reformat(format="yuv420p")
        _put(q_dec, _Frame(index, fr, pts, small), stop)
        return index + 1, pts, size

    # ---- stage 3: redact + encode + mux ----------------------------------------------------
    out_state: dict = {"out": None, "vout": None, "aout": None, "aenc": None, "pending_audio": []}

    codec, options = _video_options(kind, vcfg)

    def open_output(first: av.VideoFrame) -> None:
        try:
            out = av.open(out_path, "w", format=muxer, options={"fflags": "+bitexact"})
        except (av.error.FFmpegError, OSError) as exc:
            raise EncodeError(f"cannot create output: {_reason(exc)}") from None
        out_state["out"] = out
        vout = out.add_stream(codec, rate=rate, options=options)
        vout.width, vout.height, vout.pix_fmt = first.width, first.height, "yuv420p"
        vout.codec_context.time_base = tb
        vout.time_base = tb
        if vcfg.threads:
            vout.thread_count = vcfg.threads
        if codec == "libx264":
            # PyAV opens encoders with slice threads; x264's frame threads pipeline whole frames
            # and keep both cores busier: +17-18 % fps, with or without detection (BENCHMARKS.md)
            vout.thread_type = "FRAME"
        if stats["turns"]:
            vout.set_display_rotation(stats["turns"] * 90)
        vout.codec_context.color_range = first.color_range
        vout.codec_context.colorspace = first.colorspace
        vout.codec_context.color_primaries = first.color_primaries
        vout.codec_context.color_trc = first.color_trc
        out_state["vout"] = vout
        if ain is not None:
            name = ain.codec_context.name
            if name in out.supported_codecs:
                out_state["aout"] = out.add_stream_from_template(ain)
            else:
                enc = FALLBACK_AUDIO.get(kind, "aac")
                aout = out.add_stream(enc, rate=ain.codec_context.sample_rate or 48000)
                out_state["aout"], out_state["aenc"] = aout, True
            stats["audio_kept"] = True
        for p in out_state["pending_audio"]:
            mux_audio(p)
        out_state["pending_audio"].clear()

    def mux_audio(packet) -> None:
        out, aout = out_state["out"], out_state["aout"]
        if out_state["aenc"]:
            try:
                frames = ain.decode(packet)
            except av.error.FFmpegError:
                return  # an undecodable audio packet is dropped (audio carries no faces)
            for af in frames:
                af.pts = None
                out.mux(aout.encode(af))
        else:
            packet.stream = aout
            out.mux(packet)

    def redact() -> None:
        """Paint the faces into the frames' planes, off the encoder's thread (it is the
        pipeline's critical path: a big blurred face cost 20 % fps there). Box masks are
        steadied (SteadyMasks): x264 then spends ~40 % less time per frame on a close-up."""
        # box masks stay put while a face moves a little (ellipses are painted as tracked: one
        # ellipse containing another needs ~40 % of slack)
        steady = SteadyMasks() if params.shape == "box" else None
        marker = (
            RegionMarker(vcfg.redacted_qoffset)
            if codec == "libx264" and vcfg.redacted_qoffset
            else None
        )
        while True:
            item = _get(q_enc, stop)
            if item is not _END and item[0] == "v":
                boxes = item[2] if steady is None else steady(item[2], item[4])
                if len(boxes):
                    regions = redact_yuv420p(item[1], boxes, params)
                    if marker is not None:
                        item = (item[0], marker(item[1], regions), *item[2:])
            _put(q_out, item, stop)
            if item is _END:
                break

    def encode() -> None:
        first = True
        while True:
            item = _get(q_out, stop)
            if item is _END:
                break
            if item[0] == "a":  # ("a", packet)
                if out_state["out"] is None:
                    out_state["pending_audio"].append(item[1])
                else:
                    mux_audio(item[1])
                continue
            fr, pts = item[1], item[3]
            if first:
                open_output(fr)
                first = False
            fr.pts, fr.time_base = pts, tb
            fr.pict_type = av.video.frame.PictureType.NONE
            out_state["out"].mux(out_state["vout"].encode(fr))
        if out_state["out"] is None:
            return
        out, vout = out_state["out"], out_state["vout"]
        out.mux(vout.encode(None))
        if out_state["aenc"]:
            out.mux(out_state["aout"].encode(None))
        out.close()
        out_state["out"] = None

    dec = _Stage("sanitizer-decode", decode, stop)
    red = _Stage("sanitizer-redact", redact, stop)
    enc = _Stage("sanitizer-encode", _wrap_encode(encode), stop)
    for stage in (dec, red, enc):
        stage.start()
    outcome = VideoOutcome()
    try:
        _detect_loop(q_dec, q_enc, stop, fdet, vcfg, stats, tb, outcome)
    except _Abort:
        pass
    except BaseException:
        stop.set()
        raise
    finally:
        if stop.is_set():
            stuck = _join(dec, _JOIN) + _join(red, _JOIN) + _join(enc, _JOIN)
            if out_state["out"] is not None and enc.name not in stuck:
                with contextlib.suppress(av.error.FFmpegError):
                    out_state["out"].close()
            if stuck:
                raise _stalled(stuck) from None
    stuck = _join(dec, _STALL) + _join(red, _STALL) + _join(enc, _STALL)
    if stuck:
        stop.set()
        raise _stalled(stuck)
    for stage, wrap in ((dec, DecodeError), (red, EncodeError), (enc, EncodeError)):
        if stage.error is not None:
            exc = stage.error
            if isinstance(exc, MediaError):
                raise exc
            if isinstance(exc, av.error.FFmpegError):
                raise wrap(_reason(exc)) from None
            raise exc
    if stats["frames"] == 0:
        raise DecodeError("no decodable video frame")
    outcome.frames = stats["frames"]
    outcome.audio_kept = stats["audio_kept"]
    dur = (stats["last_pts"] - stats["first_pts"] + (stats["last_dur"] or 0)) * tb
    outcome.duration_ms = float(dur * 1000)
    outcome.fps = float(rate) if rate else (outcome.frames / float(dur) if dur else 0.0)
    outcome.dropped_packets = stats["dropped"] + max(0, declared - stats["frames"])
    return outcome


def _join(stage: _Stage, timeout: float) -> list[str]:
    """Join a stage thread; [its name] if it is still running after `timeout` (stuck)."""
    stage.join(timeout)
    return [stage.name] if stage.is_alive() else []


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _detect_threads(fdet: FrameDetector, vcfg) -> int:
    # only detectors known to keep one session per thread run in parallel
    return max(1, int(vcfg.detect_threads)) if fdet.parallel_safe else 1


def _detection_pool(n: int) -> ThreadPoolExecutor | None:
    """A process-wide pool of `n` detection threads (None for n == 1: detect inline)."""
    if n <= 1:
        return None
    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sanitizer-detect")
        return _POOLS[n]


def _wrap_encode(fn):
    def run() -> None:
        try:
            fn()
        except av.error.FFmpegError as exc:
            raise EncodeError(f"encoding failed: {_reason(exc)}") from None

    return run


def _detect_loop(
    q_dec, q_enc, stop, fdet: FrameDetector, vcfg, stats, tb, outcome: VideoOutcome
) -> None:
    every = max(1, int(vcfg.detect_every))
    # Coarse scans (VideoConfig.full_scan_every): a face that only full scans see is still
    # carried to the next full scan, and a face that appears between two full scans is covered
    # back to the first of them, so coarse scans never leave a frame less covered than if
    # only the full scans had run.
    full_every = max(1, int(vcfg.full_scan_every))
    coarse = float(vcfg.coarse_scale)
    if not 0 < coarse < 1:
        full_every = 1
    span = every * full_every  # frames between two full scans
    # the look-ahead must reach the next scanned frame; it is capped because it holds frames
    cov = TemporalCoverage(
        keep=max(vcfg.track_keep, span),
        lead=min(_MAX_LEAD, max(vcfg.track_lead, span)),
        iou_threshold=vcfg.track_iou,
    )
    held: dict[int, _Frame] = {}

    def release(done: list[FrameBoxes]) -> None:
        for fb in done:
            f = held.pop(fb.frame)
            stored = f.frame
            boxes = np.zeros((0, 4), np.float32)
            if len(fb):
                boxes = upright_to_stored(fb.boxes, stats["turns"], stored.width, stored.height)
                t_ms = float((f.pts - stats["first_pts"]) * tb * 1000)
                outcome.detections.append(
                    (fb.frame, t_ms, fb.detections(), fb.track_ids, fb.detected)
                )
            _put(q_enc, ("v", stored, boxes, f.pts, fb.track_ids), stop)

    # Scanned frames go to a small pool of persistent detection threads (one onnxruntime
    # session each, so files reuse them); results are consumed in frame order.
    width = _detect_threads(fdet, vcfg)
    pool = _detection_pool(width)
    inflight: deque[tuple[_Frame, Future | Detections | None]] = deque()

    # `n` counts scanned frames; scans up to `full_until` run at full resolution because a
    # small face was in view
    scan = {"n": 0, "full_until": -1}
    scanned = {}  # frame index -> (scan number, upright px per px of the full detection image)

    def detect(item: _Frame):
        small = item.small
        item.small = None
        st = item.frame
        up_w, up_h = (st.height, st.width) if stats["turns"] % 2 else (st.width, st.height)
        n = scan["n"]
        scan["n"] += 1
        scanned[item.index] = (n, up_w / small.shape[1])
        if n % full_every and n > scan["full_until"]:
            h, w = small.shape[:2]
            small = cv2.resize(
                small,
                (max(2, round(w * coarse)), max(2, round(h * coarse))),
                interpolation=cv2.INTER_AREA,
            )
        sx, sy = up_w / small.shape[1], up_h / small.shape[0]
        return pool.submit(fdet, small, sx, sy) if pool is not None else fdet(small, sx, sy)

    def settle(max_pending: int) -> None:
        """Consume finished frames in order; wait while more than `max_pending` are queued."""
        while inflight and (
            not isinstance(inflight[0][1], Future)
            or inflight[0][1].done()
            or sum(isinstance(f, Future) for _, f in inflight) > max_pending
        ):
            item, got = inflight.popleft()
            dets = got.result() if isinstance(got, Future) else got
            if item.index in scanned:
                n, per_px = scanned.pop(item.index)
                if len(dets):
                    sides = np.minimum(
                        dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1]
                    )
                    if float(sides.min()) < vcfg.coarse_min_face * per_px:
                        scan["full_until"] = max(scan["full_until"], n + full_every)
            release(cov.push(item.index, dets))

    try:
        while True:
            item = _get(q_dec, stop)
            if item is _END:
                break
            if isinstance(item, tuple):  # audio packet: straight through
                _put(q_enc, item, stop)
                continue
            held[item.index] = item
            inflight.append((item, detect(item) if item.small is not None else None))
            settle(width)
        settle(-1)
    finally:
        for _, got in inflight:
            if isinstance(got, Future):
                got.cancel()
    release(cov.flush())
    _put(q_enc, _END, stop)


__all__ = [
    "RegionMarker",
    "SteadyMasks",
    "VideoOutcome",
    "sanitize",
    "redact_yuv420p",
    "upright_to_stored",
    "rotation_turns",
]
