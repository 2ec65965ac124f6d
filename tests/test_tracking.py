"""Temporal coverage: tracks carry, back-fill and interpolate boxes across detector misses."""

from __future__ import annotations

import numpy as np
import pytest

from sanitizer.media.tracking import TemporalCoverage
from sanitizer.records import Detections


def det(*boxes, score=0.9) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), score, np.float32)
    )


def run(cov: TemporalCoverage, seq: dict[int, Detections | None], n: int):
    out = []
    for t in range(n):
        out += cov.push(t, seq.get(t, Detections.empty()))
    out += cov.flush()
    return out


def test_every_frame_finalised_once_in_order():
    cov = TemporalCoverage(keep=3, lead=2)
    frames = run(cov, {}, 20)
    assert [f.frame for f in frames] == list(range(20))
    assert all(len(f) == 0 for f in frames)


@pytest.mark.parametrize(
    ("detected_at", "keep", "lead", "covered"),
    [
        # one detection at 10: covered lead frames before and keep frames after
        ([10], 3, 2, set(range(8, 14))),
        ([10], 0, 0, {10}),
        # a gap of 6 frames between two detections is bridged (t - prev <= keep or next - t <= lead)
        ([5, 12], 3, 3, set(range(2, 16))),
        # a gap longer than keep + lead leaves the middle uncovered
        ([0, 20], 2, 2, {0, 1, 2, 18, 19, 20, 21, 22}),
    ],
)
def test_coverage_window(detected_at, keep, lead, covered):
    cov = TemporalCoverage(keep=keep, lead=lead)
    seq = {t: det([100, 100, 140, 140]) for t in detected_at}
    frames = run(cov, seq, 30)
    got = {f.frame for f in frames if len(f)}
    assert got == covered
    for f in frames:
        if len(f):
            assert f.detected.tolist() == [f.frame in detected_at]
            assert len(set(f.track_ids.tolist())) == 1


def test_interpolates_between_detections_of_a_moving_face():
    cov = TemporalCoverage(keep=8, lead=8, growth=0.0)
    seq = {0: det([0, 0, 40, 40]), 8: det([48, 0, 88, 40])}
    frames = run(cov, seq, 9)
    mid = frames[4]
    assert len(mid) == 1 and not mid.detected[0]
    np.testing.assert_allclose(mid.boxes[0], [24, 0, 64, 40], atol=1e-4)


def test_carried_box_follows_velocity_and_grows():
    cov = TemporalCoverage(keep=5, lead=0, growth=0.05)
    seq = {0: det([0, 0, 20, 20]), 1: det([4, 0, 24, 20])}
    frames = run(cov, seq, 6)
    f3 = frames[3]
    assert not f3.detected[0]
    cx = (f3.boxes[0, 0] + f3.boxes[0, 2]) / 2
    assert cx == pytest.approx(10 + 4 * 3, abs=1e-3)  # moved on at 4 px/frame
    assert f3.boxes[0, 2] - f3.boxes[0, 0] > 20  # and grew


def test_carried_box_of_a_face_shrinking_at_the_border_never_inverts():
    """Leaving the frame: the right edge stays at the border, the left one moves 12 px a
    frame. Carried on, the box keeps at least half its last detected size, never x2 < x1."""
    cov = TemporalCoverage(keep=8, lead=0, growth=0.0)
    seq = {0: det([580, 10, 640, 70]), 2: det([604, 10, 640, 70])}
    frames = run(cov, seq, 11)
    for f in frames[3:]:
        ((x1, y1, x2, y2),) = f.boxes
        assert x2 - x1 >= 0.5 * 36 - 1e-3 and y2 - y1 > 0, f.frame


def test_two_faces_keep_separate_track_ids():
    cov = TemporalCoverage(keep=2, lead=1)
    seq = {t: det([10 + t, 10, 40 + t, 40], [200 - t, 50, 240 - t, 90]) for t in range(10)}
    frames = run(cov, seq, 10)
    ids = {tuple(sorted(f.track_ids.tolist())) for f in frames}
    assert ids == {(0, 1)}
    assert all(f.detected.all() for f in frames)


