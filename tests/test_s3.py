"""`sanitizer run` against a real S3-compatible store (seaweedfs on loopback).

Credentials reach the CLI the two documented ways: the standard AWS_* environment
variables, or `storage_options` in the config file. Skipped when `weed` is not installed.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import (
    astronaut,
    check_invariant,
    faces_folder,
    interrupt_cli,
    jpeg_bytes,
    run_cli,
)
from tests.servers import S3Server, closed_port, s3_server, silent_port  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

MEDIA = {"astronaut.jpg", "nested/astronaut.png"}


def source_files() -> dict[str, bytes]:
    """Two faces (JPEG, nested PNG), a non-media file, a truncated JPEG."""
    face = astronaut()
    png = io.BytesIO()
    Image.fromarray(face).save(png, "PNG")
    good = jpeg_bytes(face)
    return {
        "astronaut.jpg": good,
        "nested/astronaut.png": png.getvalue(),
        "notes.txt": b"not media\n",
        "broken.jpg": good[: len(good) // 2],
    }


@pytest.fixture
def bucket(s3_server: S3Server) -> str:  # noqa: F811
    name = f"b-{uuid.uuid4().hex[:10]}"
    s3_server.fs().mkdir(name)
    return name


def put_tree(fs, prefix: str, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        fs.pipe(f"{prefix}/{key}", data)


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def read_audit(table: str, dst: str, server: S3Server | None) -> pd.DataFrame:
    """What a compliance officer does: pandas straight on the audit folder."""
    opts = None
    if dst.startswith("s3://"):
        opts = {
            **server.storage_options,
            "skip_instance_cache": True,
            "config_kwargs": {
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            },
        }
    return pd.read_parquet(f"{dst}/_audit/{table}", storage_options=opts)


def check_run(
    res, src_files: dict[str, bytes], outputs: dict[str, bytes], dst: str, server: S3Server
) -> pd.DataFrame:
    """The checks every direction shares; returns the files table."""
    assert res.returncode == 1, res.stdout + res.stderr  # 1: the truncated JPEG failed
    assert "Traceback" not in res.stderr
    assert set(outputs) == MEDIA  # same keys, nothing for broken.jpg / notes.txt
    for key in MEDIA:
        out = np.asarray(Image.open(io.BytesIO(outputs[key])).convert("RGB"))
        orig = np.asarray(Image.open(io.BytesIO(src_files[key])).convert("RGB"))
        assert out.shape == orig.shape
        assert np.abs(out.astype(int) - orig.astype(int)).max() > 50  # the face was redacted
    files = read_audit("files", dst, server)
    assert sorted(files["key"]) == sorted(src_files)  # one row per input
    status = dict(zip(files["key"], files["status"], strict=True))
    assert status == {
        "astronaut.jpg": "ok",
        "nested/astronaut.png": "ok",
        "notes.txt": "skipped",
        "broken.jpg": "failed",
    }
    assert (files.loc[files.status == "ok", "n_faces"] >= 1).all()
    dets = read_audit("detections", dst, server)
    assert len(dets) == files["n_faces"].sum()
    runs = read_audit("runs", dst, server)
    assert len(runs) == 1 and runs["n_files"].iloc[0] == len(src_files)
    assert server.secret not in runs["config_json"].iloc[0]
    assert len(read_audit("manifest", dst, server)) == len(src_files)
    return files


def test_s3_to_s3_with_aws_environment(s3_server: S3Server, bucket: str) -> None:  # noqa: F811
    fs = s3_server.fs()
    src_files = source_files()
    put_tree(fs, f"{bucket}/in", src_files)
    src, dst = f"s3://{bucket}/in", f"s3://{bucket}/out"

    res = run_cli("run", src, dst, "--workers", "1", env=s3_server.env(), timeout=300)

    outputs = {
        p[len(f"{bucket}/out/") :]: fs.cat(p)
        for p in fs.find(f"{bucket}/out")
        if "/_audit/" not in p
    }
    files = check_run(res, src_files, outputs, dst, s3_server)
    assert set(files.loc[files.status == "ok", "output_uri"]) == {f"{dst}/{k}" for k in MEDIA}
    assert "truncated" in files.loc[files.key == "broken.jpg", "error"].iloc[0].lower()
    # originals untouched
    assert {k: fs.cat(f"{bucket}/in/{k}") for k in src_files} == src_files

    # a nightly rerun reads the audit back from the bucket and skips what is published unchanged
    published = {k: fs.cat(f"{bucket}/out/{k}") for k in MEDIA}
    again = run_cli("run", src, dst, "--workers", "1", env=s3_server.env(), timeout=300)
    assert again.returncode == 1, again.stdout + again.stderr  # broken.jpg still fails
    files = read_audit("files", dst, s3_server)
    last = files[files.run_id == files.run_id.max()].set_index("key")
    assert all(last.loc[k, "error"].startswith("unchanged") for k in MEDIA)
    assert {k: fs.cat(f"{bucket}/out/{k}") for k in MEDIA} == published
    # settled by the driver from the listing's ETags (one listing of DST, no task, no HEAD per
    # file): their rows are in the driver's part, with the ETag the workers recorded
    part = f"{dst}/_audit/files/{files.run_id.max()}-unchanged.parquet"
    settled = pd.read_parquet(part, storage_options=s3_server.storage_options)
    assert sorted(settled.key) == sorted(MEDIA)
    assert settled.set_index("key").source_stat.to_dict() == {
        k: files[(files.key == k) & (files.status == "ok")].source_stat.iloc[0] for k in MEDIA
    }


def test_local_to_s3_with_config_credentials(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:  # noqa: F811
    """No AWS_* variables at all: the endpoint and keys come only from the config file,
    and the worker processes must use them too."""
    src = tmp_path / "src"
    src_files = source_files()
    for key, data in src_files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    cfg = write_config(tmp_path / "s3.yaml", output={"storage_options": s3_server.storage_options})
    env = s3_server.env()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(k)
    dst = f"s3://{bucket}/redacted"

    res = run_cli(
        "run", str(src), dst, "--workers", "1", "--config", str(cfg), env=env, timeout=300
    )

    fs = s3_server.fs()
    outputs = {
        p[len(f"{bucket}/redacted/") :]: fs.cat(p)
        for p in fs.find(f"{bucket}/redacted")
        if "/_audit/" not in p
    }
    check_run(res, src_files, outputs, dst, s3_server)
    assert {k: (src / k).read_bytes() for k in src_files} == src_files
    runs = read_audit("runs", dst, s3_server)
    saved = json.loads(runs["config_json"].iloc[0])["output"]["storage_options"]
    assert saved["secret"] == "***" and saved["endpoint_url"] == s3_server.endpoint


def test_s3_to_local(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:  # noqa: F811
    fs = s3_server.fs()
    src_files = source_files()
    put_tree(fs, f"{bucket}/photos", src_files)
    dst = tmp_path / "out"

    res = run_cli(
        "run", f"s3://{bucket}/photos", str(dst), "--workers", "1", env=s3_server.env(), timeout=300
    )

    outputs = {
        p.relative_to(dst).as_posix(): p.read_bytes()
        for p in dst.rglob("*")
        if p.is_file() and "_audit" not in p.parts
    }
    check_run(res, src_files, outputs, str(dst), s3_server)
    assert {k: fs.cat(f"{bucket}/photos/{k}") for k in src_files} == src_files


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("wrong secret", "check the credentials"),
        ("missing source bucket", "no such file or folder"),
        ("missing destination bucket", "does not exist (create it first)"),
        ("refused endpoint", "check the endpoint"),
        ("silent endpoint", "timeout"),
    ],
)
def test_storage_errors_are_one_line(
    case: str,
    expect: str,
    s3_server: S3Server,
    bucket: str,  # noqa: F811
    tmp_path: Path,
    request,
) -> None:
    fs = s3_server.fs()
    put_tree(fs, f"{bucket}/in", {"astronaut.jpg": jpeg_bytes(astronaut())})
    src, dst = f"s3://{bucket}/in", f"s3://{bucket}/out"
    env = s3_server.env()
    args: list[str] = []
    if case == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif case == "missing source bucket":
        src = "s3://no-such-bucket-here/in"
    elif case == "missing destination bucket":
        dst = "s3://no-such-bucket-here/out"
    elif case == "refused endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{closed_port()}"
    elif case == "silent endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{request.getfixturevalue('silent_port')}"
        # the defaults bound this at about a minute; a test wants it shorter
        opts = {"config_kwargs": {"read_timeout": 1, "connect_timeout": 1}}
        cfg = write_config(tmp_path / "fast.yaml", input={"storage_options": opts})
        args = ["--config", str(cfg)]

    t0 = time.monotonic()
    res = run_cli("run", src, dst, "--workers", "1", *args, env=env, timeout=120)
    took = time.monotonic() - t0

    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert expect in lines[0].lower()
    assert took < 60
    assert not fs.exists(f"{bucket}/out/astronaut.jpg")
    if case == "missing destination bucket":
        assert "no-such-bucket-here" not in fs.ls("")  # not created behind the user's back


def test_listing_sees_new_objects_in_a_long_lived_process(s3_server: S3Server, bucket: str) -> None:  # noqa: F811
    """A notebook or a long-lived worker reuses fsspec's cached filesystem instance: a second
    listing must not answer from the first one's directory cache."""
    from sanitizer import storage

    loc = storage.location(f"s3://{bucket}/in", s3_server.storage_options)
    s3_server.fs().pipe(f"{bucket}/in/a.txt", b"a")
    assert [k for k, _ in storage.walk(loc)] == ["a.txt"]
    s3_server.fs().pipe(f"{bucket}/in/sub/b.txt", b"b")
    again = storage.location(f"s3://{bucket}/in", s3_server.storage_options)
    assert again.fs is loc.fs  # the cached instance, as in a second run in the same process
    assert s3_server.storage_options == {
        "key": s3_server.key,
        "secret": s3_server.secret,
        "endpoint_url": s3_server.endpoint,
    }
    assert [k for k, _ in storage.walk(again)] == ["a.txt", "sub/b.txt"]
    assert storage.list_prefix(again, "sub") == ["sub/b.txt"]


