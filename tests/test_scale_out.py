"""Scale-out: two workers on one pool, a PostgreSQL-backed server, every file in S3.

The shape of a production install on one machine: ``prefect server start`` on
PostgreSQL, moto's S3 server with an ``S3Bucket`` block saved on that server,
one process work pool and TWO ``prefect worker start`` processes on it, each
with a home and a working directory of its own (as if on two machines) and
``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`` naming the bucket block, the Prefect
way to send every run's result storage to S3. The Runway preset, aimed at the
fake provider (jobs take ``JOB_SECONDS`` so runs overlap), is deployed with
``toolflows deploy --pool``; ``RUNS`` runs with distinct ``promptText`` are
started by deployment name and checked once final.

Each worker runs at most ``WORKER_LIMIT`` flow runs at once (``--limit``), so
no single worker can claim the whole backlog in one poll: both must take runs,
which is what scaling out means, and a 2-core machine is not asked to start 20
flow run processes at once. Which worker ran a flow run is read from the
``prefect.worker.name`` label the worker gives it before proposing
``Submitting`` (``BaseWorker._give_worker_labels_to_flow_run``), and cross-checked
against each worker's own log line ``Worker '<name>' submitting flow run '<id>'``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.prefect_stack import (
    BIN,
    Postgres,
    aimed_at_api,
    create_process_pool,
    free_port,
    moto_s3,
    postgres,
    prefect_server,
    process_worker,
    run_command,
    save_s3_bucket,
    wait_for,
)
from tests.helpers import PARAMS, aimed_at
from toolflows.deployments.registry import load_preset, register_definitions
from toolflows.models import ToolResult

POOL = "scale-out"
WORKERS = ("scale-worker-a", "scale-worker-b")
WORKER_LIMIT = 5
RUNS = 20
JOB_SECONDS = 1.5
BUCKET = "toolflows-scale-out"
BLOCK = f"s3-bucket/{BUCKET}"
DEPLOYMENT = "runway.image_to_video/scale-runway-image-to-video"
PREFIX = "runway/image_to_video/"
# Polling paced for a shared 2-core machine: a check a second, the job done at the second.
POLLING = {
    "interval_seconds": 1,
    "backoff_factor": 1,
    "max_interval_seconds": 1,
    "max_wait_seconds": 120,
}
RUN_SECONDS = 150
# A worker logs this for every run it tries to claim; the loser of a race for the same
# run then logs ABORTED (the server refuses its Pending): claimed = submitting - aborted.
SUBMITTING = re.compile(r"Worker '[^']+' submitting flow run '([0-9a-f-]{36})'")
ABORTED = re.compile(r"Aborted submission of flow run '([0-9a-f-]{36})'")


@dataclass
class ScaleOut:
    logs: Path
    postgres: Postgres
    s3: Any  # boto3 client of the bucket's credentials
    server_home: Path
    deployment_id: Any
    runs: dict[str, FlowRun]  # promptText → the final flow run

    def log_tails(self) -> str:
        return log_tails(self.logs)


def log_tails(logs: Path) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(logs.rglob("*.log"))
    )


def prompt(index: int) -> str:
    return f"clip {index}"


@pytest.fixture(scope="module")
def scale_out(fake, tmp_path_factory) -> Iterator[ScaleOut]:
    """The stack, and RUNS runs of the Runway deployment, started together, once final."""
    fake.script("runway", seconds_until_done=JOB_SECONDS)
    base = tmp_path_factory.mktemp("scale-out")
    logs = base / "logs"
    server_home = base / "server-home"
    for directory in (logs, server_home, base / "deploy"):
        directory.mkdir()
    api_url = f"http://127.0.0.1:{free_port()}/api"
    env = {
        # One machine's local result storage must not be what makes this work.
        **{k: v for k, v in os.environ.items() if k != "PREFECT_LOCAL_STORAGE_PATH"},
        "RUNWAYML_API_SECRET": fake.api_keys["runway"],
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    with ExitStack() as running:
        database = running.enter_context(postgres())
        endpoint = running.enter_context(moto_s3(logs / "moto.log"))
        server_env = {
            **env,
            "PREFECT_HOME": str(server_home),
            "PREFECT_API_DATABASE_CONNECTION_URL": database.sqlalchemy_url,
            "PREFECT_UI_ENABLED": "false",
        }
        running.enter_context(prefect_server(server_home, server_env, api_url))
        running.enter_context(aimed_at_api(api_url))
        s3 = save_s3_bucket(endpoint, BUCKET, BLOCK.split("/")[1])
        run_coro_as_sync(create_process_pool(POOL))
        runway = aimed_at(fake, load_preset("runway", "image_to_video"), **POLLING)
        run_coro_as_sync(register_definitions([runway]))
        deploy_env = {**env, "PREFECT_HOME": str(base / "deploy")}
        run_command(
            [str(BIN / "toolflows"), "deploy", "--pool", POOL, "--name-prefix", "scale-"],
            deploy_env,
            base / "deploy",
        )
        for name in WORKERS:
            machine = base / name
            (machine / "home").mkdir(parents=True)
            (machine / "cwd").mkdir()
            worker_env = {
                **env,
                "PREFECT_HOME": str(machine / "home"),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": BLOCK,
            }
            options = ["--name", name, "--limit", str(WORKER_LIMIT)]
            log = logs / f"{name}.log"
            running.enter_context(process_worker(POOL, worker_env, log, machine / "cwd", *options))
        try:
            # Both online before any run exists: neither gets a head start.
            wait_for(lambda: run_coro_as_sync(workers_online()), 120, "both workers online")
            started = {
                prompt(i): run_deployment(
                    DEPLOYMENT, parameters={**PARAMS["runway"], "promptText": prompt(i)}, timeout=0
                )
                for i in range(RUNS)
            }
            ids = {run.id: text for text, run in started.items()}

            def all_final() -> dict[str, FlowRun] | None:
                runs = run_coro_as_sync(read_flow_runs(list(ids)))
                if len(runs) == RUNS and all(r.state and r.state.is_final() for r in runs):
                    return {ids[r.id]: r for r in runs}
                return None

            runs = wait_for(all_final, RUN_SECONDS, f"the {RUNS} runs to finish")
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{log_tails(logs)}") from None
        deployment_id = next(iter(runs.values())).deployment_id
        yield ScaleOut(logs, database, s3, server_home, deployment_id, runs)


async def workers_online() -> bool:
    async with get_client() as client:
        workers = await client.read_workers_for_work_pool(POOL)
    return {worker.name for worker in workers} >= set(WORKERS)


async def read_flow_runs(ids: list[Any]) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
        )


def results(scale_out: ScaleOut) -> dict[str, ToolResult]:
    return {
        text: run_coro_as_sync(run.state.aresult()) for text, run in sorted(scale_out.runs.items())
    }


def test_all_runs_complete_and_both_workers_took_runs(scale_out):
    runs = scale_out.runs
    ran_by = {str(run.id): run.labels.get("prefect.worker.name") for run in runs.values()}
    claimed: Counter[tuple[str, str]] = Counter()
    for name in WORKERS:
        log = (scale_out.logs / f"{name}.log").read_text(errors="replace")
        aborted = set(ABORTED.findall(log))
        claimed.update(
            (name, run_id) for run_id in SUBMITTING.findall(log) if run_id not in aborted
        )

    assert len(runs) == RUNS
    failed = {text: run.state.message for text, run in runs.items() if not run.state.is_completed()}
    assert not failed, f"{failed}\n{scale_out.log_tails()}"
    assert all(run.work_pool_name == POOL for run in runs.values())
    assert set(ran_by.values()) == set(WORKERS), Counter(ran_by.values())
    # Each run was claimed exactly once, by the worker its label names (worker logs agree).
    assert claimed == Counter((worker, run_id) for run_id, worker in ran_by.items())


def test_the_two_workers_ran_flow_runs_at_the_same_time(scale_out):
    by_worker = {
        name: [
            (run.start_time, run.end_time)
            for run in scale_out.runs.values()
            if run.labels.get("prefect.worker.name") == name
        ]
        for name in WORKERS
    }
    first, second = (by_worker[name] for name in WORKERS)

    overlapping = [(a, b) for a in first for b in second if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, by_worker


def test_every_file_lands_once_in_s3_with_the_bytes_the_provider_served(scale_out, fake):
    s3 = scale_out.s3
    stored = results(scale_out)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)
    keys = sorted(item["Key"] for item in listed.get("Contents", []))

    assert len({result.task_id for result in stored.values()}) == RUNS
    expected_keys = []
    for text, result in stored.items():
        assert len(result.files) == 1, text
        file = result.files[0]
        key = f"{PREFIX}{result.task_id}/{file.filename}"
        expected_keys.append(key)
        assert file.uri == f"s3://{BUCKET}/{key}", text
        assert file.storage_block == BLOCK, text
        assert fake.job(result.task_id).input["promptText"] == text
        assert object_sha256(s3, key) == file.sha256 == fake.expected_sha256(result.task_id)
    assert listed["KeyCount"] == RUNS
    assert keys == sorted(expected_keys)
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_the_runs_results_are_persisted_in_the_s3_block(scale_out):
    """PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK reached the flow runs: Prefect's own result
    records live in the bucket too, not in a worker's local storage."""
    bucket_block = run_coro_as_sync(Block.aload(BLOCK))

    for text, run in scale_out.runs.items():
        assert run.state.data.storage_block_id == bucket_block._block_document_id, text
        record_key = run.state.data.storage_key
        assert scale_out.s3.head_object(Bucket=BUCKET, Key=record_key)["ContentLength"] > 0


def test_the_provider_saw_exactly_one_submit_per_run(scale_out, fake):
    prompts = sorted(job.input["promptText"] for job in fake.jobs("runway"))

    assert fake.submits("runway") == RUNS
    assert fake.submits() == RUNS
    assert prompts == sorted(prompt(i) for i in range(RUNS))


def test_the_server_kept_its_runs_in_postgresql(scale_out):
    rows = asyncio.run(flow_run_rows(scale_out.postgres.dsn, scale_out.deployment_id))

    assert len(rows) == RUNS
    assert {row["state_type"] for row in rows} == {"COMPLETED"}
    assert {row["id"] for row in rows} == {run.id for run in scale_out.runs.values()}
    assert not list(scale_out.server_home.glob("*.db")), "the server also wrote SQLite"


async def flow_run_rows(dsn: str, deployment_id: Any) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(
            "SELECT id, state_type FROM flow_run WHERE deployment_id = $1", deployment_id
        )
    finally:
        await connection.close()


def object_sha256(client: Any, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in client.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()
