"""Running a flow's jobs side by side so that a cancelled run still cleans up.

A flow run that times out or is cancelled is cancelled through an anyio cancel
scope, which cancels its task again and again until it ends. ``asyncio.gather``
passes each of those on to its children, so a job's shielded clean-up (asking
the provider to cancel the remote job) is cancelled as well. Children of an
anyio task group get the scope's cancellation through anyio, and their shields
hold.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


async def all_settled(*awaitables: Awaitable[T]) -> list[T | Exception]:
    """Every awaitable's result, or the exception it raised, in order (none is cut short)."""
    outcomes: list[Any] = [None] * len(awaitables)

    async def settle(index: int, awaitable: Awaitable[T]) -> None:
        try:
            outcomes[index] = await awaitable
        except Exception as exc:
            outcomes[index] = exc

    async with anyio.create_task_group() as group:
        for index, awaitable in enumerate(awaitables):
            group.start_soon(settle, index, awaitable)
    return outcomes


def raise_first_error(outcomes: list[T | Exception]) -> list[T]:
    """The results, or the first exception raised again (the others are lost with it)."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
