"""Many jobs of one method from one flow run: concurrent, one pooled client.

Every params set is validated before the first submit; then each job runs as
a coroutine on the flow's event loop (no process or thread per job), all
sharing the run's provider session. ``maxConcurrency`` bounds the jobs in
flight inside this run; the method's ``concurrencyLimit`` bounds them across
all runs. One job's failure does not lose the others: each comes back as a
result or as an error document.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.core.errors import ToolflowsError
from flows.engine import run_job
from flows.methods import load_method, prepare_method, session_for, validate_params
from flows.models import BatchResult, ErrorResult, ToolResult


@flow(
    name="run_tool_method_batch",
    description="Run one tool method over many params concurrently, in one flow run.",
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
    for params in params_list:
        validate_params(definition, params)
    prepared = await prepare_method(definition, None, submitting=False)
    gate = asyncio.Semaphore(max(1, max_concurrency))

    async def one(index: int, params: dict[str, Any]) -> ToolResult | ErrorResult:
        async with gate:
            try:
                return await run_job(definition, params, job_key=f"batch-{index}")
            except ToolflowsError as error:
                return ErrorResult(error=error.to_dict())

    async with session_for(prepared):
        results = await asyncio.gather(*(one(i, params) for i, params in enumerate(params_list)))
    batch = BatchResult(results=list(results))
    get_run_logger().info(
        "Batch of %d: %d succeeded, %d failed",
        len(results),
        len(batch.succeeded),
        len(results) - len(batch.succeeded),
    )
    return batch
