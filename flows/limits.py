"""Provider caps: at most N jobs running at once, at most R submits per period.

A method names a Prefect global concurrency limit (``concurrencyLimit``) and/or
a rate limit (``rateLimit``, a global concurrency limit with slot decay). The
concurrency slot is held from before the submit until the provider's job is
over, so 100 queued runs never exceed the provider's parallel-job cap,
whichever process or machine runs them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency, rate_limit

from toolflows.core.definition import MethodDefinition
from toolflows.core.errors import ErrorCode, ToolflowsError


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
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID,
            f"{definition.qualified_name}: {exc} (create it with "
            "`prefect gcl create NAME --limit N`)",
        ) from exc
