"""Turning a scripted Fault into what goes on the wire, the same way on every route."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from testkit.fake_provider.http import Misbehaving
from testkit.fake_provider.model import PREEMPTIVE, Fault
from toolflows.fake_provider.http import Reply, phrase

ErrorShape = Callable[[int, str], Reply]


def preempt(fault: Fault, error: ErrorShape) -> Reply:
    """The answer that replaces processing (`http`, `reset`, `expired`)."""
    if fault.kind == "reset":
        return Misbehaving(0, abort=True)
    if fault.kind == "expired":
        return error(403, "Request has expired")
    if fault.body is None:
        reply = error(fault.status, phrase(fault.status))
    elif isinstance(fault.body, bytes | str):
        body = fault.body.encode() if isinstance(fault.body, str) else fault.body
        reply = Reply(fault.status, (("content-type", "text/plain"),), body)
    else:
        reply = Reply(
            fault.status, (("content-type", "application/json"),), json.dumps(fault.body).encode()
        )
    named = {name.lower() for name, _ in fault.headers}
    kept = tuple(h for h in reply.headers if h[0].lower() not in named)
    return reply.but(status=fault.status, headers=kept + fault.headers)


def disturb(reply: Reply, fault: Fault | None) -> Reply:
    """Spoil an answer already produced (`drop_after_accept`, `delay`, `drip`, `cut`)."""
    if fault is None:
        return reply
    if fault.kind == "drop_after_accept":
        return Misbehaving.spoiling(reply, abort=True)
    if fault.kind == "delay":
        return Misbehaving.spoiling(reply, delay=fault.seconds)
    if fault.kind == "drip":
        return Misbehaving.spoiling(reply, drip=fault.seconds)
    return Misbehaving.spoiling(reply, cut_after=fault.after_bytes)


async def guarded(
    fault: Fault | None, error: ErrorShape, produce: Callable[[], Awaitable[Reply]]
) -> Reply:
    """Answer a request under `fault`: preempt it, or process it and spoil the answer."""
    if fault is not None and fault.kind in PREEMPTIVE:
        return preempt(fault, error)
    return disturb(await produce(), fault)
