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


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real entry point (`python -m sanitizer ...`) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SANITIZER_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "sanitizer", *args], capture_output=True, text=True,
        timeout=timeout, env=full_env, stdin=subprocess.DEVNULL,
    )


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
