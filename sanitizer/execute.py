"""Where the work runs: a Dask client (embedded LocalCluster or an existing scheduler),
shards of manifest items, one detector per worker process, retries.

This is the only module that imports dask. `process` knows nothing about it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

from sanitizer.config import WORKER_CORES_ENV, Config, from_dict
from sanitizer.errors import ClusterError

if TYPE_CHECKING:
    from sanitizer.records import MediaItem

ShardResult = list[tuple[dict[str, Any], list[dict[str, Any]]]]

# ---------------------------------------------------------------- worker side
_STATE: dict[str, Any] = {}
_STATE_LOCK = threading.Lock()


def _limit_threads(n: int = 1) -> None:
    import cv2

    cv2.setNumThreads(max(1, n))


def _detector(detect: dict[str, Any]):
    """The process's detector for a `detect` config section, loaded once and reused by every
    shard (and by the warm-up of `_WorkerSetup`, which may still be loading it)."""
    from sanitizer.detect import get_detector

    key = repr(sorted(detect.items()))
    with _STATE_LOCK:
        if _STATE.get("det_key") != key:
            cfg = from_dict({"detect": detect})
            _limit_threads(cfg.detect.threads)
            _STATE["detector"] = get_detector(cfg.detect)
            _STATE["det_key"] = key
        return _STATE["detector"]


def _worker_context(
    run_id: str,
    cfg_dict: dict[str, Any],
    src_url: str,
    dst_url: str,
    previous: dict[str, str] | None = None,
    previous_stat: dict[str, str] | None = None,
):
    """Per-process cache: the detector and the storage locations are made once per process."""
    from sanitizer import storage
    from sanitizer.process import Context

    cfg = from_dict(cfg_dict)
    detector = _detector(cfg_dict["detect"])
    loc_key = repr(
        (
            src_url,
            dst_url,
            sorted(cfg.input.storage_options.items()),
            sorted(cfg.output.storage_options.items()),
        )
    )
    with _STATE_LOCK:
        if _STATE.get("loc_key") != loc_key:
            _STATE["src"] = storage.location(src_url, cfg.input.storage_options)
            _STATE["dst"] = storage.location(dst_url, cfg.output.storage_options)
            _STATE["loc_key"] = loc_key
        ctx = Context.create(run_id, cfg, detector, _STATE["src"], _STATE["dst"], previous)
    ctx.previous_stat = previous_stat or {}
    return ctx


def process_shard(
    items: list[MediaItem],
    run_id: str,
    cfg_dict: dict[str, Any],
    src_url: str,
    dst_url: str,
    previous: dict[str, str] | None = None,
    previous_stat: dict[str, str] | None = None,
) -> ShardResult:
    """Task function: process every item of a shard; never raises for a bad file."""
    from sanitizer.process import process_item

    ctx = _worker_context(run_id, cfg_dict, src_url, dst_url, previous, previous_stat)
    if cfg_dict["execution"]["scheduler"]:
        # someone else's cluster outlives an interrupted driver: publish only while the run
        # has not been stopped (see stop_remote_tasks)
        ctx.may_publish = lambda: not _run_stopped(run_id)
    return [process_item(item, ctx) for item in items]


def _stop_event(run_id: str) -> str:
    return f"sanitizer-stop-{run_id}"


def _run_stopped(run_id: str) -> bool:
    """Worker side: has the driver stopped this run? When the scheduler cannot say, the answer
    is yes: a result that cannot reach the driver would be an output without an audit row."""
    from distributed import Event, get_client

    try:
        return Event(_stop_event(run_id), client=get_client()).is_set()
    except Exception:  # noqa: BLE001 - any failure to ask counts as stopped (fail closed)
        return True


class _WorkerSetup(WorkerPlugin):
    """Dask worker plugin: in the background, pin OpenCV's thread pool and load the run's
    detector (~0.1 s) while the worker registers and its first task is on its way. A task
    waits for it (`_detector`'s lock) and pins the threads itself when the model changed."""

    name = "sanitizer-worker-setup"
    idempotent = True

    def __init__(self, detect: dict[str, Any], embedded: bool = False) -> None:
        self.detect = detect
        self.embedded = embedded  # the worker process ends when the worker closes

    def setup(self, worker) -> None:
        self._thread = threading.Thread(
            target=self._warm_up, name="sanitizer-model-warm-up", daemon=True
        )
        self._thread.start()

    def teardown(self, worker) -> None:
        # a process that exits while this thread is inside onnxruntime or OpenCV's start-up dies
        # printing "terminate called without an active exception" (a run that stops at once)
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(60)
        if self.embedded:
            # The worker is closing and its process about to end: the interpreter's last garbage
            # collection would walk every object of onnxruntime, OpenCV, PyAV and Dask (~0.1-0.2
            # s the run waits for while it closes its cluster) and find nothing worth collecting.
            gc.freeze()

    def _warm_up(self) -> None:
        try:
            _detector(self.detect)  # pins OpenCV's threads, then loads the model
        except Exception:  # noqa: BLE001 - a detector that cannot load fails the task instead
            _limit_threads(int(self.detect.get("threads", 1)))


# ---------------------------------------------------------------- driver side
@dataclass
class ClusterInfo:
    address: str
    workers: int
    embedded: bool


def shard(
    items: list[MediaItem], workers: int, shard_bytes: int, shard_files: int
) -> list[list[MediaItem]]:
    """Group items into tasks: videos alone, images by bytes and count, at least ~4 tasks
    per worker so that the load evens out."""
    videos = [[i] for i in items if i.kind == "video"]
    rest = [i for i in items if i.kind != "video"]
    per_task = max(1, min(shard_files, math.ceil(len(rest) / max(1, 4 * workers))))
    shards: list[list[MediaItem]] = []
    cur: list[MediaItem] = []
    size = 0
    for item in rest:
        if cur and (len(cur) >= per_task or size + item.size > shard_bytes):
            shards.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += item.size
    if cur:
        shards.append(cur)
    # biggest first: long videos start early and do not end up last
    return sorted(videos, key=lambda s: -s[0].size) + shards


SCHEDULER_TIMEOUT = 15  # s, to connect to an existing scheduler


def _probe_scheduler(address: str, timeout: float) -> None:
    """Connect once, handshake included, within `timeout` seconds, else raise TimeoutError.

    distributed's connect() bounds the TCP connect but not the handshake read after it, so
    `Client(address, timeout=...)` waits forever on a port that accepts and never answers
    (a wrong port, a proxy, a hung scheduler). The probe runs in its own thread and event
    loop, so it also works where a loop is already running (Jupyter)."""
    import asyncio

    from distributed.comm import connect

    async def probe() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()

    error: list[Exception] = []

    def target() -> None:
        try:
            asyncio.run(probe())
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            error.append(exc)

    t = threading.Thread(target=target, name="sanitizer-scheduler-probe", daemon=True)
    t.start()
    t.join(timeout + 5)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout} s")
    if error:
        exc = error[0]
        if isinstance(exc, TimeoutError) and not str(exc):
            raise TimeoutError(f"connected, but no Dask handshake within {timeout} s")
        raise exc


