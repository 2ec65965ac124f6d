"""Shared fixtures: the real CLI as a subprocess, generated media, ../shared/data when present."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real photos and videos); tests using it skip when it is absent."""
    if not (SHARED_DATA / "faces_dev.json").is_file():
        pytest.skip("../shared/data is not present (real test media live outside the repo)")
    return SHARED_DATA


def run_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real entry point (`python -m sanitizer ...`) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SANITIZER_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "sanitizer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def faces_folder(src: Path, n: int) -> Path:
    """`n` copies of the astronaut photo (a job long enough to interrupt)."""
    src.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes(astronaut())
    for i in range(n):
        (src / f"{i:03d}.jpg").write_bytes(data)
    return src


def default_sigint() -> None:
    """preexec_fn of a CLI that a test interrupts: SIGINT back to its default, in case the
    test runner itself was started with SIGINT ignored (a background job of a script), which
    the CLI would inherit and Ctrl-C would then do nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_cli(
    *args: str, after_s: float, timeout: float = 90, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the CLI in its own process group, press Ctrl-C (SIGINT to the group, as a terminal
    does) `after_s` seconds after its cluster is up; (exit code, stdout, stderr)."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "sanitizer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        preexec_fn=default_sigint,
    )
    try:
        for line in proc.stderr:  # wait until the cluster runs
            if "dask:" in line:
                break
        time.sleep(after_s)
        os.killpg(proc.pid, signal.SIGINT)
        out, errs = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, errs


@pytest.fixture
def cli():
    return run_cli


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A small SRC tree: faces (JPEG, PNG, nested), a face-free photo, a non-media file,
    a truncated JPEG."""
    from skimage import data

    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    face = astronaut()
    (src / "astronaut.jpg").write_bytes(jpeg_bytes(face))
    Image.fromarray(face).save(src / "nested" / "astronaut.png")
    Image.fromarray(data.chelsea()).save(src / "nested" / "deeper" / "cat.jpg", quality=90)
    (src / "notes.txt").write_text("not media\n")
    good = jpeg_bytes(face)
    (src / "broken.jpg").write_bytes(good[: len(good) // 2])
    return src


def check_invariant(dst, allow_staged: bool = False) -> None:
    """The audit invariant: every file at DST (outside the reserved `_audit` and `_staging`)
    has a latest `ok` row whose output_sha256 is its sha256; nothing is left in staging but
    the lease of a live run (`allow_staged`: right after an interruption, which the next run
    settles). `dst` is a path or a `storage.Location`."""
    from sanitizer import audit, storage

    loc = dst if isinstance(dst, storage.Location) else storage.location(str(dst))
    outputs = {k for k, _ in storage.walk(loc, include_hidden=True) if not storage.is_reserved(k)}
    staged = [
        k
        for k in storage.list_prefix(loc, storage.STAGING)
        if k.startswith(storage.STAGING + "/") and k != storage.LEASE_KEY
    ]
    assert allow_staged or not staged, f"left in staging: {staged[:5]}"
    if not outputs:
        return
    files = audit.read(loc, "files")
    ok = files[files.status == "ok"].sort_values("finished").groupby("key").tail(1)
    recorded = dict(zip(ok.key, ok.output_sha256, strict=True))
    missing = sorted(outputs - set(recorded))
    assert not missing, f"outputs without an ok row: {missing[:5]}"
    wrong = [k for k in sorted(outputs) if storage.sha256_of(loc, k) != recorded[k]]
    if allow_staged:
        # A run killed between committing a row and promoting its output leaves the earlier
        # output at the key and the committed one in its staging area, which the next run rolls
        # forward (commit.settle): the staged copy must be the recorded one.
        run_of = dict(zip(ok.key, ok.run_id, strict=True))
        wrong = [
            k
            for k in wrong
            if storage.staging_key(run_of[k], k) not in staged
            or storage.sha256_of(loc, storage.staging_key(run_of[k], k)) != recorded[k]
        ]
    assert not wrong, f"outputs whose sha256 is not their latest ok row's: {wrong[:5]}"
