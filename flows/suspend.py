"""Waiting without a process: a deployment run suspends while the toolflows waiter watches its job.

The run submits (persisted, as always), writes a wait record into its flow
run's labels (what the waiter needs to check the job: the definition with its
``${VAR}`` placeholders, never a value), tags itself ``toolflows-waiting`` and
proposes Prefect's ``Suspended`` state, so its process exits and the worker
slot is free. The waiter (``toolflows.waiter``) resumes it when the job ends;
the run re-enters the flow from the top, reads its submit back from the
persisted result, and one status check confirms the end.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient, get_client
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, Pause
from prefect.logging import get_run_logger
from prefect.states import Suspended
from prefect.utilities.engine import propose_state
from prefect.variables import Variable
from pydantic import PrivateAttr

from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import JobState, JobStatus
from toolflows.core.errors import ToolflowsError
from toolflows.core.redact import display_text
from toolflows.core.webhooks import callback_url, job_token
from toolflows.models import CamelModel, SubmittedJob
from toolflows.poll import Answer, check_status, retry_until_the_wait_ends

# The tag of a run whose job a waiter must watch (or clean up after): set just
# before the run suspends, removed when the job has ended.
WAITING_TAG = "toolflows-waiting"
WAIT_LABEL = "toolflows.wait"
# The method of a run that gave the provider a callback URL, labelled before the
# submit: a callback may come before the run suspends, and must be verified.
METHOD_LABEL = "toolflows.method"
SUSPEND_KEY_PREFIX = "toolflows-wait-"
# The global concurrency limit whose one slot the active waiter holds (its claim).
WAITER_LIMIT = "toolflows-waiter"
# What the waiter publishes for the runs' callback URLs.
WEBHOOK_URL_VARIABLE = "toolflows_webhook_url"
WEBHOOK_KEY_SECRET = "toolflows-webhook-key"
WEBHOOK_KEY_ENV = "TOOLFLOWS_WEBHOOK_KEY"
# A suspended run outlives its job's deadline by this much: the waiter resumes
# it at the deadline (it then times out and cancels the job); without any
# waiter, Prefect fails it when the suspension expires.
SUSPEND_GRACE_SECONDS = 600
# A submit answer larger than this stays out of the record (labels are not a blob
# store); only a cancelUrl with {payload.…} placeholders needs it.
RECORD_PAYLOAD_BYTES = 8 * 1024


class WaitRecord(CamelModel):
    """What the waiter needs to watch a suspended run's job. Never holds a secret."""

    definition: dict[str, Any]
    job: SubmittedJob
    job_key: str = ""
    lease_id: str | None = None
    callbacks: bool = False
    _method: MethodDefinition | None = PrivateAttr(default=None)

    @property
    def deadline(self) -> float:
        return self.job.submitted_at + self.method().adapter_config.polling.max_wait_seconds

    def method(self) -> MethodDefinition:
        """The recorded definition, parsed once: the waiter asks on every check."""
        if self._method is None:
            self._method = MethodDefinition.model_validate(self.definition)
        return self._method


def current_flow_run_id() -> UUID | None:
    context = FlowRunContext.get()
    return context.flow_run.id if context and context.flow_run else None


def from_deployment() -> bool:
    """Only a deployment run can suspend: a worker starts it again when it is resumed."""
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def times_suspended() -> int:
    """How often this run has suspended for its job (its pause keys say, even after a restart)."""
    context = FlowRunContext.get()
    if not context or not context.flow_run:
        return 0
    keys = context.flow_run.empirical_policy.pause_keys or set()
    return sum(1 for key in keys if key.startswith(SUSPEND_KEY_PREFIX))


async def waiter_alive(client: PrefectClient) -> bool:
    """A waiter holds the waiter limit's slot (a killed one's lease runs out within a minute)."""
    try:
        limit = await client.read_global_concurrency_limit_by_name(WAITER_LIMIT)
    except ObjectNotFound:
        return False
    return limit.active_slots > 0


