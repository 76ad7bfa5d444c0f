"""Pieces of a real deployment stack, for the tests and benchmarks that run one of their own.

Processes started here run in their own process group and are killed with
all their children on exit: ``prefect server start``, ``prefect worker start``
(and the flow run processes they spawn), moto's S3 server, PostgreSQL.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.workers.process import ProcessWorker
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Generous: a loaded 2-core machine starts a server in ~30 s and a flow run process in ~10 s.
SERVER_START_SECONDS = 120


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)
    return value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def background(
    command: list[str], env: dict[str, str] | None, log: Path, cwd: Path | None
) -> Iterator[Any]:
    """A process in its own group, killed with all its children on exit."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        stop_group(process)
        with suppress(ProcessLookupError):  # flow run processes left behind
            os.killpg(process.pid, signal.SIGKILL)


def log_tails(folder: Path, chars: int = 4000) -> str:
    """The end of every ``*.log`` in ``folder``: what a failed stack test shows."""
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}"
        for log in sorted(folder.glob("*.log"))
    )


def stop_group(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM a process started in its own group; SIGKILL the group if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:  # the group is gone already (killed by a test)
        process.wait()
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stack_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """The environment of a stack's processes: this process's, with its own home and API."""
    return {
        **os.environ,
        **extra,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


@contextmanager
def process_worker(
    pool: str, env: dict[str, str], log: Path, cwd: Path, *options: str
) -> Iterator[subprocess.Popen]:
    """``prefect worker start`` on a process pool; its flow run processes die with it."""
    command = [str(BIN / "prefect"), "worker", "start", "--pool", pool, *options]
    with background(command, env, log, cwd) as worker:
        yield worker


@contextmanager
def aimed_at_api(api_url: str) -> Iterator[None]:
    """This process's Prefect client aimed at a server of a stack's own, for a while.

    On the way out its log and events workers are flushed and stopped (one registry
    serves both): left running, they would keep sending to a server about to go, and
    a later test in this process would miss its events (and its task runs).
    """
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            EventsWorker.drain_all(timeout=30)


def healthy(api_url: str, server: subprocess.Popen, log: Path) -> bool:
    if server.poll() is not None:
        raise AssertionError(f"prefect server exited {server.returncode}:\n{log.read_text()}")
    try:
        return httpx.get(f"{api_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def run_command(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, f"{command} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


async def create_process_pool(name: str) -> None:
    template = ProcessWorker.get_default_base_job_template()
    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(name=name, type="process", base_job_template=template)
        )


async def read_flow_run(flow_run_id: Any) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


@contextmanager
def prefect_server(home: Path, env: dict[str, str], api_url: str) -> Iterator[subprocess.Popen]:
    """``prefect server start`` on the host and port of ``api_url``, once healthy.

    Its database is whatever ``env`` says (``PREFECT_API_DATABASE_CONNECTION_URL``);
    the log is ``home/server.log``.
    """
    host, port = re.fullmatch(r"http://([^:/]+):(\d+)/api", api_url).groups()
    command = [str(BIN / "prefect"), "server", "start", "--host", host, "--port", port]
    log = home / "server.log"
    with background(command, env, log, home) as server:
        wait_for(lambda: healthy(api_url, server, log), SERVER_START_SECONDS, "prefect server")
        yield server


# -- S3 (moto's standalone server) ------------------------------------------------------


@contextmanager
def moto_s3(log: Path = Path(os.devnull)) -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    endpoint = f"http://127.0.0.1:{port}"
    with background(command, None, log, None) as server:

        def answering() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"moto_server exited {server.returncode}")
            try:
                httpx.get(endpoint, timeout=1)
            except httpx.TransportError:
                return False
            return True

        wait_for(answering, 60, "moto_server")
        yield endpoint


def save_s3_bucket(endpoint: str, bucket: str, block_document_name: str) -> Any:
    """Create ``bucket`` and save an ``S3Bucket`` block for it on the current Prefect API.

    Returns a boto3 S3 client of the same credentials, to inspect the bucket.
    """
    credentials = AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )
    client = credentials.get_s3_client()
    client.create_bucket(Bucket=bucket)
    run_coro_as_sync(
        S3Bucket(bucket_name=bucket, credentials=credentials).asave(
            block_document_name, overwrite=True
        )
    )
    return client


# -- PostgreSQL -------------------------------------------------------------------------

POSTGRES_MISSING = (
    "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): the scale-out test "
    "runs the Prefect server on it. `make test` installs it (Debian package `postgresql`, "
    "see the Makefile's system-deps), or run `apt-get install -y postgresql`."
)


@dataclass(frozen=True)
class Postgres:
    port: int
    database: str
    log: Path

    @property
    def dsn(self) -> str:
        """For asyncpg / psql."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def sqlalchemy_url(self) -> str:
        """For ``PREFECT_API_DATABASE_CONNECTION_URL``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"


def postgres_bindir() -> Path:
    """The newest PostgreSQL installed the Debian way, else on PATH."""

    def version(initdb: Path) -> float:
        try:
            return float(initdb.parent.parent.name)
        except ValueError:
            return 0.0

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    raise AssertionError(POSTGRES_MISSING)


@contextmanager
def postgres(database: str = "prefect") -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on a free loopback port, trust auth, one database.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the
    ``postgres`` user (``runuser``). Its directory is made with ``mkdtemp`` in
    the system temp dir (pytest's are private to root) and removed on exit,
    after ``pg_ctl stop``.
    """
    bindir = postgres_bindir()
    as_owner: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="toolflows-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise AssertionError(
                f"no `postgres` user to run PostgreSQL as. {POSTGRES_MISSING}"
            ) from None
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, sockets, log = root / "data", root / "sockets", root / "postgres.log"
    port = free_port()

    def run(command: list[str]) -> None:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, (
            f"{command} failed:\n{completed.stdout}\n{completed.stderr}\n"
            + (log.read_text(errors="replace") if log.exists() else "")
        )

    try:
        run([*as_owner, "mkdir", "-m", "700", str(sockets)])
        run(
            [*as_owner, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"]
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
            # A throwaway cluster: durability buys nothing here, speed does.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        run(
            [*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
             "-o", options, "-w", "-t", "60", "start"]
        )  # fmt: skip
        try:
            run(
                [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                 "-U", "postgres", database]
            )  # fmt: skip
            yield Postgres(port, database, log)
        finally:
            _stop_postgres(as_owner, bindir, data)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stop_postgres(as_owner: list[str], bindir: Path, data: Path) -> None:
    stop = [*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30"]
    completed = subprocess.run([*stop, "stop"], capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:  # still up: kill the postmaster (its children follow)
        with suppress(OSError, ValueError, IndexError):
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
