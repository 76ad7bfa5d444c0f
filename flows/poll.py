"""Poll step: check the job's status through Prefect task retries.

One status check is one task attempt. A check that finds the job still running
(or meets a rate limit, a 5xx or a broken connection) raises ``CheckAgain``
carrying the next delay of our backoff schedule; the retry condition
``pace_next_check`` hands that delay to Prefect, which shows the task as
AwaitingRetry until then. Anything else (4xx, a failed job) fails fast. The
jobs of a batch share their checks' task attempts instead (``flows.rounds``);
what a check does and means is ``check_once`` either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.states import State

from flows.console import show_status
from flows.core.backoff import PollSchedule, parse_retry_after
from flows.core.definition import MethodDefinition, PollingConfig
from flows.core.detection import (
    JobState,
    JobStatus,
    detect_status,
    find_outputs,
    find_progress,
)
from flows.core.errors import ErrorCode, ToolflowsError
from flows.download import file_target, store_body
from flows.http import (
    current_session,
    http_error,
    is_file_response,
    is_transient_status,
    parse_json,
    read_capped,
)
from flows.models import StoredFile, SubmittedJob
from flows.reporting import JobJournal, current_journal, report_status

ERROR_BODY_BYTES = 64 * 1024
JSON_BODY_BYTES = 16 * 1024 * 1024


class CheckAgain(Exception):
    """Not finished yet (or a transient error): check again after ``delay`` seconds."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(f"{reason}; next check in {delay:.1f} s")
        self.delay = delay


@dataclass(frozen=True)
class Answer:
    """What a status or result request returned: JSON, or a file stored in its place."""

    payload: Any
    url: str
    http_status: int = 200
    files: tuple[StoredFile, ...] = ()


