"""Command-line interface: the only place that prints, shows progress and sets exit codes."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from sanitizer import __version__
from sanitizer.errors import RunError, SanitizerError

app = typer.Typer(
    name="sanitizer",
    help="Detect and irreversibly redact every face in image and video datasets, with a Parquet audit log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE = 0, 1, 2


class _RunOutput:
    """`run --quiet` (errors only) and `run --json` (one JSON line at the end), for schedulers."""

    quiet = False
    json = False
    record_warning = ""  # printed once a run (or dry run) finished: an error stays one line


def _note(text: str) -> None:
    """An informational line on stderr (not under --quiet)."""
    if not _RunOutput.quiet:
        err.print(text, highlight=False)


def _version(value: bool) -> None:
    if value:
        out.print(f"sanitizer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """sanitizer: face redaction for datasets."""


def _fail(exc: BaseException, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _overrides(**opts: Any) -> dict[str, dict[str, Any]]:
    """CLI options → config overrides ({"section": {"name": value}}), None = not given."""
    where = {
        "detector": ("detect", "detector"),
        "threshold": ("detect", "threshold"),
        "method": ("redact", "method"),
        "shape": ("redact", "shape"),
        "margin": ("redact", "margin"),
        "workers": ("execution", "workers"),
        "scheduler": ("execution", "scheduler"),
        "skip_unchanged": ("execution", "skip_unchanged"),
    }
    res: dict[str, dict[str, Any]] = {}
    for name, value in opts.items():
        if value is not None:
            section, key = where[name]
            res.setdefault(section, {})[key] = value
    return res


def load_config(config: Path | None, **opts: Any):
    from sanitizer.config import load

    return load(config, _overrides(**opts))


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (see configs/default.yaml); CLI options override it.",
    ),
]
DetectorOpt = Annotated[
    str | None,
    typer.Option(
        "--detector",
        help="Face detector: centerface (DNN, default) or haar (classic OpenCV cascade).",
    ),
]
MethodOpt = Annotated[
    str | None, typer.Option("--method", help="Redaction: gaussian (default), pixelate or solid.")
]
ShapeOpt = Annotated[
    str | None, typer.Option("--shape", help="Mask shape: box (default) or ellipse.")
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="Detection score threshold at native scale (default 0.2, chosen for recall).",
    ),
]
MarginOpt = Annotated[
    float | None,
    typer.Option("--margin", help="Mask size as a multiple of the face box (default 1.5)."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Worker processes of the embedded Dask cluster (default: one per core; never more than the run has tasks).",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Address of an existing Dask scheduler, e.g. tcp://host:8786 (default: embedded LocalCluster).",
    ),
]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal or _RunOutput.quiet,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_plan(plan) -> None:
    counts = plan.counts()
    size = sum(i.size for i in plan.items)
    out.print(
        f"run {plan.run_id}: {len(plan.items)} files under {plan.src.url} "
        f"({counts['image']} images, {counts['video']} videos, {counts['other']} other; {size / 1e6:.1f} MB)"
    )
    if plan.shards:
        where = plan.scheduler or (
            f"an embedded Dask LocalCluster of {_count(plan.workers, 'worker')}"
        )
        out.print(f"  {_count(len(plan.shards), 'task')} on {where}")
    else:
        out.print("  nothing to process: no task, no cluster")
    out.print(f"  outputs → {plan.dst.url}   audit → {plan.dst.uri('_audit')}")
    if plan.previous:
        out.print(
            f"  {len(plan.previous)} files were published by earlier runs with this config; "
            "unchanged ones are skipped (--force to redo)"
        )
    if plan.unchanged:
        out.print(
            f"  unchanged since then by SRC's listing (size and mtime or ETag): "
            f"{_count(len(plan.unchanged), 'file')}, not read again"
        )
    if plan.erased:  # compliance (issue 14)
        out.print(
            f"  skipped as erased on request (sanitizer erase): {_count(len(plan.erased), 'file')} "
            "(--force to publish them again)"
        )


def run_job(src: str, dst: str, cfg, dry_run: bool = False) -> int:
    """Plan and run a job, print progress and a summary; return the exit code."""
    import logging

    from sanitizer import interrupts, job

    # The CLI is the only printer: a worker that cannot start is reported as one line (a
    # ClusterError), not also as the traceback of the cluster's background task.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    interrupts.check()  # a Ctrl-C pressed while the libraries were imported
    plan = job.plan(src, dst, cfg)
    interrupts.check()
    _print_plan(plan)
    if dry_run:
        table = Table(
            "key", "kind", "format", "bytes", title="manifest (dry run: nothing processed)"
        )
        for item in plan.items[:50]:
            table.add_row(item.key, item.kind, item.format, str(item.size))
        out.print(table)
        if len(plan.items) > 50:
            out.print(f"  … and {len(plan.items) - 50} more")
        _warn_record()  # compliance (issue 14)
        return EXIT_OK
    progress = _progress()
    task = progress.add_task("sanitizing", total=sum(len(s) for s in plan.shards))

    last_log = [time.monotonic()]

    def on_event(name: str, **data: Any) -> None:
        if name == "cluster":
            where = "embedded LocalCluster" if data["embedded"] else data["address"]
            _note(f"  dask: {_count(data['workers'], 'worker')} ({where})")
        elif name == "recovered":
            _note(
                f"  settled what {_count(len(data['runs']), 'earlier run')} left unfinished: "
                + ", ".join(data["runs"])
            )
        elif name == "publish_error":
            err.print(f"  [red]not yet published[/]: {data['error']}", highlight=False)
        elif name == "model_prepare":
            _note("  model: deriving the int8 CenterFace network (once per machine, ~7 s)")
        elif name == "progress":
            progress.update(task, completed=data["done"])
            if (
                not err.is_terminal and time.monotonic() - last_log[0] > 30
            ):  # logs of scheduled jobs
                last_log[0] = time.monotonic()
                _note(f"  progress: {data['done']}/{data['total']} files")
            for r in data["results"]:
                if r["status"] == "failed" and not err.is_terminal:
                    err.print(
                        f"  failed: {r['key']}: {r['error']}", highlight=False, soft_wrap=True
                    )

    with progress:
        summary = job.run(plan, cfg, on_event)
    for key, reason in summary.failures:
        if err.is_terminal:
            err.print(f"  [red]failed[/]: {key}: {reason}", highlight=False, soft_wrap=True)
    out.print(
        f"done in {summary.seconds:.1f}s: {summary.n_ok} ok, {summary.n_failed} failed, "
        f"{summary.n_skipped} skipped{f' ({summary.n_unchanged} unchanged since an earlier run)' if summary.n_unchanged else ''}; "
        f"{summary.n_faces} faces redacted; {summary.files_per_s:.2f} files/s"
    )
    out.print(f"outputs: {summary.destination}")
    out.print(f"audit:   {summary.audit_uri}  (pandas.read_parquet('{summary.audit_uri}/files'))")
    code = EXIT_FAILED_FILES if summary.n_failed else EXIT_OK
    _warn_record()  # compliance (issue 14)
    _print_run_json(plan, summary, code)  # compliance (issue 14): run --json
    return code


def _warn_record() -> None:
    """The one-line warning about an incomplete record of processing (see _check_record)."""
    if _RunOutput.record_warning and not _RunOutput.quiet:
        err.print(f"[yellow]warning:[/] {_RunOutput.record_warning}", highlight=False)


def _print_run_json(plan, summary, code: int) -> None:
    """run --json: the run's outcome as one JSON line on stdout (the other output is off)."""
    if not _RunOutput.json:
        return
    line = {
        "run_id": summary.run_id,
        "exit_code": code,
        "files": summary.n_files,
        "ok": summary.n_ok,
        "failed": summary.n_failed,
        "skipped": summary.n_skipped,
        "unchanged": summary.n_unchanged,
        "erased": len(plan.erased),
        "faces": summary.n_faces,
        "seconds": round(summary.seconds, 3),
        "destination": summary.destination,
        "audit": summary.audit_uri,
        "failures": [{"key": k, "error": e} for k, e in summary.failures],
    }
    sys.stdout.write(json.dumps(line) + "\n")


