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


def read(dst: storage.Location, table: str, run_id: str | None = None) -> pd.DataFrame:
    """All parts of one audit table as a DataFrame (empty, with columns, when none)."""
    schema = SCHEMAS[table]
    tables = []
    for key in parts(dst, table):
        try:
            with storage.open_file(dst, key) as f:
                tables.append(pq.read_table(f, schema=schema))
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"{key}: unreadable audit part ({exc})") from None
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
