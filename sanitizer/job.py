"""The `run` job: manifest → shards on Dask → audit parts as shards finish → run record.

Library code: reports progress through an `on_event(name, **data)` callback and returns a
summary; the CLI decides what to print and which exit code to use.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sanitizer import __version__, audit, erase, manifest, storage
from sanitizer import record as record_of_processing
from sanitizer.config import Config
from sanitizer.errors import RunError, StorageError
from sanitizer.records import UNCHANGED, MediaItem, RunRecord

Event = Callable[..., None]


def _noop(name: str, **data: Any) -> None:
    pass


@dataclass
class Plan:
    run_id: str
    src: storage.Location
    dst: storage.Location
    items: list[MediaItem]
    shards: list[list[MediaItem]]
    workers: int
    scheduler: str
    previous: dict[str, str] = field(
        default_factory=dict
    )  # printable key -> source sha256 published
    erased: dict[str, str] = field(default_factory=dict)  # key -> skip reason (erase.py)
    previous_stat: dict[str, str] = field(default_factory=dict)  # printable key -> source_stat
    # media the listing shows unchanged since their published output (`unchanged_by_listing`):
    # their rows are written by the driver, no task reads them
    unchanged: list[MediaItem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"image": 0, "video": 0, "other": 0}
        for i in self.items:
            out[i.kind] = out.get(i.kind, 0) + 1
        return out


@dataclass
class Summary:
    run_id: str
    destination: str
    audit_uri: str
    n_files: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    n_unchanged: int = 0  # skipped because already published unchanged (part of n_skipped)
    n_faces: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    precisions: set[str] = field(default_factory=set)  # what the detector ran at (ok rows)

    @property
    def files_per_s(self) -> float:
        return (self.n_ok + self.n_failed) / self.seconds if self.seconds > 0 else 0.0


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def locations(src_url: str, dst_url: str, cfg: Config) -> tuple[storage.Location, storage.Location]:
    src = storage.location(src_url, cfg.input.storage_options)
    dst = storage.location(dst_url, cfg.output.storage_options)
    if storage.is_inside(dst, src):
        raise StorageError(
            f"DST {dst_url} is SRC or inside it; choose a destination outside {src_url}"
        )
    if storage.is_inside(src, dst):
        raise StorageError(
            f"SRC {src_url} is inside DST {dst_url}; outputs could overwrite originals"
        )
    return src, dst


def plan(src_url: str, dst_url: str, cfg: Config, on_event: Event = _noop) -> Plan:
    from sanitizer.execute import shard

    src, dst = locations(src_url, dst_url, cfg)
    on_event("listing", source=src.url)
    items = manifest.build(
        src, include_hidden=cfg.input.include_hidden, with_hash=False, trust_extensions=True
    )
    from sanitizer.commit import check_lease

    check_lease(dst)  # a DST that another live run holds is refused before any work
    workers = cfg.execution.workers or os.cpu_count() or 1
    # compliance (issue 14): sources erased on request are not processed again (until --force)
    erased = erase.held_back(dst, items, cfg.execution.skip_unchanged)
    previous, previous_stat = (
        published_with_stat(dst, cfg.fingerprint()) if cfg.execution.skip_unchanged else ({}, {})
    )
    media = [i for i in items if i.kind != "other" and i.key not in erased]
    unchanged = (
        [] if cfg.execution.verify_hashes else unchanged_by_listing(dst, media, previous_stat)
    )
    settled = {i.key for i in unchanged}
    shards = shard(
        [i for i in media if i.key not in settled],
        workers,
        cfg.execution.shard_bytes,
        cfg.execution.shard_files,
    )
    if not cfg.execution.scheduler:
        # an embedded cluster spawns no worker that would get no task (a worker costs ~0.4 s
        # of CPU to start: on a one-video run that is CPU the video itself needs)
        workers = max(1, min(workers, len(shards)))
    return Plan(
        new_run_id(),
        src,
        dst,
        items,
        shards,
        workers,
        cfg.execution.scheduler,
        previous,
        previous_stat=previous_stat,
        erased=erased,
        unchanged=unchanged,
    )


def unchanged_by_listing(
    dst: storage.Location, media: list[MediaItem], previous_stat: dict[str, str]
) -> list[MediaItem]:
    """The media whose size and mtime (or ETag), as SRC's listing gives them, are those
    recorded with an output still at DST under this config: unchanged, known without a request
    per file (DST is listed once). A nightly run over an unchanged bucket so starts no task.
    The workers make the same check for the rest (`process._skip_if_same_stat`)."""
    seen = [i for i in media if i.stat and previous_stat.get(storage.printable(i.key)) == i.stat]
    if not seen:
        return []
    present = storage.existing_keys(dst, [i.key for i in seen])
    return [i for i in seen if i.key in present]


def run_job(src_url: str, dst_url: str, config=None, on_event: Event | None = None) -> Summary:
    """Plan and run a job (`sanitizer.run`, which the CLI calls too). `config`: a Config, a dict
    of sections, a YAML path, or None for the defaults."""
    from sanitizer import config as config_mod

    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, dict):
        cfg = config_mod.from_dict(config)
    else:
        cfg = config_mod.load(config)
    on_event = on_event or _noop
    return run(plan(src_url, dst_url, cfg, on_event), cfg, on_event)


def published(dst: storage.Location, fingerprint: str) -> dict[str, str]:
    """key -> source sha256 of the outputs at DST made with this config (the latest `ok` row
    of the key has this fingerprint and no `failed` row came after it)."""
    return published_with_stat(dst, fingerprint)[0]


def published_with_stat(
    dst: storage.Location, fingerprint: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(key -> source sha256, key -> source_stat) of the outputs at DST made with this config.
    Reads the compact index and the parts written since (`audit.index_rows`)."""
    if not audit.parts(dst, "files"):
        return {}, {}  # a new DST (and no pandas import on the way to the cluster start)
    rows = audit.index_rows(dst)
    if rows.empty:
        return {}, {}
    ok = rows[rows.status == "ok"]
    failed = rows.loc[rows.status == "failed", ["key", "finished"]]
    m = ok.merge(failed.rename(columns={"finished": "failed_at"}), on="key", how="left")
    m = m[(m.config_fingerprint == fingerprint) & ~(m.failed_at > m.finished)]
    # a source touched since (new mtime, the same bytes: hashed and found unchanged by a later
    # run) is known by the stat that run saw, so it is not hashed again every night
    seen = rows.loc[
        (rows.status == audit.INDEX_UNCHANGED) & (rows.config_fingerprint == fingerprint),
        ["key", "source_sha256", "source_stat", "finished"],
    ].rename(
        columns={"source_sha256": "seen_sha", "source_stat": "seen_stat", "finished": "seen_at"}
    )
    m = m.merge(seen, on="key", how="left")
    renew = (
        (m.seen_at > m.finished) & (m.seen_sha == m.source_sha256) & (m.seen_stat.fillna("") != "")
    )
    m.loc[renew, "source_stat"] = m.loc[renew, "seen_stat"]
    sha = dict(zip(m.key, m.source_sha256, strict=True))
    with_stat = m[m.source_stat.notna() & (m.source_stat != "")]
    return sha, dict(zip(with_stat.key, with_stat.source_stat, strict=True))


