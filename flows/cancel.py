"""Cancelling the remote job: nobody will collect it, so stop paying for it.

Two ways in: from inside the run (deadline reached, flow timeout) and from the
``on_cancellation`` hook, which Prefect runs in the runner or worker process
after the run's own process is gone. The hook can only see what the run
persisted: its parameters and the submit task's result.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger
from prefect.states import State

from flows.core.definition import MethodDefinition
from flows.core.templates import render_template, resolve_link
from flows.http import current_session
from flows.methods import load_method, prepare_method, session_for
from flows.models import SubmittedJob
from flows.submit import resumed_job, submit_job


def cancel_url_of(
    definition: MethodDefinition, job: SubmittedJob, params: dict[str, Any]
) -> str | None:
    """``cancelUrl`` rendered for the job, else the link the submit answer gave."""
    template = definition.adapter_config.polling.cancel_url
    if template and job.task_id is not None:
        rendered = render_template(
            template, task_id=job.task_id, payload=job.payload, params=params
        )
        return resolve_link(definition.endpoint, rendered)
    return job.cancel_url


async def cancel_job(
    definition: MethodDefinition, job: SubmittedJob, params: dict[str, Any]
) -> bool:
    """Best effort: ask the provider to cancel; never raises (the run is ending anyway)."""
    logger = _logger()
    session = current_session()
    try:
        url = cancel_url_of(definition, job, params)
        if url is None:
            logger.warning(
                "Task %s: no cancel URL known; the remote job is left running", job.task_id
            )
            return False
        method = definition.adapter_config.polling.cancel_method
        response = await session.request(method, url)
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


async def persisted_submit(flow_run_id: UUID) -> SubmittedJob | None:
    """The submit task's persisted result for a flow run, if it completed."""
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    for task_run in task_runs:
        if (
            task_run.task_key == submit_job.task_key
            and task_run.state
            and (task_run.state.is_completed())
        ):
            job = await task_run.state.aresult()
            return job if isinstance(job, SubmittedJob) else None
    return None


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("toolflows")
