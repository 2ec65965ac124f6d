"""The commit protocol of a run into DST, and the lease that allows one run per DST.

1. Workers write each output to the run's staging area, `DST/_staging/<run_id>/<key>`, never
   to `<key>` itself.
2. A shard commits when the driver has written its audit parts (detections, then files): the
   files row is the commit point. Only then does the driver promote the shard's staged outputs
   to their keys (and remove an earlier output whose row says it is removed).
3. The run row is written at start (`running`) and rewritten at the end (`complete`,
   `interrupted`, `error`). Whatever a run left in its staging area is settled by `settle`:
   staged outputs whose files row is committed are promoted (roll forward), everything else is
   deleted. A run settles its own staging area when it stops; the next run settles what a run
   that died left (and closes its `running` row as `interrupted`) before it starts any work.

The lease (`DST/_staging/lease.json`: run id, host, pid, heartbeat) is taken before any of
this and refreshed every `storage.HEARTBEAT` seconds; a run that finds a live lease of another
run stops (`LeaseHeld`). A lease expires when its heartbeat is older than `storage.LEASE_TTL`,
or at once when its holder was on this host and its process is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from typing import Any

from sanitizer import audit, storage
from sanitizer.errors import LeaseHeld, StorageError

REMOVED_NOTE = "(output.keep_last_good: false)"  # in a failed row whose earlier output goes


# ---------------------------------------------------------------- lease
def _describe(dst: storage.Location, lease: dict[str, Any]) -> str:
    age = max(0.0, time.time() - float(lease.get("heartbeat", 0)))
    return (
        f"{dst.url} is in use by run {lease.get('run_id', '?')} (host {lease.get('host', '?')}, "
        f"pid {lease.get('pid', '?')}, heartbeat {age:.0f} s ago); one run per DST at a time "
        f"(a lease whose holder died expires {storage.LEASE_TTL:.0f} s after its last heartbeat)"
    )


def check_lease(dst: storage.Location) -> None:
    """Raise LeaseHeld when a live run holds DST (read only: for plans and dry runs)."""
    held = storage.read_lease(dst)
    if held is not None and storage.lease_is_live(held):
        raise LeaseHeld(_describe(dst, held))


class Lease:
    """`with Lease(dst, run_id):` holds DST for the run, with a heartbeat thread."""

    def __init__(self, dst: storage.Location, run_id: str) -> None:
        self.dst, self.run_id = dst, run_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "token": self._token,
        }

    def acquire(self) -> None:
        self._token = uuid.uuid4().hex
        held = storage.read_lease(self.dst)
        if held is not None and storage.lease_is_live(held):
            raise LeaseHeld(_describe(self.dst, held))
        if self.dst.is_local and held is None:
            self._create_exclusive()
        else:
            storage.write_lease(self.dst, self._doc())
            if not self.dst.is_local:
                time.sleep(0.3)  # a rival that wrote at the same moment has written by now
        now = storage.read_lease(self.dst)
        if now is None or now.get("token") != self._token:
            raise LeaseHeld(_describe(self.dst, now or {}))
        self._thread = threading.Thread(
            target=self._beat, name="sanitizer-lease-heartbeat", daemon=True
        )
        self._thread.start()

    def _create_exclusive(self) -> None:
        """Local DST: create the lease file only if nobody did (O_EXCL); a rival that won is
        then what the read back finds."""
        import json

        path = self.dst.path(storage.LEASE_KEY)
        for _ in range(2):  # a run that ends removes the empty staging folder: make it again
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                return
            except FileNotFoundError:
                continue
        else:
            return  # the read back then finds no lease of ours: LeaseHeld
        with os.fdopen(fd, "w") as f:
            json.dump(self._doc(), f)

    def _beat(self) -> None:
        while not self._stop.wait(storage.HEARTBEAT):
            with contextlib.suppress(StorageError):
                held = storage.read_lease(self.dst)
                if held is None or held.get("token") == self._token:
                    storage.write_lease(self.dst, self._doc())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(StorageError):
            held = storage.read_lease(self.dst)
            if held is not None and held.get("token") == self._token:
                storage.remove(self.dst, storage.LEASE_KEY)
        if self.dst.is_local:  # no empty staging folder left in DST (object stores have none)
            with contextlib.suppress(OSError):
                os.rmdir(self.dst.path(storage.STAGING))

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------- commit
def staged_output(row: dict[str, Any]) -> bool:
    """Did the worker stage an output for this files row (an `ok` row, not `unchanged`)?"""
    return row["status"] == "ok" and bool(row["output_sha256"])


def publish(dst: storage.Location, run_id: str, rows: list[dict[str, Any]]) -> list[str]:
    """After the rows are committed: promote their staged outputs, remove the earlier outputs
    the rows say are removed. Returns one-line errors (the staged output then stays for
    `settle`)."""
    errors = []
    for row in rows:
        try:
            if staged_output(row):
                storage.promote(dst, storage.staging_key(run_id, row["key"]), row["key"])
            elif row["status"] == "failed" and REMOVED_NOTE in row["error"]:
                storage.remove(dst, row["key"])
        except StorageError as exc:
            errors.append(str(exc))
    return errors


def settle(dst: storage.Location, run_id: str, dead: bool = True) -> tuple[int, int]:
    """Settle a stopped run's staging area: promote staged outputs whose files row is committed
    (and whose bytes are those the row names), delete the rest; for a run that died (`dead`),
    also carry out the removals its rows recorded. Returns (promoted, deleted)."""
    prefix = f"{storage.STAGING}/{run_id}/"
    staged = [
        k
        for k in storage.list_prefix(dst, prefix.rstrip("/"))
        if k.startswith(prefix) and k != prefix + RUNNING_MARKER
    ]
    if not staged and not dead:
        storage.remove_tree(dst, prefix.rstrip("/"))
        return 0, 0  # the usual end of a run: everything was published as it went
    files = audit.read_run(dst, "files", run_id)
    committed = {r["key"]: r["output_sha256"] for r in files.to_dict("records") if staged_output(r)}
    tags = {audit.key_tag(k) for k in committed}
    promoted = deleted = 0
    for staged_key in staged:
        key = staged_key[len(prefix) :]
        if key.startswith(audit.AUDIT_DIR + "/detections/"):  # a file's detection part
            if _part_tag(key) in tags:
                storage.promote(dst, staged_key, key)
                promoted += 1
            else:
                storage.remove(dst, staged_key)
                deleted += 1
            continue
        want = committed.get(storage.printable(key))  # the audit escapes keys that are not UTF-8
        if want and storage.sha256_key(dst, staged_key) == want:
            storage.promote(dst, staged_key, key)
            promoted += 1
        else:
            storage.remove(dst, staged_key)
            deleted += 1
    if dead:  # detection parts promoted for a file whose row was never committed
        for part in audit.parts(dst, "detections"):
            name = part.rsplit("/", 1)[-1]
            if name.startswith(run_id + "-") and (tag := _part_tag(part)) and tag not in tags:
                storage.remove(dst, part)
    for r in files.to_dict("records") if dead else []:  # removals its rows recorded
        if r["status"] == "failed" and REMOVED_NOTE in (r["error"] or ""):
            storage.remove(dst, _stored_key(r))
    storage.remove_tree(dst, prefix.rstrip("/"))
    return promoted, deleted


def _stored_key(row: dict[str, Any]) -> str:
    """The key of an audit row as storage names it: the row's `key` escapes bytes that are not
    UTF-8, its `raw_key` (percent-encoded bytes) keeps them."""
    if not row.get("raw_key"):
        return row["key"]
    from urllib.parse import unquote_to_bytes

    raw = unquote_to_bytes(row["raw_key"])
    return os.fsdecode(raw) if os.name == "posix" else raw.decode("utf-8", "surrogatepass")


def _part_tag(part_key: str) -> str:
    """The key tag in the name of a per-file detection part (`<run_id>-<tag>-<n>.parquet`),
    "" for the driver's per-shard parts."""
    stem = part_key.rsplit("/", 1)[-1].removesuffix(".parquet")
    pieces = stem.rsplit("-", 2)
    return pieces[1] if len(pieces) == 3 and len(pieces[1]) == 16 else ""


