"""The toolflows waiter: one process watches the jobs of every suspended run.

It keeps no state of its own. Everything it needs is in the Prefect API: runs
tagged ``toolflows-waiting`` carry their wait record in a label
(``toolflows.suspend``), and a restarted waiter finds them all again. Each
job is checked on its own schedule (picked up from the time of its submit),
through one pooled client per method; a job that has ended, or whose deadline
has passed, gets its run resumed, and the run itself confirms with one check.

Two waiters never check the same job: the active one holds the single slot of
the ``toolflows-waiter`` global concurrency limit (a lease it renews); others
wait on standby and take over within a minute of its death (the lease runs
out). Callbacks (``--listen``) are wake-ups: a valid one makes the waiter check
that job now; only the check decides.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum
from uuid import UUID

import anyio
import httpx
from prefect import flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_logger

from toolflows.cancel import cancel_job
from toolflows.core.backoff import parse_retry_after
from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import JobState
from toolflows.core.errors import ToolflowsError
from toolflows.core.templates import substitute_env
from toolflows.core.webhooks import WakeLimiter, signature_valid, token_matches
from toolflows.http import (
    ERROR_BODY_BYTES,
    MAX_JSON_BYTES,
    ProviderSession,
    is_file_response,
    is_transient_status,
    parse_json,
    read_capped,
    using_session,
)
from toolflows.limits import release_slot, try_lease
from toolflows.methods import PreparedMethod, prepare_method, session_for
from toolflows.poll import Answer, status_of
from toolflows.suspend import (
    WAIT_LABEL,
    WAITER_LIMIT,
    WAITING_TAG,
    WaitRecord,
    publish_public_url,
    recorded_method,
    untag,
    webhook_key,
)
from toolflows.webhook_server import Callback, webhook_server

logger = get_logger("toolflows.waiter")

# How often the API is asked for waiting runs: a new suspension is seen within this.
SCAN_SECONDS = 5.0
RUNS_PAGE = 200
# The claim: Prefect's shortest lease, renewed well before it runs out.
CLAIM_LEASE_SECONDS = 60
CLAIM_RENEW_SECONDS = 15
STANDBY_SECONDS = 5.0
# Status requests in flight at once, over all jobs (each method's pool holds 32).
CHECKS_IN_FLIGHT = 16
# A job is woken by callbacks at most this often: a flood costs one check per interval.
WAKE_INTERVAL_SECONDS = 2.0
# A run just resumed is not checked again while the API may still list it as suspended.
RESUMED_MEMORY_SECONDS = 120.0
# After a Prefect API error, the waiter tries again after this long.
API_RETRY_SECONDS = 5.0


class Verdict(Enum):
    """What one check of a job means for its run."""

    PENDING = "pending"
    ENDED = "ended"  # succeeded, failed, cancelled, or an answer only the run can judge
    TRY_AGAIN = "try again"  # a transient error: the job is unknown


@dataclass
class Watched:
    """A suspended run's job the waiter checks."""

    flow_run_id: UUID
    record: WaitRecord
    method: MethodDefinition
    provider_key: str  # its method's pooled session (``_method_key``, computed once)
    checks: int
    due: float
    checking: bool = False
    woken: bool = False

    @property
    def deadline(self) -> float:
        return self.record.deadline

    def next_due(self, now: float, retry_after: float | None = None) -> float:
        """When to check again: the method's schedule, or the backstop while callbacks are on."""
        schedule = self.method.adapter_config.polling.schedule
        remaining = max(0.0, self.deadline - now)
        delay = schedule.next_delay(
            self.checks + 1, remaining_seconds=remaining, retry_after=retry_after
        )
        webhook = self.method.adapter_config.webhook
        if self.record.callbacks and webhook is not None:
            backstop = webhook.backstop_seconds * random.uniform(1 - schedule.jitter, 1)
            delay = max(delay, min(backstop, remaining))
        return now + delay


@dataclass
class _Provider:
    """One method's pooled session, and the pause its provider asked for (429)."""

    session: ProviderSession
    prepared: PreparedMethod
    not_before: float = 0.0


