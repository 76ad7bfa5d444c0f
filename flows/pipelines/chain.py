"""Continue from a file another job stored: the target of event-driven chains.

An automation on ``toolflows.job.completed`` can start this flow's deployment
with the event's file URI; the file is handed to the next provider as a URL it
can fetch (a presigned link for S3 storage).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from toolflows.cancel import cancel_remote_jobs
from toolflows.engine import run_prepared
from toolflows.methods import load_method, prepare_method
from toolflows.models import ToolResult
from toolflows.pipelines.steps import fill_params_template
from toolflows.storage import presigned_url


@flow(
    name="continue_with_file",
    description="Run a method on a file an earlier job stored ({file_url} in its params).",
    on_cancellation=[cancel_remote_jobs("method")],
    persist_result=True,
)
async def continue_with_file(
    method: str | dict[str, Any],
    params: dict[str, Any],
    file_uri: str,
    storage_block: str | None = None,
) -> ToolResult:
    """Run ``method`` with ``{file_url}`` in ``params`` replaced by a fetchable link to the file."""
    link = presigned_url(file_uri, storage_block) if file_uri.startswith("s3://") else file_uri
    filled = fill_params_template(params, {"file_url": link, "file_uri": file_uri})
    definition = await load_method(method)
    prepared = await prepare_method(definition, filled)
    return await run_prepared(prepared, filled)
