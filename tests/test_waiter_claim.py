"""A waiter that loses its claim and takes it again still resumes the runs it watched.

The waiter runs in this process, on a thread of its own, against the session's
API; a deployment run of the generic flow suspends while its job is pending
(executed here, as in ``test_suspend_fallback``). Its claim is then revoked the
way an expired lease is: released through the API, so the next renewal finds it
gone. The waiter must notice, claim again, read its watches again from the API
and resume the run when the job ends. (Its provider sessions are closed with the
lost claim: a watch kept across the loss fails every check.)
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import Pause
from prefect.utilities.asyncutils import run_coro_as_sync

import toolflows.waiter as waiter_module
from testkit.prefect_stack import read_flow_run, wait_for
from tests.helpers import (
    assert_completed_with_the_served_files,
    deploy_generic_flow,
    execute,
    start_suspending_run,
    state_names,
)
from toolflows.limits import try_lease
from toolflows.suspend import WAITER_LIMIT, WAITING_TAG
from toolflows.waiter import Waiter

POOL = "waiter-claim"
# Long enough to be pending while the claim is lost and taken again on a loaded machine.
JOB_SECONDS = 25
# The run is resumed at most this long after its job ends (it is checked every 1-2 s).
RESUME_SECONDS = 15
# How long the waiter may take to notice the revoked lease and claim the slot again.
RECLAIM_SECONDS = 15


@pytest.fixture(scope="module")
def deployment_id(prefect_api: str) -> UUID:
    """The generic flow deployed on a pool no worker serves: this process runs its runs."""
    return run_coro_as_sync(deploy_generic_flow(POOL, "claim"))


@contextmanager
def running(waiter: Waiter) -> Iterator[None]:
    """The waiter's loop on a thread of its own; cancelled on exit, which releases its claim.

    The thread runs in a copy of this context: it carries the session API's settings.
    """
    loop = asyncio.new_event_loop()
    task = loop.create_task(waiter.run(), context=contextvars.copy_context())
    thread = threading.Thread(target=loop.run_until_complete, args=(asyncio.wait([task]),))
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=30)
        loop.close()
    if not task.cancelled():
        task.result()  # the waiter's own error, if it stopped before it was cancelled


def recorded_leases(monkeypatch: pytest.MonkeyPatch) -> list[UUID]:
    """The leases the waiter's claims are granted, in order (Prefect cannot list them)."""
    leases: list[UUID] = []

    async def recording(client: PrefectClient, limit: str, seconds: float) -> UUID | None:
        lease_id = await try_lease(client, limit, seconds)
        if lease_id is not None and limit == WAITER_LIMIT:
            leases.append(lease_id)
        return lease_id

    monkeypatch.setattr(waiter_module, "try_lease", recording)
    return leases


def revoke(lease_id: UUID) -> None:
    async def release() -> None:
        async with get_client() as client:
            await client.release_concurrency_slots_with_lease(lease_id)

    run_coro_as_sync(release())


def waiter_slots_taken() -> int:
    async def read() -> int:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(WAITER_LIMIT)
            return limit.active_slots

    return run_coro_as_sync(read())


def test_a_waiter_that_loses_its_claim_and_takes_it_again_still_resumes_its_runs(
    deployment_id, fresh_fake, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger=waiter_module.logger.name)
    monkeypatch.setattr(waiter_module, "CLAIM_RENEW_SECONDS", 1)  # the loss is seen within 1 s
    leases = recorded_leases(monkeypatch)
    flow_run = start_suspending_run(deployment_id, fresh_fake, JOB_SECONDS)
    with pytest.raises(Pause):
        execute(flow_run.id)
    submitted_by = time.monotonic()  # the job ends at most JOB_SECONDS from now
    waiter = Waiter(scan_seconds=1)

    with running(waiter):
        wait_for(lambda: flow_run.id in waiter.watched, 30, "the waiter to watch the run")
        revoke(leases[0])
        wait_for(lambda: len(leases) == 2, RECLAIM_SECONDS, "the waiter to claim again")
        resumed_by = submitted_by + JOB_SECONDS + RESUME_SECONDS
        wait_for(
            lambda: run_coro_as_sync(read_flow_run(flow_run.id)).state.name != "Suspended",
            resumed_by - time.monotonic(),
            "the waiter to resume the run once its job ended",
        )
    assert waiter_slots_taken() == 0  # the stopped waiter released its second claim

    messages = [r.getMessage() for r in caplog.records if r.name == waiter_module.logger.name]
    claims = [i for i, message in enumerate(messages) if message.startswith("Waiter active")]
    losses = [i for i, message in enumerate(messages) if "lost its claim" in message]
    resumed = messages.index(f"Resumed flow run {flow_run.id}: its job has ended")
    assert len(claims) == 2
    assert claims[0] < losses[0] < claims[1] < resumed  # resumed by the claim taken again
    assert not [m for m in messages if m.startswith(f"Checking the job of flow run {flow_run.id}")]
    assert ("Suspended", "Resuming") in pairwise(state_names(flow_run.id))

    # The resumed run completes: one status check confirms the end, no second submit.
    execute(flow_run.id)
    done = run_coro_as_sync(read_flow_run(flow_run.id))
    assert_completed_with_the_served_files([done], fresh_fake)
    assert WAITING_TAG not in done.tags
    assert fresh_fake.submits("runway") == 1