@dataclass
class Waiter:
    """The waiter's loop; ``run()`` until cancelled.

    ``listen``: (host, port) of the callback endpoint; ``public_url``: where
    providers reach it (published for the runs' callback URLs).
    """

    listen: tuple[str, int] | None = None
    public_url: str | None = None
    scan_seconds: float = SCAN_SECONDS
    watched: dict[UUID, Watched] = field(default_factory=dict)
    # Told the callback endpoint's URL (None without --listen) once this waiter is active.
    on_ready: Callable[[str | None], None] | None = None
    _providers: dict[str, _Provider] = field(default_factory=dict)
    _resumed: dict[UUID, float] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _scan_now: asyncio.Event = field(default_factory=asyncio.Event)
    _early_wakes: dict[UUID, float] = field(default_factory=dict)
    _key: bytes = b""
    # What the callback endpoint needs while the waiter is active.
    _client: PrefectClient | None = None
    _stack: AsyncExitStack | None = None
    _limiter: WakeLimiter = field(default_factory=lambda: WakeLimiter(WAKE_INTERVAL_SECONDS))

    async def run(self) -> None:
        async with get_client() as client:
            self._client = client
            if self.listen:
                self._key = await webhook_key(client, create=True)
            while True:
                async with claim(client) as lost, AsyncExitStack() as stack:
                    self._stack = stack
                    # A new claim starts from what the API says: the sessions of a lost
                    # claim are closed, and its watches are read again by the next scan.
                    self._providers.clear()
                    self.watched.clear()
                    listening = None
                    if self.listen:
                        if self.public_url:
                            await publish_public_url(self.public_url)
                        listening = await stack.enter_async_context(
                            webhook_server(*self.listen, self._accept)
                        )
                    logger.info(
                        "Waiter active%s", f", callbacks at {listening}" if listening else ""
                    )
                    if self.on_ready:
                        self.on_ready(listening)
                    await self._watch(client, lost, stack)
                logger.warning("Waiter lost its claim; back on standby")

    # -- the loop ----------------------------------------------------------------------

    async def _watch(self, client: PrefectClient, lost: anyio.Event, stack: AsyncExitStack) -> None:
        """Check each job when due, each in a task of its own, while scans run beside them:
        a slow API or a slow provider never holds back another job's check (or a callback)."""
        lanes = asyncio.Semaphore(CHECKS_IN_FLIGHT)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._scan_forever, client, stack)
            while not lost.is_set():
                now = time.time()
                for watched in list(self.watched.values()):
                    if watched.due <= now and not watched.checking:
                        watched.checking = True
                        tasks.start_soon(self._check_in_lane, client, watched, lanes)
                idle = [w.due for w in self.watched.values() if not w.checking]
                wake_at = min([now + self.scan_seconds, *idle])
                self._wake.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), timeout=max(0.0, wake_at - time.time())
                    )
            tasks.cancel_scope.cancel()

    async def _scan_forever(self, client: PrefectClient, stack: AsyncExitStack) -> None:
        while True:
            self._scan_now.clear()
            try:
                await self._scan(client, stack)
            except Exception:
                logger.exception("Reading the waiting runs failed")
            self._wake.set()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._scan_now.wait(), timeout=self.scan_seconds)

    async def _scan(self, client: PrefectClient, stack: AsyncExitStack) -> None:
        """Bring the watched jobs in line with the API: new suspensions, finished runs."""
        now = time.time()
        self._resumed = {
            run_id: at for run_id, at in self._resumed.items() if now - at < RESUMED_MEMORY_SECONDS
        }
        self._early_wakes = {
            run_id: at
            for run_id, at in self._early_wakes.items()
            if now - at < RESUMED_MEMORY_SECONDS
        }
        suspended: set[UUID] = set()
        for flow_run in await waiting_runs(client):
            state = flow_run.state
            if state is None:
                continue
            if state.type is StateType.PAUSED and state.name == "Suspended":
                if flow_run.id in self._resumed:
                    continue
                suspended.add(flow_run.id)
                if flow_run.id not in self.watched:
                    await self._watch_run(flow_run, stack, now)
            elif state.is_final() or state.type is StateType.CANCELLING:
                await self._clean_up(client, flow_run, stack)
        for run_id in set(self.watched) - suspended:
            del self.watched[run_id]

    async def _watch_run(self, flow_run: FlowRun, stack: AsyncExitStack, now: float) -> None:
        record = _record_of(flow_run)
        if record is None:
            return
        method = record.method()
        try:
            await self._provider(method, stack)
        except ToolflowsError as error:
            logger.warning("Flow run %s: cannot check its job: %s", flow_run.id, error)
            return
        schedule = method.adapter_config.polling.schedule
        checks = schedule.checks_made_by(now - record.job.submitted_at)
        watched = Watched(flow_run.id, record, method, _method_key(method), checks, due=now)
        called_back = self._early_wakes.pop(flow_run.id, None) is not None
        if called_back:  # before the run suspended: check at once
            watched.due = now
        elif checks == 0 and not record.callbacks:
            watched.due = record.job.submitted_at + schedule.base_delay(1)
        else:
            # Picked up late (a restart): spread the first checks over the next delay.
            watched.due = now + random.uniform(0, watched.next_due(now) - now)
        self.watched[flow_run.id] = watched

    async def _check_in_lane(
        self, client: PrefectClient, watched: Watched, lanes: asyncio.Semaphore
    ) -> None:
        try:
            async with lanes:
                await self._check(client, watched)
        except Exception:
            # One job's trouble must not stop the others' waits: try it again later.
            logger.exception("Checking the job of flow run %s failed", watched.flow_run_id)
            watched.due = time.time() + API_RETRY_SECONDS
        finally:
            watched.checking = False
            self._wake.set()

    async def _check(self, client: PrefectClient, watched: Watched) -> None:
        provider = self._providers[watched.provider_key]
        now = time.time()
        if now < provider.not_before:
            watched.due = provider.not_before + random.uniform(0, 1)
            return
        if now >= watched.deadline:
            await self._resume(client, watched, "its deadline has passed")
            return
        watched.woken = False
        verdict, retry_after = await check_job(provider.session, watched.record, watched.method)
        watched.checks += 1
        if verdict is Verdict.ENDED:
            await self._resume(client, watched, "its job has ended")
            return
        if retry_after is not None:
            provider.not_before = max(provider.not_before, time.time() + retry_after)
        # A callback during the check asks for another one.
        watched.due = time.time() if watched.woken else watched.next_due(time.time(), retry_after)

    async def _resume(self, client: PrefectClient, watched: Watched, why: str) -> None:
        try:
            result = await client.resume_flow_run(watched.flow_run_id)
        except httpx.HTTPError as exc:
            logger.warning("Resuming flow run %s failed: %s", watched.flow_run_id, exc)
            watched.due = time.time() + API_RETRY_SECONDS
            return
        self.watched.pop(watched.flow_run_id, None)
        self._resumed[watched.flow_run_id] = time.time()
        if result.status is SetStateStatus.ACCEPT:
            logger.info("Resumed flow run %s: %s", watched.flow_run_id, why)

    async def _clean_up(
        self, client: PrefectClient, flow_run: FlowRun, stack: AsyncExitStack
    ) -> None:
        """A tagged run that is over (cancelled from the UI, failed, crashed) may leave its
        job running and its slot taken: cancel the job if still pending, free the slot."""
        record = _record_of(flow_run)
        if record is not None:
            method = record.method()
            state = flow_run.state
            cancelled = state is not None and state.type in (
                StateType.CANCELLED,
                StateType.CANCELLING,
            )
            if cancelled or method.adapter_config.polling.cancel_on_timeout:
                try:
                    provider = await self._provider(method, stack)
                    verdict, _ = await check_job(provider.session, record, method)
                    if verdict is not Verdict.ENDED:
                        logger.info("Flow run %s is over: cancelling its job", flow_run.id)
                        with using_session(provider.session):
                            await cancel_job(method, record.job, record.job.params or {})
                except ToolflowsError as error:
                    logger.warning("Flow run %s: cannot cancel its job: %s", flow_run.id, error)
            await release_slot(record.lease_id)
        await untag(client, flow_run.id)

    async def _provider(self, method: MethodDefinition, stack: AsyncExitStack) -> _Provider:
        """The method's pooled session, opened once while the waiter is active."""
        key = _method_key(method)
        if key not in self._providers:
            prepared = await prepare_method(method, None, submitting=False)
            # Opened by the scan or a callback, closed with the claim: bound per use.
            session = await stack.enter_async_context(session_for(prepared, bind=False))
            self._providers[key] = _Provider(session=session, prepared=prepared)
        return self._providers[key]

    # -- callbacks ---------------------------------------------------------------------

    async def _accept(self, callback: Callback) -> int:
        """A callback: check that job now, if it is really its token (and signature)."""
        run_id = UUID(callback.flow_run_id)
        if not token_matches(self._key, callback.flow_run_id, "", callback.token):
            return 404
        watched = self.watched.get(run_id)
        # Not suspended yet (an early callback), or already resumed: the method the
        # run labelled says how the call must be signed.
        method = watched.method if watched else await self._method_by_id(run_id)
        if method is None or method.adapter_config.webhook is None:
            return 202
        webhook = method.adapter_config.webhook
        assert self._stack is not None
        provider = await self._provider(method, self._stack)
        secret = webhook.secret and substitute_env(
            webhook.secret, provider.prepared.placeholder_values
        )
        if not signature_valid(webhook, secret, callback.headers, callback.body, now=time.time()):
            return 401
        if self._limiter.allow(callback.flow_run_id, time.monotonic()):
            logger.info("Callback for flow run %s: checking its job now", run_id)
            if watched is None:
                self._early_wakes[run_id] = time.time()
                self._scan_now.set()
            else:
                watched.due = time.time()
                watched.woken = True
                self._wake.set()
        return 202

    async def _method_by_id(self, flow_run_id: UUID) -> MethodDefinition | None:
        """The method a run registered its callback for (labelled before its submit)."""
        assert self._client is not None
        try:
            flow_run = await self._client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return None
        return recorded_method(flow_run.labels or {})


