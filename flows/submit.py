"""Submit step: send the paid request exactly once and remember the job.

The result is persisted (``persist_result=True``, cached per flow run), so a
retried flow run reads the job back instead of submitting again. Inside one
attempt the request is re-sent only when it provably never reached the server
(a connect error) or the server said to come back (429/503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from prefect import task
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger

from toolflows.caching import PerJob
from toolflows.core.backoff import parse_retry_after, retry_delay
from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import find_cancel_link, find_status_link, find_task_id
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import display_text
from toolflows.core.templates import render_template, resolve_link
from toolflows.core.webhooks import place_callback
from toolflows.http import (
    ERROR_BODY_BYTES,
    MAX_JSON_BYTES,
    current_session,
    http_error,
    is_file_response,
    parse_json,
    read_capped,
)
from toolflows.models import SubmittedJob
from toolflows.transfer import FileTarget, file_target, store_body
from toolflows.uploads import request_content

SUBMIT_ATTEMPTS = 4
MAX_SUBMIT_WAIT_SECONDS = 60.0


@dataclass
class PaidRequest(PerJob):
    """The submit's cache key: what identifies the paid request, and nothing else.

    With the flow run and the job's key: the endpoint, the HTTP method and the
    params. Not the rest of the definition (an edit of its polling settings
    between a crash and a rerun must not pay again), and never the headers:
    their resolved secrets stay out of the key's inputs (the endpoint keeps
    its ``${VAR}``).
    """

    prefix: str = "toolflows-submit"

    def identity(self, inputs: dict[str, Any]) -> dict[str, Any]:
        method = MethodDefinition.model_validate(inputs["method"])
        return {
            "endpoint": method.endpoint,
            "http_method": method.http_method,
            "params": inputs.get("params"),
        }


@task(
    name="Submit job",
    description="Send the method's request once; the job is persisted so it is never sent twice.",
    persist_result=True,
    cache_policy=PaidRequest(),
)
async def submit_job(
    method: MethodDefinition,
    params: dict[str, Any],
    job_key: str = "",
    callback_url: str | None = None,
) -> SubmittedJob:
    """Submit the job and find its id and links (SPEC §4.1, §4.2).

    Whatever the answer, a 2xx is persisted as it is: deciding what it means
    (finished, failed, no id) is the flow's job, so that no later error can
    make a retried run send the paid request again. ``job_key`` tells apart
    jobs of one flow run with the same params (a batch asking for 5 takes):
    the cache that remembers a submit is keyed by the paid request (``PaidRequest``).
    ``callback_url`` goes where ``adapterConfig.webhook`` says; it is not part of
    that key (it is the same for the same job anyway).
    """
    session = current_session()
    logger = get_run_logger()
    polling = method.adapter_config.polling
    submitted_at = time.time()
    async with _submit_response(method, params, job_key, callback_url) as response:
        if response.status_code >= 400:
            await read_capped(response, ERROR_BODY_BYTES)
            raise http_error(response, what="submit", redact=session.redact)
        if is_file_response(response):
            # A synchronous API answered with the file itself.
            target = await _target_for(method, job_id=None, submitted_at=submitted_at)
            stored = await store_body(response, target, index=0)
            return SubmittedJob(
                task_id=None,
                submitted_at=submitted_at,
                payload_url=session.url_of(response),
                files=[stored],
            )
        await read_capped(response, MAX_JSON_BYTES)
        payload = parse_json(response, what="submit response")
        payload_url = session.url_of(response)

    found = find_task_id(payload, polling.task_id_path)
    task_id = found.value if found else None
    if found:
        logger.info("Task ID detected: %s = %s", found.path, display_text(found.value))
    status_url = _status_url(method, payload, payload_url, task_id, params)
    cancel = find_cancel_link(payload)
    return SubmittedJob(
        task_id=task_id,
        submitted_at=submitted_at,
        payload=payload,
        payload_url=payload_url,
        status_url=status_url,
        status_url_configured=polling.status_url is not None,
        cancel_url=resolve_link(payload_url, cancel.value) if cancel else None,
        method=method.qualified_name,
        params=params,
    )


def _status_url(
    method: MethodDefinition,
    payload: Any,
    payload_url: str,
    task_id: str | None,
    params: dict[str, Any],
) -> str | None:
    template = method.adapter_config.polling.status_url
    if template:
        if task_id is None and "{id}" in template:
            return None
        rendered = render_template(template, task_id=task_id, payload=payload, params=params)
        return resolve_link(method.endpoint, rendered)
    link = find_status_link(payload)
    return resolve_link(payload_url, link.value) if link else None


async def _target_for(
    method: MethodDefinition, *, job_id: str | None, submitted_at: float
) -> FileTarget:
    """Files of a job with no id are keyed by the flow run, which is unique too."""
    context = FlowRunContext.get()
    key = job_id or (str(context.flow_run.id) if context and context.flow_run else "sync")
    deadline = submitted_at + method.adapter_config.polling.max_wait_seconds
    return await file_target(method=method, task_id=key, deadline=deadline)


@asynccontextmanager
async def _submit_response(
    method: MethodDefinition, params: dict[str, Any], job_key: str, callback_url: str | None
) -> AsyncIterator[httpx.Response]:
    """Open the submit response, re-sending only when the request never arrived."""
    session = current_session()
    idempotency = _idempotency_header(method, job_key)
    endpoint = method.endpoint
    if callback_url is not None:
        assert method.adapter_config.webhook is not None
        params, endpoint = place_callback(
            method.adapter_config.webhook, endpoint, params, callback_url
        )
    async with request_content(method, params) as content:
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            async with AsyncExitStack() as stack:
                try:
                    response = await stack.enter_async_context(
                        session.stream(
                            method.http_method,
                            endpoint,
                            configured=True,
                            headers=idempotency,
                            **content(),
                        )
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                    # The request never reached the server: sending it again is safe.
                    if attempt == SUBMIT_ATTEMPTS:
                        raise ToolflowsError(
                            ErrorCode.HTTP_ERROR,
                            f"submit failed: cannot connect to {session.redact(method.endpoint)}",
                        ) from exc
                    delay = retry_delay(attempt)
                except httpx.TransportError as exc:
                    raise _failed_after_sending(exc) from exc
                else:
                    retry_after = parse_retry_after(response.headers)
                    refused = response.status_code in (429, 503) and retry_after is not None
                    if not refused or attempt == SUBMIT_ATTEMPTS:
                        try:
                            yield response
                        except httpx.TransportError as exc:
                            # Reading the answer broke (or outlasted the timeout).
                            raise _failed_after_sending(exc) from exc
                        return
                    # The server said it did not take the job, and when to come back.
                    delay = min(retry_after or 0.0, MAX_SUBMIT_WAIT_SECONDS)
                    get_run_logger().info(
                        "Submit answered HTTP %d; sending again in %.1f s",
                        response.status_code,
                        delay,
                    )
            await asyncio.sleep(delay)


def _failed_after_sending(error: httpx.TransportError) -> ToolflowsError:
    return ToolflowsError(
        ErrorCode.HTTP_ERROR,
        f"submit failed after the request was sent ({type(error).__name__}); it is not"
        " sent again because the provider may have accepted it: check the provider"
        " before running the method again",
    )


def _idempotency_header(method: MethodDefinition, job_key: str) -> dict[str, str] | None:
    """A key per job of the flow run: the provider drops a duplicate of this submit.

    The same job sends the same key on every re-send and flow retry; two jobs of
    one run (a batch, a pipeline) never share one, or the provider would answer
    the first job for all of them. A job key that is not plain header text is hashed.
    """
    header = method.adapter_config.idempotency_header
    context = FlowRunContext.get()
    if not header or context is None or context.flow_run is None:
        return None
    key = f"toolflows-{context.flow_run.id}"
    if job_key:
        safe = re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", job_key)
        key += "-" + (job_key if safe else hashlib.sha256(job_key.encode()).hexdigest()[:32])
    return {header: key}


def resumed_job(definition: MethodDefinition, task_id: str, params: dict[str, Any]) -> SubmittedJob:
    """A job submitted earlier: poll it from now on, with a fresh deadline."""
    polling = definition.adapter_config.polling
    if not polling.status_url:
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID,
            "--resume needs adapterConfig.polling.statusUrl (the submit answer is not at hand)",
            task_id=task_id,
        )
    status_url = render_template(polling.status_url, task_id=task_id, params=params)
    # Its cancelUrl, if any, is rendered when cancelling (``toolflows.cancel``).
    return SubmittedJob(
        task_id=task_id,
        submitted_at=time.time(),
        payload_url=definition.endpoint,
        status_url=resolve_link(definition.endpoint, status_url),
        status_url_configured=True,
    )