def run(p: Plan, cfg: Config, on_event: Event = _noop) -> Summary:
    """Process a plan under the DST's lease (README "Commit protocol"): the run row is written
    at start (`running`), audit parts as shards finish (each shard's outputs promoted after its
    rows), the run row again at the end. Ctrl-C (KeyboardInterrupt) is caught here once: the
    run stops, what is committed stays, the rest is settled, the row says `interrupted`."""
    from sanitizer.commit import Lease, mark_running, recover, settle
    from sanitizer.detect import describe

    started = time.time()
    if p.shards and cfg.detect.detector == "centerface" and cfg.detect.precision == "int8":
        from sanitizer.detect.centerface import int8_ready

        if not int8_ready():
            # first run on this machine: derive the int8 network here, before any task
            # starts, so workers read it from the cache instead of waiting for it
            on_event("model_prepare")
    # fail before any work if the model is missing; the workers load it (the driver runs none)
    detector = describe(cfg.detect)  # (derives and caches the int8 network if needed)
    storage.makedirs(p.dst)
    lease = Lease(p.dst, p.run_id)
    lease.acquire()  # LeaseHeld: another live run holds DST (nothing written)
    try:
        recovered = recover(p.dst, p.run_id)  # what runs that died left behind
        if recovered:
            on_event("recovered", runs=recovered)
        summary = Summary(p.run_id, p.dst.url, audit.audit_uri(p.dst), n_files=len(p.items))
        mark_running(p.dst, p.run_id)  # first: a run row `running` always has its marker
        _write_run(p, cfg, detector, summary, started, "running")
        completed = False
        try:
            _run_held(p, cfg, on_event, started, detector, summary)
            completed = True
            return summary
        except RunError:
            completed = True  # every row and output is committed; only their mix is wrong
            raise
        finally:
            with contextlib.suppress(StorageError):  # the original error is the one to report
                # staged outputs whose rows are committed are promoted, the rest deleted
                settle(p.dst, p.run_id, dead=not completed)
            if completed:
                # the next run's unchanged check reads one index file, not this run's parts
                # (a run that cannot write it, or that was stopped, leaves it to the next one)
                with contextlib.suppress(StorageError):
                    audit.refresh_index(p.dst)
    finally:
        lease.release()


