"""Provider caps: at most N jobs running at once, at most R submits per period.

A method names a Prefect global concurrency limit (``concurrencyLimit``) and/or
a rate limit (``rateLimit``, a global concurrency limit with slot decay). The
concurrency slot is held from before the submit until the provider's job is
over, so 100 queued runs never exceed the provider's parallel-job cap,
whichever process or machine runs them, and whether the run waits in its
process or suspended (``held_provider_slot``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from uuid import UUID

import anyio
import httpx
from prefect import task
from prefect.client.orchestration import PrefectClient, get_client
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency, rate_limit
from prefect.exceptions import ObjectNotFound, Pause

from toolflows.caching import PerJob
from toolflows.core.definition import MethodDefinition
from toolflows.core.errors import ErrorCode, ToolflowsError

# Prefect's bounds of a concurrency lease, and what a held slot adds to the job's deadline.
MIN_LEASE_SECONDS = 60
MAX_LEASE_SECONDS = 86_400
LEASE_GRACE_SECONDS = 600
# How long a job waits before asking again for a slot of a full limit.
SLOT_RETRY_SECONDS = 2.0


@asynccontextmanager
async def provider_slot(definition: MethodDefinition) -> AsyncIterator[None]:
    """Hold the method's concurrency slot (and pass its rate limit) for one job.

    A limit that does not exist is a config error raised before the submit
    (``strict``); a lease renewal that fails later does not kill a paid job.
    """
    config = definition.adapter_config
    try:
        if config.rate_limit:
            await rate_limit(config.rate_limit, strict=True)
        if not config.concurrency_limit:
            yield
            return
        async with concurrency(
            config.concurrency_limit,
            occupy=1,
            strict=True,
            raise_on_lease_renewal_failure=False,
        ):
            yield
    except ConcurrencySlotAcquisitionError as exc:
        raise _missing_limit(definition, exc) from exc


def _missing_limit(definition: MethodDefinition, exc: Exception) -> ToolflowsError:
    return ToolflowsError(
        ErrorCode.CONFIG_INVALID,
        f"{definition.qualified_name}: {exc} (create it with `prefect gcl create NAME --limit N`)",
    )


@task(
    name="Take provider slot",
    description="Pass the rate limit and take the concurrency slot, once per job (persisted).",
    persist_result=True,
    cache_policy=PerJob(prefix="toolflows-slot"),
)
async def take_provider_slot(definition: MethodDefinition, job_key: str = "") -> str | None:
    """The lease of the job's concurrency slot, lasting until the job's deadline.

    The lease is released when the job ends; while the run is suspended its
    process is gone, so nothing renews it: it is taken long enough for the
    whole wait (at most a day, Prefect's longest lease). A resumed run reads
    the same lease back from the persisted result instead of taking another.
    """
    config = definition.adapter_config
    try:
        if config.rate_limit:
            await rate_limit(config.rate_limit, strict=True)
    except ConcurrencySlotAcquisitionError as exc:
        raise _missing_limit(definition, exc) from exc
    if not config.concurrency_limit:
        return None
    seconds = min(
        MAX_LEASE_SECONDS,
        max(MIN_LEASE_SECONDS, config.polling.max_wait_seconds + LEASE_GRACE_SECONDS),
    )
    # Through the client, not Prefect's acquire helper: inside a task, that one
    # releases the lease when the task ends.
    async with get_client() as client:
        while True:
            try:
                lease_id = await try_lease(client, config.concurrency_limit, seconds)
            except LookupError as exc:
                raise _missing_limit(definition, exc) from exc
            if lease_id is not None:
                return str(lease_id)
            await asyncio.sleep(SLOT_RETRY_SECONDS * random.uniform(0.5, 1.5))


async def try_lease(client: PrefectClient, limit: str, seconds: float) -> UUID | None:
    """A lease on one slot of ``limit``, or None while it is full (LookupError: no such limit)."""
    try:
        response = await client.increment_concurrency_slots_with_lease(
            names=[limit], slots=1, mode="concurrency", lease_duration=seconds
        )
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 423:
            return None
        raise
    granted = response.json()
    if not granted.get("limits"):
        raise LookupError(f"no global concurrency limit named {limit!r}")
    return UUID(granted["lease_id"])


@asynccontextmanager
async def held_provider_slot(
    definition: MethodDefinition, job_key: str
) -> AsyncIterator[str | None]:
    """``provider_slot`` for a run that may suspend: the slot outlives the run's process.

    Yields the lease id (recorded for the waiter). Suspending keeps the slot;
    anything else ending the block releases it.
    """
    config = definition.adapter_config
    if not config.concurrency_limit and not config.rate_limit:
        yield None
        return
    lease_id = await take_provider_slot(definition, job_key)
    try:
        yield lease_id
    except Pause:
        raise
    except BaseException:
        with anyio.CancelScope(shield=True):
            await release_slot(lease_id)
        raise
    await release_slot(lease_id)


async def release_slot(lease_id: str | None) -> None:
    """Give the job's slot back; a lease already gone (expired, released) is no error."""
    if lease_id is None:
        return
    async with get_client() as client:
        with suppress(ObjectNotFound, httpx.HTTPStatusError):
            await client.release_concurrency_slots_with_lease(UUID(lease_id))
