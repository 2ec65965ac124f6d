"""The commit protocol, the lease, retries and the fail-closed rules, in-process (fast)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sanitizer import audit, commit, storage
from sanitizer.config import Config, from_dict
from sanitizer.errors import LeaseHeld
from sanitizer.process import Context, process_item, unchanged_row
from sanitizer.records import MediaItem
from tests.conftest import astronaut, check_invariant, jpeg_bytes
from tests.test_image import FixedDetector


def _item(src: storage.Location, key: str, kind: str = "image", fmt: str = "jpeg") -> MediaItem:
    return MediaItem(key, src.uri(key), kind, fmt, 1, "")


@pytest.fixture
def locs(tmp_path: Path):
    src = storage.location(str(tmp_path / "src"))
    dst = storage.location(str(tmp_path / "dst"))
    storage.makedirs(src)
    storage.makedirs(dst)
    return src, dst


def _ctx(run_id: str, src, dst, cfg: Config | None = None) -> Context:
    return Context.create(run_id, cfg or Config(), FixedDetector((200, 80, 300, 200)), src, dst)


def test_outputs_are_staged_and_published_only_after_their_rows(locs):
    src, dst = locs
    storage.put_bytes(src, "a.jpg", jpeg_bytes(astronaut()))
    row, dets = process_item(_item(src, "a.jpg"), _ctx("r1", src, dst))
    assert row["status"] == "ok" and row["output_uri"] == dst.uri("a.jpg")
    assert not storage.exists(dst, "a.jpg"), "nothing at the key before the row is committed"
    assert storage.exists(dst, storage.staging_key("r1", "a.jpg"))
    # the driver dies here (no row): settling discards the staged output
    assert commit.settle(dst, "r1") == (0, 1)
    assert not storage.exists(dst, "a.jpg") and not storage.list_prefix(dst, storage.STAGING)
    # committed row, not yet promoted (the driver died between the two): rolled forward
    row, dets = process_item(_item(src, "a.jpg"), _ctx("r2", src, dst))
    audit.write_part(dst, "files", "r2-000001", [row])
    assert commit.settle(dst, "r2") == (1, 0)
    assert storage.sha256_of(dst, "a.jpg") == row["output_sha256"]
    check_invariant(dst)


def test_a_rerun_killed_between_its_row_and_its_promotion_is_rolled_forward(locs):
    """The state a SIGKILL of the driver can leave (tests/test_chaos.py): a forced rerun's row
    is committed, the earlier output is still at the key, the new one in the dead run's
    staging area. It counts as consistent until the next run rolls it forward."""
    src, dst = locs
    storage.put_bytes(src, "a.jpg", jpeg_bytes(astronaut()))
    first, _ = process_item(_item(src, "a.jpg"), _ctx("r1", src, dst))
    audit.write_part(dst, "files", "r1-000001", [first])
    assert commit.publish(dst, "r1", [first]) == []
    check_invariant(dst)
    forced = from_dict({"execution": {"skip_unchanged": False}, "redact": {"method": "solid"}})
    again, _ = process_item(_item(src, "a.jpg"), _ctx("r2", src, dst, forced))
    assert again["status"] == "ok" and again["output_sha256"] != first["output_sha256"]
    audit.write_part(dst, "files", "r2-000001", [again])  # committed; the driver dies here
    assert storage.sha256_of(dst, "a.jpg") == first["output_sha256"]
    check_invariant(dst, allow_staged=True)
    with pytest.raises(AssertionError, match="left in staging"):
        check_invariant(dst)
    assert commit.settle(dst, "r2") == (1, 0)
    assert storage.sha256_of(dst, "a.jpg") == again["output_sha256"]
    check_invariant(dst)


def test_a_staged_output_with_other_bytes_than_its_row_is_not_promoted(locs):
    src, dst = locs
    storage.put_bytes(src, "a.jpg", jpeg_bytes(astronaut()))
    row, _ = process_item(_item(src, "a.jpg"), _ctx("r1", src, dst))
    audit.write_part(dst, "files", "r1-000001", [row])
    storage.put_bytes(dst, storage.staging_key("r1", "a.jpg"), b"a late write of a zombie task")
    assert commit.settle(dst, "r1") == (0, 1)
    assert not storage.exists(dst, "a.jpg")


def test_a_failing_file_keeps_the_last_good_output_and_says_so(locs):
    src, dst = locs
    storage.put_bytes(src, "a.jpg", jpeg_bytes(astronaut()))
    ok, _ = process_item(_item(src, "a.jpg"), _ctx("r1", src, dst))
    audit.write_part(dst, "files", "r1-000001", [ok])
    commit.publish(dst, "r1", [ok])
    good = storage.read_bytes(dst, "a.jpg")
    storage.put_bytes(src, "a.jpg", b"\xff\xd8\xff\xe0 now broken")
    bad, _ = process_item(_item(src, "a.jpg"), _ctx("r2", src, dst))
    assert bad["status"] == "failed" and "earlier output at this key is kept" in bad["error"]
    audit.write_part(dst, "files", "r2-000001", [bad])
    commit.publish(dst, "r2", [bad])
    assert storage.read_bytes(dst, "a.jpg") == good
    check_invariant(dst)
    # the config can say a failing file loses its output: the row says so, then it goes
    cfg = from_dict({"output": {"keep_last_good": False}})
    bad, _ = process_item(_item(src, "a.jpg"), _ctx("r3", src, dst, cfg))
    assert "removed" in bad["error"]
    audit.write_part(dst, "files", "r3-000001", [bad])
    commit.publish(dst, "r3", [bad])
    assert not storage.exists(dst, "a.jpg")
    check_invariant(dst)


def test_an_unreadable_source_keeps_the_last_good_output(locs):
    src, dst = locs
    storage.put_bytes(dst, "gone.jpg", b"last night's output")
    row, _ = process_item(_item(src, "gone.jpg"), _ctx("r1", src, dst))
    assert row["status"] == "failed" and "cannot read" in row["error"] and "kept" in row["error"]
    commit.publish(dst, "r1", [row])
    assert storage.read_bytes(dst, "gone.jpg") == b"last night's output"


def test_transient_storage_errors_are_retried_and_counted(locs, monkeypatch):
    src, dst = locs
    storage.put_bytes(src, "a.jpg", jpeg_bytes(astronaut()))
    monkeypatch.setattr(storage, "BACKOFF", 0.001)
    real = src.fs.cat_file
    calls = []

    def flaky(path, *a, **kw):
        calls.append(path)
        if len(calls) <= 2:
            raise TimeoutError("read timed out")
        return real(path, *a, **kw)

    monkeypatch.setattr(src.fs, "cat_file", flaky)
    row, _ = process_item(_item(src, "a.jpg"), _ctx("r1", src, dst))
    assert row["status"] == "ok" and row["storage_retries"] == 2
    calls.clear()
    monkeypatch.setattr(storage, "RETRIES", 1)
    row, _ = process_item(_item(src, "a.jpg"), _ctx("r2", src, dst))
    assert row["status"] == "failed" and "timed out" in row["error"]
    assert row["storage_retries"] == 1
    # a permanent error is not retried
    assert not storage.is_transient(FileNotFoundError("nope"))
    assert not storage.is_transient(PermissionError("denied"))


def test_lease_one_run_per_dst(locs, monkeypatch):
    _, dst = locs
    first = commit.Lease(dst, "run-a")
    first.acquire()
    try:
        with pytest.raises(LeaseHeld) as held:
            commit.Lease(dst, "run-b").acquire()
        text = str(held.value)
        assert "run-a" in text and f"pid {os.getpid()}" in text and "\n" not in text
        with pytest.raises(LeaseHeld):
            commit.check_lease(dst)
    finally:
        first.release()
    assert not storage.exists(dst, storage.LEASE_KEY)
    assert not os.path.exists(dst.path(storage.STAGING))  # nothing left, not even the folder
    commit.check_lease(dst)


def test_a_lease_whose_holder_died_expires(locs):
    _, dst = locs
    import socket

    # on this host, a holder whose process is gone: expired at once
    storage.write_lease(
        dst,
        {
            "run_id": "dead",
            "host": socket.gethostname(),
            "pid": 2**22 + 7,
            "heartbeat": time.time(),
        },
    )
    with commit.Lease(dst, "next"):
        pass
    # on another host: live while its heartbeat is fresh, expired after LEASE_TTL
    lease = {"run_id": "far", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    storage.write_lease(dst, lease)
    with pytest.raises(LeaseHeld):
        commit.Lease(dst, "next2").acquire()
    storage.write_lease(dst, {**lease, "heartbeat": time.time() - storage.LEASE_TTL - 1})
    with commit.Lease(dst, "next3"):
        assert storage.read_lease(dst)["run_id"] == "next3"


def test_recover_closes_a_dead_run_and_settles_its_staging(locs):
    src, dst = locs
    from sanitizer.records import RunRecord

    storage.put_bytes(src, "a.jpg", jpeg_bytes(astronaut()))
    storage.put_bytes(src, "b.jpg", jpeg_bytes(astronaut()[::-1].copy()))
    ctx = _ctx("dead", src, dst)
    a, _ = process_item(_item(src, "a.jpg"), ctx)
    process_item(_item(src, "b.jpg"), ctx)  # staged, never committed
    audit.write_part(dst, "files", "dead-000001", [a])
    run = RunRecord(
        "dead",
        "0",
        time.time(),
        time.time(),
        "s",
        "d",
        "{}",
        "f",
        "fixed",
        "",
        2,
        0,
        0,
        0,
        0,
        status="running",
    )
    audit.write_part(dst, "runs", "dead", [run.to_row()])
    assert commit.recover(dst, "now") == ["dead"]
    runs = audit.read(dst, "runs")
    assert runs.status.tolist() == ["interrupted"] and runs.n_ok.tolist() == [1]
    assert storage.exists(dst, "a.jpg") and not storage.exists(dst, "b.jpg")
    check_invariant(dst)


def _truncated_faststart_mp4(path: Path, frames: int = 45) -> Path:
    """An H.264 MP4 with its index (moov) at the front, cut after two thirds of its bytes."""
    import av

    full = path.with_suffix(".full.mp4")
    with av.open(str(full), "w", options={"movflags": "faststart"}) as out:
        vs = out.add_stream("libx264", rate=15)
        vs.width, vs.height, vs.pix_fmt = 128, 96, "yuv420p"
        rng = np.random.default_rng(3)
        for _ in range(frames):
            img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    data = full.read_bytes()
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def test_video_cut_mid_stream_fails_unless_partial_is_allowed(locs, tmp_path):
    src, dst = locs
    cut = _truncated_faststart_mp4(tmp_path / "src" / "cut.mp4")
    item = MediaItem("cut.mp4", str(cut), "video", "mp4", cut.stat().st_size, "")
    row, dets = process_item(item, _ctx("r1", src, dst))
    assert row["status"] == "failed" and "not fully decodable" in row["error"], row["error"]
    assert not dets and row["output_sha256"] == ""
    assert not storage.list_prefix(dst, storage.STAGING), "nothing staged"
    cfg = from_dict({"video": {"allow_partial": True}})
    row, _ = process_item(item, _ctx("r2", src, dst, cfg))
    assert row["status"] == "ok" and row["dropped_packets"] > 0 and 0 < row["frames"] < 45


def test_old_audit_parts_read_with_new_columns(locs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, dst = locs
    from sanitizer.records import FILES_SCHEMA, FileResult, to_table

    row = FileResult("r0", "a.jpg", "u", "s", 1, "image", "ok").to_row()
    old = to_table([row], FILES_SCHEMA).drop_columns(["storage_retries"])
    buf = io.BytesIO()
    pq.write_table(old, buf)
    storage.put_bytes(dst, audit.table_key("files", "r0"), buf.getvalue())
    df = audit.read(dst, "files")
    assert len(df) == 1 and "storage_retries" in df.columns
    assert pa is not None


def test_detection_rows_are_written_in_parts_as_they_come(locs):
    from sanitizer.records import Detections

    _, dst = locs
    sink = audit.DetectionSink(dst, "r1", "clip.mp4", part_rows=4)
    for frame in range(5):
        sink.add_frame(frame, frame * 40.0, Detections([[0, 0, 9, 9], [5, 5, 20, 20]], [0.9, 0.8]))
    assert len(sink.parts) == 2 and len(sink.rows) == 2, "flushed every 4 rows"
    assert sink.pending() == [] and len(sink.parts) == 3 and sink.count == 10
    failed = audit.DetectionSink(dst, "r1", "bad.mp4", part_rows=1)
    failed.add_frame(0, 0.0, Detections([[0, 0, 9, 9]], [0.9]))
    from sanitizer.records import FileResult

    ok_row = FileResult("r1", "clip.mp4", "u", "s", 1, "video", "ok", output_sha256="x")
    ok_row.detection_parts = sink.parts
    commit.promote_detection_parts(dst, "r1", [ok_row.to_row()])
    audit.write_part(dst, "files", "r1-000001", [ok_row.to_row()])
    dets = audit.read(dst, "detections")
    assert len(dets) == 10 and set(dets.key) == {"clip.mp4"}
    # the failed file's part stays in staging until the run settles, which deletes it
    assert storage.list_prefix(dst, storage.STAGING)
    commit.settle(dst, "r1")
    assert (
        not storage.list_prefix(dst, storage.STAGING) and len(audit.read(dst, "detections")) == 10
    )
    # a few rows (an image) write no part: they travel with the files row
    small = audit.DetectionSink(dst, "r2", "a.jpg")
    small.add_frame(0, 0.0, Detections([[0, 0, 9, 9]], [0.9]))
    assert len(small.pending()) == 1 and small.parts == []


def test_unchanged_source_is_not_read_again_when_its_stat_matches(locs, monkeypatch):
    src, dst = locs
    storage.put_bytes(src, "a.jpg", jpeg_bytes(astronaut()))
    row, _ = process_item(_item(src, "a.jpg"), _ctx("r1", src, dst))
    audit.write_part(dst, "files", "r1-000001", [row])
    commit.publish(dst, "r1", [row])
    assert row["source_stat"].startswith(f"{os.path.getsize(src.path('a.jpg'))}:")
    from sanitizer import job

    sha, stat = job.published_with_stat(dst, Config().fingerprint())
    assert sha == {"a.jpg": row["source_sha256"]} and stat == {"a.jpg": row["source_stat"]}
    ctx = _ctx("r2", src, dst)
    ctx.previous, ctx.previous_stat = sha, stat

    def no_read(*a, **kw):
        raise AssertionError("the source was read")

    monkeypatch.setattr(storage, "read_bytes", no_read)
    again, _ = process_item(_item(src, "a.jpg"), ctx)
    assert again["status"] == "skipped" and again["error"].startswith("unchanged")
    assert again["source_sha256"] == row["source_sha256"]
    # --verify-hashes reads and hashes it
    ctx.cfg = from_dict({"execution": {"verify_hashes": True}})
    verified, _ = process_item(_item(src, "a.jpg"), ctx)
    assert "the source was read" in verified["error"]


def test_unchanged_sources_are_settled_from_the_listing_without_a_task(locs):
    """A nightly run over an unchanged SRC: the listing's size and mtime equal those the workers
    recorded, so the driver writes the `unchanged` rows itself (no task reads the files); a
    touched source or a removed output goes to the workers again."""
    from sanitizer import job, manifest

    src, dst = locs
    for i in range(3):
        storage.put_bytes(src, f"{i}.jpg", jpeg_bytes(astronaut()[i:].copy()))
    items = manifest.build(src, with_hash=False, trust_extensions=True)
    rows = [process_item(item, _ctx("r1", src, dst))[0] for item in items]
    audit.write_part(dst, "files", "r1-000001", rows)
    commit.publish(dst, "r1", rows)
    assert [i.stat for i in items] == [r["source_stat"] for r in rows] and all(
        i.stat for i in items
    )
    sha, stat = job.published_with_stat(dst, Config().fingerprint())
    assert job.unchanged_by_listing(dst, items, stat) == items
    # the driver's row is the worker's
    ctx = _ctx("r2", src, dst)
    ctx.previous, ctx.previous_stat = sha, stat
    by_worker = process_item(items[0], ctx)[0]
    by_driver = unchanged_row(items[0], ctx, sha["0.jpg"])
    same = ("status", "error", "source_sha256", "source_stat", "output_uri", "config_fingerprint")
    assert {k: by_driver[k] for k in same} == {k: by_worker[k] for k in same}
    # a touched source, a removed output: not settled by the listing
    os.utime(src.path("1.jpg"), (1_000_000, 1_000_000))
    storage.remove(dst, "2.jpg")
    again = manifest.build(src, with_hash=False, trust_extensions=True)
    assert [i.key for i in job.unchanged_by_listing(dst, again, stat)] == ["0.jpg"]
    # --verify-hashes leaves every file to the workers
    cfg = from_dict({"execution": {"verify_hashes": True}})
    assert job.plan(src.url, dst.url, cfg).unchanged == []
    plan = job.plan(src.url, dst.url, Config())
    assert [i.key for i in plan.unchanged] == ["0.jpg"]
    assert sorted(i.key for s in plan.shards for i in s) == ["1.jpg", "2.jpg"]
    # the touched source is hashed once by a worker and found the same: the stat that worker
    # saw renews the recorded one, so the next run settles it from the listing too
    ctx = _ctx("r3", src, dst)
    ctx.previous, ctx.previous_stat = sha, stat
    touched = next(i for i in again if i.key == "1.jpg")
    row = process_item(touched, ctx)[0]
    assert row["error"].startswith("unchanged") and row["source_stat"] == touched.stat
    assert touched.stat != stat["1.jpg"]
    audit.write_part(dst, "files", "r3-000001", [row])
    _, renewed = job.published_with_stat(dst, Config().fingerprint())
    assert renewed == stat | {"1.jpg": touched.stat}
    assert [i.key for i in job.unchanged_by_listing(dst, again, renewed)] == ["0.jpg", "1.jpg"]
    audit.refresh_index(dst)  # the same from the index alone
    assert job.published_with_stat(dst, Config().fingerprint())[1] == renewed


def test_every_run_leaves_an_index_that_covers_its_parts(locs, monkeypatch):
    """The next run's unchanged check reads the index only, however many runs came since a
    compaction (the Python API, a real cluster for the first run, none for the second)."""
    import sanitizer
    from sanitizer import job

    src, dst = locs
    for i in range(2):
        storage.put_bytes(src, f"{i}.jpg", jpeg_bytes(astronaut()[::4, ::4][i:].copy()))
    cfg = {"execution": {"workers": 1}, "redact": {"method": "solid"}}
    for expect in ("ok", "skipped"):
        summary = sanitizer.run(src.url, dst.url, cfg)
        assert (summary.n_ok, summary.n_skipped) == ((2, 0) if expect == "ok" else (0, 2))
        index = audit._index_table(dst, [])  # the index alone, no part
        assert set(index.to_pandas().key) == {"0.jpg", "1.jpg"}
        with storage.open_file(dst, audit.INDEX_KEY) as f:
            covers = pq.read_schema(f).metadata[audit._COVERS]
        assert json.loads(covers) == audit.live_parts(dst, "files")

    def no_part(*a, **kw):
        raise AssertionError("a files part was read")

    monkeypatch.setattr(audit, "_read_part", no_part)
    fp = from_dict({"redact": {"method": "solid"}}).fingerprint()
    assert set(job.published(dst, fp)) == {"0.jpg", "1.jpg"}


def test_compact_merges_parts_and_the_index_answers_the_unchanged_check(locs):
    src, dst = locs
    from sanitizer import job

    for i in range(3):
        storage.put_bytes(src, f"{i}.jpg", jpeg_bytes(astronaut()[i:].copy()))
    for run_id in ["r1", "r2"]:
        for i in range(3):
            row, dets = process_item(_item(src, f"{i}.jpg"), _ctx(run_id, src, dst))
            audit.write_part(dst, "detections", f"{run_id}-{i:06d}", dets)
            audit.write_part(dst, "files", f"{run_id}-{i:06d}", [row])
            commit.publish(dst, run_id, [row])
    fp = Config().fingerprint()
    before_files = audit.read(dst, "files").sort_values(["run_id", "key"]).reset_index(drop=True)
    before_published = job.published(dst, fp)
    merged = audit.compact(dst)
    assert merged["files"] == (6, 6) and len(audit.parts(dst, "files")) == 1
    after = audit.read(dst, "files").sort_values(["run_id", "key"]).reset_index(drop=True)
    assert after.equals(before_files) and len(audit.read(dst, "detections")) == 6 * 1
    assert job.published(dst, fp) == before_published and len(before_published) == 3
    # a part written after the compaction is read with the index
    storage.put_bytes(src, "0.jpg", b"\xff\xd8\xff\xe0 broken now")
    row, _ = process_item(_item(src, "0.jpg"), _ctx("r3", src, dst))
    audit.write_part(dst, "files", "r3-000001", [row])
    assert set(job.published(dst, fp)) == {"1.jpg", "2.jpg"}
    # a compaction stopped before deleting what it merged shows no row twice
    audit.write_part(
        dst,
        "files",
        "r1-000000",
        [before_files.iloc[0].to_dict() | {"finished": 0.0, "started": 0.0}],
    )
    assert len(audit.read(dst, "files")) == 7, "a merged part still there is not read twice"
    check_invariant(dst)
