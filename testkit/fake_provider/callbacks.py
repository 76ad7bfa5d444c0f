"""Providers calling back: the webhook a submit named, POSTed when its job ends.

Callbacks leave from the fake's own event loop, so a test sees them arrive while it
talks to the fake. They only ever go to a literal loopback address: any other URL is
refused and recorded, never contacted. Every attempt is recorded (`CallbackRecord`), so
tests can count callbacks and measure their lag from the job's end. There are no retries:
a callback that fails is recorded as failed, like a lost one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from testkit.fake_provider.model import FakeJob

Event = Literal["start", "completed"]
Headers = tuple[tuple[str, str], ...]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})
CALLBACK_TIMEOUT_SECONDS = 10.0
STANDARD_WEBHOOKS_PREFIX = "whsec_"

DEFAULT_WEBHOOK_SECRETS = {
    "replicate": STANDARD_WEBHOOKS_PREFIX
    + base64.b64encode(b"fake-replicate-signing-key").decode(),
    "heygen": "hg_webhook_secret",
    "generic": "generic_webhook_secret",
}


@dataclass(frozen=True)
class CallbackRecord:
    """One callback attempt: answered with `status`, or not (`error`); `sent` is wall time."""

    provider: str
    job_id: str
    event: Event
    url: str
    sent: float
    forged: bool
    status: int | None = None
    error: str | None = None


class Caller(Protocol):
    """What a provider says about its callbacks; the provider APIs implement it."""

    name: str
    key_name: str

    def callback_url(self, job: FakeJob) -> str | None:
        """Where the submit asked to be called back, if it did."""
        ...

    def callback_events(self, job: FakeJob) -> tuple[Event, ...]:
        """The events the submit subscribed to."""
        ...

    def callback_body(self, job: FakeJob, event: Event) -> Any:
        """The JSON the provider sends for `event`, as the job stands now."""
        ...

    def forged_body(self, job: FakeJob) -> Any:
        """A fabricated claim that the job succeeded."""
        ...

    def sign(self, body: bytes, key: bytes) -> Headers:
        """The signature headers of `body` under `key` (none for an unsigned provider)."""
        ...


def webhook_key(secret: str) -> bytes:
    """The HMAC key a signing secret stands for (Standard Webhooks' whsec_ ones are base64)."""
    if secret.startswith(STANDARD_WEBHOOKS_PREFIX):
        return base64.b64decode(secret.removeprefix(STANDARD_WEBHOOKS_PREFIX))
    return secret.encode()


def hmac_hex(body: bytes, key: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def standard_webhooks(body: bytes, key: bytes) -> Headers:
    """Standard Webhooks headers, as Replicate signs: v1 = HMAC-SHA256 of "id.timestamp.body"."""
    message_id = f"msg_{secrets.token_urlsafe(18)}"
    timestamp = str(int(time.time()))
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return (
        ("webhook-id", message_id),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", f"v1,{signature}"),
    )


def is_loopback(url: str) -> bool:
    """Only plain http(s) to a literal loopback address: names are not resolved."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and parsed.host in LOOPBACK_HOSTS


@dataclass(eq=False)
class _Watch:
    caller: Caller
    job: FakeJob
    url: str
    ended: bool = False


class Callbacks:
    """The jobs whose submit named a callback URL, their callbacks, and the records."""

    def __init__(self, lock: threading.Lock, webhook_secrets: dict[str, str]) -> None:
        self.lock = lock
        self.webhook_secrets = webhook_secrets
        self.records: list[CallbackRecord] = []
        self._watched: dict[str, _Watch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def reset(self) -> None:
        """Forget records and watched jobs: callbacks still pending for them are not sent."""
        with self.lock:
            self.records = []
            self._watched = {}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def watch(self, caller: Caller, job: FakeJob) -> None:
        """Follow a job just created (called on the fake's loop): its forgery, start event
        and, when it runs on a clock, the moment it ends."""
        url = caller.callback_url(job)
        if url is None or job.behaviour.callback == "drop":
            return
        watch = _Watch(caller, job, url)
        with self.lock:
            self._watched[job.id] = watch
        if job.behaviour.callback == "forge":
            self._spawn(self._send(watch, "completed", forged=True))
        if "start" in caller.callback_events(job):
            self._spawn(self._send(watch, "start"))
        seconds = job.behaviour.seconds_until_done
        if seconds is not None:
            self._spawn(self._settle_at(job, job.created + seconds))
        self.settle(job)

    def settle(self, job: FakeJob) -> None:
        """Send the job's end callback the first time it is seen ended (on the fake's loop;
        never while holding the state's lock)."""
        with self.lock:
            watch = self._watched.get(job.id)
            if watch is None or watch.ended or job.progress() is not None:
                return
            watch.ended = True
        if "completed" in watch.caller.callback_events(job):
            self._spawn(self._send(watch, "completed"))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_at(self, job: FakeJob, deadline: float) -> None:
        await asyncio.sleep(max(deadline - time.monotonic(), 0.0))
        self.settle(job)

    async def _send(self, watch: _Watch, event: Event, *, forged: bool = False) -> None:
        """A real callback (late and repeated as scripted) or a forged one (a random key)."""
        behaviour = watch.job.behaviour
        if forged:
            payload, key, copies = watch.caller.forged_body(watch.job), secrets.token_bytes(32), 1
        else:
            await asyncio.sleep(behaviour.callback_delay)
            payload = watch.caller.callback_body(watch.job, event)
            key = webhook_key(self.webhook_secrets.get(watch.caller.key_name, ""))
            copies = 2 if behaviour.callback == "duplicate" else 1
        body = json.dumps(payload).encode()
        headers = (("content-type", "application/json"), *watch.caller.sign(body, key))
        for _ in range(copies):
            await self._post(watch, event, body, headers, forged)

    async def _post(
        self, watch: _Watch, event: Event, body: bytes, headers: Headers, forged: bool
    ) -> None:
        with self.lock:
            if self._watched.get(watch.job.id) is not watch:
                return
        sent = time.time()
        status, error = None, None
        if not is_loopback(watch.url):
            error = "refused: not a loopback address"
        else:
            try:
                response = await self._http().post(watch.url, content=body, headers=headers)
                status = response.status_code
            except httpx.HTTPError as failure:
                error = f"{type(failure).__name__}: {failure}"
        record = CallbackRecord(
            watch.caller.name, watch.job.id, event, watch.url, sent, forged, status, error
        )
        with self.lock:
            self.records.append(record)

    def _http(self) -> httpx.AsyncClient:
        """One pooled client, made on the fake's loop; no proxies from the environment."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=CALLBACK_TIMEOUT_SECONDS, trust_env=False, follow_redirects=False
            )
        return self._client