@app.command()
def run(
    src: Annotated[
        str,
        typer.Argument(
            help="Folder or fsspec URL (s3://bucket/prefix, memory://…) of the originals. Never modified."
        ),
    ],
    dst: Annotated[
        str,
        typer.Argument(
            help="Folder or URL for redacted outputs (same relative keys) and the audit under _audit/. Must not overlap SRC."
        ),
    ],
    config: ConfigOpt = None,
    detector: DetectorOpt = None,
    method: MethodOpt = None,
    shape: ShapeOpt = None,
    threshold: ThresholdOpt = None,
    margin: MarginOpt = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Build the manifest and print the plan; process nothing."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Reprocess files already published unchanged by an earlier run."
        ),
    ] = False,
    require_record: Annotated[
        bool,
        typer.Option(
            "--require-record",
            help="Exit 2 before processing when the config's record has no controller, purpose or legal_basis.",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print only a one-line JSON summary at the end (stdout)."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    verify_hashes: Annotated[
        bool,
        typer.Option(
            "--verify-hashes",
            help="Re-hash every source for the unchanged check (default: a source whose size and mtime or ETag match the recorded ones is not read).",
        ),
    ] = False,
) -> None:
    """Redact every face in every image and video under SRC into DST, with a Parquet audit."""
    _RunOutput.quiet, _RunOutput.json = quiet, as_json
    if quiet or as_json:
        out.quiet = True
    try:
        cfg = load_config(
            config,
            detector=detector,
            method=method,
            shape=shape,
            threshold=threshold,
            margin=margin,
            workers=workers,
            scheduler=scheduler,
            skip_unchanged=False if force else None,
        )
        _check_record(cfg, require_record)  # compliance (issue 14)
        if verify_hashes:
            cfg.execution.verify_hashes = True
        code = run_job(src, dst, cfg, dry_run)
    except RunError as exc:  # the run went to its end, but its results disagree (README)
        raise _fail(exc, EXIT_FAILED_FILES) from None
    except SanitizerError as exc:
        if _from_interrupt(exc):
            err.print(
                "interrupted: files finished so far are in the audit; nothing partial was published"
            )
            raise typer.Exit(130) from None
        raise _fail(exc) from None
    except KeyboardInterrupt:
        err.print(
            "interrupted: files finished so far are in the audit; nothing partial was published"
        )
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _check_record(cfg, require: bool) -> None:
    """An incomplete record of processing: exit 2 when it is required, else a warning that
    `_warn_record` prints at the end of the run."""
    from sanitizer import record

    text = record.warning(cfg)
    if not text:
        return
    if require or cfg.record.required:
        raise SanitizerError(
            f"no {', '.join(record.missing(cfg))} in the config's `record` section, which "
            f"{'--require-record' if require else 'record.required: true'} makes mandatory; nothing was processed"
        )
    _RunOutput.record_warning = text


