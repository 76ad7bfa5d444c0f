"""A batch's status checks, in rounds: one Prefect task attempt checks every job that is due.

A job run alone polls with one task attempt per check (``toolflows.poll``). A
batch of 1,000 jobs polled that way keeps 1,000 task runs retrying every few
seconds, and each attempt is state changes and log lines the Prefect server
must write: more than a small machine's server keeps up with, so checks fall
behind and finished jobs are noticed late. Grouped, a round costs one attempt
whatever the number of jobs, and each job keeps its own schedule: a round
checks the jobs whose next check is due (or nearly), then the task retries,
shown as AwaitingRetry, until the earliest next check.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import JobStatus
from toolflows.models import SubmittedJob
from toolflows.poll import Answer, CheckAgain, CheckAttempt, check_once, schedule_next_check
from toolflows.reporting import JobJournal, current_journal

# Rounds are at least this far apart, and a check may run this much early.
MAX_ROUND_GAP_SECONDS = 0.25
MIN_ROUND_GAP_SECONDS = 0.01
# Checks in flight within a round: a few connections answer a round quickly,
# and httpcore's pool costs CPU per connection for every request it places.
CHECKS_IN_FLIGHT = 16


@dataclass(eq=False)
class _Waiting:
    """One job between its submit and its end."""

    job: SubmittedJob
    journal: JobJournal | None
    due_at: float
    outcome: asyncio.Future[tuple[JobStatus, Answer]]
    checks: int = 0


class StatusRounds:
    """The status checks of one method's jobs, made together.

    ``wait(job)`` returns what ``check_status`` would have: the success and
    its answer, or raises the job's failure (``TASK_FAILED``,
    ``POLLING_TIMEOUT``, …). A plain class, not a dataclass: it is the round
    task's parameter, and Prefect walks dataclass parameters field by field.
    """

    def __init__(self, method: MethodDefinition) -> None:
        self.method = method
        self._waiting: list[_Waiting] = []
        self._driver: asyncio.Task[None] | None = None
        schedule = method.adapter_config.polling.schedule
        self._first_delay = schedule.base_delay(1)
        # A job joining while the rounds sleep is due no sooner than this after its submit.
        self._longest_sleep = max(self._first_delay, MIN_ROUND_GAP_SECONDS)
        self._gap = min(MAX_ROUND_GAP_SECONDS, max(MIN_ROUND_GAP_SECONDS, self._first_delay / 4))
        rounds = math.ceil(schedule.max_wait_seconds / self._gap) + 10
        self._round = check_round.with_options(
            retries=rounds, retry_condition_fn=schedule_next_check
        )

    async def wait(self, job: SubmittedJob) -> tuple[JobStatus, Answer]:
        """Wait for ``job`` to end (its first check is due like a lone job's)."""
        waiting = _Waiting(
            job=job,
            journal=current_journal(),
            due_at=job.submitted_at + self._first_delay,
            outcome=asyncio.get_running_loop().create_future(),
        )
        self._waiting.append(waiting)
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        return await waiting.outcome

    async def close(self) -> None:
        """Stop the rounds (a cancelled batch leaves jobs nobody waits for)."""
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)

    def _still_waiting(self) -> list[_Waiting]:
        self._waiting = [waiting for waiting in self._waiting if not waiting.outcome.done()]
        return self._waiting

    async def _drive(self) -> None:
        """Run rounds while a job waits; a round that cannot run fails the waiting jobs."""
        try:
            while waiting := self._still_waiting():
                earliest = min(entry.due_at for entry in waiting)
                await asyncio.sleep(max(0.0, earliest - time.time() - self._gap))
                try:
                    await self._round(self)
                except CheckAgain:
                    continue  # out of retries with jobs still waiting: a new task run
        except Exception as exc:
            for waiting in self._still_waiting():
                waiting.outcome.set_exception(exc)

    async def check_due(self) -> None:
        """One round: check every job due by now (or within the gap)."""
        soon = time.time() + self._gap
        due = [entry for entry in self._still_waiting() if entry.due_at <= soon]
        in_flight = asyncio.Semaphore(CHECKS_IN_FLIGHT)

        async def check(entry: _Waiting) -> None:
            async with in_flight:
                await self._check(entry)

        await asyncio.gather(*(check(entry) for entry in due))
        waiting = self._still_waiting()
        get_run_logger().debug("Checked %d jobs; %d still running", len(due), len(waiting))
        if waiting:
            earliest = min(entry.due_at for entry in waiting)
            delay = min(max(earliest - time.time(), self._gap), self._longest_sleep)
            raise CheckAgain(f"{len(waiting)} jobs running", delay)

    async def _check(self, entry: _Waiting) -> None:
        entry.checks += 1
        attempt = CheckAttempt.of(self.method, entry.job, entry.checks)
        try:
            result = await check_once(self.method, entry.job, attempt, entry.journal, in_batch=True)
        except CheckAgain as again:
            entry.due_at = time.time() + again.delay
        except Exception as exc:
            if not entry.outcome.done():
                entry.outcome.set_exception(exc)
        else:
            if not entry.outcome.done():
                entry.outcome.set_result(result)


@asynccontextmanager
async def status_rounds(method: MethodDefinition) -> AsyncIterator[StatusRounds]:
    """Rounds for the jobs of a batch, stopped when the batch ends."""
    rounds = StatusRounds(method)
    try:
        yield rounds
    finally:
        await rounds.close()


@task(
    name="Check job statuses",
    cache_policy=NO_CACHE,
    persist_result=False,
    description="A round of a batch's status checks; retried until every job has ended.",
)
async def check_round(rounds: StatusRounds) -> None:
    await rounds.check_due()
