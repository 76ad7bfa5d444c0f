"""The ``run_tool_method`` flow: submit → poll → (fetch result) → download.

The flow strings the steps together and makes the decisions between them;
the rules it applies live in ``toolflows.core`` and the steps in their modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import replace
from typing import Any, Protocol

import anyio
from prefect import flow
from prefect.logging import get_run_logger
from prefect.utilities.asyncutils import run_coro_as_sync

from toolflows.cancel import cancel_job, cancel_remote_job
from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import JobState, JobStatus, find_outputs, find_result_link
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.templates import render_template, resolve_link
from toolflows.download import download_outputs
from toolflows.limits import held_provider_slot, provider_slot
from toolflows.methods import PreparedMethod, load_method, prepare_method, session_for
from toolflows.models import SubmittedJob, ToolResult
from toolflows.poll import (
    Answer,
    check_status,
    fetch_result,
    raise_if_unsuccessful,
    retry_until_the_wait_ends,
    status_of,
)
from toolflows.reporting import job_journal, publish_failure, publish_success
from toolflows.submit import resumed_job, submit_job
from toolflows.suspend import callback_for, from_deployment, wait_or_suspend

# How long a cancelled or timed-out run may spend asking the provider to cancel.
CANCEL_GRACE_SECONDS = 30


class Lanes(Protocol):
    """How a job shares its run with other jobs: the gates it passes, how it waits.

    A job run alone shares nothing (``SOLO``); the jobs of a batch share
    bounded submits and downloads and make their status checks in rounds
    (``toolflows.batch``); a deployment run's one job may suspend the run
    while it waits (``SuspendingLanes``).
    """

    def slot(self, definition: MethodDefinition, job_key: str) -> AbstractAsyncContextManager[Any]:
        """Held from before the submit until the provider's job is over."""

    async def callback(self, definition: MethodDefinition, job_key: str) -> str | None:
        """The callback URL the submit gives the provider, if any."""

    @property
    def submit_gate(self) -> AbstractAsyncContextManager[Any]:
        """Held while the job's submit is sent."""

    @property
    def download_gate(self) -> AbstractAsyncContextManager[Any]:
        """Held while the job's outputs download."""

    @property
    def job_artifacts(self) -> bool:
        """Whether the job publishes its own artifacts (a batch publishes one table)."""

    async def wait(
        self, definition: MethodDefinition, job: SubmittedJob
    ) -> tuple[JobStatus, Answer]:
        """Wait for the job to end: its success and last answer, or its failure raised."""


class SoloLanes:
    """A job run alone: no gates, and one task attempt per status check."""

    submit_gate = download_gate = nullcontext()
    job_artifacts = True

    def slot(self, definition: MethodDefinition, job_key: str) -> AbstractAsyncContextManager[Any]:
        return provider_slot(definition)

    async def callback(self, definition: MethodDefinition, job_key: str) -> str | None:
        return None

    async def wait(
        self, definition: MethodDefinition, job: SubmittedJob
    ) -> tuple[JobStatus, Answer]:
        return await retry_until_the_wait_ends(check_status, definition, job)


SOLO = SoloLanes()


class SuspendingLanes(SoloLanes):
    """A deployment run's one job: the run suspends while the job is pending.

    Its slot outlives the run's process, and its lease is recorded for the
    waiter (``toolflows.suspend``).
    """

    def __init__(self) -> None:
        self.lease_id: str | None = None
        self.callbacks = False

    @asynccontextmanager
    async def slot(self, definition: MethodDefinition, job_key: str) -> AsyncIterator[None]:
        async with held_provider_slot(definition, job_key) as lease_id:
            self.lease_id = lease_id
            yield

    async def callback(self, definition: MethodDefinition, job_key: str) -> str | None:
        url = await callback_for(definition, job_key)
        self.callbacks = url is not None
        return url

    async def wait(
        self, definition: MethodDefinition, job: SubmittedJob
    ) -> tuple[JobStatus, Answer]:
        return await wait_or_suspend(
            definition, job, lease_id=self.lease_id, callbacks=self.callbacks
        )


