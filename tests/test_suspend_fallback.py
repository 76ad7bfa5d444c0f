"""A run whose suspension the Prefect API refuses waits inline: its job is paid for.

A deployment run of the generic flow is executed in this process, as a worker's
flow run process executes it (``prefect.engine``: ``run_flow`` with the flow run),
against the session's API. The control suspends. In the faults a reverse proxy in
front of the API (HTTP and the events websocket) answers 500 to one call of the
suspension, which Prefect's client does not retry: the run must log why, wait for
its job inline and complete it, never fail it or submit it again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any
from uuid import UUID

import anyio
import httpx
import pytest
import uvicorn
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import Pause
from prefect.utilities.asyncutils import run_coro_as_sync
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from testkit.prefect_stack import aimed_at_api, read_flow_run, wait_for
from tests.helpers import (
    assert_completed_with_the_served_files,
    deploy_generic_flow,
    execute,
    start_suspending_run,
    state_names,
)
from toolflows.suspend import WAITING_TAG

POOL = "suspend-fallback"
# The job ends 6 s after its submit; polled inline every 1-2 s once the suspension fails.
JOB_SECONDS = 6
FALLBACK_LOG = "could not suspend"
# Headers that describe one hop (or a body httpx has already decoded), not the message.
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "content-encoding", "connection"}

# Whether the proxy refuses a request: (method, path, body) -> refuse.
Refusal = Callable[[str, str, bytes], bool]


@pytest.fixture(scope="module")
def deployment_id(prefect_api: str) -> UUID:
    """The generic flow deployed on a pool no worker serves: this process runs its runs."""
    return run_coro_as_sync(deploy_generic_flow(POOL, "suspends"))


def start_run(deployment_id: UUID, fake: Any) -> FlowRun:
    return start_suspending_run(deployment_id, fake, JOB_SECONDS)


def log_messages(flow_run_id: UUID) -> list[str]:
    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        return [log.message for log in logs]

    return run_coro_as_sync(read())


class RefusingProxy:
    """A reverse proxy for the Prefect API that answers 500 to the requests ``refuses`` picks.

    Everything else goes through, the events websocket too, so the run under test
    sees one refused call and an otherwise working API.
    """

    def __init__(self, upstream_api: str, refuses: Refusal) -> None:
        self.upstream = httpx.URL(upstream_api)
        self.refuses = refuses
        self.refused: list[str] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        host, port = self.listener.getsockname()
        self.api_url = f"http://{host}:{port}{self.upstream.path}"
        self.server = uvicorn.Server(uvicorn.Config(self, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=asyncio.run, args=(self.serve(),), daemon=True)

    async def serve(self) -> None:
        async with httpx.AsyncClient(base_url=self.upstream.copy_with(path="/")) as self.client:
            await self.server.serve(sockets=[self.listener])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self.bridge(WebSocket(scope, receive, send))
            return
        request = Request(scope, receive)
        body = await request.body()
        if self.refuses(request.method, request.url.path, body):
            self.refused.append(f"{request.method} {request.url.path}")
            response = Response("refused by the test's proxy", status_code=500)
        else:
            answer = await self.client.request(
                request.method,
                request.url.path,
                params=request.url.query,
                content=body,
                headers=[(k, v) for k, v in request.headers.items() if k not in HOP_HEADERS],
            )
            headers = {k: v for k, v in answer.headers.items() if k not in HOP_HEADERS}
            response = Response(answer.content, status_code=answer.status_code, headers=headers)
        await response(scope, receive, send)

    async def bridge(self, client: WebSocket) -> None:
        """Relay a websocket (Prefect's events) both ways until either side closes."""
        url = self.upstream.copy_with(scheme="ws", path=client.url.path, query=None)
        subprotocols = client.scope["subprotocols"]  # "prefect": the events auth handshake
        async with (
            connect(str(url), subprotocols=subprotocols) as upstream,
            anyio.create_task_group() as relays,
        ):
            await client.accept(subprotocol=upstream.subprotocol)

            async def from_client() -> None:
                while (message := await client.receive())["type"] == "websocket.receive":
                    await upstream.send(message.get("text") or message["bytes"])
                relays.cancel_scope.cancel()

            async def to_client() -> None:
                async for message in upstream:
                    if isinstance(message, str):
                        await client.send_text(message)
                    else:
                        await client.send_bytes(message)
                with suppress(RuntimeError):  # the client has gone already
                    await client.close()
                relays.cancel_scope.cancel()

            relays.start_soon(from_client)
            relays.start_soon(to_client)


@contextmanager
def refusing_proxy(upstream_api: str, refuses: Refusal) -> Iterator[RefusingProxy]:
    proxy = RefusingProxy(upstream_api, refuses)
    proxy.thread.start()
    try:
        wait_for(lambda: proxy.server.started, 30, "the proxy")
        yield proxy
    finally:
        proxy.server.should_exit = True
        proxy.thread.join(timeout=30)


def labels_update(flow_run_id: UUID) -> Refusal:
    """The wait record, the suspension's first write."""
    path = f"/api/flow_runs/{flow_run_id}/labels"
    return lambda method, request_path, body: method == "PATCH" and request_path == path


def suspended_state(flow_run_id: UUID) -> Refusal:
    """The ``Suspended`` state, the suspension's last call (record and tag are written)."""
    path = f"/api/flow_runs/{flow_run_id}/set_state"

    def refuses(method: str, request_path: str, body: bytes) -> bool:
        if method != "POST" or request_path != path:
            return False
        return json.loads(body)["state"]["type"] == StateType.PAUSED.value

    return refuses


def test_a_deployment_run_suspends_while_its_job_is_pending(deployment_id, fresh_fake):
    flow_run = start_run(deployment_id, fresh_fake)

    # A worker's flow run process exits on Pause: the run stays Suspended in the API.
    with pytest.raises(Pause):
        execute(flow_run.id)

    suspended = run_coro_as_sync(read_flow_run(flow_run.id))
    assert suspended.state.type is StateType.PAUSED
    assert suspended.state.name == "Suspended"
    assert WAITING_TAG in suspended.tags
    assert fresh_fake.submits("runway") == 1


@pytest.mark.parametrize("refusal", [labels_update, suspended_state])
def test_a_run_whose_suspension_the_api_refuses_waits_inline_and_completes(
    deployment_id, fresh_fake, prefect_api, refusal
):
    flow_run = start_run(deployment_id, fresh_fake)

    with (
        refusing_proxy(prefect_api, refusal(flow_run.id)) as proxy,
        aimed_at_api(proxy.api_url),  # its log and events workers stop before the proxy
    ):
        execute(flow_run.id)

    done = run_coro_as_sync(read_flow_run(flow_run.id))
    assert len(proxy.refused) == 1
    assert "Suspended" not in state_names(flow_run.id)
    assert WAITING_TAG not in done.tags  # no waiter needs to clean up after it
    assert_completed_with_the_served_files([done], fresh_fake)
    assert fresh_fake.submits("runway") == 1
    wait_for(
        lambda: any(FALLBACK_LOG in message for message in log_messages(flow_run.id)),
        30,
        "the fallback's warning in the run's logs",
    )
