import time

import pandas as pd

from sanitizer import audit, storage
from sanitizer.records import FILES_SCHEMA, SCHEMA_VERSION, Detections, FileResult


def test_files_round_trip(tmp_path):
    loc = storage.location(str(tmp_path))
    now = time.time()
    rows = [
        FileResult(
            run_id="r1",
            key=f"k{i}.jpg",
            source_uri=f"/s/k{i}.jpg",
            source_sha256="ab" * 32,
            size=10 + i,
            kind="image",
            status=s,
            error="" if s == "ok" else "bad",
            n_faces=i,
            started=now,
            finished=now + 1,
            duration_ms=1000.0,
        ).to_row()
        for i, s in enumerate(["ok", "failed", "skipped"])
    ]
    audit.write_part(loc, "files", "r1-000001", rows)
    audit.write_part(loc, "files", "r1-000002", [])
    df = pd.read_parquet(tmp_path / "_audit" / "files")
    assert len(df) == 3
    assert list(df.columns) == FILES_SCHEMA.names
    assert (df["schema_version"] == SCHEMA_VERSION).all()
    assert df.loc[df.key == "k1.jpg", "error"].item() == "bad"
    assert str(df["started"].dtype).startswith("datetime64")
    back = audit.read(loc, "files")
    assert back["n_faces"].tolist() == [0, 1, 2]


def test_empty_table_has_columns(tmp_path):
    df = audit.read(storage.location(str(tmp_path)), "detections")
    assert df.empty and "score" in df.columns


def test_detections_value():
    d = Detections.empty()
    assert len(d) == 0 and d.boxes.shape == (0, 4)
    m = Detections.merge([d, Detections([[0, 0, 1, 1]], [0.5])])
    assert len(m) == 1
    import pytest

    with pytest.raises(ValueError):
        Detections([[0, 0, 1, 1]], [0.1, 0.2])


def test_a_stopped_run_keeps_an_earlier_output_at_the_key(tmp_path):
    """A file whose run is stopped before its output is written fails without touching the
    output an earlier run published at that key (that output keeps its own audit row)."""
    from sanitizer import storage
    from sanitizer.config import Config
    from sanitizer.process import Context, process_item
    from sanitizer.records import MediaItem
    from tests.conftest import astronaut, jpeg_bytes
    from tests.test_image import FixedDetector

    src, dst = storage.location(str(tmp_path / "src")), storage.location(str(tmp_path / "dst"))
    storage.put_bytes(src, "a.jpg", jpeg_bytes(astronaut()))
    storage.put_bytes(dst, "a.jpg", b"earlier run's output")
    ctx = Context.create("r1", Config(), FixedDetector((200, 80, 300, 200)), src, dst)
    ctx.may_publish = lambda: False
    row, dets = process_item(MediaItem("a.jpg", src.uri("a.jpg"), "image", "jpeg", 1, ""), ctx)
    assert row["status"] == "failed" and "stopped" in row["error"] and not dets
    assert storage.read_bytes(dst, "a.jpg") == b"earlier run's output"
