"""Poll step: check the job's status through Prefect task retries.

One status check is one task attempt. A check that finds the job still running
(or meets a rate limit, a 5xx or a broken connection) raises ``CheckAgain``
carrying the next delay of our backoff schedule; the retry condition
``schedule_next_check`` hands that delay to Prefect, which shows the task as
AwaitingRetry until then. Anything else (4xx, a failed job) fails fast. The
jobs of a batch share their checks' task attempts instead (``toolflows.rounds``);
what a check does and means is ``check_once`` either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import httpx
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.states import State

from toolflows.console import show_status
from toolflows.core.backoff import PollSchedule, parse_retry_after
from toolflows.core.definition import MethodDefinition, PollingConfig
from toolflows.core.detection import (
    JobState,
    JobStatus,
    detect_status,
    find_outputs,
    find_progress,
)
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import display_text
from toolflows.http import (
    ERROR_BODY_BYTES,
    MAX_JSON_BYTES,
    current_session,
    http_error,
    is_file_response,
    is_transient_status,
    parse_json,
    read_capped,
)
from toolflows.models import StoredFile, SubmittedJob
from toolflows.reporting import JobJournal, current_journal, report_status
from toolflows.transfer import file_target, store_body

T = TypeVar("T")


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
    # ``url`` is the definition's own template (asked again, its ``${VAR}`` are filled).
    url_configured: bool = False


async def schedule_next_check(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only ``CheckAgain``, after the delay it carries.

    Each run polls with its own ``with_options`` copy of the task, so setting
    the delay on it cannot leak into another job's schedule.
    """
    error = state.data
    if not isinstance(error, CheckAgain):
        return False
    task.retry_delay_seconds = error.delay
    return True


async def retry_until_the_wait_ends(
    step: Task[..., T], method: MethodDefinition, job: SubmittedJob, *args: Any, **options: Any
) -> T:
    """Run a polling task (``check_status``, ``fetch_result``) until the job's wait ends.

    ``options`` go to the task (``checks_made``: checks made before, so the
    first one does not wait its delay; ``hand_off_at``). Its retries are
    sized for the schedule's planned checks, but only the
    deadline ends a wait: when jitter, transient errors or a schedule longer
    than is counted use them up first, the checks go on in a new task run,
    numbered on from the last one.
    """
    schedule = method.adapter_config.polling.schedule
    retries = int(schedule.planned_polls() * (1 + schedule.jitter)) * 2 + 20
    attempts = step.with_options(retries=retries, retry_condition_fn=schedule_next_check)
    checks_made = options.pop("checks_made", 0)
    while True:
        try:
            return await attempts(method, job, *args, checks_made=checks_made, **options)
        except CheckAgain as again:
            checks_made += retries + 1
            await asyncio.sleep(again.delay)


@dataclass(frozen=True)
class CheckAttempt:
    """One check of a job (status or result): its number, the schedule and the deadline."""

    schedule: PollSchedule
    deadline: float
    number: int
    task_id: str | None
    # A pending answer whose next check would come after this hands the wait
    # over (the run suspends) instead of checking again.
    hand_off_at: float | None = None

    @classmethod
    def of(
        cls,
        method: MethodDefinition,
        job: SubmittedJob,
        number: int,
        hand_off_at: float | None = None,
    ) -> CheckAttempt:
        """Check number ``number`` of ``job`` against its method's schedule."""
        polling = method.adapter_config.polling
        return cls(
            schedule=polling.schedule,
            deadline=job.submitted_at + polling.max_wait_seconds,
            number=number,
            task_id=job.task_id,
            hand_off_at=hand_off_at,
        )

    def hands_off(self) -> bool:
        """Whether the next check would come after the hand-over time (see ``hand_off_at``)."""
        if self.hand_off_at is None:
            return False
        next_base = self.schedule.base_delay(self.number + 1) * (1 - self.schedule.jitter)
        return time.time() + next_base >= self.hand_off_at

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
            self.number + 1, remaining_seconds=remaining, retry_after=retry_after
        )
        show_status(self.task_id, last_status or reason, next_check_in=delay)
        raise CheckAgain(reason, delay)


def _current_attempt(
    method: MethodDefinition,
    job: SubmittedJob,
    checks_made: int,
    hand_off_at: float | None = None,
) -> CheckAttempt:
    """The check this task attempt makes: its run count numbers it, after earlier runs' checks."""
    context = TaskRunContext.get()
    return CheckAttempt.of(
        method, job, checks_made + (context.task_run.run_count if context else 1), hand_off_at
    )


