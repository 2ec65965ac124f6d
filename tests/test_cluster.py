"""`sanitizer run --scheduler` against real `dask scheduler` / `dask worker` processes."""

from __future__ import annotations

import hashlib
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import faces_folder, interrupt_cli, run_cli
from tests.servers import (  # noqa: F401 - fixtures
    DaskCluster,
    S3Server,
    closed_port,
    dask_cluster,
    run_dask_cluster,
    s3_server,
    silent_port,
)
from tests.test_s3 import check_run, put_tree, source_files

pytestmark = pytest.mark.integration


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_line_error(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    return lines[0]


def test_run_on_existing_cluster(
    dask_cluster: DaskCluster, photo_dir: Path, tmp_path: Path
) -> None:  # noqa: F811
    from distributed import Client

    before = tree_digest(photo_dir)
    dst = tmp_path / "out"

    res = run_cli("run", str(photo_dir), str(dst), "--scheduler", dask_cluster.address, timeout=300)

    assert res.returncode == 1, res.stdout + res.stderr  # broken.jpg failed, the rest ran
    assert f"dask: 2 workers ({dask_cluster.address})" in res.stderr
    outputs = {k for k in tree_digest(dst) if not k.startswith("_audit/")}
    assert outputs == {"astronaut.jpg", "nested/astronaut.png", "nested/deeper/cat.jpg"}
    files = pd.read_parquet(dst / "_audit" / "files")
    assert sorted(files["key"]) == sorted(before)
    assert dict(zip(files["key"], files["status"], strict=True))["broken.jpg"] == "failed"
    runs = pd.read_parquet(dst / "_audit" / "runs")
    assert runs["scheduler"].tolist() == [dask_cluster.address]
    assert tree_digest(photo_dir) == before  # originals untouched

    # the work ran in the cluster's worker processes, and the cluster is still there after the run
    with Client(dask_cluster.address, timeout="10s") as client:
        loaded = client.run(
            lambda: (
                "sanitizer.execute" in sys.modules
                and sys.modules["sanitizer.execute"]._STATE.get("detector") is not None
            )
        )
        assert len(loaded) == 2 and any(loaded.values())


def test_s3_job_on_existing_cluster(
    dask_cluster: DaskCluster,
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The workers have no AWS_* variables: the endpoint and keys reach them only through
    the job's config (storage_options)."""
    fs = s3_server.fs()
    bucket = f"c-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    src_files = source_files()
    put_tree(fs, f"{bucket}/in", src_files)
    cfg = tmp_path / "s3.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "input": {"storage_options": s3_server.storage_options},
                "output": {"storage_options": s3_server.storage_options},
            }
        )
    )
    env = s3_server.env()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(k)
    dst = f"s3://{bucket}/out"

    res = run_cli(
        "run",
        f"s3://{bucket}/in",
        dst,
        "--scheduler",
        dask_cluster.address,
        "--config",
        str(cfg),
        env=env,
        timeout=300,
    )

    assert f"({dask_cluster.address})" in res.stderr
    outputs = {
        p[len(f"{bucket}/out/") :]: fs.cat(p)
        for p in fs.find(f"{bucket}/out")
        if "/_audit/" not in p
    }
    check_run(res, src_files, outputs, dst, s3_server)
    assert {k: fs.cat(f"{bucket}/in/{k}") for k in src_files} == src_files


@pytest.mark.parametrize("case", ["refused", "silent", "malformed"])
def test_unreachable_scheduler_is_a_one_line_error(
    case: str, photo_dir: Path, tmp_path: Path, request
) -> None:
    address = {
        "refused": lambda: f"tcp://127.0.0.1:{closed_port()}",
        "silent": lambda: f"tcp://127.0.0.1:{request.getfixturevalue('silent_port')}",
        "malformed": lambda: "nonsense://127.0.0.1:1",
    }[case]()
    dst = tmp_path / "out"

    t0 = time.monotonic()
    res = run_cli("run", str(photo_dir), str(dst), "--scheduler", address, timeout=120)
    took = time.monotonic() - t0

    assert res.returncode == 2, res.stdout + res.stderr
    assert f"cannot reach Dask scheduler {address}" in one_line_error(res)
    assert took < 45
    assert not (dst / "astronaut.jpg").exists()
    if case == "refused":  # the audit records the failed run as such, not as complete
        runs = pd.read_parquet(dst / "_audit" / "runs")
        assert runs.status.tolist() == ["error"] and runs.scheduler.item() == address


def test_scheduler_without_workers(photo_dir: Path, tmp_path: Path) -> None:
    with run_dask_cluster(tmp_path / "dask", n_workers=0) as cluster:
        t0 = time.monotonic()
        res = run_cli(
            "run",
            str(photo_dir),
            str(tmp_path / "out"),
            "--scheduler",
            cluster.address,
            timeout=120,
        )
        took = time.monotonic() - t0
    assert res.returncode == 2, res.stdout + res.stderr
    assert "has no workers" in one_line_error(res)
    assert took < 60


def test_interrupted_run_leaves_no_output_without_a_row(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:  # noqa: F811
    """Ctrl-C on a job running on someone's cluster: tasks already running on the remote
    workers cannot be killed, so the driver tells them to stop and waits for them; none
    publishes after the clean-up, so every output at DST has its audit row."""
    src, dst = faces_folder(tmp_path / "src", 240), tmp_path / "dst"
    code, _, errs = interrupt_cli(
        "run", str(src), str(dst), "--scheduler", dask_cluster.address, after_s=2.0
    )
    assert code == 130, errs
    time.sleep(6.0)  # anything the remote workers were still doing has finished by now
    part = dst / "_audit" / "files"
    rows = pd.read_parquet(part) if part.exists() else pd.DataFrame({"key": [], "status": []})
    published = sorted(p.name for p in dst.glob("*.jpg"))
    assert published == sorted(rows[rows.status == "ok"].key), "every published output has its row"
    assert len(published) < 240
