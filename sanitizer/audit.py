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
    ERASURES_SCHEMA,
    FILES_SCHEMA,
    MANIFEST_SCHEMA,
    REVIEWS_SCHEMA,
    RUNS_SCHEMA,
    UNCHANGED,
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
    "erasures": ERASURES_SCHEMA,  # sanitizer erase (erase.py)
    "reviews": REVIEWS_SCHEMA,  # sanitizer review --import (review.py)
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
    """One part with `schema` (only its columns are read); columns added to the schema after
    the part was written are null."""
    try:
        with storage.open_file(dst, key) as f:
            pf = pq.ParquetFile(f)
            present = set(pf.schema_arrow.names)
            tbl = pf.read(columns=[c for c in schema.names if c in present])
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"{key}: unreadable audit part ({exc})") from None
    cols = [
        tbl.column(f.name).cast(f.type)
        if f.name in tbl.column_names
        else pa.nulls(len(tbl), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def live_parts(dst: storage.Location, table: str) -> list[str]:
    """The parts of a table to read: a part that `compact` merged into a compact part is left
    out even while it still exists (a compaction stopped before it deleted its inputs)."""
    keys = parts(dst, table)
    merged: set[str] = set()
    for key in keys:
        if key.rsplit("/", 1)[-1].startswith(COMPACT_PREFIX):
            merged |= set(_merged_by(dst, key))
    return [k for k in keys if k not in merged]


def read(dst: storage.Location, table: str, run_id: str | None = None) -> pd.DataFrame:
    """All parts of one audit table as a DataFrame (empty, with columns, when none)."""
    schema = SCHEMAS[table]
    tables = [_read_part(dst, key, schema) for key in live_parts(dst, table)]
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


# ---------------------------------------------------------------- compaction and the index
COMPACT_PREFIX = "compact-"
COMPACTED_TABLES = ("files", "detections", "manifest")
INDEX_KEY = f"{AUDIT_DIR}/index/latest.parquet"
INDEX_COLUMNS = ("key", "status", "config_fingerprint", "source_sha256", "source_stat", "finished")
_MERGED = b"sanitizer.merged_parts"
_COVERS = b"sanitizer.covers"


def _merged_by(dst: storage.Location, key: str) -> list[str]:
    import json

    try:
        with storage.open_file(dst, key) as f:
            meta = pq.read_schema(f).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"{key}: unreadable audit part ({exc})") from None
    return json.loads(meta.get(_MERGED, b"[]"))


# status, in the index, of a `skipped` row whose source was found unchanged (records.UNCHANGED)
INDEX_UNCHANGED = "unchanged"


def _latest(tbl: pa.Table) -> pa.Table:
    """Per key: the latest `ok`, `failed` and `unchanged` row (what the unchanged check needs),
    columns INDEX_COLUMNS. `tbl` has those columns; a `files` part also has `error`, which tells
    an unchanged source's `skipped` row (its `source_stat` renews the stat of the bytes that
    were published) from the other skips."""
    df = tbl.select([c for c in (*INDEX_COLUMNS, "error") if c in tbl.column_names]).to_pandas()
    if "error" in df:
        seen = (df.status == "skipped") & (df.error == UNCHANGED)
        df.loc[seen, "status"] = INDEX_UNCHANGED
        df = df.drop(columns="error")
    df = df[df.status.isin(["ok", "failed", INDEX_UNCHANGED])]
    df = df.sort_values("finished").groupby(["key", "status"]).tail(1)
    schema = pa.schema([FILES_SCHEMA.field(c) for c in INDEX_COLUMNS])
    return pa.Table.from_pandas(df.reset_index(drop=True), schema=schema, preserve_index=False)


def index_rows(dst: storage.Location) -> pd.DataFrame:
    """The unchanged check's input: the index plus the files parts written since; only those
    parts are read, not the whole history."""
    return _index_table(dst, live_parts(dst, "files")).to_pandas()


def _index_table(dst: storage.Location, files: list[str]) -> pa.Table:
    """The index (if there is one) merged with those of the `files` parts it does not cover."""
    import json

    covered: set[str] = set()
    tables = []
    if storage.exists(dst, INDEX_KEY):
        with storage.open_file(dst, INDEX_KEY) as f:
            idx = pq.read_table(f)
        covered = set(json.loads((idx.schema.metadata or {}).get(_COVERS, b"[]")))
        tables.append(idx.replace_schema_metadata(None))
    schema = pa.schema([FILES_SCHEMA.field(c) for c in INDEX_COLUMNS])
    part_schema = pa.schema([*schema, FILES_SCHEMA.field("error")])
    for key in files:
        if key not in covered:
            tables.append(_latest(_read_part(dst, key, part_schema)))
    tables = [t.cast(schema) for t in tables]
    return _latest(pa.concat_tables(tables) if tables else FILES_SCHEMA.empty_table())


def refresh_index(dst: storage.Location) -> int:
    """Rewrite the index of the unchanged check (`INDEX_KEY`: the latest `ok` and `failed` row
    per key) from itself and the `files` parts it does not cover yet, and make it cover them all.
    Every run calls it at its end and `compact` after merging, both holding the DST's lease, so
    a run reads one index file and no part, however many runs came since a compaction.
    Returns the index's rows."""
    import json

    files = live_parts(dst, "files")  # listed before reading: it covers only what it read
    idx = _index_table(dst, files).replace_schema_metadata({_COVERS: json.dumps(files).encode()})
    buf = io.BytesIO()
    pq.write_table(idx, buf, compression="zstd")
    storage.put_bytes(dst, INDEX_KEY, buf.getvalue())
    return idx.num_rows


def compact(dst: storage.Location) -> dict[str, tuple[int, int]]:
    """Merge the parts of the files, detections and manifest tables into one part each
    (`compact-<time>.parquet`, which names the parts it merged, so that a compaction stopped
    half-way never shows a row twice), delete the merged parts, and write the index the
    unchanged check reads (`_audit/index/latest.parquet`). Call it holding the DST's lease.
    Returns table -> (parts merged, rows)."""
    import json
    import time

    out = {}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for table in COMPACTED_TABLES:
        keys = parts(dst, table)
        for key in keys:  # finish a compaction that stopped before deleting its inputs
            if key.rsplit("/", 1)[-1].startswith(COMPACT_PREFIX):
                for merged in _merged_by(dst, key):
                    storage.remove(dst, merged)
        keys = parts(dst, table)
        if len(keys) <= 1:
            out[table] = (0, 0)
            continue
        schema = SCHEMAS[table]
        tbl = pa.concat_tables([_read_part(dst, k, schema) for k in keys])
        names = json.dumps(keys).encode()
        tbl = tbl.replace_schema_metadata({**(schema.metadata or {}), _MERGED: names})
        buf = io.BytesIO()
        pq.write_table(tbl, buf, compression="zstd")
        storage.put_bytes(dst, table_key(table, f"{COMPACT_PREFIX}{stamp}"), buf.getvalue())
        for key in keys:
            storage.remove(dst, key)
        out[table] = (len(keys), tbl.num_rows)
    refresh_index(dst)
    return out