@task(
    name="Check job status",
    # Each check is new; a cache key per attempt would only cost hashing the inputs,
    # and a rerun checks again: persisting answers (up to MAX_JSON_BYTES) would buy nothing.
    cache_policy=NO_CACHE,
    persist_result=False,
    description="One status request; retried on the backoff schedule until the job ends.",
)
async def check_status(
    method: MethodDefinition,
    job: SubmittedJob,
    checks_made: int = 0,
    hand_off_at: float | None = None,
) -> tuple[JobStatus, Answer]:
    """Check the job once: return its success, raise its failure, ``CheckAgain`` while pending.

    ``checks_made``: checks of earlier task runs of this wait (see ``retry_until_the_wait_ends``).
    ``hand_off_at``: past it, a pending job is returned as it is (the run suspends).
    """
    attempt = _current_attempt(method, job, checks_made, hand_off_at)
    if attempt.number == 1:
        # The first check, like every later one, waits its delay after the submit.
        first_check_at = job.submitted_at + attempt.schedule.base_delay(1)
        await asyncio.sleep(max(0.0, min(first_check_at, attempt.deadline) - time.time()))
    return await check_once(method, job, attempt, current_journal())


async def check_once(
    method: MethodDefinition,
    job: SubmittedJob,
    attempt: CheckAttempt,
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
        attempt.number,
        attempt.schedule.planned_polls(),
        session.redact(status_url),
    )
    answer = await fetch_answer(
        method,
        job,
        status_url,
        what="status check",
        attempt=attempt,
        configured=job.status_url_configured,
    )
    status = status_of(answer, method.adapter_config.polling)
    label = status.value or status.state.value
    if not in_batch or journal is None or journal.last_status != label:
        logger.info("Task %s status: %s", display_text(job.task_id or ""), label)
    await report_status(journal, status, find_progress(answer.payload))
    if status.state is JobState.PENDING:
        if attempt.hands_off() and time.time() < attempt.deadline:
            return status, answer
        attempt.check_again(f"status {status.value or 'pending'}", last_status=status.value)
    raise_if_unsuccessful(status, job.task_id)
    show_status(job.task_id, label)
    return status, answer


@task(
    name="Fetch job result",
    cache_policy=NO_CACHE,
    persist_result=False,
    description="The result request after success (resultUrl, or FAL's response_url).",
)
async def fetch_result(
    method: MethodDefinition,
    job: SubmittedJob,
    url: str,
    configured: bool = False,
    checks_made: int = 0,
) -> Answer:
    """GET the result; transient errors are retried like status checks.

    ``configured``: ``url`` is the definition's ``resultUrl`` (its ``${VAR}``
    are filled), not the provider's ``response_url``.
    """
    current_session()
    attempt = _current_attempt(method, job, checks_made)
    return await fetch_answer(
        method, job, url, what="result request", attempt=attempt, configured=configured
    )


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
    method: MethodDefinition,
    job: SubmittedJob,
    url: str,
    *,
    what: str,
    attempt: CheckAttempt,
    configured: bool,
) -> Answer:
    """GET a status/result URL: JSON, or a file body stored; transient trouble checks again.

    ``configured``: the URL is the definition's template (its ``${VAR}`` are
    filled), not a link the provider sent. The request, JSON body included, is
    bounded by the method's timeout and by the job's deadline, so a body that
    drips cannot hold the run past it.
    """
    session = current_session()
    try:
        async with session.stream(
            "GET", url, configured=configured, deadline=attempt.deadline
        ) as response:
            if is_transient_status(response.status_code):
                await read_capped(response, ERROR_BODY_BYTES)
                attempt.check_again(
                    f"{what} answered HTTP {response.status_code}",
                    retry_after=parse_retry_after(response.headers),
                )
            if response.status_code >= 400:
                await read_capped(response, ERROR_BODY_BYTES)
                raise http_error(response, what=what, redact=session.redact, task_id=job.task_id)
            if response.status_code == 200 and is_file_response(response):
                target = await file_target(
                    method=method, task_id=job.task_id or "job", deadline=attempt.deadline
                )
                # The URL that answered, secrets filled in: fetched again as it is.
                stored = await store_body(response, target, index=0, refetch_url=str(response.url))
                return Answer(payload=None, url=session.url_of(response), files=(stored,))
            await read_capped(response, MAX_JSON_BYTES)
            payload = parse_json(response, what=f"{what} answer", task_id=job.task_id)
            answered_by = session.url_of(response)
            return Answer(
                payload=payload,
                url=answered_by,
                http_status=response.status_code,
                url_configured=configured and answered_by == url,
            )
    except httpx.TransportError as exc:
        attempt.check_again(f"{what} failed ({type(exc).__name__})")
