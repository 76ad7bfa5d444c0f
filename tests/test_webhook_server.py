"""The waiter's webhook endpoint over real sockets: routing, body bounds, fast answers.

httpx for well-formed calls; raw sockets where a client must misbehave (paths httpx
would normalise, bodies too large or too slow). No Prefect here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from toolflows.webhook_server import MAX_CALLBACK_BYTES, Accept, Callback, webhook_server

RUN = "0b6f3c1e-8a4d-4f2b-9c7e-5d1a2b3c4d5e"
TOKEN = "abcdefghijklmnopqrstuvwxyz012-_9"
HOOK = f"/hooks/{RUN}/{TOKEN}"
SMALL_CAP = 1_000


class Recorder:
    """An ``accept`` that records each callback and answers ``status``."""

    def __init__(self, status: int = 202) -> None:
        self.status = status
        self.callbacks: list[Callback] = []

    async def __call__(self, callback: Callback) -> int:
        self.callbacks.append(callback)
        return self.status


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


async def exchange(
    base_url: str,
    head: bytes,
    drip: list[bytes] | None = None,
    *,
    drip_seconds: float = 0,
    timeout: float = 5,
) -> bytes:
    """Send a raw request head, then ``drip`` pieces ``drip_seconds`` apart, and read the
    answer to the end (the server closes the connection, or the request said close)."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)

    async def send_body() -> None:
        for piece in drip or []:
            await asyncio.sleep(drip_seconds)
            writer.write(piece)
            await writer.drain()

    writer.write(head)
    sending = asyncio.create_task(send_body())
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()


@asynccontextmanager
async def client_of(accept: Accept, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of a fresh webhook server (connections enough for the parallel test)."""
    limits = httpx.Limits(max_connections=200)
    async with (
        webhook_server("127.0.0.1", 0, accept, **options) as base_url,
        httpx.AsyncClient(base_url=base_url, trust_env=False, limits=limits) as client,
    ):
        yield client


def raw_post(path: str, body: bytes) -> bytes:
    """A whole request, asking the server to close after its answer."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: hooks\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_a_callback_reaches_accept_and_its_status_is_answered() -> None:
    recorder = Recorder(status=202)

    async def scenario() -> None:
        async with client_of(recorder) as client:
            response = await client.post(
                f"{HOOK}?attempt=2",
                content=b'{"status": "succeeded"}',
                headers={"Webhook-Id": "msg_1", "X-Signature": "sha256=ab"},
            )
            assert response.status_code == 202
            assert response.content == b""

    run(scenario)
    [callback] = recorder.callbacks
    assert (callback.flow_run_id, callback.token) == (RUN, TOKEN)
    assert callback.body == b'{"status": "succeeded"}'
    assert callback.headers["webhook-id"] == "msg_1"
    assert callback.headers["x-signature"] == "sha256=ab"
    assert "Webhook-Id" not in callback.headers


def test_the_status_accept_returns_is_the_answer() -> None:
    recorder = Recorder(status=401)

    async def scenario() -> None:
        async with webhook_server("127.0.0.1", 0, recorder) as base_url:
            response = await exchange(base_url, raw_post(HOOK, b"forged"))
            assert status_of(response) == 401
            assert body_of(response) == b""

    run(scenario)
    assert len(recorder.callbacks) == 1


def test_a_proxy_prefix_is_accepted() -> None:
    recorder = Recorder(status=204)

    async def scenario() -> None:
        async with client_of(recorder) as client:
            response = await client.post(f"/toolflows/v1{HOOK}", content=b"{}")
            assert response.status_code == 204

    run(scenario)
    assert [(c.flow_run_id, c.token) for c in recorder.callbacks] == [(RUN, TOKEN)]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
def test_only_post_is_allowed(method: str) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with client_of(recorder) as client:
            response = await client.request(method, HOOK)
            assert response.status_code == 405
            assert response.headers["allow"] == "POST"

    run(scenario)
    assert recorder.callbacks == []


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/hooks",
        f"{HOOK}/extra",
        f"{HOOK}/",
        f"/hooks/{RUN}%2F{TOKEN}",
        f"/hooks%2F{RUN}/{TOKEN}",
        f"/x/%2E%2E/hooks/{RUN}/{TOKEN}",
        f"/../hooks/{RUN}/{TOKEN}",
        f"/a/../hooks/{RUN}/{TOKEN}",
        f"/hooks/{RUN.upper()}/{TOKEN}",
        f"/hooks/{RUN}/{TOKEN[:-1]}",
        f"/hooks/{RUN}/{TOKEN[:-1]}%41",
        f"/hooks/{RUN}/<script>{TOKEN[8:]}",
    ],
)
def test_other_paths_are_not_found_and_not_echoed(path: str) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with webhook_server("127.0.0.1", 0, recorder) as base_url:
            response = await exchange(base_url, raw_post(path, b"payload-marker"))
            assert status_of(response) == 404
            assert body_of(response) == b""
            assert b"payload-marker" not in response
            assert b"hooks" not in response

    run(scenario)
    assert recorder.callbacks == []


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_sent() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with webhook_server("127.0.0.1", 0, recorder) as base_url:
            head = (
                f"POST {HOOK} HTTP/1.1\r\nHost: hooks\r\n"
                f"Content-Length: {MAX_CALLBACK_BYTES + 1}\r\n\r\n"
            ).encode()
            # No body is ever sent: the answer (and the close) come from the head alone.
            response = await exchange(base_url, head, timeout=3)
            assert status_of(response) == 413
            assert body_of(response) == b""

    run(scenario)
    assert recorder.callbacks == []


