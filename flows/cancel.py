"""Cancelling the remote job: nobody will collect it, so stop paying for it.

Two ways in: from inside the run (deadline reached, flow timeout) and from the
``on_cancellation`` hook, which Prefect runs in the runner or worker process
after the run's own process is gone. The hook can only see what the run
persisted: its parameters and the submit task's result.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger
from prefect.states import State

from toolflows.core.definition import MethodDefinition
from toolflows.core.templates import render_template, resolve_link
from toolflows.http import current_session
from toolflows.methods import load_method, prepare_method, session_for
from toolflows.models import SubmittedJob
from toolflows.submit import resumed_job, submit_job

CancellationHook = Callable[[Flow[..., Any], FlowRun, State[Any]], Awaitable[None]]
# Task runs read per API request, and cancel requests in flight, when a hook
# cancels the jobs of a whole batch.
TASK_RUNS_PAGE = 200
CANCELS_IN_FLIGHT = 16


def cancel_url_of(
    definition: MethodDefinition, job: SubmittedJob, params: dict[str, Any]
) -> tuple[str, bool] | None:
    """``cancelUrl`` rendered for the job, else the link the submit answer gave.

    With whether it is the definition's template (its ``${VAR}`` are filled
    when sent) rather than the provider's link (sent as it is).
    """
    template = definition.adapter_config.polling.cancel_url
    if template and job.task_id is not None:
        rendered = render_template(
            template, task_id=job.task_id, payload=job.payload, params=params
        )
        return resolve_link(definition.endpoint, rendered), True
    return (job.cancel_url, False) if job.cancel_url else None


async def cancel_job(
    definition: MethodDefinition, job: SubmittedJob, params: dict[str, Any]
) -> bool:
    """Best effort: ask the provider to cancel; never raises (the run is ending anyway)."""
    logger = _logger()
    session = current_session()
    try:
        cancel = cancel_url_of(definition, job, params)
        if cancel is None:
            logger.warning(
                "Task %s: no cancel URL known; the remote job is left running", job.task_id
            )
            return False
        url, configured = cancel
        method = definition.adapter_config.polling.cancel_method
        response = await session.request(method, url, configured=configured)
    except Exception as exc:
        logger.warning("Cancelling task %s failed: %s", job.task_id, session.redact(str(exc)))
        return False
    logger.info("Cancel of task %s answered HTTP %d", job.task_id, response.status_code)
    return response.is_success


async def cancel_remote_job(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """``on_cancellation`` hook: cancel the provider's job of a cancelled flow run."""
    logger = _logger()
    parameters = flow_run.parameters
    params = parameters.get("params") or {}
    try:
        definition = await load_method(parameters["method"])
        if parameters.get("resume_task_id"):
            job = resumed_job(definition, parameters["resume_task_id"], params)
        else:
            job = await persisted_submit(flow_run.id)
        if job is None or (job.task_id is None and job.cancel_url is None):
            logger.info("Flow run %s: no submitted job to cancel", flow_run.id)
            return
        prepared = await prepare_method(definition, params, submitting=False)
        async with session_for(prepared):
            await cancel_job(definition, job, params)
    except Exception as exc:
        logger.warning("Flow run %s: could not cancel the remote job: %s", flow_run.id, exc)


def cancel_remote_jobs(*method_parameters: str) -> CancellationHook:
    """``on_cancellation`` hook of a flow running many jobs (a batch, a pipeline).

    ``method_parameters`` name the flow's parameters that hold its methods. Every
    job the run submitted is cancelled at its provider, with its own method's
    credentials: the hook finds the jobs through the API (the submit tasks'
    persisted results), since the run's process, which knew them, is gone.
    """

    async def cancel_every_job(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
        logger = _logger()
        try:
            signature = inspect.signature(flow.fn).parameters
            references = [
                flow_run.parameters.get(name, signature[name].default) for name in method_parameters
            ]
            loaded = [await load_method(reference) for reference in references if reference]
            definitions = {definition.qualified_name: definition for definition in loaded}
            jobs = await persisted_submits(flow_run.id)
        except Exception as exc:
            logger.warning("Flow run %s: could not find its remote jobs: %s", flow_run.id, exc)
            return
        for definition in definitions.values():
            own = [job for job in jobs if job.method == definition.qualified_name]
            if own:
                logger.info(
                    "Flow run %s: cancelling %d %s jobs",
                    flow_run.id,
                    len(own),
                    definition.qualified_name,
                )
                await _cancel_all(definition, own)

    return cancel_every_job


async def _cancel_all(definition: MethodDefinition, jobs: list[SubmittedJob]) -> None:
    """Cancel one method's jobs through one session, a few at a time."""
    lanes = asyncio.Semaphore(CANCELS_IN_FLIGHT)

    async def cancel(job: SubmittedJob) -> None:
        async with lanes:
            await cancel_job(definition, job, job.params or {})

    try:
        prepared = await prepare_method(definition, None, submitting=False)
        async with session_for(prepared):
            await asyncio.gather(*(cancel(job) for job in jobs))
    except Exception as exc:
        _logger().warning("Cancelling %s jobs failed: %s", definition.qualified_name, exc)


async def persisted_submit(flow_run_id: UUID) -> SubmittedJob | None:
    """The submit task's persisted result for a flow run, if it completed."""
    jobs = await persisted_submits(flow_run_id)
    return jobs[0] if jobs else None


async def persisted_submits(flow_run_id: UUID) -> list[SubmittedJob]:
    """Every completed submit of a flow run that left a job to cancel (read from storage)."""
    jobs = []
    offset = 0
    async with get_client() as client:
        while True:
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=TASK_RUNS_PAGE,
                offset=offset,
            )
            offset += TASK_RUNS_PAGE
            for task_run in task_runs:
                if (
                    task_run.task_key == submit_job.task_key
                    and task_run.state
                    and task_run.state.is_completed()
                ):
                    job = await task_run.state.aresult()
                    if isinstance(job, SubmittedJob) and (job.task_id or job.cancel_url):
                        jobs.append(job)
            if len(task_runs) < TASK_RUNS_PAGE:
                return jobs


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("toolflows")