def small_clip(frames: int = 12) -> bytes:
    """A short H.264 MP4 of the astronaut (videos go through local_copy/put_file, not
    read_bytes/put_bytes like images)."""
    import av

    face = np.ascontiguousarray(astronaut()[::2, ::2])  # 256x256
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for _ in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(face, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def test_video_through_s3(s3_server: S3Server, bucket: str) -> None:  # noqa: F811
    import av

    fs = s3_server.fs()
    clip = small_clip()
    fs.pipe(f"{bucket}/in/clips/face.mp4", clip)
    dst = f"s3://{bucket}/out"

    res = run_cli(
        "run", f"s3://{bucket}/in", dst, "--workers", "1", env=s3_server.env(), timeout=300
    )

    assert res.returncode == 0, res.stdout + res.stderr
    files = read_audit("files", dst, s3_server)
    assert files[["key", "kind", "status"]].values.tolist() == [["clips/face.mp4", "video", "ok"]]
    with av.open(io.BytesIO(fs.cat(f"{bucket}/out/clips/face.mp4"))) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12
    assert fs.cat(f"{bucket}/in/clips/face.mp4") == clip


def test_ctrl_c_of_a_forced_rerun_on_s3_keeps_every_earlier_output(
    s3_server: S3Server,  # noqa: F811
    bucket: str,
    tmp_path: Path,
) -> None:
    """The measured bug, on a real S3 server: Ctrl-C during `run --force` must not delete any
    earlier output; staged outputs are promoted by server-side copy only after their rows."""
    from sanitizer import storage

    src = faces_folder(tmp_path / "src", 30)
    dst = f"s3://{bucket}/out"
    env = s3_server.env()
    first = run_cli("run", str(src), dst, "--workers", "2", env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    fs = s3_server.fs()
    before = {p.rsplit("/", 1)[-1]: fs.cat(p) for p in fs.find(f"{bucket}/out") if "/_" not in p}
    assert len(before) == 30
    code, _, errs = interrupt_cli(
        "run", str(src), dst, "--workers", "2", "--force", "--method", "solid", after_s=1.0, env=env
    )
    assert code == 130, errs
    fs.invalidate_cache()
    after = {p.rsplit("/", 1)[-1] for p in fs.find(f"{bucket}/out") if "/_" not in p}
    assert after == set(before), "no earlier output was deleted"
    check_invariant(storage.location(dst, s3_server.storage_options))
    again = run_cli(
        "run", str(src), dst, "--workers", "2", "--method", "solid", env=env, timeout=300
    )
    assert again.returncode == 0, again.stderr
    check_invariant(storage.location(dst, s3_server.storage_options))