async def callback_for(definition: MethodDefinition, job_key: str = "") -> str | None:
    """The job's callback URL, when the method takes one and a waiter listens for it."""
    if definition.adapter_config.webhook is None:
        return None
    flow_run_id = current_flow_run_id()
    if flow_run_id is None:
        return None
    async with get_client() as client:
        public_url = await published_public_url(client)
        key = await webhook_key(client, create=False) if public_url else None
        if not public_url or key is None:
            get_run_logger().info(
                "No waiter listens for callbacks (toolflows waiter --listen --public-url): "
                "the job is checked by polling only"
            )
            return None
        await client.update_flow_run_labels(
            flow_run_id, {METHOD_LABEL: json.dumps(_recorded(definition))}
        )
    return callback_url(public_url, str(flow_run_id), job_token(key, str(flow_run_id), job_key))


async def webhook_key(client: PrefectClient, *, create: bool) -> bytes | None:
    """The key of the runs' callback tokens: ``TOOLFLOWS_WEBHOOK_KEY``, else a Secret block.

    The waiter creates the block on first use (two at once: one wins, both read
    it back); a run only reads it.
    """
    if os.environ.get(WEBHOOK_KEY_ENV):
        return os.environ[WEBHOOK_KEY_ENV].encode()
    try:
        return str((await Secret.aload(WEBHOOK_KEY_SECRET, client=client)).get()).encode()
    except ValueError:
        if not create:
            return None
    with suppress(ValueError, ObjectAlreadyExists):
        await Secret(value=secrets.token_urlsafe(32)).asave(WEBHOOK_KEY_SECRET, client=client)
    return str((await Secret.aload(WEBHOOK_KEY_SECRET, client=client)).get()).encode()


async def published_public_url(client: PrefectClient) -> str | None:
    variable = await client.read_variable_by_name(WEBHOOK_URL_VARIABLE)
    return str(variable.value) if variable and variable.value else None


async def publish_public_url(public_url: str) -> None:
    await Variable.aset(WEBHOOK_URL_VARIABLE, public_url, overwrite=True)


def recorded_method(labels: dict[str, Any]) -> MethodDefinition | None:
    """The method a run labelled (``METHOD_LABEL``), if it did."""
    try:
        return MethodDefinition.model_validate_json(str(labels[METHOD_LABEL]))
    except (KeyError, ValueError):
        return None


def _recorded(definition: MethodDefinition) -> dict[str, Any]:
    """The definition as labels keep it: ``${VAR}`` as written, without its schemas."""
    return definition.model_dump(mode="json", exclude={"request_schema", "response_schema"})


async def wait_or_suspend(
    definition: MethodDefinition, job: SubmittedJob, *, lease_id: str | None, callbacks: bool
) -> tuple[JobStatus, Answer]:
    """Wait for the job, suspending the run while it is pending (``wait`` of the method).

    A resumed run checks once: ended, it goes on; still pending (resumed by
    hand, or early), it suspends again under a new key; past the deadline,
    the check raises the timeout.
    """
    polling = definition.adapter_config.polling
    suspended = times_suspended()
    if suspended:
        try:
            status, answer = await retry_until_the_wait_ends(
                check_status, definition, job, checks_made=1, hand_off_at=time.time()
            )
        except ToolflowsError:
            await end_wait()
            raise
        if status.state is not JobState.PENDING:
            await end_wait()
    elif polling.wait == "auto":
        hand_off_at = job.submitted_at + polling.suspend_after_seconds
        status, answer = await retry_until_the_wait_ends(
            check_status, definition, job, hand_off_at=hand_off_at
        )
    else:
        status = JobStatus(JobState.PENDING, value=None, path=None, reason=None)
        answer = Answer(payload=job.payload, url=job.payload_url, http_status=0)
    if status.state is not JobState.PENDING:
        return status, answer
    logger = get_run_logger()
    refused = False
    try:
        async with get_client() as client:
            if polling.wait == "auto" and not suspended and not await waiter_alive(client):
                logger.info("No toolflows waiter is running: the run waits inline")
            else:
                record = WaitRecord(
                    definition=_recorded(definition),
                    job=_slim(job),
                    lease_id=lease_id,
                    callbacks=callbacks,
                )
                await _suspend(client, record, status, key=f"{SUSPEND_KEY_PREFIX}{suspended + 1}")
    except httpx.HTTPError as exc:
        # The job is paid for: a Prefect API that cannot take the suspension must not fail it.
        logger.warning("The run could not suspend (%s): it waits inline", exc)
        refused = True
    try:
        return await retry_until_the_wait_ends(check_status, definition, job, checks_made=1)
    finally:
        if refused:
            await end_wait()  # the tag, if it was written before the refusal