def test_small_fast_face_matched_by_centre_distance():
    # an 8 px face moving 5 px/frame has IoU < 0.2 with its previous box but stays one track
    cov = TemporalCoverage(keep=2, lead=1)
    seq = {t: det([5 * t, 0, 5 * t + 8, 8]) for t in range(6)}
    frames = run(cov, seq, 6)
    assert {int(i) for f in frames for i in f.track_ids} == {0}


def test_memory_is_bounded_on_long_streams():
    cov = TemporalCoverage(keep=4, lead=2)
    for t in range(2000):
        cov.push(t, det([t % 300, 0, t % 300 + 30, 30]))
    assert len(cov._tracks) <= 4
    assert all(len(tr.frames) <= 8 for tr in cov._tracks)
    assert len(cov._pending) <= 3


def test_not_scanned_frames_are_covered_by_interpolation():
    cov = TemporalCoverage(keep=3, lead=3)
    frames = []
    for t in range(12):
        frames += cov.push(t, det([50, 50, 90, 90]) if t % 3 == 0 else None)
    frames += cov.flush()
    assert all(len(f) == 1 for f in frames)
    assert [bool(f.detected[0]) for f in frames] == [t % 3 == 0 for t in range(12)]


def test_frames_must_increase():
    cov = TemporalCoverage()
    cov.push(3, None)
    with pytest.raises(ValueError):
        cov.push(3, None)


def test_a_much_smaller_box_after_a_cut_is_another_face():
    """Across a cut a big face at 0 and a small face nearby at 2 must not become one track:
    frame 1 keeps the big face's box (carried), not a box interpolated towards the small one."""
    cov = TemporalCoverage(keep=4, lead=2)
    big, small = (100, 100, 160, 170), (110, 120, 130, 142)
    frames = run(cov, {0: det(big), 1: None, 2: det(small), 3: None}, 4)
    one = frames[1]
    assert len(set(frames[2].track_ids.tolist())) == 2  # two tracks
    x1, y1, x2, y2 = one.boxes[one.track_ids == frames[0].track_ids[0]][0]
    assert x1 <= 100 and y1 <= 100 and x2 >= 160 and y2 >= 170  # the big face stays covered


def test_a_face_found_looking_back_is_redacted_where_it_was_and_tracks_nothing():
    """observe + add_past + release: detections found in pending frames before a face's
    first one are redacted in those frames (detected), and do not take part in tracking."""
    cov = TemporalCoverage(keep=2, lead=4, growth=0.0)
    out = []
    for t in range(4):
        assert cov.observe(t, None) == []
        out += cov.release()
    born = cov.observe(4, det([100, 0, 120, 20]))
    assert len(born) == 1 and list(cov.look_back_frames(4)) == [3, 2, 1, 0]
    # the face moved 10 px per frame: the carried-back box would leave it at frames 2-3
    past = [np.array([80 + 10 * k, 0, 100 + 10 * k, 20], np.float64) for k in (2, 3)]
    cov.add_past([2, 3], past, [0.5, 0.6])
    out += cov.release()
    for t in range(5, 8):
        out += cov.push(t, det([100 + 10 * (t - 4), 0, 120 + 10 * (t - 4), 20]))
    out += cov.flush()
    by_frame = {f.frame: f for f in out}
    for k, box in zip((2, 3), past, strict=True):
        f = by_frame[k]
        hit = [np.allclose(b, box) and d for b, d in zip(f.boxes, f.detected, strict=True)]
        assert any(hit), (k, f.boxes)
    # one track follows the face forwards; the past one never took its detections
    ids = {int(i) for f in out[5:] for i, d in zip(f.track_ids, f.detected, strict=True) if d}
    assert len(ids) == 1
    with pytest.raises(ValueError):
        cov.add_past([0], [np.zeros(4)], [0.5])  # frame 0 is final
