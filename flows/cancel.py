"""Cancelling the remote job: nobody will collect it, so stop paying for it."""

from __future__ import annotations

from typing import Any

import httpx
from prefect.logging import get_run_logger

from flows.core.definition import MethodDefinition
from flows.core.templates import render_template, resolve_link
from flows.http import current_session
from flows.models import SubmittedJob


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
    """Best effort: ask the provider to cancel; never raises (the run is failing already)."""
    url = cancel_url_of(definition, job, params)
    logger = get_run_logger()
    if url is None:
        logger.info("Task %s: no cancel URL known; the remote job is left running", job.task_id)
        return False
    session = current_session()
    method = definition.adapter_config.polling.cancel_method
    try:
        response = await session.request(method, url)
    except (httpx.HTTPError, Exception) as exc:
        logger.warning("Cancelling task %s failed: %s", job.task_id, session.redact(str(exc)))
        return False
    logger.info("Cancel of task %s answered HTTP %d", job.task_id, response.status_code)
    return response.is_success