def lanes_for(definition: MethodDefinition) -> Lanes:
    """How the run's one job waits: suspended (``wait``) only in a deployment run."""
    wait = definition.adapter_config.polling.wait
    if wait == "inline":
        return SOLO
    if not from_deployment():
        if wait == "suspend":
            get_run_logger().info(
                'wait "suspend": this run is not from a deployment (nothing would start it '
                "again), so it waits inline"
            )
        return SOLO
    return SuspendingLanes()


@flow(
    name="run_tool_method",
    description="Run a tool method: submit the job, wait for it, store its outputs.",
    on_cancellation=[cancel_remote_job],
    # The result is a small reference (files are in storage): persisted, a
    # deployment run's caller can read it back through the API.
    persist_result=True,
)
async def run_tool_method(
    method: str | dict[str, Any],
    params: dict[str, Any] | None = None,
    resume_task_id: str | None = None,
) -> ToolResult:
    """Run one method end to end and return its result with the stored files.

    Args:
        method: a ToolMethod block name, ``inventoryKey/name``, a definition
            file path, or a definition object.
        params: the request params (JSON body; query string for GET).
        resume_task_id: wait for and collect a job already submitted: no submit.

    Returns:
        The ``ToolResult``; each file can be read back with ``read_bytes()``.

    Example:
        ```python
        result = await run_tool_method("heygen/create_avatar_video_v2", {"title": "hi"})
        print(result.files[0].uri)
        ```
    """
    definition = await load_method(method)
    prepared = await prepare_method(definition, params, submitting=resume_task_id is None)
    return await run_prepared(
        prepared, params or {}, resume_task_id=resume_task_id, lanes=lanes_for(definition)
    )


def execute_method(
    inventory_key: str,
    method_name: str,
    params: dict[str, Any] | None = None,
    resume_task_id: str | None = None,
) -> ToolResult:
    """Load the saved method ``inventory_key/method_name`` and run its flow (blocking)."""
    return run_coro_as_sync(
        run_tool_method(f"{inventory_key}/{method_name}", params, resume_task_id)
    )


async def run_prepared(
    prepared: PreparedMethod,
    params: dict[str, Any],
    *,
    resume_task_id: str | None = None,
    lanes: Lanes = SOLO,
) -> ToolResult:
    """Run a method whose config has been checked (nothing sent yet)."""
    async with session_for(prepared):
        return await run_job(
            prepared.definition, params, resume_task_id=resume_task_id, lanes=lanes
        )


async def run_job(
    definition: MethodDefinition,
    params: dict[str, Any],
    *,
    resume_task_id: str | None = None,
    job_key: str = "",
    lanes: Lanes = SOLO,
) -> ToolResult:
    """One job, inside an open provider session (a batch runs many in one session).

    ``job_key`` distinguishes jobs of one flow run that share their params;
    ``lanes`` say what the job shares with the other jobs of the run.
    """
    with job_journal(definition, artifacts=lanes.job_artifacts) as journal:
        async with lanes.slot(definition, job_key):
            if resume_task_id:
                job = resumed_job(definition, resume_task_id, params)
            else:
                callback = await lanes.callback(definition, job_key)
                async with lanes.submit_gate:
                    job = await submit_job(definition, params, job_key, callback)
            journal.task_id = job.task_id
            try:
                answer, last_payload = await _wait_for(definition, job, params, lanes)
            except ToolflowsError as error:
                error.with_task_id(job.task_id)
                if (
                    error.code is ErrorCode.POLLING_TIMEOUT
                    and definition.adapter_config.polling.cancel_on_timeout
                ):
                    await cancel_job(definition, job, params)
                await publish_failure(error, journal)
                raise
            except asyncio.CancelledError:
                # The flow run timed out or was cancelled: nobody will collect the job.
                with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE_SECONDS):
                    await cancel_job(definition, job, params)
                raise
        # The provider's job is over: its slot is free while the files download.
        try:
            async with lanes.download_gate:
                result = await _store_outputs(definition, job, answer, last_payload)
        except ToolflowsError as error:
            await publish_failure(error.with_task_id(job.task_id), journal)
            raise
        await publish_success(result, journal)
        return result


