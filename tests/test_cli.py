"""The real entry point on generated media: outputs, audit, fail-closed, errors."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import check_invariant, default_sigint, faces_folder, interrupt_cli, run_cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from tests.conftest import astronaut, jpeg_bytes

    root = tmp_path_factory.mktemp("run")
    src = root / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    face = astronaut()
    ex = Image.Exif()
    ex[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}
    ex[0x0110] = "Phone 1"
    (src / "astronaut.jpg").write_bytes(jpeg_bytes(face, exif=ex))
    Image.fromarray(face).save(src / "nested" / "astronaut.png")
    from skimage import data

    Image.fromarray(data.chelsea()).save(src / "nested" / "deeper" / "cat.jpg", quality=90)
    (src / "notes.txt").write_text("not media\n")
    good = jpeg_bytes(face)
    (src / "broken.jpg").write_bytes(good[: len(good) // 2])
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    dst = root / "dst"
    proc = run_cli("run", str(src), str(dst), "--method", "solid", "--workers", "2")
    return src, dst, proc, before


def test_exit_code_and_summary(finished_run):
    src, dst, proc, _ = finished_run
    assert proc.returncode == 1, proc.stderr  # broken.jpg failed
    assert "3 ok, 1 failed, 1 skipped" in proc.stdout
    assert str(dst / "_audit") in proc.stdout
    assert "broken.jpg" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_outputs_same_keys_no_exif(finished_run):
    src, dst, _, _ = finished_run
    outputs = sorted(
        str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file() and "_audit" not in p.parts
    )
    assert outputs == ["astronaut.jpg", "nested/astronaut.png", "nested/deeper/cat.jpg"]
    im = Image.open(dst / "astronaut.jpg")
    assert not im.getexif() and "exif" not in im.info


def test_faces_covered_originals_untouched(finished_run):
    src, dst, _, before = finished_run
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    out = np.asarray(Image.open(dst / "nested" / "astronaut.png").convert("RGB"))
    # Eileen Collins' face in skimage's astronaut is around x 170-270, y 40-180
    assert (out[90:140, 190:250].max(axis=2) <= 24).mean() > 0.95
    cat_in = np.asarray(Image.open(src / "nested" / "deeper" / "cat.jpg")).astype(int)
    cat_out = np.asarray(Image.open(dst / "nested" / "deeper" / "cat.jpg")).astype(int)
    assert (np.abs(cat_in - cat_out).max(axis=2) > 40).mean() < 0.005, (
        "face-free photo left almost untouched"
    )


def test_audit_tables(finished_run):
    src, dst, _, _ = finished_run
    files = pd.read_parquet(dst / "_audit" / "files")
    dets = pd.read_parquet(dst / "_audit" / "detections")
    runs = pd.read_parquet(dst / "_audit" / "runs")
    assert sorted(files.key) == [
        "astronaut.jpg",
        "broken.jpg",
        "nested/astronaut.png",
        "nested/deeper/cat.jpg",
        "notes.txt",
    ]
    st = dict(zip(files.key, files.status, strict=True))
    assert st == {
        "astronaut.jpg": "ok",
        "broken.jpg": "failed",
        "nested/astronaut.png": "ok",
        "nested/deeper/cat.jpg": "ok",
        "notes.txt": "skipped",
    }
    broken = files[files.key == "broken.jpg"].iloc[0]
    assert "JPEG" in broken.error and broken.output_uri == ""
    assert len(dets) == files.n_faces.sum() >= 2
    ok = files[files.status == "ok"]
    assert (ok.output_sha256.str.len() == 64).all() and (ok.source_sha256.str.len() == 64).all()
    assert (ok.model_sha256.str.len() == 64).all() and (ok.detector == "centerface").all()
    assert len(runs) == 1 and runs.n_failed.item() == 1 and runs.n_ok.item() == 3
    assert runs.status.item() == "complete" and "redact" in runs.config_json.item()
    text = " ".join(
        str(v)
        for df in (files, dets, runs)
        for col in df.columns
        if df[col].dtype == object or str(df[col].dtype).startswith("str")
        for v in df[col]
    )
    assert "Phone 1" not in text and "GPS" not in text, "no EXIF values in the audit"
    assert not [c for c in files.columns if "exif" in c.lower() or "gps" in c.lower()]


def test_dst_inside_src_refused(photo_dir):
    proc = run_cli("run", str(photo_dir), str(photo_dir / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "inside" in proc.stderr
    assert not (photo_dir / "out").exists()


def test_missing_src_and_bad_option(tmp_path):
    proc = run_cli("run", str(tmp_path / "nope"), str(tmp_path / "o"))
    assert (
        proc.returncode == 2
        and "no such file or folder" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    proc = run_cli("run", str(tmp_path), str(tmp_path / "o"), "--method", "blur")
    assert proc.returncode == 2 and "unknown redaction method" in proc.stderr


def test_dry_run_and_manifest(photo_dir, tmp_path):
    proc = run_cli("run", str(photo_dir), str(tmp_path / "o"), "--dry-run")
    assert proc.returncode == 0 and "dry run" in proc.stdout
    assert not (tmp_path / "o").exists()
    proc = run_cli("manifest", str(photo_dir), "-o", str(tmp_path / "m.parquet"))
    assert proc.returncode == 0, proc.stderr
    m = pd.read_parquet(tmp_path / "m.parquet")
    assert len(m) == 5 and set(m.kind) == {"image", "other"} and (m.sha256.str.len() == 64).all()


def test_version_and_help():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("sanitizer ")
    proc = run_cli("run", "--help")
    for opt in (
        "--config",
        "--detector",
        "--method",
        "--shape",
        "--threshold",
        "--workers",
        "--scheduler",
        "--dry-run",
    ):
        assert opt in proc.stdout


def test_haar_end_to_end(photo_dir, tmp_path):
    dst = tmp_path / "haar"
    proc = run_cli("run", str(photo_dir), str(dst), "--detector", "haar", "--workers", "1")
    assert proc.returncode == 1, proc.stderr
    files = pd.read_parquet(dst / "_audit" / "files")
    assert set(files[files.status == "ok"].detector) == {"haar"}
    assert files[files.key == "astronaut.jpg"].n_faces.item() >= 1


def test_demo(tmp_path):
    proc = run_cli("demo", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    assert "audit:" in proc.stdout and (tmp_path / "demo" / "output" / "_audit" / "runs").is_dir()
    assert Path(tmp_path / "demo" / "output" / "photos" / "astronaut.jpg").is_file()
    files = pd.read_parquet(tmp_path / "demo" / "output" / "_audit" / "files").set_index("key")
    clip = files.loc["clips/astronaut_pan.mp4"]
    assert clip.status == "ok" and clip.audio_kept and clip.frames == 50 and clip.n_faces >= 40


def test_audit_command(finished_run):
    _, dst, _, _ = finished_run
    proc = run_cli("audit", str(dst))
    assert proc.returncode == 0, proc.stderr
    assert "legal_basis" in proc.stdout and "broken.jpg" in proc.stdout
    proc = run_cli("audit", str(dst), "--json")
    import json

    doc = json.loads(proc.stdout)
    assert doc["files_by_status"] == {"ok": 3, "failed": 1, "skipped": 1}


def test_nightly_rerun_skips_unchanged(tmp_path):
    from tests.conftest import astronaut, jpeg_bytes

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    face = astronaut()
    (src / "a.jpg").write_bytes(jpeg_bytes(face))
    (src / "b.jpg").write_bytes(jpeg_bytes(face[::-1].copy()))
    assert run_cli("run", str(src), str(dst), "--workers", "1").returncode == 0
    (src / "b.jpg").write_bytes(jpeg_bytes(face[:, ::-1].copy()))  # changed since the last run
    proc = run_cli("run", str(src), str(dst), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "1 ok" in proc.stdout and "1 unchanged" in proc.stdout
    files = pd.read_parquet(dst / "_audit" / "files")
    last = files[files.run_id == files.run_id.max()].set_index("key")
    assert last.loc["a.jpg"].status == "skipped" and last.loc["a.jpg"].error.startswith("unchanged")
    assert last.loc["b.jpg"].status == "ok"
    proc = run_cli("run", str(src), str(dst), "--workers", "1", "--force")
    assert "2 ok" in proc.stdout
    proc = run_cli("run", str(src), str(dst), "--workers", "1", "--method", "solid")
    assert "2 ok" in proc.stdout, "another redaction config is not 'unchanged'"
    proc = run_cli("run", str(src), str(dst), "--workers", "1", "--method", "solid")
    assert proc.returncode == 0 and "2 unchanged" in proc.stdout, proc.stdout
    # settled from the listing: no task, no cluster, and the plan says so
    assert "nothing to process: no task, no cluster" in proc.stdout
    assert "unchanged since then by SRC's listing (size and mtime or ETag): 2 files" in proc.stdout


def test_worker_crash_fails_only_that_file(tmp_path):
    """A file that kills its worker process (as a native decoder crash would) gets a failed
    row; the other files of its task are retried alone and published."""
    from tests.conftest import astronaut, jpeg_bytes

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    small = astronaut()[::4, ::4].copy()
    names = ["a.jpg", "b.jpg", "crash.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg", "h.jpg"]
    for name in names:  # 9 files on 1 worker: tasks of 3 files, crash.jpg shares its task
        (src / name).write_bytes(jpeg_bytes(small))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(  # in worker processes: crash.jpg kills the process
        "import os, sys\n"
        "if any('multiprocessing' in a for a in sys.argv):\n"
        "    import sanitizer.process as p\n"
        "    real = p.process_item\n"
        "    def crashing(item, ctx):\n"
        "        if 'crash' in item.key:\n"
        "            os._exit(70)\n"
        "        return real(item, ctx)\n"
        "    p.process_item = crashing\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))
    proc = run_cli(
        "run", str(src), str(dst), "--workers", "1", timeout=300, env={"PYTHONPATH": pythonpath}
    )
    assert proc.returncode == 1, proc.stderr
    files = pd.read_parquet(dst / "_audit" / "files").set_index("key")
    assert files.loc["crash.jpg"].status == "failed" and "worker" in files.loc["crash.jpg"].error
    assert len(files) == 9 and (files.drop(index="crash.jpg").status == "ok").all()
    assert (
        not (dst / "crash.jpg").exists() and (dst / "b.jpg").exists() and (dst / "c.jpg").exists()
    )


def test_ctrl_c_stops_cleanly(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) ends the job with one
    line and exit 130; the audit keeps what finished and records the run as interrupted."""
    src, dst = faces_folder(tmp_path / "src", 300), tmp_path / "dst"
    code, out, errs = interrupt_cli(
        "run", str(src), str(dst), "--workers", "2", after_s=3.0, timeout=60
    )
    assert code == 130, errs
    assert "Traceback" not in out + errs and "interrupted" in errs
    runs = pd.read_parquet(dst / "_audit" / "runs")
    assert runs.status.tolist() == ["interrupted"]
    files = audit_files(dst)
    assert len(files) == runs.n_ok.item() < 300
    assert all((dst / k).is_file() for k in files.key)
    published = [p for p in dst.glob("*.jpg")]
    assert len(published) == len(files), "every published output has its audit row"