async def pace_next_check(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only ``CheckAgain``, after the delay it carries.

    Each run polls with its own ``with_options`` copy of the task, so setting
    the delay on it cannot leak into another job's schedule.
    """
    error = state.data
    if not isinstance(error, CheckAgain):
        return False
    task.retry_delay_seconds = error.delay
    return True


def schedule_of(polling: PollingConfig) -> PollSchedule:
    return PollSchedule(
        interval_seconds=polling.interval_seconds,
        backoff_factor=polling.backoff_factor,
        max_interval_seconds=polling.max_interval_seconds,
        jitter=polling.jitter,
        max_wait_seconds=polling.max_wait_seconds,
    )


def paced(step: Task[..., Any], polling: PollingConfig) -> Task[..., Any]:
    """This run's copy of a polling task, with attempts enough to reach the deadline."""
    planned = schedule_of(polling).planned_polls()
    # Jitter and transient errors add attempts; the deadline is the real limit.
    attempts = int(planned * (1 + polling.jitter)) * 2 + 20
    return step.with_options(retries=attempts, retry_condition_fn=pace_next_check)


@dataclass(frozen=True)
class Pace:
    """Where one attempt stands against the schedule and the deadline."""

    schedule: PollSchedule
    deadline: float
    attempt: int
    task_id: str | None

    def check_again(
        self, reason: str, *, retry_after: float | None = None, last_status: str | None = None
    ) -> NoReturn:
        remaining = self.deadline - time.time()
        if remaining <= 0:
            last = last_status or "unknown"
            raise ToolflowsError(
                ErrorCode.POLLING_TIMEOUT,
                f"job {self.task_id} not finished within {self.schedule.max_wait_seconds:g} s "
                f"(last status: {last})",
                task_id=self.task_id,
                last_status=last,
            )
        delay = self.schedule.next_delay(
            self.attempt + 1, remaining_seconds=remaining, retry_after=retry_after
        )
        show_status(self.task_id, last_status or reason, next_check_in=delay)
        raise CheckAgain(reason, delay)


def pace_of(method: MethodDefinition, job: SubmittedJob, attempt: int) -> Pace:
    """Check number ``attempt`` of ``job`` against its method's schedule."""
    polling = method.adapter_config.polling
    return Pace(
        schedule=schedule_of(polling),
        deadline=job.submitted_at + polling.max_wait_seconds,
        attempt=attempt,
        task_id=job.task_id,
    )


def _pace(method: MethodDefinition, job: SubmittedJob) -> Pace:
    """The pace of this task attempt: its run count is the check's number."""
    context = TaskRunContext.get()
    return pace_of(method, job, context.task_run.run_count if context else 1)


@task(
    name="Check job status",
    # Each check is new; a cache key per attempt would only cost hashing the inputs.
    cache_policy=NO_CACHE,
    description="One status request; retried on the backoff schedule until the job ends.",
)
async def check_status(method: MethodDefinition, job: SubmittedJob) -> tuple[JobStatus, Answer]:
    """Check the job once: return its success, raise its failure, ``CheckAgain`` while pending."""
    pace = _pace(method, job)
    if pace.attempt == 1:
        # The first check, like every later one, waits its delay after the submit.
        first_check_at = job.submitted_at + pace.schedule.base_delay(1)
        await asyncio.sleep(max(0.0, min(first_check_at, pace.deadline) - time.time()))
    return await check_once(method, job, pace, current_journal())


async def check_once(
    method: MethodDefinition,
    job: SubmittedJob,
    pace: Pace,
    journal: JobJournal | None,
    *,
    in_batch: bool = False,
) -> tuple[JobStatus, Answer]:
    """One status request and what it means; ``CheckAgain`` while the job is pending.

    A job checked alone logs every check (``Polling n/N``, ``Task … status``).
    A batch's jobs log the status only when it changes, and the request at
    DEBUG: a thousand jobs' checks would drown the run's log (and its server).
    """
    session = current_session()
    logger = get_run_logger()
    status_url = job.status_url or ""
    logger.log(
        logging.DEBUG if in_batch else logging.INFO,
        "Polling %d/%d: %s",
        pace.attempt,
        pace.schedule.planned_polls(),
        session.redact(status_url),
    )
    answer = await fetch_answer(method, job, status_url, what="status check", pace=pace)
    status = status_of(answer, method.adapter_config.polling)
    label = status.value or status.state.value
    if not in_batch or journal is None or journal.last_status != label:
        logger.info("Task %s status: %s", job.task_id, label)
    await report_status(journal, status, find_progress(answer.payload))
    if status.state is JobState.PENDING:
        pace.check_again(f"status {status.value or 'pending'}", last_status=status.value)
    raise_if_unsuccessful(status, job.task_id)
    show_status(job.task_id, label)
    return status, answer


@task(
    name="Fetch job result",
    cache_policy=NO_CACHE,
    description="The result request after success (resultUrl, or FAL's response_url).",
)
async def fetch_result(method: MethodDefinition, job: SubmittedJob, url: str) -> Answer:
    """GET the result; transient errors are retried like status checks."""
    current_session()
    return await fetch_answer(method, job, url, what="result request", pace=_pace(method, job))


def status_of(answer: Answer, polling: PollingConfig) -> JobStatus:
    """The job's status in an answer.

    A file answered in place of JSON means the job is done (SPEC §4.3). So does
    a 200 JSON answer with no status field at all but with outputs in it (an
    API that answers 202 while running, then 200 with the result): without this
    rule such a job would be polled until its deadline.
    """
    if answer.files:
        return JobStatus(JobState.SUCCEEDED, value=None, path=None, reason=None)
    status = detect_status(
        answer.payload, polling.status_path, polling.success_values, polling.failure_values
    )
    if (
        status.path is None
        and polling.status_path is None
        and answer.http_status == 200
        and find_outputs(answer.payload, polling.output_path)
    ):
        return JobStatus(JobState.SUCCEEDED, value=None, path=None, reason=None)
    return status


def raise_if_unsuccessful(status: JobStatus, task_id: str | None) -> None:
    """TASK_FAILED with the provider's reason; CANCELLED when the provider cancelled it."""
    redact = current_session().redact
    if status.state is JobState.FAILED:
        raise ToolflowsError(
            ErrorCode.TASK_FAILED, redact(status.reason or "job failed"), task_id=task_id
        )
    if status.state is JobState.CANCELLED:
        raise ToolflowsError(
            ErrorCode.CANCELLED,
            redact(status.reason or f'job cancelled (status "{status.value}")'),
            task_id=task_id,
        )


async def fetch_answer(
    method: MethodDefinition, job: SubmittedJob, url: str, *, what: str, pace: Pace
) -> Answer:
    """GET a status/result URL: JSON, or a file body stored; transient trouble checks again."""
    session = current_session()
    try:
        async with session.stream("GET", url) as response:
            if is_transient_status(response.status_code):
                await read_capped(response, ERROR_BODY_BYTES)
                pace.check_again(
                    f"{what} answered HTTP {response.status_code}",
                    retry_after=parse_retry_after(response.headers),
                )
            if response.status_code >= 400:
                await read_capped(response, ERROR_BODY_BYTES)
                raise http_error(response, what=what, redact=session.redact, task_id=job.task_id)
            if response.status_code == 200 and is_file_response(response):
                target = await file_target(
                    method=method, task_id=job.task_id or "job", deadline=pace.deadline
                )
                stored = await store_body(response, target, index=0)
                return Answer(payload=None, url=session.url_of(response), files=(stored,))
            await read_capped(response, JSON_BODY_BYTES)
            payload = parse_json(response, what=f"{what} answer", task_id=job.task_id)
            return Answer(
                payload=payload, url=session.url_of(response), http_status=response.status_code
            )
    except httpx.TransportError as exc:
        pace.check_again(f"{what} failed ({type(exc).__name__})")