async def end_wait() -> None:
    """The run's job has ended, or it waits inline: no waiter needs to watch this run.

    Best effort: a tag left behind is removed by the waiter once the run is over.
    """
    flow_run_id = current_flow_run_id()
    assert flow_run_id is not None
    try:
        async with get_client() as client:
            await untag(client, flow_run_id)
    except httpx.HTTPError as exc:
        get_run_logger().warning("Could not untag the run (%s); the waiter will", exc)


async def untag(client: PrefectClient, flow_run_id: UUID) -> None:
    flow_run = await client.read_flow_run(flow_run_id)
    if WAITING_TAG in flow_run.tags:
        tags = [tag for tag in flow_run.tags if tag != WAITING_TAG]
        await client.update_flow_run(flow_run_id, tags=tags)


async def _suspend(
    client: PrefectClient, record: WaitRecord, status: JobStatus, *, key: str
) -> None:
    """Record the wait, then suspend: the run's process exits (Prefect's ``Pause``)."""
    flow_run_id = current_flow_run_id()
    assert flow_run_id is not None
    logger = get_run_logger()
    if not await waiter_alive(client):  # (an API error here waits inline: see the caller)
        logger.warning(
            "No toolflows waiter is running: this run stays suspended until one is started "
            "(`toolflows waiter`)"
        )
    flow_run = await client.read_flow_run(flow_run_id)
    await client.update_flow_run_labels(flow_run_id, {WAIT_LABEL: record.model_dump_json()})
    if WAITING_TAG not in flow_run.tags:
        await client.update_flow_run(flow_run_id, tags=[*flow_run.tags, WAITING_TAG])
    deadline = record.deadline
    message = _suspended_message(record, status, deadline)
    timeout = max(1, int(deadline - time.time()) + SUSPEND_GRACE_SECONDS)
    state = await propose_state(
        client,
        Suspended(timeout_seconds=timeout, pause_key=key, message=message),
        flow_run_id=flow_run_id,
    )
    if not state.is_paused():
        raise RuntimeError(f"the run could not suspend: the API answered {state.type.value}")
    logger.info("%s", message)
    _mark_suspension_requested(flow_run_id, state)
    raise Pause(state=state)


def _mark_suspension_requested(flow_run_id: UUID, state: Any) -> None:
    """What ``suspend_flow_run`` does after the state change, so tasks see it too."""
    try:
        from prefect._flow_run_suspension import mark_flow_run_suspension_requested
    except ImportError:  # the Pause raised next is all older Prefect needs
        return
    mark_flow_run_suspension_requested(flow_run_id, state)


def _suspended_message(record: WaitRecord, status: JobStatus, deadline: float) -> str:
    method = record.method()
    task_id = display_text(record.job.task_id or "without id")
    at = datetime.fromtimestamp(deadline, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    how = "a callback or the waiter's status checks" if record.callbacks else "status checks"
    shown_status = display_text(status.value or "submitted")
    return (
        f"Waiting for {method.qualified_name} job {task_id} (status: {shown_status}); "
        f"the toolflows waiter resumes this run when it ends ({how}), at the latest at {at}"
    )


def _slim(job: SubmittedJob) -> SubmittedJob:
    """The job without a large submit answer (see ``RECORD_PAYLOAD_BYTES``)."""
    if len(json.dumps(job.payload, default=str)) <= RECORD_PAYLOAD_BYTES:
        return job
    return job.model_copy(update={"payload": None})