def promote_detection_parts(dst: storage.Location, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Before the rows are committed: move the detection parts their files wrote (ok rows
    only) from staging into `_audit/detections`, so that a committed row never lacks them."""
    prefix = f"{storage.STAGING}/{run_id}/"
    for row in rows:
        if row["status"] == "ok":
            for staged in row.get("detection_parts") or []:
                storage.promote(dst, staged, staged[len(prefix) :])


def staged_runs(dst: storage.Location) -> set[str]:
    """Run ids that have something in the staging area."""
    out = set()
    for k in storage.list_prefix(dst, storage.STAGING):
        parts = k.split("/")
        if len(parts) >= 3:
            out.add(parts[1])
    return out


def mark_running(dst: storage.Location, run_id: str) -> None:
    """Mark the run's staging area as in use: it then exists until the run has settled it, so
    that the next run finds a run that died by listing `_staging/` alone."""
    storage.put_bytes(dst, f"{storage.STAGING}/{run_id}/{RUNNING_MARKER}", b"")


RUNNING_MARKER = ".running"


def recover(dst: storage.Location, current_run_id: str) -> list[str]:
    """Before a run (holding the lease): settle what earlier runs that died left in staging and
    close their `running` rows as `interrupted`. Lists `_staging/` and reads only those runs'
    rows. Returns the run ids recovered."""
    todo = sorted(staged_runs(dst) - {current_run_id})
    for run_id in todo:
        settle(dst, run_id)
        key = audit.table_key("runs", run_id)
        if storage.exists(dst, key):
            row = audit.read_run(dst, "runs", run_id)
            if not row.empty and row.status.iloc[-1] == "running":
                _close_dead_run(dst, row.iloc[-1].to_dict())
    return todo


def _close_dead_run(dst: storage.Location, row: dict[str, Any]) -> None:
    files = audit.read_run(dst, "files", row["run_id"])
    status = files.status.value_counts() if not files.empty else {}
    row = dict(row)
    row.pop("schema_version", None)
    row["started"] = row["started"].timestamp()
    row["finished"] = files.finished.max().timestamp() if not files.empty else row["started"]
    row["n_ok"] = int(status.get("ok", 0))
    row["n_failed"] = int(status.get("failed", 0))
    row["n_skipped"] = int(status.get("skipped", 0))
    row["n_faces"] = int(files.n_faces.sum()) if not files.empty else 0
    row["status"] = "interrupted"
    audit.write_part(dst, "runs", row["run_id"], [row])