def _held_dst(dst: str, config: Path | None):
    """DST as a Location, and a lease on it for a maintenance command."""
    from sanitizer import commit, job, storage

    cfg = load_config(config)
    loc = storage.location(dst, cfg.output.storage_options)
    return loc, commit.Lease(loc, "maintenance-" + job.new_run_id())


def audit_compact(
    dst: Annotated[str, typer.Argument(help="DST folder or URL whose audit to compact.")],
    config: ConfigOpt = None,
) -> None:
    """Merge the audit's parts (files, detections, manifest) into one part each and write the
    index that makes the unchanged check of the next run read one file, not every part."""
    from sanitizer import audit, commit

    try:
        loc, lease = _held_dst(dst, config)
        with lease:
            commit.recover(loc, lease.run_id)  # a dead run's parts are settled before merging
            merged = audit.compact(loc)
    except SanitizerError as exc:
        raise _fail(exc) from None
    for table, (n_parts, n_rows) in merged.items():
        out.print(f"{table}: {n_parts} parts merged ({n_rows} rows)", highlight=False)
    out.print(f"index: {loc.uri(audit.INDEX_KEY)}", highlight=False)


def audit_repair(
    dst: Annotated[str, typer.Argument(help="DST folder or URL to settle.")],
    config: ConfigOpt = None,
) -> None:
    """Settle what runs that died left in DST/_staging (promote committed outputs, delete the
    rest) and close their `running` rows as `interrupted` (the next run does this too)."""
    from sanitizer import commit

    try:
        loc, lease = _held_dst(dst, config)
        with lease:
            runs = commit.recover(loc, lease.run_id)
    except SanitizerError as exc:
        raise _fail(exc) from None
    out.print(f"settled {_count(len(runs), 'run')}: {', '.join(runs) or 'nothing to do'}")