async def _wait_for(
    definition: MethodDefinition,
    job: SubmittedJob,
    params: dict[str, Any],
    lanes: Lanes,
) -> tuple[Answer, Any]:
    """Wait for the job to succeed; return the final answer and the last JSON payload."""
    polling = definition.adapter_config.polling
    # http_status 0: the outputs-without-status rule is for status answers only;
    # a submit answer with outputs and no job id is handled below.
    answer = Answer(payload=job.payload, url=job.payload_url, http_status=0, files=tuple(job.files))
    status = status_of(answer, polling)
    if status.state is JobState.PENDING:
        if job.status_url is None:
            if job.task_id is not None or not find_outputs(answer.payload, polling.output_path):
                raise _cannot_poll(definition, job)
            # A synchronous API: the submit answer already holds the outputs.
        else:
            status, answer = await lanes.wait(definition, job)
    raise_if_unsuccessful(status, job.task_id)
    last_payload = answer.payload
    return await _result_answer(definition, job, answer, params), last_payload


async def _store_outputs(
    definition: MethodDefinition, job: SubmittedJob, answer: Answer, last_payload: Any
) -> ToolResult:
    """Download the outputs found in the final answer into result storage."""
    polling = definition.adapter_config.polling
    data = answer.payload if answer.payload is not None else last_payload
    files = list(answer.files)
    warnings = []
    outputs = [] if answer.files else find_outputs(data, polling.output_path, polling.download_all)
    if outputs and polling.download is not False:
        outputs = [
            replace(output, url=resolve_link(answer.url, output.url))
            if output.url.startswith("/")
            else output
            for output in outputs
        ]
        # A submit answer is never asked again (that would submit again).
        refresh_url = answer.url if answer.http_status else None
        stored, warnings = await download_outputs(
            outputs, definition, job, refresh_url, refresh_url_configured=answer.url_configured
        )
        files += stored
    primary = files[0] if files else None
    return ToolResult(
        task_id=job.task_id,
        method=definition.qualified_name,
        data=data,
        files=files,
        filename=primary.filename if primary else None,
        mimetype=primary.mimetype if primary else None,
        warnings=warnings,
    )


async def _result_answer(
    definition: MethodDefinition, job: SubmittedJob, answer: Answer, params: dict[str, Any]
) -> Answer:
    """The result request of SPEC §4.4, when one is due; else the status answer."""
    polling = definition.adapter_config.polling
    if answer.files:
        return answer
    if polling.result_url:
        rendered = render_template(
            polling.result_url, task_id=job.task_id, payload=answer.payload, params=params
        )
        url = resolve_link(definition.endpoint, rendered)
    else:
        link = find_result_link(answer.payload)
        if link is None or find_outputs(answer.payload, polling.output_path):
            return answer
        url = resolve_link(answer.url, link.value)
    get_run_logger().info("Fetching result of task %s", job.task_id)
    # Only the definition's resultUrl has its ${VAR} filled; a response_url is sent as sent.
    configured = polling.result_url is not None
    return await retry_until_the_wait_ends(fetch_result, definition, job, url, configured)


def _cannot_poll(definition: MethodDefinition, job: SubmittedJob) -> ToolflowsError:
    keys = ", ".join(map(str, job.payload)) if isinstance(job.payload, dict) else "none"
    if job.task_id is None:
        path = definition.adapter_config.polling.task_id_path
        where = f"at {path!r}" if path else "in the submit response"
        return ToolflowsError(
            ErrorCode.TASK_ID_NOT_FOUND,
            f"no job id or status link {where} (top-level keys: {keys})",
        )
    return ToolflowsError(
        ErrorCode.CONFIG_INVALID,
        f"job {job.task_id} was submitted but there is no way to check it: set "
        "adapterConfig.polling.statusUrl (the submit answer has no status link), then "
        f"resume it with --resume {job.task_id}",
        task_id=job.task_id,
    )