def _run_held(
    p: Plan, cfg: Config, on_event: Event, started: float, detector, summary: Summary
) -> None:
    from sanitizer import execute, interrupts
    from sanitizer.commit import promote_detection_parts, publish
    from sanitizer.process import Context, failure, process_item, unchanged_row

    audit.write_part(p.dst, "manifest", p.run_id, manifest.to_parquet_table(p.items))

    def record(rows: list[tuple[dict[str, Any], list[dict[str, Any]]]], part: str) -> None:
        files = [r for r, _ in rows]
        dets = [d for _, ds in rows for d in ds]
        # faces first: a files row (the commit point of its output) never lacks them
        promote_detection_parts(p.dst, p.run_id, files)
        audit.write_part(p.dst, "detections", part, dets)
        audit.write_part(p.dst, "files", part, files)
        for error in publish(p.dst, p.run_id, files):  # only now do outputs reach their keys
            on_event("publish_error", error=error)
        for r in files:
            if r["status"] == "ok":
                summary.n_ok += 1
                summary.n_faces += r["n_faces"]
                if r.get("precision"):
                    summary.precisions.add(r["precision"])
            elif r["status"] == "failed":
                summary.n_failed += 1
                summary.failures.append((r["key"], r["error"]))
            else:
                summary.n_skipped += 1
                summary.n_unchanged += r["error"] == UNCHANGED

    # non-media files: skipped rows, written by the driver (nothing to compute)
    ctx = Context.create(p.run_id, cfg, detector, p.src, p.dst)
    others = [i for i in p.items if i.kind == "other"]
    if others:
        record([process_item(i, ctx) for i in others], f"{p.run_id}-skipped")
    if p.erased:  # compliance (issue 14): a `skipped: erased on ...` row per erased source
        record(erase.skipped_rows(p.items, p.erased, ctx), f"{p.run_id}-erased")
    if p.unchanged:
        rows = [
            (unchanged_row(i, ctx, p.previous[storage.printable(i.key)]), []) for i in p.unchanged
        ]
        record(rows, f"{p.run_id}-unchanged")
    total = sum(len(s) for s in p.shards)
    on_event("start", total=total, workers=p.workers, shards=len(p.shards), scheduler=p.scheduler)
    done = parts = 0
    status = "complete"

    def on_shard(items: list[MediaItem], results, error: str) -> None:
        nonlocal done, parts
        if results is None:  # the task itself died: fail closed for every file of the shard
            results = [(failure(item, ctx, error), []) for item in items]
        parts += 1
        record(results, f"{p.run_id}-{parts:06d}")
        done += len(items)
        on_event("progress", done=done, total=total, results=[r for r, _ in results])
        interrupts.check()  # a Ctrl-C that could not be raised where it landed

    try:
        if p.shards:
            # the cluster (and its client) is closed when this block ends, whatever ends it:
            # no task may stage after the run's staging area is settled
            with execute.cluster(cfg, p.workers) as (client, info):
                on_event(
                    "cluster", address=info.address, workers=info.workers, embedded=info.embedded
                )
                try:
                    execute.map_shards(
                        client,
                        p.shards,
                        p.run_id,
                        cfg,
                        p.src.url,
                        p.dst.url,
                        on_shard,
                        p.previous,
                        p.previous_stat,
                    )
                except BaseException:
                    if not info.embedded:  # an existing cluster outlives the run: stop its tasks
                        execute.stop_remote_tasks(client, p.run_id)
                    raise
        check_precisions(summary)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:  # the cluster could not be reached, the audit could not be written...
        status = "error"
        raise
    finally:
        summary.seconds = time.time() - started
        try:
            _write_run(p, cfg, detector, summary, started, status)
        except StorageError:
            if status == "complete":
                raise  # otherwise the original error is the one to report


def check_precisions(summary: Summary) -> None:
    """Every ok file of a run must have been scanned at one precision: workers whose machines
    differ (one runs the int8 network, another falls back to fp32) would make one run's
    recall uneven across its files. RunError (one line) otherwise; the rows say which file
    ran at which precision (`precision`)."""
    if len(summary.precisions) > 1:
        raise RunError(
            "workers ran the detector at different precisions: "
            + ", ".join(sorted(summary.precisions))
            + " (see the `precision` column of the audit's files rows)",
            summary,
        )


def _write_run(p: Plan, cfg: Config, detector, s: Summary, started: float, status: str) -> None:
    rec = cfg.record
    row = RunRecord(
        run_id=p.run_id,
        tool_version=__version__,
        started=started,
        finished=time.time(),
        source=p.src.url,
        destination=p.dst.url,
        config_json=cfg.to_json(),
        config_fingerprint=cfg.fingerprint(),
        detector=detector.name,
        model_sha256=detector.model_sha256,
        n_files=s.n_files,
        n_ok=s.n_ok,
        n_failed=s.n_failed,
        n_skipped=s.n_skipped,
        n_faces=s.n_faces,
        controller=rec.controller,
        dpo_contact=rec.dpo_contact,
        purpose=rec.purpose,
        legal_basis=rec.legal_basis,
        data_categories=rec.data_categories,
        data_subjects=rec.data_subjects,
        recipients=rec.recipients,
        retention=rec.retention,
        transfers=rec.transfers,
        # compliance (issue 14): what the tool did, then the controller's own measures
        security_measures=record_of_processing.security_measures(
            cfg, detector.name, detector.model_sha256
        ),
        host=socket.gethostname(),
        scheduler=p.scheduler or "embedded LocalCluster",
        status=status,
    ).to_row()
    audit.write_part(p.dst, "runs", p.run_id, [row])