@app.command("manifest")
def manifest_cmd(
    src: Annotated[str, typer.Argument(help="Folder or fsspec URL to list.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet file to write.")] = Path(
        "manifest.parquet"
    ),
    config: ConfigOpt = None,
) -> None:
    """List SRC (kind sniffed from content, size, sha256) into a Parquet manifest."""
    import pyarrow.parquet as pq

    from sanitizer import manifest, storage

    try:
        cfg = load_config(config)
        loc = storage.location(src, cfg.input.storage_options)
        items = manifest.build(loc, include_hidden=cfg.input.include_hidden, with_hash=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(manifest.to_parquet_table(items), output)
    except SanitizerError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc}") from None
    kinds: dict[str, int] = {}
    for i in items:
        kinds[i.kind] = kinds.get(i.kind, 0) + 1
    out.print(
        f"{len(items)} files ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}) → {output}"
    )


@app.command()
def demo(
    folder: Annotated[
        Path, typer.Argument(help="Where to write the sample input and the outputs.")
    ] = Path("sanitizer-demo"),
    workers: WorkersOpt = None,
    method: MethodOpt = None,
) -> None:
    """Write a few public-domain sample photos (and a short clip), then run the job on them."""
    from sanitizer.sample import write_samples

    try:
        src = folder / "input"
        written = write_samples(src)
        out.print(f"wrote {len(written)} sample files to {src}")
        cfg = load_config(None, workers=workers, method=method)
        code = run_job(str(src), str(folder / "output"), cfg)
    except SanitizerError as exc:
        raise _fail(exc) from None
    out.print(f"look at the redacted files in {folder / 'output'}; the originals in {src}")
    raise typer.Exit(code)


# --- compliance (issue 14): audit summary/find/export, erase, review, config show -----------


class _AuditGroup(TyperGroup):
    """`sanitizer audit DST ...` (no subcommand) is `sanitizer audit summary DST ...`, as
    before the audit command became a group."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["summary", *args]
        return super().parse_args(ctx, args)


audit_app = typer.Typer(
    cls=_AuditGroup,
    help="Read the audit of a DST: summary, find a data subject's files, export every table.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
audit_app.command("compact")(audit_compact)
audit_app.command("repair")(audit_repair)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

DstArg = Annotated[
    str, typer.Argument(help="A DST folder/URL written by `sanitizer run` (s3://… works too).")
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", help="Source key or glob, e.g. 'people/2024-06/*.jpg'."),
]
ShaOpt = Annotated[
    str | None,
    typer.Option("--sha256", help="sha256 of the source file (hex; 8+ leading digits suffice)."),
]
LikeOpt = Annotated[
    Path | None,
    typer.Option(
        "--like",
        help="A photo (e.g. one a data subject sent in): finds re-encoded or resized copies among the sources.",
    ),
]
MaxDistanceOpt = Annotated[
    int | None,
    typer.Option(
        "--max-distance",
        help="--like: perceptual-hash bits that may differ (default 8 of 64).",
    ),
]


def _dst(dst: str, config: Path | None):
    from sanitizer import storage

    return storage.location(dst, load_config(config).output.storage_options)


def _query(key, sha256, like, max_distance):
    from sanitizer import phash
    from sanitizer.lookup import Query

    data = None
    if like is not None:
        try:
            data = like.read_bytes()
        except OSError as exc:
            raise SanitizerError(f"--like {like}: {exc.strerror or exc}") from None
    return Query(
        key=key,
        sha256=sha256,
        like=data,
        like_name=str(like or ""),
        max_distance=phash.DEFAULT_MAX_DISTANCE if max_distance is None else max_distance,
    )


@audit_app.command("summary")
def audit_summary(
    dst: DstArg,
    run_id: Annotated[
        str | None, typer.Option("--run", help="Run id (default: the latest run).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run record and counts as JSON.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Summarise the audit of a DST: the run record, counts by status, failures."""
    from sanitizer import audit as audit_mod

    try:
        loc = _dst(dst, config)
        rid = run_id or audit_mod.latest_run_id(loc)
        if rid is None:
            raise SanitizerError(f"{dst}: no audit found under _audit/runs")
        runs = audit_mod.read(loc, "runs", rid)
        files = audit_mod.read(loc, "files", rid)
        erasures = audit_mod.read(loc, "erasures")
        reviews = audit_mod.read(loc, "reviews")
    except SanitizerError as exc:
        raise _fail(exc) from None
    if runs.empty:
        raise _fail(f"run {rid} not found in {dst}")
    rec = runs.iloc[0].to_dict()
    by_status = files["status"].value_counts().to_dict()
    verdicts = reviews["verdict"].value_counts().to_dict()
    if as_json:
        rec = {k: (str(v) if not isinstance(v, int | float | str) else v) for k, v in rec.items()}
        out.print_json(
            json.dumps(
                {
                    "run": rec,
                    "files_by_status": by_status,
                    "erasures": len(erasures),
                    "reviews_by_verdict": verdicts,
                }
            )
        )
        return
    out.print(f"run {rid}  ({rec['status']}, {rec['started']} → {rec['finished']})")
    for k in (
        "source",
        "destination",
        "detector",
        "model_sha256",
        "config_fingerprint",
        "controller",
        "dpo_contact",
        "purpose",
        "legal_basis",
        "data_categories",
        "data_subjects",
        "recipients",
        "retention",
        "transfers",
        "security_measures",
    ):
        out.print(f"  {k:18s} {rec[k] or '(not stated)'}", highlight=False)
    out.print(f"  files: {by_status}; faces: {int(files['n_faces'].sum())}")
    failed = files[files["status"] == "failed"]
    for _, r in failed.head(20).iterrows():
        out.print(f"  failed: {r['key']}: {r['error']}", highlight=False, soft_wrap=True)
    if len(erasures):
        out.print(f"  erasures (all runs): {len(erasures)} sources, see `audit export`")
    if verdicts:
        out.print(f"  reviews (all runs): {verdicts}")


