"""Many jobs of one method from one flow run: concurrent, one pooled client.

Every params set is validated before the first submit; then each job runs as
a coroutine on the flow's event loop (no process or thread per job), all
sharing the run's provider session; their status checks are made together,
in rounds (``toolflows.rounds``). ``maxConcurrency`` bounds the jobs in flight
inside this run; the method's ``concurrencyLimit`` bounds them across all
runs. One job's failure does not lose the others: each comes back as a result
or as an error document.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from toolflows.cancel import cancel_remote_jobs
from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import JobStatus
from toolflows.core.errors import ToolflowsError
from toolflows.engine import SoloLanes, run_job
from toolflows.methods import load_method, params_checker, prepare_method, session_for
from toolflows.models import BatchResult, ErrorResult, SubmittedJob, ToolResult
from toolflows.poll import Answer
from toolflows.reporting import publish_batch
from toolflows.rounds import StatusRounds, status_rounds
from toolflows.together import all_settled, raise_first_error

# Submits sent at once: enough to keep a provider busy, few enough that the
# first jobs are submitted (and checked) while the rest wait their turn.
SUBMITS_IN_FLIGHT = 16
# Jobs downloading at once. With the submits and a round's checks this keeps
# the requests in flight within the session's pool (``toolflows.http``), so none
# waits for a connection with a timeout running.
DOWNLOADS_IN_FLIGHT = 8


class BatchLanes(SoloLanes):
    """What the jobs of one batch share, so that a thousand of them stay cheap.

    The engine's ``Lanes``: bounded submits and downloads, status checks in
    rounds, and one table of results for the batch instead of artifacts per job.
    """

    job_artifacts = False

    def __init__(self, rounds: StatusRounds) -> None:
        self.rounds = rounds
        self.submit_gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)
        self.download_gate = asyncio.Semaphore(DOWNLOADS_IN_FLIGHT)

    async def wait(
        self, definition: MethodDefinition, job: SubmittedJob
    ) -> tuple[JobStatus, Answer]:
        return await self.rounds.wait(job)


@flow(
    name="run_tool_method_batch",
    description="Run one tool method over many params concurrently, in one flow run.",
    on_cancellation=[cancel_remote_jobs("method")],
    persist_result=True,
)
async def run_batch(
    method: str | dict[str, Any],
    params_list: list[dict[str, Any]],
    max_concurrency: int = 100,
) -> BatchResult:
    """Run ``method`` once per params set; return every outcome in input order.

    Example:
        ```python
        batch = await run_batch("fal/flux_image", [{"prompt": p} for p in prompts])
        urls = [result.files[0].uri for result in batch.succeeded]
        ```
    """
    definition = await load_method(method)
    # Check every params set first: a bad one must not leave half a batch paid.
    check_params = params_checker(definition)
    for params in params_list:
        check_params(params)
    prepared = await prepare_method(definition, None, submitting=False)
    gate = asyncio.Semaphore(max(1, max_concurrency))

    async def one(
        index: int, params: dict[str, Any], lanes: BatchLanes
    ) -> ToolResult | ErrorResult:
        async with gate:
            try:
                return await run_job(definition, params, job_key=f"batch-{index}", lanes=lanes)
            except ToolflowsError as error:
                return ErrorResult(error=error.to_dict())

    async with session_for(prepared), status_rounds(definition) as rounds:
        lanes = BatchLanes(rounds)
        results = raise_first_error(
            await all_settled(*(one(i, params, lanes) for i, params in enumerate(params_list)))
        )
    batch = BatchResult(results=list(results))
    await publish_batch(definition, batch)
    get_run_logger().info(
        "Batch of %d: %d succeeded, %d failed",
        len(results),
        len(batch.succeeded),
        len(results) - len(batch.succeeded),
    )
    return batch