async def check_job(
    session: ProviderSession, record: WaitRecord, method: MethodDefinition
) -> tuple[Verdict, float | None]:
    """One status request: is the job still pending? (And the pause a 429/503 asked for.)

    Anything but a clear "pending" ends the wait: the resumed run checks
    again and reports what it finds (a failure, an error answer, a file).
    """
    try:
        with using_session(session):
            return await _check_job(session, record, method)
    except httpx.TransportError:
        return Verdict.TRY_AGAIN, None
    except ToolflowsError:
        return Verdict.ENDED, None


async def _check_job(
    session: ProviderSession, record: WaitRecord, method: MethodDefinition
) -> tuple[Verdict, float | None]:
    job = record.job
    assert job.status_url is not None
    async with session.stream(
        "GET", job.status_url, configured=job.status_url_configured, deadline=record.deadline
    ) as response:
        if is_transient_status(response.status_code):
            await read_capped(response, ERROR_BODY_BYTES)
            return Verdict.TRY_AGAIN, parse_retry_after(response.headers)
        if response.status_code >= 400 or is_file_response(response):
            return Verdict.ENDED, None
        await read_capped(response, MAX_JSON_BYTES)
        payload = parse_json(response, what="status check answer", task_id=job.task_id)
        answer = Answer(payload=payload, url=str(response.url), http_status=response.status_code)
    status = status_of(answer, method.adapter_config.polling)
    return (Verdict.PENDING if status.state is JobState.PENDING else Verdict.ENDED), None