def test_a_body_of_exactly_the_cap_is_accepted() -> None:
    recorder = Recorder(status=204)

    async def scenario() -> None:
        async with webhook_server("127.0.0.1", 0, recorder, max_body_bytes=SMALL_CAP) as url:
            response = await exchange(url, raw_post(HOOK, b"x" * SMALL_CAP))
            assert status_of(response) == 204
            response = await exchange(url, raw_post(HOOK, b"x" * (SMALL_CAP + 1)))
            assert status_of(response) == 413

    run(scenario)
    assert [len(c.body) for c in recorder.callbacks] == [SMALL_CAP]


def test_a_chunked_body_is_read_up_to_the_cap() -> None:
    recorder = Recorder(status=204)
    head = (
        f"POST {HOOK} HTTP/1.1\r\nHost: hooks\r\nConnection: close\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    within = [b"3\r\nabc\r\n", b"2\r\nde\r\n", b"0\r\n\r\n"]
    past = [b"190\r\n" + b"y" * 400 + b"\r\n"] * 20  # 400 bytes a chunk, never an end

    async def scenario() -> None:
        async with webhook_server("127.0.0.1", 0, recorder, max_body_bytes=SMALL_CAP) as url:
            response = await exchange(url, head, within, drip_seconds=0.01)
            assert status_of(response) == 204
            response = await exchange(url, head, past, drip_seconds=0.01)
            assert status_of(response) == 413

    run(scenario)
    assert [c.body for c in recorder.callbacks] == [b"abcde"]


def test_a_body_slower_than_the_read_bound_gets_408() -> None:
    recorder = Recorder()

    async def scenario() -> float:
        async with webhook_server("127.0.0.1", 0, recorder, read_seconds=0.5) as url:
            head = f"POST {HOOK} HTTP/1.1\r\nHost: hooks\r\nContent-Length: 100\r\n\r\n"
            started = time.monotonic()
            response = await exchange(url, head.encode(), [b"z"] * 100, drip_seconds=0.1)
            assert status_of(response) == 408
            return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    assert 0.5 <= elapsed < 2
    assert recorder.callbacks == []


def test_accept_raising_answers_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[Callback] = []

    async def accept(callback: Callback) -> int:
        calls.append(callback)
        if len(calls) == 1:
            raise RuntimeError("queue broke: secret-detail")
        return 202

    async def scenario() -> None:
        async with client_of(accept) as client:
            first = await client.post(HOOK, content=b"1")
            assert first.status_code == 500
            assert first.content == b""
            second = await client.post(HOOK, content=b"2")
            assert second.status_code == 202

    with caplog.at_level(logging.ERROR, logger="toolflows.webhook_server"):
        run(scenario)
    assert [c.body for c in calls] == [b"1", b"2"]
    assert "queue broke" in caplog.text


def test_a_stuck_accept_is_answered_503_on_time() -> None:
    async def accept(callback: Callback) -> int:
        await asyncio.sleep(30)
        return 202

    async def scenario() -> float:
        async with client_of(accept, accept_seconds=0.3) as client:
            started = time.monotonic()
            response = await client.post(HOOK, content=b"{}")
            assert response.status_code == 503
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 2


def test_many_parallel_callbacks_are_all_answered() -> None:
    recorder = Recorder(status=204)
    tokens = [f"{index:032d}" for index in range(150)]

    async def scenario() -> None:
        async with client_of(recorder) as client:
            responses = await asyncio.gather(
                *(client.post(f"/hooks/{RUN}/{token}", content=token) for token in tokens)
            )
            assert [response.status_code for response in responses] == [204] * len(tokens)

    run(scenario)
    assert sorted(c.token for c in recorder.callbacks) == tokens
    assert all(c.body == c.token.encode() for c in recorder.callbacks)


def test_the_server_stops_cleanly_with_a_connection_open() -> None:
    async def scenario() -> str:
        async with webhook_server("127.0.0.1", 0, Recorder()) as base_url:
            parts = urlsplit(base_url)
            _reader, idle = await asyncio.open_connection(parts.hostname, parts.port)
        idle.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return base_url

    started = time.monotonic()
    base_url = asyncio.run(scenario())
    assert time.monotonic() - started < 3
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((urlsplit(base_url).hostname, urlsplit(base_url).port), 1)


def test_a_busy_port_raises_instead_of_exiting() -> None:
    async def scenario() -> None:
        async with webhook_server("127.0.0.1", 0, Recorder()) as base_url:
            port = urlsplit(base_url).port
            assert port is not None
            with pytest.raises(OSError):
                async with webhook_server("127.0.0.1", port, Recorder()):
                    pass
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(scenario)