def audit_files(dst: Path) -> pd.DataFrame:
    part = dst / "_audit" / "files"
    return pd.read_parquet(part) if part.exists() else pd.DataFrame({"key": []})


def test_first_run_on_a_machine_derives_the_int8_model_once(tmp_path):
    """A fresh machine (empty model cache): one line says the model is being derived, the
    workers use the cached result, and nothing but sanitizer's own lines is printed."""
    from tests.conftest import astronaut, jpeg_bytes

    src, dst, cache = tmp_path / "src", tmp_path / "dst", tmp_path / "cache"
    src.mkdir()
    for i in range(3):
        (src / f"face{i}.jpg").write_bytes(jpeg_bytes(astronaut()))
    env = {
        "SANITIZER_CACHE": str(cache),
        "SANITIZER_INT8": "1",
    }  # int8 even on a CPU that would run fp32
    proc = run_cli("run", str(src), str(dst), "--workers", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("deriving the int8 CenterFace network") == 1
    assert "Traceback" not in out and "Error" not in out
    assert len(list(cache.glob("centerface-int8-*.onnx"))) == 1
    again = run_cli("run", str(src), str(tmp_path / "dst2"), env=env)
    assert again.returncode == 0 and "deriving" not in again.stdout + again.stderr


def test_two_jobs_on_one_machine_do_not_collide_on_ports(tmp_path, photo_dir):
    """The embedded scheduler opens no dashboard and no fixed port (8787 is often taken, e.g.
    by a second sanitizer job or a notebook's Dask): nothing but sanitizer's lines is printed."""
    import contextlib
    import socket

    with contextlib.closing(socket.socket()) as busy:
        with contextlib.suppress(OSError):  # already taken by someone else: just as good
            busy.bind(("0.0.0.0", 8787))
            busy.listen()
        proc = run_cli("run", str(photo_dir), str(tmp_path / "dst"), "--workers", "1")
    assert proc.returncode == 1, proc.stderr  # the broken JPEG of photo_dir fails
    assert "8787" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr


def test_worker_processes_that_cannot_start_fail_in_one_line(tmp_path):
    """A worker process that dies while starting is reported as a one-line cluster error
    quickly (no hang, no traceback), and nothing is published."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if any('multiprocessing' in a for a in sys.argv):  # a spawned worker process only\n"
        "    os._exit(3)\n"
    )
    src = faces_folder(tmp_path / "src", 2)
    pythonpath = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))
    proc = run_cli(
        "run", str(src), str(tmp_path / "dst"), timeout=120, env={"PYTHONPATH": pythonpath}
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot start a local Dask cluster: Nanny failed to start" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "dst").glob("*.jpg"))


def test_a_caught_interrupt_of_a_string_exec_keeps_the_exit_code_under_python_m(tmp_path):
    """CPython ends `python -m` by SIGINT when a KeyboardInterrupt once ended a string `exec`
    (a dataclass being created while a library is imported), even though it was caught: a
    Ctrl-C at that moment of the start-up exited -2 instead of 130. `__main__` clears it."""
    import subprocess
    import sys

    def exit_code(forget: bool) -> int:
        (tmp_path / "interrupted_exec.py").write_text(
            "try:\n"
            "    exec('raise KeyboardInterrupt')\n"
            "except KeyboardInterrupt:\n"
            "    pass\n"
            + ("from sanitizer.__main__ import _forget_interrupted_exec\n" if forget else "")
            + ("_forget_interrupted_exec()\n" if forget else "")
            + "raise SystemExit(130)\n"
        )
        return subprocess.run(
            [sys.executable, "-m", "interrupted_exec"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
        ).returncode

    if exit_code(forget=False) == 130:
        pytest.skip("this CPython keeps the exit code by itself")
    assert exit_code(forget=True) == 130


@pytest.mark.parametrize("after_s", [0.1, 0.3, 0.6, 1.0, 1.5, 2.5])
def test_ctrl_c_while_starting_up(tmp_path, after_s):
    """Ctrl-C at any moment of the start-up (imports, listing, the cluster starting, its
    workers loading) stops the run with exit 130, never with a traceback, with ONE press: a
    press while the worker processes start is held until the cluster is up (README)."""
    import signal
    import subprocess
    import sys
    import time

    src = faces_folder(tmp_path / "src", 150)  # ~10 s of work: it cannot finish first
    proc = subprocess.Popen(
        [sys.executable, "-m", "sanitizer", "run", str(src), str(tmp_path / "dst")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        preexec_fn=default_sigint,
    )
    try:
        time.sleep(after_s)
        os.killpg(proc.pid, signal.SIGINT)
        _, errs = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in errs and "Exception ignored" not in errs, errs
    # 130, or killed by the signal itself when it landed before the interpreter had started
    # (a loaded machine): what a shell reports as 130 too, and nothing can have been written
    assert proc.returncode == 130 or (proc.returncode == -signal.SIGINT and not errs), errs


def test_a_ctrl_c_swallowed_where_it_landed_is_raised_at_the_next_step(monkeypatch):
    """A KeyboardInterrupt raised inside a callback that cannot propagate it (import-lock
    weakref, gc callback, __del__) is not printed; the press was recorded, so the job's next
    step (`interrupts.check`) raises it."""
    import threading
    from types import SimpleNamespace

    from sanitizer import interrupts

    monkeypatch.setattr(interrupts, "_pressed", threading.Event())
    interrupts.check()  # nothing pressed: nothing raised
    with pytest.raises(KeyboardInterrupt):
        interrupts._on_sigint(2, None)  # what Ctrl-C runs in the main thread
    interrupts._unraisable(  # ... swallowed where it landed: not printed
        SimpleNamespace(exc_type=KeyboardInterrupt, exc_value=KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()


def test_ctrl_c_is_held_while_the_cluster_starts_then_honoured(tmp_path):
    """`interrupts.held`: a press during the block is not raised inside it (a half-started
    cluster) nor lost: KeyboardInterrupt comes right after it; a worker process spawned
    meanwhile (as the embedded cluster spawns them) inherits SIGINT blocked, so a Ctrl-C to the
    process group never reaches it."""
    import subprocess
    import sys

    mask = tmp_path / "mask"
    code = (
        "import multiprocessing, os, shutil, signal, time\n"
        "from sanitizer import interrupts\n"
        "if __name__ == '__main__':\n"
        "    interrupts.install()\n"
        "    try:\n"
        "        with interrupts.held():\n"
        "            ctx = multiprocessing.get_context('spawn')\n"
        f"            args = ('/proc/self/status', {str(mask)!r})\n"
        "            child = ctx.Process(target=shutil.copyfile, args=args)\n"
        "            child.start()\n"
        "            child.join()\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "            time.sleep(0.3)\n"
        "            print('inside', end=' ')\n"
        "    except KeyboardInterrupt:\n"
        "        print('after', end='')\n"
    )
    script = tmp_path / "held.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.stdout == "inside after", r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    (line,) = [x for x in mask.read_text().splitlines() if x.startswith("SigBlk:")]
    blocked = int(line.split()[1], 16)
    assert blocked >> (2 - 1) & 1, "SIGINT (2) is blocked in the spawned process"


def _digests(dst: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in dst.glob("*.jpg")}


def test_ctrl_c_of_a_forced_rerun_keeps_every_earlier_output(tmp_path):
    """The measured bug: Ctrl-C during `run --force` (or a rerun after a config change) deleted
    every earlier output the interrupted run had not yet rewritten. Now nothing reaches a key
    before its row, so every earlier output stays and the invariant holds."""
    src, dst = faces_folder(tmp_path / "src", 30), tmp_path / "dst"
    assert run_cli("run", str(src), str(dst), "--workers", "2").returncode == 0
    before = _digests(dst)
    assert len(before) == 30
    code, _, errs = interrupt_cli(
        "run", str(src), str(dst), "--workers", "2", "--force", "--method", "solid", after_s=1.0
    )
    assert code == 130, errs
    after = _digests(dst)
    assert set(after) == set(before), "no earlier output was deleted"
    check_invariant(dst)
    runs = pd.read_parquet(dst / "_audit" / "runs").sort_values("started")
    assert runs.status.tolist() == ["complete", "interrupted"]
    # the next plain run converges: the rest is redone with the new config
    proc = run_cli("run", str(src), str(dst), "--workers", "2", "--method", "solid")
    assert proc.returncode == 0, proc.stderr
    check_invariant(dst)
    files = pd.read_parquet(dst / "_audit" / "files")
    solid = files[
        (files.status == "ok") & (files.config_fingerprint == files.config_fingerprint.iloc[-1])
    ]
    assert set(solid.key) == set(before)


def test_sigkill_of_everything_then_a_plain_rerun_converges(tmp_path):
    """SIGKILL of the whole process group (driver and workers) at a random moment: the next
    plain run settles what was left (promotes committed outputs, discards the rest), closes the
    dead run's row, and ends with what an uninterrupted run produces."""
    import signal
    import subprocess
    import sys
    import time

    src, dst = faces_folder(tmp_path / "src", 50), tmp_path / "dst"
    for delay in (0.5, 2.0):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sanitizer", "run", str(src), str(dst), "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        for line in proc.stderr:
            if "dask:" in line:
                break
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    proc = run_cli("run", str(src), str(dst), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    check_invariant(dst)
    assert len(_digests(dst)) == 50
    runs = pd.read_parquet(dst / "_audit" / "runs").sort_values("started")
    assert runs.status.tolist()[-1] == "complete"
    assert "running" not in runs.status.tolist(), "dead runs are closed"


def test_a_second_run_into_a_held_dst_exits_2(tmp_path):
    import signal
    import subprocess
    import sys

    src, dst = faces_folder(tmp_path / "src", 150), tmp_path / "dst"
    first = subprocess.Popen(
        [sys.executable, "-m", "sanitizer", "run", str(src), str(dst), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        preexec_fn=default_sigint,
    )
    try:
        for line in first.stderr:
            if "dask:" in line:
                break
        second = run_cli("run", str(src), str(dst), "--workers", "1", timeout=120)
        assert first.poll() is None, "the first run still runs"
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=90)
    assert second.returncode == 2, second.stdout + second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "in use by run" in lines[0] and "pid" in lines[0], second.stderr
    check_invariant(dst)


def test_a_name_that_is_not_utf8_is_unchanged_on_the_next_run(tmp_path):
    """The audit holds a Latin-1 name escaped (`caf\\xe9.jpg`); the unchanged check looks it
    up that way too, so the next run skips it (by its recorded stat, and by its hash)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")
    from tests.conftest import astronaut, jpeg_bytes

    (src / name).write_bytes(jpeg_bytes(astronaut()))
    first = run_cli("run", str(src), str(dst), "--workers", "1")
    assert first.returncode == 0, first.stderr
    assert (dst / name).is_file()
    for extra in ([], ["--verify-hashes"]):
        again = run_cli("run", str(src), str(dst), "--workers", "1", *extra)
        assert again.returncode == 0, again.stderr
        assert "0 ok, 0 failed, 1 skipped (1 unchanged" in again.stdout, again.stdout