# dask settings of the embedded cluster, in force whenever it spawns workers
_LOCAL_CONFIG = {
    # The nanny's MALLOC_TRIM_THRESHOLD_ made OpenCV/onnxruntime ~1.5x slower (DESIGN.md).
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.daemon": False,
    "distributed.admin.tick.limit": "60s",
    # a task whose worker died twice is poisonous: fail it (it is then split per file)
    "distributed.scheduler.allowed-failures": 1,
}


@contextlib.contextmanager
def cluster(cfg: Config, workers: int) -> Iterator[tuple[Any, ClusterInfo]]:
    """A Dask client for the run, closed (with the embedded cluster) on exit: the existing
    scheduler `execution.scheduler` when set, else an embedded LocalCluster of `workers`
    processes (no dashboard, silenced logs; each worker loads the detector once)."""
    if cfg.execution.scheduler:
        with _existing(cfg) as out:
            yield out
        return
    import dask
    from distributed import Client, LocalCluster

    from sanitizer import interrupts

    ex = cfg.execution
    with contextlib.ExitStack() as stack:
        # Ctrl-C is held while the worker processes are created: they inherit it blocked and
        # never see one (the driver stops them); the driver honours it once the cluster is up.
        with dask.config.set(_LOCAL_CONFIG), interrupts.held():
            try:
                local = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=ex.threads_per_worker,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,  # the CLI is the only printer
                    # no dashboard; the scheduler's HTTP endpoint (health, metrics) on a free
                    # loopback port, not 8787: two jobs on one machine must not collide or warn
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                    memory_limit=ex.memory_limit,
                    env={
                        # a worker with more than one core (a run of fewer shards than cores)
                        # scans a video on that many threads (video.detect_threads: 0)
                        WORKER_CORES_ENV: str(max(1, (os.cpu_count() or 1) // max(1, workers))),
                        "OMP_NUM_THREADS": "1",
                        "OPENBLAS_NUM_THREADS": "1",
                        "MKL_NUM_THREADS": "1",
                    },
                    # set up as each worker starts, before it registers: the model loads meanwhile
                    plugins=(_WorkerSetup(cfg.to_dict()["detect"], embedded=True),),
                )
            except Exception as exc:  # noqa: BLE001 - a worker that cannot start, a port...
                reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                raise ClusterError(f"cannot start a local Dask cluster: {reason}") from None
            stack.callback(local.close)
        # The in-process scheduler hooks a diagnosis into gc.callbacks, which only logs (dask's
        # logs are silenced); a Ctrl-C landing while it ran would be swallowed.
        from distributed.gc import disable_gc_diagnosis

        disable_gc_diagnosis(force=True)
        client = stack.enter_context(Client(local))
        yield client, ClusterInfo(local.scheduler_address, workers, True)


@contextlib.contextmanager
def _existing(cfg: Config) -> Iterator[tuple[Any, ClusterInfo]]:
    from distributed import Client

    address = cfg.execution.scheduler
    try:
        _probe_scheduler(address, SCHEDULER_TIMEOUT)
        client = Client(address, timeout=SCHEDULER_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a malformed address
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ClusterError(f"cannot reach Dask scheduler {address}: {reason}") from None
    with client:
        client.register_plugin(_WorkerSetup(cfg.to_dict()["detect"]))
        n = len(client.scheduler_info().get("workers", {}))
        if n == 0:
            with contextlib.suppress(TimeoutError, OSError):
                client.wait_for_workers(1, timeout=30)
            n = len(client.scheduler_info().get("workers", {}))
        if n == 0:
            raise ClusterError(f"Dask scheduler {address} has no workers")
        yield client, ClusterInfo(address, n, False)


def stop_remote_tasks(client: Any, run_id: str, timeout: float = 30.0) -> None:
    """Driver side, when a run on an existing cluster stops early: tell the run's tasks still
    running on remote workers not to publish, and wait (at most `timeout` s) until they have
    ended, so the clean-up that follows sees every output that will ever be written."""
    from distributed import Event

    prefix = f"sanitize-{run_id}-"
    with contextlib.suppress(Exception):  # best effort: the scheduler may be the thing that failed
        Event(_stop_event(run_id), client=client).set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [
                k
                for keys in client.processing().values()
                for k in keys
                if str(k).startswith(prefix)
            ]
            if not busy:
                return
            time.sleep(0.2)


def map_shards(
    client: Any,
    shards: list[list[MediaItem]],
    run_id: str,
    cfg: Config,
    src_url: str,
    dst_url: str,
    on_shard: Callable[[list[MediaItem], ShardResult | None, str], None],
    previous: dict[str, str] | None = None,
    previous_stat: dict[str, str] | None = None,
) -> None:
    """Submit every shard and call `on_shard(items, results, error)` as each one finishes.

    A task that fails even after retries (its worker died, e.g. a native crash on one file)
    is split into one task per file, so one poisonous file does not fail its neighbours; a
    single-file task that still fails comes back with results None and a reason."""
    from distributed import as_completed

    from sanitizer import storage

    cfg_dict = cfg.to_dict()
    futures: dict[Any, list[MediaItem]] = {}
    counter = 0

    def submit(items: list[MediaItem], retries: int):
        nonlocal counter
        counter += 1
        # `previous` is keyed as the audit holds keys: printable (a name that is not UTF-8 escaped)
        keys = [storage.printable(i.key) for i in items]
        prev = {k: previous[k] for k in keys if previous and k in previous}
        stat = {k: previous_stat[k] for k in prev if previous_stat and k in previous_stat}
        fut = client.submit(
            process_shard,
            items,
            run_id,
            cfg_dict,
            src_url,
            dst_url,
            prev,
            stat,
            key=f"sanitize-{run_id}-{counter:06d}",
            retries=retries,
            pure=False,
        )
        futures[fut] = items
        return fut

    def reason(exc: BaseException) -> str:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        return f"worker task failed: {type(exc).__name__}: {text}"

    suspects: list[MediaItem] = []
    pending = as_completed([submit(s, cfg.execution.retries) for s in shards])
    try:
        for fut in pending:
            items = futures.pop(fut)
            try:
                results = fut.result()
            except Exception:  # noqa: BLE001 - a worker died or the task raised: keep going
                if len(items) > 1:
                    for item in items:
                        pending.add(submit([item], 0))
                else:
                    suspects += items  # maybe only queued beside the real culprit: see below
            else:
                on_shard(items, results, "")
            fut.release()
        # A worker death is blamed on every task queued on that worker, so single files that
        # failed are tried once more, one at a time, where a failure can only be their own.
        for item in suspects:
            fut = submit([item], 0)
            try:
                results = fut.result()
            except Exception as exc:  # noqa: BLE001
                on_shard([item], None, reason(exc))
            else:
                on_shard([item], results, "")
            futures.pop(fut, None)
            fut.release()
    finally:
        for fut in futures:
            fut.cancel()
