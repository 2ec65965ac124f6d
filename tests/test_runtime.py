"""The job's run loop without Dask: the cluster is replaced by the shards run in this process,
so what the driver does with the rows (precision check, run row) is tested in milliseconds."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd
import pytest

from sanitizer import execute, job
from sanitizer.config import from_dict
from sanitizer.errors import RunError
from sanitizer.process import Context, process_item
from tests.conftest import astronaut, check_invariant, jpeg_bytes
from tests.test_image import FixedDetector


class _Detector(FixedDetector):
    def __init__(self, precision: str) -> None:
        super().__init__((200, 80, 300, 200))
        self.precision = precision


def _in_process(monkeypatch, precisions: list[str]) -> None:
    """Run each shard here, the n-th shard's detector reporting precisions[n % len]."""

    @contextlib.contextmanager
    def cluster(cfg, workers):
        yield None, execute.ClusterInfo("in-process", workers, True)

    def map_shards(client, shards, run_id, cfg, src_url, dst_url, on_shard, *prev):
        from sanitizer import storage

        src, dst = storage.location(src_url), storage.location(dst_url)
        for n, items in enumerate(shards):
            det = _Detector(precisions[n % len(precisions)])
            ctx = Context.create(run_id, cfg, det, src, dst)
            on_shard(items, [process_item(i, ctx) for i in items], "")

    monkeypatch.setattr(execute, "cluster", cluster)
    monkeypatch.setattr(execute, "map_shards", map_shards)


def _plan(tmp_path: Path, n: int = 4):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(n):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(astronaut()))
    cfg = from_dict({"detect": {"detector": "haar"}, "execution": {"shard_files": 1}})
    return job.plan(str(src), str(dst), cfg), cfg, dst


def test_workers_at_different_precisions_end_the_run_as_an_error(tmp_path, monkeypatch):
    """Rows of one run scanned at int8 on one worker and fp32 on another: a one-line RunError
    naming both (the CLI exits 1); every row and output is still committed, the run row says
    `error`."""
    _in_process(monkeypatch, ["int8", "fp32"])
    plan, cfg, dst = _plan(tmp_path)
    with pytest.raises(RunError, match="different precisions: fp32, int8") as caught:
        job.run(plan, cfg)
    assert "\n" not in str(caught.value)
    assert caught.value.summary.n_ok == 4
    runs = pd.read_parquet(dst / "_audit" / "runs").sort_values("finished")
    assert runs.status.tolist() == ["error"]
    files = pd.read_parquet(dst / "_audit" / "files")
    assert sorted(files.precision.unique()) == ["fp32", "int8"]
    check_invariant(dst)


def test_one_precision_is_a_complete_run(tmp_path, monkeypatch):
    _in_process(monkeypatch, ["int8"])
    plan, cfg, dst = _plan(tmp_path, 2)
    summary = job.run(plan, cfg)
    assert summary.n_ok == 2 and summary.precisions == {"int8"}
    runs = pd.read_parquet(dst / "_audit" / "runs").sort_values("finished")
    assert runs.status.tolist() == ["complete"]