@audit_app.command("find")
def audit_find(
    dst: DstArg,
    key: KeyOpt = None,
    sha256: ShaOpt = None,
    like: LikeOpt = None,
    max_distance: MaxDistanceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the matches as JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Which source files match, their outputs, when, by which run, and the faces found."""
    from sanitizer.lookup import find

    try:
        found = find(_dst(dst, config), _query(key, sha256, like, max_distance))
    except SanitizerError as exc:
        raise _fail(exc) from None
    res = found.to_dict()
    if as_json:
        out.print_json(json.dumps(res))
        return
    n = len(res["sources"])
    out.print(f"{_count(n, 'source')} matching {res['query']}", highlight=False)
    for src in res["sources"]:
        near = f"  (distance {src['distance']})" if "distance" in src else ""
        out.print(
            f"{src['key']}  sha256 {src['source_sha256'][:16]}…  {src['kind']}{near}",
            highlight=False,
        )
        out.print(f"  source: {src['source_uri']}", highlight=False)
        for r in src["runs"]:
            what = r["output_uri"] if r["status"] == "ok" else r["error"]
            out.print(
                f"  {r['finished']}  run {r['run_id']}  {r['status']}: {what}"
                + (f"  ({_count(r['n_faces'], 'face')})" if r["status"] == "ok" else ""),
                highlight=False,
            )
            for f in r["faces"][:10]:
                out.print(
                    f"      face frame {f['frame']}: x {f['x']:g} y {f['y']:g} w {f['w']:g} h {f['h']:g} score {f['score']:g}",
                    highlight=False,
                )
            if len(r["faces"]) > 10:
                out.print(f"      … and {len(r['faces']) - 10} more (--json lists all)")
        for e in src["erasures"]:
            out.print(f"  erased {e['erased_at']}: {e['reason']}", highlight=False)
        out.print(f"  output at DST now: {'present' if src['output_present'] else 'none'}")


@audit_app.command("export")
def audit_export(
    dst: DstArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the tables to.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    config: ConfigOpt = None,
) -> None:
    """Write every audit table (files, detections, runs, ...) as CSV or JSON Lines."""
    from sanitizer.lookup import export

    try:
        written = export(_dst(dst, config), fmt, str(out_dir))
    except SanitizerError as exc:
        raise _fail(exc) from None
    for table, n, path in written:
        out.print(f"{table:11s} {n:8d} rows → {path}", highlight=False)


@app.command("erase")
def erase_cmd(
    dst: DstArg,
    reason: Annotated[
        str,
        typer.Option(
            "--reason", help="Who asked and the request's reference (recorded in the audit)."
        ),
    ],
    key: KeyOpt = None,
    sha256: ShaOpt = None,
    like: LikeOpt = None,
    max_distance: MaxDistanceOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be erased; change nothing.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Erase on request (GDPR Art. 17): remove matching outputs, record it, skip them later.

    Later runs skip the erased sources until `run --force`; earlier audit rows stay."""
    from sanitizer.erase import erase
    from sanitizer.lookup import find

    try:
        loc = _dst(dst, config)
        found = find(loc, _query(key, sha256, like, max_distance))
        if found.files.empty:
            err.print(f"nothing matches {found.query.describe()}; nothing erased", highlight=False)
            raise typer.Exit(EXIT_FAILED_FILES)
        done = erase(loc, found, reason, dry_run=dry_run)
    except SanitizerError as exc:
        raise _fail(exc) from None
    verb = "would remove" if dry_run else "removed"
    for r in done.rows:
        what = f"{verb} {r['output_uri']}" if r["removed"] else "no output at DST"
        out.print(f"{r['key']}: {what}", highlight=False)
    if dry_run:
        out.print("dry run: nothing removed or recorded")
    else:
        out.print(
            f"erasure {done.erasure_id}: {_count(len(done.removed), 'output')} removed, "
            f"{_count(len(done.rows), 'source')} recorded in {loc.uri('_audit/erasures')}; "
            "later runs skip them (run --force to publish them again)",
            highlight=False,
        )


@app.command("review")
def review_cmd(
    dst: DstArg,
    n: Annotated[int, typer.Option("--sample", help="Outputs to draw at random.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random draw.")] = 0,
    output: Annotated[
        Path, typer.Option("--out", help="The HTML page to write (self-contained).")
    ] = Path("review.html"),
    verdicts: Annotated[
        Path | None,
        typer.Option(
            "--import",
            help="Record a verdicts JSON downloaded from the page as DST/_audit/reviews (writes no page).",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write a review page of N random outputs, or record its verdicts with --import.

    Redacted regions are outlined in green, `verify` residuals in red."""
    from sanitizer import review

    try:
        loc = _dst(dst, config)
        if verdicts is not None:
            try:
                text = verdicts.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SanitizerError(f"--import {verdicts}: {exc}") from None
            rows = review.import_verdicts(loc, text, str(verdicts))
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
            out.print(
                f"{_count(len(rows), 'verdict')} recorded ({counts}) in {loc.uri('_audit/reviews')}",
                highlight=False,
            )
            if counts.get("face_left"):
                err.print(
                    f"[bold red]{counts['face_left']} output(s) marked 'face left'[/]: "
                    "erase or fix them before release",
                    highlight=False,
                )
                raise typer.Exit(EXIT_FAILED_FILES)
            return
        items = review.sample(loc, n, seed)
        html_text = review.page(loc, items, seed)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(html_text, encoding="utf-8")
        except OSError as exc:
            raise SanitizerError(f"cannot write {output}: {exc.strerror or exc}") from None
    except SanitizerError as exc:
        raise _fail(exc) from None
    out.print(
        f"{_count(len(items), 'output')} (seed {seed}) → {output} "
        f"({len(html_text) / 1e6:.1f} MB, self-contained); mark them, download the verdicts and "
        f"record them with `sanitizer review {dst} --import verdicts.json`",
        highlight=False,
    )


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration (defaults < --config FILE) and its fingerprint."""
    import yaml

    try:
        cfg = load_config(config)
    except SanitizerError as exc:
        raise _fail(exc) from None
    masked = json.loads(cfg.to_json())  # credentials in storage options are masked
    data = json.loads(json.dumps(cfg.to_dict(), default=list))  # in the config's own order
    for section in ("input", "output"):
        data[section]["storage_options"] = masked[section]["storage_options"]
    out.print(f"# effective config ({config or 'defaults'})", highlight=False)
    out.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip(), highlight=False)
    out.print(
        f"# fingerprint {cfg.fingerprint()} (detect, redact, video, output: what changes output pixels)",
        highlight=False,
    )


def _faces(bucket: str) -> str:
    return "all faces" if bucket == "all" else f"faces of {bucket} px"


@app.command("eval")
def eval_cmd(
    gt: Annotated[
        Path,
        typer.Argument(
            help="Ground truth: faces_dev.json-style JSON, or a WIDER FACE *_bbx_gt.txt file."
        ),
    ],
    images_root: Annotated[
        str, typer.Argument(help="Folder (or URL) the ground-truth file paths are relative to.")
    ],
    config: ConfigOpt = None,
    detector: DetectorOpt = None,
    threshold: ThresholdOpt = None,
    method: MethodOpt = None,
    shape: ShapeOpt = None,
    margin: MarginOpt = None,
    target_recall: Annotated[
        float | None,
        typer.Option(
            "--target-recall",
            help="Also find the threshold whose redaction coverage reaches this share (e.g. 0.99) on the set, and report precision there.",
        ),
    ] = None,
    target_bucket: Annotated[
        str,
        typer.Option(
            "--target-bucket",
            help="Faces the --target-recall applies to: <16, 16-32, 32-64, >=64, >=16 or all.",
        ),
    ] = ">=16",
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="Evaluate only the first N images of the ground truth."),
    ] = None,
    outputs: Annotated[
        str | None,
        typer.Option(
            "--outputs",
            help="Score the redacted files a `sanitizer run ... --method solid` wrote to this DST instead of detecting again (the pixel rule of shared/tools/coverage.py).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the report: .json (everything, with per-face rows) or .parquet (the per-size table).",
        ),
    ] = None,
) -> None:
    """Measure detection recall/precision and redaction coverage on a labelled photo set."""
    from sanitizer import evaluate as ev

    try:
        cfg = load_config(
            config,
            detector=detector,
            threshold=threshold,
            method=method,
            shape=shape,
            margin=margin,
        )
        truth = ev.load_ground_truth(gt)
        progress = _progress()
        n_items = min(len(truth), limit) if limit else len(truth)
        task = progress.add_task("evaluating", total=n_items)
        with progress:
            if outputs is not None:
                report = ev.evaluate_outputs(
                    truth[:limit] if limit else truth, images_root, outputs
                )
            else:
                report = ev.evaluate(
                    truth,
                    images_root,
                    cfg,
                    target_recall=target_recall,
                    target_bucket=target_bucket,
                    limit=limit,
                    on_image=lambda done, total: progress.update(task, completed=done),
                )
        if output is not None:
            ev.write_report(report, str(output))
    except SanitizerError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc}") from None
    d = cfg.detect
    title = (
        f"{d.detector} threshold {d.threshold:g}"
        + (
            f", upscale {d.upscale:g}x@{d.upscale_threshold:g}"
            if d.detector == "centerface" and d.upscale > 1
            else ""
        )
        + (", flip" if d.detector == "centerface" and d.hflip else "")
        + f"; mask {cfg.redact.shape} x{cfg.redact.margin:g}"
    )
    if outputs is not None:
        title = f"outputs at {outputs}, black pixels"
    table = Table(*ev.TABLE_HEADER, title=f"{report.n_images} images ({title})")
    for row in ev.report_table(report):
        table.add_row(*row)
    out.print(table)
    neg = report.negatives_masked_share
    under = "black in the output" if outputs is not None else "under the redaction mask"
    out.print(
        f"coverage = faces with >= {int(ev.PROTECTED_AT * 100)}% of their inscribed ellipse {under}"
    )
    out.print(
        f"face-free images: {report.n_negative}, masked share {'-' if neg is None else f'{100 * neg:.3f}%'}"
    )
    if outputs is None:
        out.print(
            f"speed: {report.images_per_s:.2f} images/s (decode + detect + mask, one process, {d.threads} thread(s))"
        )
    for key, reason in report.failed:
        err.print(f"  failed: {key}: {reason}", highlight=False, soft_wrap=True)
    cal = report.calibration
    if cal is not None:
        if "error" in cal:
            out.print(f"calibration: {cal['error']}")
        elif cal["reached"]:
            at = cal["at"]
            prec = at["precision@0.5"]
            neg_at = at["negatives_masked_share"]
            out.print(
                f"calibration: coverage {100 * at['coverage']:.1f}% >= target {100 * cal['target']:g}% of {_faces(cal['bucket'])} "
                f"at threshold {at['threshold']:g} (upscaled passes {at['upscale_threshold']:g}, thresholds shifted by {at['delta']:+.2f}); "
                f"precision@0.5 {'-' if prec is None else f'{100 * prec:.1f}%'}, face-free masked "
                f"{'-' if neg_at is None else f'{100 * neg_at:.3f}%'}",
                highlight=False,
            )
        else:
            out.print(
                f"calibration: target {100 * cal['target']:g}% of {_faces(cal['bucket'])} not reached at any threshold down to "
                f"{cfg.detect.threshold - ev.SLACK:.2f} (best {100 * cal['best_coverage']:.1f}%)",
                highlight=False,
            )
    if output is not None:
        out.print(f"report: {output}")
    if report.failed:
        raise typer.Exit(EXIT_FAILED_FILES)


