"""The decode → scan → redact → encode pipeline and its threads (PyAV), audio copied.

    decode thread   demux + threaded decode; the small upright RGB image of every frame's
                    cheap look (scan.py)
    calling thread  scanning (scan.py; onnxruntime releases the GIL) + temporal coverage
                    (tracking.py)
    redact thread   redaction in the frame's own YUV planes (yuv.py; off the encoder's
                    critical path), box masks held steady while a face moves a little
    encode thread   H.264/VP9 encode (redacted regions marked for x264, marking.py), mux (+ audio)

Queues are bounded (stages.py), so memory does not grow with duration; frames without faces
reach the encoder untouched.

Output: same container, H.264 yuv420p (VP9 for WebM; frames of any other pixel format are
converted to yuv420p when decoded, and H.264 frames with an odd width or height get the last
column/row repeated once: x264 takes even sides only); every frame keeps its timestamp in the
input's time base, so frame count, rate and duration match; the display rotation is written
back as a display matrix; every audio stream is copied packet for packet, in its order
(re-encoded only if the container cannot hold its codec), keeping its language code;
subtitles, data, attachments, chapters and every other container/stream metadata tag are
dropped, and so is cover art. A file with several video tracks (cover art is not one) fails:
only single-track videos are written.

Fail closed: any error raises DecodeError/EncodeError and the caller publishes nothing.
Packets the decoder rejects are counted in `dropped_packets` (together with frames the
container declared but that could not be read, e.g. a truncated file); every frame that was
decoded is scanned and redacted, and a file with no decodable frame fails.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from sanitizer.config import WORKER_CORES_ENV
from sanitizer.errors import DecodeError, EncodeError, MediaError
from sanitizer.manifest import EXTENSIONS as MANIFEST_EXTENSIONS
from sanitizer.media.tracking import FrameBoxes
from sanitizer.media.video import stages
from sanitizer.media.video.detector import video_detector
from sanitizer.media.video.geometry import rotation_turns
from sanitizer.media.video.marking import RegionMarker
from sanitizer.media.video.scan import (
    MAX_DETECT_THREADS,
    Frame,
    ScanPlan,
    detection_pool,
    scan_loop,
)
from sanitizer.media.video.stages import END, Stage, get, put
from sanitizer.media.video.yuv import SteadyMasks, pad_to_even, redact_yuv420p
from sanitizer.records import Detections
from sanitizer.redact import RedactParams

# called once per finalised frame with faces, in frame order:
# (frame index, t_ms, boxes+scores, track ids, detected flags)
OnDetections = Callable[[int, float, Detections, np.ndarray, np.ndarray], None]


@dataclass(slots=True)
class VideoOutcome:
    # one entry per frame with faces: (frame index, t_ms, boxes+scores, track ids, detected
    # flags); empty when the caller took them as they came (sanitize's `on_detections`)
    detections: list[tuple[int, float, Detections, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )
    frames: int = 0
    fps: float = 0.0
    duration_ms: float = 0.0
    audio_kept: bool = False
    dropped_packets: int = 0
    tracks: int = 0  # video tracks written (1: a file with several fails, see _run)


# sniffed container -> FFmpeg muxer name
MUXERS = {
    "mp4": "mp4",
    "mov": "mov",
    "mkv": "matroska",
    "webm": "webm",
    "avi": "avi",
    "mpegts": "mpegts",  # .ts/.mts/.m2ts camcorder video (written with 188-byte packets)
    "mxf": "mxf",  # FFmpeg's MXF muxer takes x264's H.264 and PCM audio
}
# output extension -> container, when the caller did not say (the manifest's own table)
EXTENSIONS = {ext: fmt for ext, (kind, fmt) in MANIFEST_EXTENSIONS.items() if kind == "video"}
# an audio track's language tag (ISO 639-2), the one stream tag that is kept
LANGUAGE = re.compile(r"[a-z]{3}")
# audio encoder used when the container cannot hold the input's audio codec
FALLBACK_AUDIO = {"webm": "libopus"}
# video encoders that take 4:2:0 frames of any size; the others (x264) take even sides only,
# and frames with an odd width or height are padded by one pixel (yuv.pad_to_even)
ODD_SIDES_OK = frozenset({"libvpx-vp9"})


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


# x264's look-ahead holds this many frames above 1080p (its default for veryfast is 10): at 4K
# each frame held costs ~25 MB with x264's own copies (BENCHMARKS.md, 2026-11-29). There x264
# also splits each frame between its threads (sliced threads) instead of encoding frames side
# by side, each with its own frame and look-ahead buffer: 4K -110 MB and 8K -330 MB per worker,
# at the same speed (BENCHMARKS.md, Video, 2026-12-07)
BIG_FRAME_LOOKAHEAD = 5
BIG_FRAME = 1920 * 1088
# Above 1080p a second detection thread is for frames up to these pixels, by the precision the
# network runs (memory; BENCHMARKS.md, Video, 2026-12-07). On crowd pans of 64 photos per frame
# a worker peaks at 1.24 GB with two int8 sessions at 4K and 1.13 GB with two fp32 ones at
# 3200x1800; two fp32 ones at 4K take it to 1.41-1.44 GB, too close to 1.5 GB; at 8K one
# thread takes it to 2.6 GB. A detector that does not say its precision gets one above 1080p.
TWO_DETECT_THREADS_MAX = {"int8": 4096 * 2160, "fp32": 3200 * 1800}


def _video_options(kind: str, vcfg, pixels: int = 0) -> tuple[str, dict[str, str]]:
    if kind == "webm":
        return "libvpx-vp9", {
            "crf": str(vcfg.vp9_crf),
            "b": "0",
            "deadline": "realtime",
            "cpu-used": str(vcfg.vp9_speed),
            "row-mt": "1",
        }
    options = {"crf": str(vcfg.crf), "preset": vcfg.preset}
    if vcfg.codec == "libx264" and pixels > BIG_FRAME:
        options["rc-lookahead"] = str(BIG_FRAME_LOOKAHEAD)
        # wins over the encoder's thread type (open_output); no threaded look-ahead buffer
        options["x264-params"] = "sliced-threads=1"
    return vcfg.codec, options


def sanitize(
    src_path: str,
    out_path: str,
    detector,
    params: RedactParams,
    vcfg,
    container: str = "",
    on_detections: OnDetections | None = None,
    timeout_s: float = 0.0,
    started: float | None = None,
) -> VideoOutcome:
    """Redact every face in every frame of the video at `src_path` into `out_path`.

    `timeout_s` (config `input.file_timeout_s`; 0 = none): wall-clock seconds for the file,
    counted from `started` (a time.monotonic() value; default: now). Over it, every stage is
    stopped and the file fails (DecodeError "over input.file_timeout_s ...").

    `detector`: a VideoDetector (detector.py) or any detector `video_detector` adapts.
    `on_detections(frame, t_ms, detections, track_ids, detected)`: called once per finalised
    frame with faces, in frame order, as the file is processed (so a caller can write them
    out instead of holding a whole video's); without it they are collected into the
    outcome's `detections`."""
    kind, muxer = _muxer(container, out_path)
    start = time.monotonic() if started is None else started
    deadline = start + float(timeout_s) if timeout_s and timeout_s > 0 else 0.0
    try:
        inp = av.open(src_path, "r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DecodeError(f"cannot open video: {_reason(exc)}") from None
    try:
        vdet = video_detector(detector)
        return _run(
            inp, out_path, kind, muxer, vdet, params, vcfg, on_detections, deadline, timeout_s
        )
    except BaseException as exc:
        _remove(out_path)  # never leave a partial output behind
        if isinstance(exc, stages.Hung) and exc.stuck:
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
    inp,
    out_path: str,
    kind: str,
    muxer: str,
    vdet,
    params: RedactParams,
    vcfg,
    on_detections: OnDetections | None,
    deadline: float = 0.0,
    timeout_s: float = 0.0,
) -> VideoOutcome:
    # cover art (an attached picture) is a video stream too: it is neither scanned nor kept
    still = av.stream.Disposition.attached_pic
    videos = [s for s in inp.streams.video if not s.disposition & still]
    if not videos:
        raise DecodeError("no video stream")
    if len(videos) > 1:  # publishing the first alone would drop the others without a word
        raise DecodeError(
            f"{len(videos)} video tracks: only single-track videos are supported; nothing published"
        )
    vin = videos[0]
    # every audio track is kept (a second language, commentary), except one whose codec FFmpeg
    # does not know: it cannot be copied or re-encoded, so it is not even demuxed
    audio = list(inp.streams.audio)
    ains = [a for a in audio if a.codec_context is not None]
    vin.thread_type = "AUTO"
    if vcfg.threads:
        vin.thread_count = vcfg.threads
    tb = vin.time_base
    rate = vin.average_rate or vin.guessed_rate or vin.base_rate or Fraction(25)
    declared = int(vin.frames or 0)

    stop = threading.Event()
    depth = stages.queue_depth(vin.codec_context.width, vin.codec_context.height)
    q_dec: queue.Queue = queue.Queue(depth)
    q_enc: queue.Queue = queue.Queue(depth)
    q_out: queue.Queue = queue.Queue(depth)
    stats = {
        "dropped": 0,
        "frames": 0,
        "frames_in": 0,  # frames decoded so far
        "turns": 0,
        "first_pts": None,
        "last_pts": None,
        "last_dur": 0,
        "audio_kept": False,
        "plan": None,  # ScanPlan, set by the decode thread from the first frame
        "time_base": tb,
        "interval": float(1 / (rate * tb)),  # pts units of one frame at the nominal rate
    }

    # ---- stage 1: demux + decode ------------------------------------------------------
    def decode() -> None:
        index = 0
        last_pts = None
        size = None
        streams = [vin, *ains]
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
                    put(q_dec, ("a", packet), stop)
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
        put(q_dec, END, stop)

    def _emit(fr: av.VideoFrame, index: int, last_pts, size):
        if size is None:
            size = (fr.width, fr.height)
            turns = stats["turns"] = rotation_turns(fr.rotation)
            up_w, up_h = (fr.height, fr.width) if turns % 2 else (fr.width, fr.height)
            stats["plan"] = ScanPlan.for_frame(up_w, up_h, vcfg, turns)
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
        cheap = stats["plan"].cheap
        if cheap is not None:
            sw, sh = cheap
            small = fr.reformat(
                width=sw, height=sh, format="rgb24", interpolation="AREA"
            ).to_ndarray()
            if stats["turns"]:
                small = np.ascontiguousarray(np.rot90(small, stats["turns"]))
        if fr.format.name != "yuv420p":
            fr = fr.reformat(format="yuv420p")
        put(q_dec, Frame(index, fr, pts, small), stop)
        stats["frames_in"] = index + 1
        return index + 1, pts, size

    # ---- stage 3: redact + encode + mux ----------------------------------------------------
    # audio: input stream index -> (input stream, output stream, re-encoded?)
    out_state: dict = {"out": None, "vout": None, "audio": {}, "pending_audio": []}

    codec, options = _video_options(kind, vcfg, vin.codec_context.width * vin.codec_context.height)

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
            # and keep both cores busier: +17-18 % fps, with or without detection (BENCHMARKS.md).
            # Above 1080p, _video_options asks for sliced threads instead (memory).
            vout.thread_type = "FRAME"
        if stats["turns"]:
            vout.set_display_rotation(stats["turns"] * 90)
        vout.codec_context.color_range = first.color_range
        vout.codec_context.colorspace = first.colorspace
        vout.codec_context.color_primaries = first.color_primaries
        vout.codec_context.color_trc = first.color_trc
        out_state["vout"] = vout
        for ain in ains:
            if ain.codec_context.name in out.supported_codecs:
                aout, reencode = out.add_stream_from_template(ain), False
            else:
                enc = FALLBACK_AUDIO.get(kind, "aac")
                aout = out.add_stream(enc, rate=ain.codec_context.sample_rate or 48000)
                reencode = True
            language = ain.metadata.get("language", "")
            if LANGUAGE.fullmatch(language) and language != "und":
                aout.metadata["language"] = language  # tells the tracks apart; not personal
            out_state["audio"][ain.index] = (ain, aout, reencode)
        # the audit's audio_kept: the input had audio and every track of it was written
        stats["audio_kept"] = bool(audio) and len(ains) == len(audio)
        for p in out_state["pending_audio"]:
            mux_audio(p)
        out_state["pending_audio"].clear()

    def mux_audio(packet) -> None:
        out = out_state["out"]
        ain, aout, reencode = out_state["audio"][packet.stream.index]
        if reencode:
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
        pad = codec not in ODD_SIDES_OK
        while True:
            item = get(q_enc, stop)
            if item is not END and item[0] == "v":
                boxes = item[2] if steady is None else steady(item[2], item[4])
                regions = redact_yuv420p(item[1], boxes, params) if len(boxes) else []
                if pad:
                    item = (item[0], pad_to_even(item[1]), *item[2:])
                if regions and marker is not None:
                    item = (item[0], marker(item[1], regions), *item[2:])
            put(q_out, item, stop)
            if item is END:
                break

    def encode() -> None:
        first = True
        while True:
            item = get(q_out, stop)
            if item is END:
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
        for _, aout, reencode in out_state["audio"].values():
            if reencode:
                out.mux(aout.encode(None))
        out.close()
        out_state["out"] = None

    # the file's wall-clock limit: a timer stops every stage (each sees `stop` within 0.1 s
    # of its next wait) and the file fails below
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        stop.set()

    timer = None
    if deadline:
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
        timer.daemon = True
        timer.start()

    dec = Stage("sanitizer-decode", decode, stop)
    red = Stage("sanitizer-redact", redact, stop)
    enc = Stage("sanitizer-encode", _wrap_encode(encode), stop)
    for stage in (dec, red, enc):
        stage.start()
    outcome = VideoOutcome()

    def emit(index: int, t_ms: float, fb: FrameBoxes) -> None:
        if on_detections is not None:
            on_detections(index, t_ms, fb.detections(), fb.track_ids, fb.detected)
        else:
            outcome.detections.append((index, t_ms, fb.detections(), fb.track_ids, fb.detected))

    try:
        scan_loop(
            q_dec,
            q_enc,
            stop,
            vdet,
            vcfg,
            stats,
            detection_pool(
                detect_threads(vcfg, vdet, vin.codec_context.width * vin.codec_context.height)
            ),
            emit,
        )
    except stages.Abort:
        pass
    except BaseException:
        stop.set()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        if stop.is_set():
            stuck = [n for s in (dec, red, enc) for n in stages.join(s, stages.JOIN)]
            if out_state["out"] is not None and enc.name not in stuck:
                with contextlib.suppress(av.error.FFmpegError):
                    out_state["out"].close()
            if expired.is_set():
                raise stages.timed_out(timeout_s, stats["frames_in"], stuck) from None
            if stuck:
                raise stages.stalled(stuck) from None
    stuck = [n for s in (dec, red, enc) for n in stages.join(s, stages.STALL)]
    if stuck:
        stop.set()
        raise stages.stalled(stuck)
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
    outcome.tracks = 1
    outcome.audio_kept = stats["audio_kept"]
    dur = (stats["last_pts"] - stats["first_pts"] + (stats["last_dur"] or 0)) * tb
    outcome.duration_ms = float(dur * 1000)
    outcome.fps = float(rate) if rate else (outcome.frames / float(dur) if dur else 0.0)
    outcome.dropped_packets = stats["dropped"] + max(0, declared - stats["frames"])
    return outcome


def detect_threads(vcfg, vdet, pixels: int = 0) -> int:
    """Detection threads for one file: `video.detect_threads`, or (0) the cores this worker has
    to itself ($SANITIZER_WORKER_CORES, which the embedded cluster sets; 1 when unset), but 1
    above 1080p for frames bigger than TWO_DETECT_THREADS_MAX allows at the network's precision
    (memory); at most MAX_DETECT_THREADS. Only detectors known to keep one session per thread
    get more than 1."""
    if not vdet.parallel_safe:
        return 1
    n = int(vcfg.detect_threads)
    if n <= 0:
        try:
            n = int(os.environ.get(WORKER_CORES_ENV, "1"))
        except ValueError:
            n = 1
        precision = getattr(vdet, "precision", "").split("-")[0]  # int8-unpinned is int8
        if pixels > max(BIG_FRAME, TWO_DETECT_THREADS_MAX.get(precision, 0)):
            n = 1
    return max(1, min(MAX_DETECT_THREADS, n))


def _wrap_encode(fn):
    def run() -> None:
        try:
            fn()
        except av.error.FFmpegError as exc:
            raise EncodeError(f"encoding failed: {_reason(exc)}") from None

    return run
