"""Chaos: real runs interrupted at random moments, then a plain rerun; the invariants hold.

Seeded (SANITIZER_CHAOS_SEED, default 12) and bounded: a few trials per destination. Each
trial starts `sanitizer run` (sometimes `--force` with another redaction method, so that earlier
outputs are being rewritten) and, a random time after its cluster is up, does one of: Ctrl-C
(SIGINT to the process group), SIGKILL of the driver alone (its workers are orphaned), SIGKILL
of one worker process (the run goes on), SIGKILL of the whole process group. After each trial
every file at DST has a latest `ok` row with its sha256, and no earlier output was lost; after
the final plain run, every source has its output and nothing is left in staging.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sanitizer import audit, storage
from tests.conftest import check_invariant, default_sigint, faces_folder, run_cli
from tests.servers import S3Server, s3_server  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("SANITIZER_CHAOS_SEED", "12"))
ACTIONS = ("sigint", "kill_driver", "kill_worker", "kill_all")


def _outputs(loc: storage.Location) -> set[str]:
    return {k for k, _ in storage.walk(loc, include_hidden=True) if not storage.is_reserved(k)}


def _kill_a_worker(driver_pid: int) -> bool:
    import psutil

    try:
        children = psutil.Process(driver_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    workers = [c for c in children if "multiprocessing" in " ".join(c.cmdline())]
    if not workers:
        return False
    os.kill(random.choice(workers).pid, signal.SIGKILL)
    return True


def _trial(
    rng: random.Random, action: str, src: str, dst: str, env: dict[str, str], force: bool
) -> str:
    delay = rng.uniform(0.0, 2.5)
    args = [sys.executable, "-m", "sanitizer", "run", src, dst, "--workers", "2"]
    if force:
        args += ["--force", "--method", rng.choice(["solid", "pixelate", "gaussian"])]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
        preexec_fn=default_sigint,
    )
    try:
        for line in proc.stderr:
            if "dask:" in line:
                break
        time.sleep(delay)
        if action == "sigint":
            os.killpg(proc.pid, signal.SIGINT)
        elif action == "kill_driver":
            proc.kill()
            time.sleep(1.0)  # orphaned workers may still stage something: the next run settles it
        elif action == "kill_worker":
            _kill_a_worker(proc.pid)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of this trial
    return f"{action}@{delay:.1f}s{' --force' if force else ''}"


def _chaos(src: str, dst: str, loc: storage.Location, env: dict[str, str], trials: int) -> None:
    rng = random.Random(SEED)
    first = run_cli("run", src, dst, "--workers", "2", env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    expected = _outputs(loc)
    done = []
    actions = rng.sample(ACTIONS, len(ACTIONS))  # every kind of interruption, in a seeded order
    for i in range(trials):
        done.append(_trial(rng, actions[i % len(actions)], src, dst, env, force=i % 2 == 0))
        try:
            check_invariant(loc, allow_staged=True)
        except AssertionError as exc:
            raise AssertionError(f"after {done}: {exc}") from None
        assert _outputs(loc) == expected, f"an earlier output was lost after {done}"
    final = run_cli("run", src, dst, "--workers", "2", env=env, timeout=300)
    assert final.returncode == 0, f"{done}: {final.stderr}"
    check_invariant(loc)
    assert _outputs(loc) == expected, done
    runs = audit.read(loc, "runs")
    assert "running" not in set(runs.status), f"{done}: a dead run's row was not closed"
    assert runs.sort_values("started").status.iloc[-1] == "complete"


def test_chaos_on_a_local_dst(tmp_path: Path) -> None:
    src = faces_folder(tmp_path / "src", 24)
    dst = tmp_path / "dst"
    _chaos(str(src), str(dst), storage.location(str(dst)), {}, trials=4)


def test_chaos_on_s3(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    bucket = f"chaos-{uuid.uuid4().hex[:8]}"
    s3_server.fs().mkdir(bucket)
    src = faces_folder(tmp_path / "src", 16)
    dst = f"s3://{bucket}/out"
    loc = storage.location(dst, s3_server.storage_options)
    _chaos(str(src), dst, loc, s3_server.env(), trials=3)