@app.command("verify")
def verify_cmd(
    dst: Annotated[str, typer.Argument(help="A DST folder/URL written by `sanitizer run`.")],
    config: ConfigOpt = None,
    detector: DetectorOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Native-pass threshold of the re-scan (default: the run's minus 0.05); the other passes move by the same amount.",
        ),
    ] = None,
    max_residual: Annotated[
        int,
        typer.Option("--max-residual", help="Exit 1 when more residual faces than this are found."),
    ] = 0,
    fail_score: Annotated[
        float,
        typer.Option(
            "--fail-score",
            help="Residual detections scoring at least this count as faces left (weaker ones are listed as suspects).",
        ),
    ] = 0.6,
    frame_stride: Annotated[
        int,
        typer.Option(
            "--frame-stride",
            min=1,
            help="Check every n-th frame of each video (default 1: every frame; more is a quicker spot check).",
        ),
    ] = 1,
) -> None:
    """Re-scan published outputs for faces left unredacted; write DST/_audit/verify; exit 1 above the limit."""
    from sanitizer.verify import verify

    try:
        cfg = load_config(config, detector=detector)
        progress = _progress()
        task = progress.add_task("verifying", total=None)
        with progress:
            rep = verify(
                dst,
                cfg,
                threshold=threshold,
                frame_stride=frame_stride,
                fail_score=fail_score,
                on_file=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except SanitizerError as exc:
        raise _fail(exc) from None
    out.print(
        f"verify {rep.verify_id}: {rep.n_files} files ({rep.n_frames} frames) re-scanned at threshold "
        f"{rep.threshold:g} (the run detected at {rep.run_threshold:g}) in {rep.seconds:.1f}s",
        highlight=False,
    )
    out.print(
        f"  residual detections outside redacted areas: {rep.n_residual} "
        f"({rep.n_residual_confident} scoring >= {rep.fail_score:g}: faces left; the rest are suspects in the table)"
    )
    out.print(
        f"  redacted faces found again: {rep.n_redacted_redetected} "
        f"({rep.n_redacted_at_run_threshold} at or above the detection threshold); mask-edge artefacts: {rep.n_mask_edge}"
    )
    for key in rep.modified:
        out.print(
            f"  modified after the run (sha256 differs from the audit): {key}", highlight=False
        )
    for key in rep.files_with_residuals[:20]:
        out.print(f"  residual: {key}", highlight=False)
    if len(rep.files_with_residuals) > 20:
        out.print(f"  … and {len(rep.files_with_residuals) - 20} more files")
    for key, reason in rep.errors:
        err.print(f"  error: {key}: {reason}", highlight=False, soft_wrap=True)
    out.print(f"audit: {rep.audit_uri}/verify")
    if rep.residual_faces > max_residual or rep.errors:
        err.print(
            f"[bold red]verify failed:[/] {rep.residual_faces} residual face(s) (limit {max_residual})"
            + (f", {len(rep.errors)} unreadable output(s)" if rep.errors else ""),
            highlight=False,
        )
        raise typer.Exit(EXIT_FAILED_FILES)
    out.print(f"verify passed: {rep.residual_faces} residual face(s) (limit {max_residual})")


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \xNN
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - never a traceback to the user; show it on request
        if _from_interrupt(exc):  # e.g. Ctrl-C during a native module's import: "ImportError"
            err.print("interrupted", highlight=False)
            raise SystemExit(130) from None
        if os.environ.get("SANITIZER_DEBUG"):
            raise
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
            "(set SANITIZER_DEBUG=1 to see the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(3) from None
    finally:
        # the interpreter's last garbage collection walks every object of the libraries loaded
        # (numpy, pandas, pyarrow, dask...): ~0.25 s per run, for nothing (see execute._WorkerSetup)
        gc.freeze()


def _from_interrupt(exc: BaseException) -> bool:
    from sanitizer import interrupts

    if interrupts.pressed():  # Ctrl-C was pressed: what failed after it is its consequence
        return True
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    main()
