"""The Parquet audit log under DST/_audit/: files, detections, runs (and manifest, verify).

Every part is written with the explicit schema of `records`, one part per shard, so that
`pandas.read_parquet("DST/_audit/files")` reads all parts of all runs as one table.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from sanitizer import storage
from sanitizer.errors import StorageError
from sanitizer.records import (
    DETECTIONS_SCHEMA,
    FILES_SCHEMA,
    MANIFEST_SCHEMA,
    RUNS_SCHEMA,
    VERIFY_SCHEMA,
    to_table,
)

if TYPE_CHECKING:
    import pandas as pd  # imported by `read` only: a run's driver starts ~0.4 s sooner without it

AUDIT_DIR = "_audit"
SCHEMAS = {
    "files": FILES_SCHEMA,
    "detections": DETECTIONS_SCHEMA,
    "runs": RUNS_SCHEMA,
    "manifest": MANIFEST_SCHEMA,
    "verify": VERIFY_SCHEMA,
}


def table_key(table: str, part: str) -> str:
    return f"{AUDIT_DIR}/{table}/{part}.parquet"


def write_part(
    dst: storage.Location, table: str, part: str, rows: list[dict[str, Any]] | pa.Table
) -> str:
    """Write one part file (atomically) and return its URI."""
    schema = SCHEMAS[table]
    tbl = rows if isinstance(rows, pa.Table) else to_table(rows, schema)
    buf = io.BytesIO()
    pq.write_table(tbl, buf, compression="zstd")
    return storage.put_bytes(dst, table_key(table, part), buf.getvalue())


def audit_uri(dst: storage.Location) -> str:
    return dst.uri(AUDIT_DIR)


def parts(dst: storage.Location, table: str) -> list[str]:
    """Keys of one audit table's part files."""
    return [k for k in storage.list_prefix(dst, f"{AUDIT_DIR}/{table}") if k.endswith(".parquet")]


def _read_part(dst: storage.Location, key: str, schema: pa.Schema) -> pa.Table:
    """One part with `schema`; columns added to the schema after the part was written are null."""
    try:
        with storage.open_file(dst, key) as f:
            tbl = pq.read_table(f)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"{key}: unreadable audit part ({exc})") from None
    cols = [
        tbl.column(f.name).cast(f.type)
        if f.name in tbl.column_names
        else pa.nulls(len(tbl), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def read(dst: storage.Location, table: str, run_id: str | None = None) -> pd.DataFrame:
    """All parts of one audit table as a DataFrame (empty, with columns, when none)."""
    schema = SCHEMAS[table]
    tables = [_read_part(dst, key, schema) for key in parts(dst, table)]
    tbl = pa.concat_tables(tables) if tables else schema.empty_table()
    df = tbl.to_pandas()
    if run_id is not None and "run_id" in df:
        df = df[df["run_id"] == run_id].reset_index(drop=True)
    return df


def latest_run_id(dst: storage.Location) -> str | None:
    runs = read(dst, "runs")
    if runs.empty:
        return None
    return str(runs.sort_values("started")["run_id"].iloc[-1])


def read_run(dst: storage.Location, table: str, run_id: str) -> pd.DataFrame:
    """The parts one run wrote (their names start with its run id) as a DataFrame; reads only
    those parts."""
    schema = SCHEMAS[table]
    keys = [k for k in parts(dst, table) if k.rsplit("/", 1)[-1].startswith(run_id)]
    tables = [_read_part(dst, key, schema) for key in keys]
    tbl = pa.concat_tables(tables) if tables else schema.empty_table()
    df = tbl.to_pandas()
    return df[df["run_id"] == run_id].reset_index(drop=True)


# ---------------------------------------------------------------- detection parts per file
DETECTION_PART_ROWS = 50_000  # a file with more detection rows writes them in parts of this size


def key_tag(key: str) -> str:
    """A short stable tag of a key, used in the names of its detection parts."""
    import hashlib

    return hashlib.sha1(key.encode()).hexdigest()[:16]


class DetectionSink:
    """Worker side: detection rows of one file, written as they come. Rows are buffered and
    every `part_rows` rows flushed as a part into the run's staging area
    (`_staging/<run_id>/_audit/detections/<run_id>-<key tag>-<n>.parquet`); the driver promotes
    the parts with the file's output once its files row is committed (`commit.publish`), and
    `commit.settle` deletes them when it never is. A file with fewer rows than `part_rows`
    writes no part: its rows (`pending`) travel with its files row as before.

    Feed it per frame with `add_frame` (the signature of video.sanitize's `on_detections`
    callback) or with ready rows via `add`."""

    def __init__(
        self, dst: storage.Location, run_id: str, key: str, part_rows: int = DETECTION_PART_ROWS
    ) -> None:
        self.dst, self.run_id, self.key, self.part_rows = dst, run_id, key, max(1, part_rows)
        self.rows: list[dict[str, Any]] = []
        self.parts: list[str] = []  # staged keys of the parts written so far
        self.count = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows
        self.count += len(rows)
        if len(self.rows) >= self.part_rows:
            self.flush()

    def add_frame(self, frame_index, t_ms, detections, track_ids=None, detected=None) -> None:
        from sanitizer.process import detection_rows

        self.add(
            detection_rows(
                self.run_id, self.key, frame_index, t_ms, detections, track_ids, detected
            )
        )

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"{self.run_id}-{key_tag(self.key)}-{len(self.parts):05d}"
        staged = storage.staging_key(self.run_id, table_key("detections", name))
        buf = io.BytesIO()
        pq.write_table(to_table(self.rows, DETECTIONS_SCHEMA), buf, compression="zstd")
        storage.put_bytes(self.dst, staged, buf.getvalue())
        self.parts.append(staged)
        self.rows = []

    def pending(self) -> list[dict[str, Any]]:
        """The rows not written as a part (all of them for a file with few detections); once a
        part was written, the rest is flushed too so that a file's rows are all in parts."""
        if self.parts:
            self.flush()
        rows, self.rows = self.rows, []
        return rows