async def waiting_runs(client: PrefectClient) -> list[FlowRun]:
    """Every run tagged ``toolflows-waiting``, page by page."""
    runs: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[WAITING_TAG])),
            limit=RUNS_PAGE,
            offset=len(runs),
        )
        runs += page
        if len(page) < RUNS_PAGE:
            return runs


@asynccontextmanager
async def claim(client: PrefectClient) -> AsyncIterator[anyio.Event]:
    """Hold the waiter limit's one slot; the event is set if the claim is lost.

    Waits on standby while another waiter holds it. The lease is renewed every
    ``CLAIM_RENEW_SECONDS``; a killed waiter's runs out after
    ``CLAIM_LEASE_SECONDS`` and Prefect frees the slot for a standby.
    """
    await _ensure_waiter_limit(client)
    announced = False
    while (lease_id := await try_lease(client, WAITER_LIMIT, CLAIM_LEASE_SECONDS)) is None:
        if not announced:
            logger.info("Another waiter is active: standing by")
            announced = True
        await asyncio.sleep(STANDBY_SECONDS)
    lost = anyio.Event()
    async with anyio.create_task_group() as renewals:
        renewals.start_soon(_renew, client, lease_id, lost)
        try:
            yield lost
        finally:
            renewals.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), suppress(httpx.HTTPError):
                await client.release_concurrency_slots_with_lease(lease_id)


async def _renew(client: PrefectClient, lease_id: UUID, lost: anyio.Event) -> None:
    renewed_at = time.monotonic()
    while True:
        await asyncio.sleep(CLAIM_RENEW_SECONDS)
        try:
            await client.renew_concurrency_lease(lease_id, lease_duration=CLAIM_LEASE_SECONDS)
            renewed_at = time.monotonic()
        except httpx.HTTPStatusError as exc:
            # 410 Gone: the lease ran out or was revoked; another waiter may hold the slot.
            if exc.response.status_code == 410:
                lost.set()
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() - renewed_at > CLAIM_LEASE_SECONDS - CLAIM_RENEW_SECONDS:
            lost.set()
            return


async def _ensure_waiter_limit(client: PrefectClient) -> None:
    try:
        await client.read_global_concurrency_limit_by_name(WAITER_LIMIT)
    except ObjectNotFound:
        with suppress(ObjectAlreadyExists):
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=WAITER_LIMIT, limit=1)
            )


def _record_of(flow_run: FlowRun) -> WaitRecord | None:
    raw = (flow_run.labels or {}).get(WAIT_LABEL)
    try:
        return WaitRecord.model_validate_json(str(raw))
    except ValueError:
        logger.warning("Flow run %s has no readable wait record; skipped", flow_run.id)
        return None


def _method_key(method: MethodDefinition) -> str:
    text = json.dumps(method.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@flow(name="toolflows-waiter", description="Watch suspended toolflows runs; resume them.")
async def waiter_flow(
    listen: str | None = None, public_url: str | None = None, scan_seconds: float = SCAN_SECONDS
) -> None:
    """The waiter as a flow, to serve it as a deployment and see it in the UI.

    Its run lasts until cancelled; the arguments are the CLI's
    (``listen``: ``HOST:PORT``).
    """
    await Waiter(
        listen=parse_listen(listen) if listen else None,
        public_url=public_url,
        scan_seconds=scan_seconds,
    ).run()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) of the callback endpoint."""
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen takes HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
