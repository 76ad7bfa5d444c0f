"""Benchmark 6: waiting costs nothing (issue 11).

Deployment runs of a long job, started by deployment name as the UI does, on
one process worker, with ``polling.wait: "suspend"``: each run submits, then
suspends (its process exits) while ``toolflows waiter`` checks the job and
resumes the run when it ends. Baseline: the same runs with ``wait: "inline"``,
each holding a flow run process for its whole wait.

Everything runs in one bench worker process that drives a stack of its own: a
process work pool and ``prefect worker start``, the generic flow deployed on
it, and a ``toolflows waiter --listen`` process, each in its own process group
(killed at the end, with any flow run process left). The full run starts a
Prefect server of its own on PostgreSQL (a hundred runs starting at once lock
SQLite up); the smoke run uses the suite's server. Every second it reads the
runs' states (one API call) and ``/proc``: the flow run processes under the
worker (command line ``prefect.engine``), the PSS of the worker's and the
waiter's process trees (``smaps_rollup``) and their CPU. "While they wait" is
the stretch of samples in which every run has submitted and is in its waiting
state (Suspended, or Running inline), starting ``SETTLE_SECONDS`` after the
last one got there (a process exits a moment after its run suspends) and
ending when the first leaves it.

Webhooks: the Replicate preset with ``adapterConfig.webhook`` (Standard
Webhooks signing, a 600 s backstop, so only the callback can wake a job
early); lag = the run's first state after Suspended (the waiter's resume) -
the fake's callback send time. Baseline: the lag of the default polling
schedule (5 s x1.5, cap 30 s) for jobs of the same length, computed
(``PollSchedule.check_times``, jobs of 0.9-1.1x the length). Then every
callback is dropped and a 10 s backstop must finish every run. Last (full
run only: the killed waiter's claim lease runs out after 60-75 s), the waiter
is SIGKILLed while the runs wait and started again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench.common import (
    MIB,
    REPLICATE,
    REPLICATE_PARAMS,
    RUNWAY,
    RUNWAY_PARAMS,
    Context,
    Row,
    percentile,
)
from bench.procstat import command_line, process_tree, tree_cpu_seconds, tree_pss_bytes
from bench.schedule import DEFAULT, SAMPLES

POOL = "bench-waiting"
DEPLOYMENT = "run_tool_method/bench-waits"
PSS_LIMIT = 400e6  # 400 MB
CPU_LIMIT = 0.05
LAG_LIMIT = 2.0
SAMPLE_SECONDS = 1.0
SETTLE_SECONDS = 5.0
BASELINE_WINDOW_SECONDS = 30.0
CALLBACK_BACKSTOP_SECONDS = 600
DROPPED_BACKSTOP_SECONDS = 10
# How often the worker asks for runs to start (Prefect's default: 10 s).
WORKER_QUERY_SECONDS = "1"
# What a window of "every run waits" reports (None when there was no such window).
WINDOW_FIGURES = (
    "max_flow_run_processes",
    "max_worker_pss",
    "max_waiter_pss",
    "max_total_pss",
    "waiter_cpu_cores",
    "worker_cpu_cores",
    "server_cpu_cores",
)


def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    result = ctx.run_worker(
        "waiting:measure",
        runs=sizes.waiting_runs,
        job_seconds=sizes.waiting_job_seconds,
        webhook_runs=sizes.webhook_runs,
        webhook_job_seconds=sizes.webhook_job_seconds,
        kill_runs=sizes.waiter_kill_runs,
        server_pid=ctx.server.pid,
        own_server=sizes.waiting_own_server,
    )
    return _rows(result, sizes.waiting_runs, sizes.waiting_job_seconds)


def _rows(result: dict[str, Any], runs: int, job_seconds: float) -> list[Row]:
    suspend, inline = result["suspend"], result["inline"]
    waiting, baseline = suspend["window"], inline["window"]
    label = f"6. {runs} runs x {job_seconds:g} s, suspend"
    suspend_pss = waiting["max_total_pss"]
    waiter_cpu = waiting["waiter_cpu_cores"]
    rows = [
        Row(
            f"{label}: flow run processes alive while waiting",
            waiting["max_flow_run_processes"],
            baseline["max_flow_run_processes"],
            "processes",
            "== 0",
            waiting["max_flow_run_processes"] == 0,
            details={"suspend": suspend, "inline": inline},
        ),
        Row(
            f"{label}: PSS of worker + waiter while waiting",
            None if suspend_pss is None else suspend_pss / MIB,
            None if baseline["max_worker_pss"] is None else baseline["max_worker_pss"] / MIB,
            "MiB",
            f"<= {PSS_LIMIT / MIB:.0f} MiB (400 MB)",
            suspend_pss is not None and suspend_pss <= PSS_LIMIT,
        ),
        Row(
            f"{label}: waiter CPU while waiting (baseline: inline worker tree)",
            waiter_cpu,
            baseline["worker_cpu_cores"],
            "cores",
            f"<= {CPU_LIMIT:g} core",
            waiter_cpu is not None and waiter_cpu <= CPU_LIMIT,
        ),
        Row(
            f"{label}: runs completed (sha256 verified)",
            suspend["verified"],
            None,
            "runs",
            f"== {runs}",
            suspend["verified"] == runs,
        ),
        Row(
            f"{label}: submits",
            suspend["submits"],
            None,
            "submits",
            f"== {runs}",
            suspend["submits"] == runs,
        ),
        Row(
            f"{label}: Prefect server CPU while waiting",
            waiting["server_cpu_cores"],
            baseline["server_cpu_cores"],
            "cores",
            "(context)",
            None,
        ),
    ]
    called_back, dropped = result["called_back"], result["dropped"]
    webhook_label = f"6. webhook, {called_back['runs']} runs x {called_back['job_seconds']:g} s"
    rows += [
        Row(
            f"{webhook_label}: callback -> resume lag p95 (baseline: default schedule)",
            called_back["lag_p95"],
            called_back["schedule_lag_p95"],
            "s",
            f"<= {LAG_LIMIT:g} s",
            called_back["lag_p95"] <= LAG_LIMIT,
            details={"called_back": called_back, "dropped": dropped},
        ),
        Row(
            f"{webhook_label}: every callback dropped, {DROPPED_BACKSTOP_SECONDS} s backstop: "
            "runs completed",
            dropped["verified"],
            None,
            "runs",
            f"== {dropped['runs']}",
            dropped["verified"] == dropped["runs"],
        ),
    ]
    killed = result["killed"]
    # Not measured in the smoke run: the killed waiter's claim takes 60-75 s to expire.
    lost = None if killed is None else killed["runs"] - killed["verified"]
    duplicates = None if killed is None else killed["submits"] - killed["runs"]
    target = "(full run only)" if killed is None else "== 0"
    kill_label = "6. waiter SIGKILLed mid-wait, restarted"
    return [
        *rows,
        Row(
            f"{kill_label}: runs lost",
            lost,
            None,
            "runs",
            target,
            None if lost is None else lost == 0,
            details={"killed": killed},
        ),
        Row(
            f"{kill_label}: duplicate submits",
            duplicates,
            None,
            "submits",
            target,
            None if duplicates is None else duplicates == 0,
        ),
    ]


# -- worker side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One look at the stack, every ``SAMPLE_SECONDS``."""

    at: float
    waiting: bool  # every run has submitted and sits in its waiting state, settled
    runs_waiting: int
    flow_run_processes: int
    worker_pss: int
    waiter_pss: int
    worker_cpu: float
    waiter_cpu: float
    server_cpu: float


@dataclass
class Stack:
    """The worker and waiter this benchmark runs, and the fake it scripts."""

    fake: Any
    home: Path
    env: dict[str, str]
    processes: ExitStack
    server_pid: int
    worker: Any = None
    waiter: Any = None
    waiters_started: int = 0
    workers_started: int = 0

    def start_worker(self) -> None:
        """A fresh worker: what one phase leaves in its heap is not charged to the next."""
        from testkit.prefect_stack import process_worker, stop_group

        if self.worker is not None:
            stop_group(self.worker)
        self.workers_started += 1
        log = self.home / f"worker-{self.workers_started}.log"
        self.worker = self.processes.enter_context(process_worker(POOL, self.env, log, self.home))

    def start_waiter(self) -> None:
        from testkit.prefect_stack import BIN, background, free_port

        self.waiters_started += 1
        port = free_port()
        command = [str(BIN / "toolflows"), "waiter", "--listen", f"127.0.0.1:{port}"]
        command += ["--public-url", f"http://127.0.0.1:{port}/toolflows"]
        log = self.home / f"waiter-{self.waiters_started}.log"
        self.waiter = self.processes.enter_context(background(command, self.env, log, self.home))

    def wait_for_waiter(self) -> None:
        """Until the waiter holds its claim (and has published its callback URL)."""
        from testkit.prefect_stack import wait_for

        log = self.home / f"waiter-{self.waiters_started}.log"
        wait_for(lambda: "Waiter active" in log.read_text(errors="replace"), 120, "the waiter")

    def sample(self, waiting: bool, runs_waiting: int) -> Sample:
        worker_tree = process_tree(self.worker.pid)
        flow_runs = [pid for pid in worker_tree[1:] if "prefect.engine" in command_line(pid)]
        return Sample(
            at=time.time(),
            waiting=waiting,
            runs_waiting=runs_waiting,
            flow_run_processes=len(flow_runs),
            worker_pss=tree_pss_bytes(self.worker.pid),
            waiter_pss=tree_pss_bytes(self.waiter.pid),
            worker_cpu=tree_cpu_seconds(self.worker.pid),
            waiter_cpu=tree_cpu_seconds(self.waiter.pid),
            server_cpu=tree_cpu_seconds(self.server_pid),
        )

    def follow(
        self,
        flow_runs: list[Any],
        provider: str,
        waiting_state: str,
        timeout: float,
        on_waiting: Callable[[], None] | None = None,
        window_seconds: float | None = None,
    ) -> tuple[list[Any], list[Sample]]:
        """Sample until every run is final, or until all have waited ``window_seconds``.

        ``on_waiting`` is called once, when all wait.
        """
        ids = [flow_run.id for flow_run in flow_runs]
        samples: list[Sample] = []
        all_waiting_since: float | None = None
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            current = _read_runs(ids)
            names = [flow_run.state.name if flow_run.state else "" for flow_run in current]
            waiting = names.count(waiting_state)
            # Runs the server failed to start (Crashed, Failed before their submit) wait for
            # nothing; a completed run means the waiting is over.
            ended = [run.state for run in current if run.state and run.state.is_final()]
            all_wait = waiting == len(ids) - len(ended) and waiting > 0
            all_wait = all_wait and not any(state.is_completed() for state in ended)
            if all_wait and self.fake.submits(provider) >= waiting:
                all_waiting_since = all_waiting_since or time.time()
            else:
                all_waiting_since = None
            settled = all_waiting_since is not None
            settled = settled and time.time() - all_waiting_since >= SETTLE_SECONDS
            samples.append(self.sample(settled, waiting))
            if settled and on_waiting is not None:
                on_waiting()
                on_waiting = None
            waited = time.time() - all_waiting_since if settled else 0.0
            if window_seconds is not None and waited >= SETTLE_SECONDS + window_seconds:
                return current, samples
            if all(flow_run.state and flow_run.state.is_final() for flow_run in current):
                return current, samples
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs not final after {timeout:.0f} s: {sorted(names)}")
            time.sleep(max(0.0, SAMPLE_SECONDS - (time.monotonic() - began)))

    def stop_flow_runs(self) -> None:
        """Kill the worker's flow run processes: they have process groups of their own."""
        for pid in process_tree(self.worker.pid)[1:]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill_and_restart_waiter(self) -> None:
        os.killpg(self.waiter.pid, signal.SIGKILL)
        self.waiter.wait()
        self.start_waiter()


def measure(
    runs: int,
    job_seconds: float,
    webhook_runs: int,
    webhook_job_seconds: float,
    kill_runs: int,
    server_pid: int,
    own_server: bool,
) -> dict[str, Any]:
    """Worker side: every phase of the benchmark, on one waiter; the suspended runs get a
    worker of their own (the baseline's 100 flow run processes leave the first one larger)."""
    from bench.fakectl import FakeClient

    fake = FakeClient.from_env()
    with _stack(fake, server_pid, own_server) as stack:
        inline = _waiting_phase(stack, "inline", runs, job_seconds)
        stack.start_worker()
        suspend = _waiting_phase(stack, "suspend", runs, job_seconds)
        called_back = _callback_phase(
            stack, "send", CALLBACK_BACKSTOP_SECONDS, webhook_runs, webhook_job_seconds
        )
        called_back |= _callback_lags(called_back.pop("flow_runs"), fake)
        called_back["schedule_lag_p95"] = _schedule_lag_p95(webhook_job_seconds)
        dropped = _callback_phase(
            stack, "drop", DROPPED_BACKSTOP_SECONDS, webhook_runs, webhook_job_seconds
        )
        dropped.pop("flow_runs")
        killed = None
        if kill_runs:
            killed = _waiting_phase(
                stack, "suspend", kill_runs, webhook_job_seconds, stack.kill_and_restart_waiter
            )
    return {
        "inline": inline,
        "suspend": suspend,
        "called_back": called_back,
        "dropped": dropped,
        "killed": killed,
    }


def _timeout(runs: int, job_seconds: float) -> float:
    """Long enough for every run to start, wait and finish on a loaded 2-core machine
    (a flow run process takes 5-15 s to start; a killed waiter's claim ~75 s to expire)."""
    return 3 * job_seconds + 8 * runs + 300


@contextmanager
def _stack(fake: Any, server_pid: int, own_server: bool) -> Iterator[Stack]:
    from prefect.types.entrypoint import EntrypointType
    from prefect.utilities.asyncutils import run_coro_as_sync

    from testkit.prefect_stack import create_process_pool
    from toolflows.engine import run_tool_method

    async def deploy() -> None:
        await create_process_pool(POOL)
        deployment = await run_tool_method.ato_deployment(
            name=DEPLOYMENT.split("/")[1],
            work_pool_name=POOL,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        await deployment.aapply()

    home = Path.cwd() / "waiting"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "REPLICATE_WEBHOOK_SECRET": fake.webhook_secrets()["replicate"],
        "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS,
    }
    os.environ["REPLICATE_WEBHOOK_SECRET"] = env["REPLICATE_WEBHOOK_SECRET"]
    with ExitStack() as processes:
        if own_server:
            server_pid, env["PREFECT_API_URL"] = processes.enter_context(_server_on_postgres(env))
        run_coro_as_sync(deploy())
        stack = Stack(fake, home, env, processes, server_pid)
        stack.start_worker()
        try:
            stack.start_waiter()
            stack.wait_for_waiter()
            yield stack
        finally:
            stack.stop_flow_runs()


@contextmanager
def _server_on_postgres(env: dict[str, str]) -> Iterator[tuple[int, str]]:
    """A Prefect server of this benchmark's own, on PostgreSQL: (its pid, its API URL).

    On SQLite, a hundred runs starting at once lock the database up ("database
    is locked", then API calls time out and the worker fails to start runs).
    """
    from testkit.prefect_stack import aimed_at_api, free_port, postgres, prefect_server

    home = Path.cwd() / "waiting-server"
    home.mkdir(exist_ok=True)
    api_url = f"http://127.0.0.1:{free_port()}/api"
    with postgres() as database:
        server_env = {
            **env,
            "PREFECT_API_DATABASE_CONNECTION_URL": database.sqlalchemy_url,
            # The default pool (5 + 10 overflow) runs dry: requests wait 30 s, then 500.
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "40",
        }
        with prefect_server(home, server_env, api_url) as server, aimed_at_api(api_url):
            yield server.pid, api_url


def _waiting_phase(
    stack: Stack,
    wait: str,
    runs: int,
    job_seconds: float,
    on_waiting: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Runs of the Runway preset waiting ``wait``-style: processes, memory, CPU, outcome.

    The inline baseline stops once all its runs have waited ``BASELINE_WINDOW_SECONDS``
    (their processes are killed): how they end is not what it measures.
    """
    from testkit.prefect_stack import wait_for

    stack.fake.reset()
    stack.fake.script("runway", seconds_until_done=job_seconds)
    flow_runs = _start(_definition(RUNWAY, wait=wait), RUNWAY_PARAMS, runs)
    inline = wait == "inline"
    done, samples = stack.follow(
        flow_runs,
        "runway",
        "Running" if inline else "Suspended",
        _timeout(runs, job_seconds),
        on_waiting,
        window_seconds=BASELINE_WINDOW_SECONDS if inline else None,
    )
    measured = {
        "runs": runs,
        "job_seconds": job_seconds,
        "window": _window(samples),
        "max_flow_run_processes_overall": max(s.flow_run_processes for s in samples),
    }
    if inline:
        stack.stop_flow_runs()
        # The worker runs each killed run's crash hooks in a process of its own.
        wait_for(lambda: len(process_tree(stack.worker.pid)) == 1, 900, "the crash hooks")
        return measured
    return measured | {
        "resumes": sorted(len(_suspensions(flow_run.id)) for flow_run in done),
        **_outcome(done, stack.fake, "runway"),
    }


def _callback_phase(
    stack: Stack, callback: str, backstop_seconds: float, runs: int, job_seconds: float
) -> dict[str, Any]:
    """Runs of the Replicate preset with callbacks on; the fake sends or drops them."""
    from toolflows.core.definition import WebhookConfig

    stack.fake.reset()
    stack.fake.script("replicate", seconds_until_done=job_seconds, callback=callback)
    webhook = WebhookConfig(
        field="webhook",
        signing="standard-webhooks",
        secret="${REPLICATE_WEBHOOK_SECRET}",
        backstop_seconds=backstop_seconds,
    )
    definition = _definition(REPLICATE, webhook=webhook, wait="suspend")
    flow_runs = _start(definition, REPLICATE_PARAMS, runs)
    done, _ = stack.follow(flow_runs, "replicate", "Suspended", _timeout(runs, job_seconds))
    return {
        "runs": runs,
        "job_seconds": job_seconds,
        "backstop_seconds": backstop_seconds,
        "callbacks": len(stack.fake.callbacks()),
        "flow_runs": done,
        **_outcome(done, stack.fake, "replicate"),
    }


def _definition(preset: tuple[str, str], webhook: Any = None, **polling: Any) -> dict[str, Any]:
    """The preset aimed at the fake, as the UI would pass it to the deployment (JSON)."""
    from bench.methods import method_at_fake
    from toolflows.core.definition import MethodDefinition

    method = MethodDefinition.model_validate(method_at_fake(preset, **polling))
    method.adapter_config.webhook = webhook
    return method.model_dump(mode="json", by_alias=True)


def _start(definition: dict[str, Any], params: dict[str, Any], runs: int) -> list[Any]:
    """Start runs by deployment name, as the UI does (no waiting for them)."""
    from prefect.deployments import run_deployment

    parameters = {"method": definition, "params": params}
    return [run_deployment(DEPLOYMENT, parameters=parameters, timeout=0) for _ in range(runs)]


def _read_runs(ids: list[Any]) -> list[Any]:
    """The runs as they stand, in one API call."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
            )

    return run_coro_as_sync(read())


def _suspensions(flow_run_id: Any) -> list[tuple[float, float]]:
    """(entered, left) of each of the run's suspensions, epoch seconds (its state history)."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_run_states(flow_run_id)

    states = sorted(run_coro_as_sync(read()), key=lambda state: state.timestamp)
    return [
        (before.timestamp.timestamp(), after.timestamp.timestamp())
        for before, after in pairwise(states)
        if before.name == "Suspended" and after.name != "Suspended"
    ]


def _window(samples: list[Sample]) -> dict[str, Any]:
    """Figures over the first unbroken stretch of samples in which every run waits."""
    start = next((i for i, sample in enumerate(samples) if sample.waiting), None)
    if start is None:
        return dict.fromkeys(WINDOW_FIGURES) | {"seconds": 0.0, "samples": 0}
    end = next((i for i in range(start, len(samples)) if not samples[i].waiting), len(samples))
    window = samples[start:end]
    first, last = window[0], window[-1]
    wall = last.at - first.at

    def cores(cpu: Callable[[Sample], float]) -> float | None:
        return (cpu(last) - cpu(first)) / wall if wall > 0 else None

    return {
        "seconds": wall,
        "samples": len(window),
        "runs_waiting": min(s.runs_waiting for s in window),
        "max_flow_run_processes": max(s.flow_run_processes for s in window),
        "max_worker_pss": max(s.worker_pss for s in window),
        "max_waiter_pss": max(s.waiter_pss for s in window),
        "max_total_pss": max(s.worker_pss + s.waiter_pss for s in window),
        "waiter_cpu_cores": cores(lambda s: s.waiter_cpu),
        "worker_cpu_cores": cores(lambda s: s.worker_cpu),
        "server_cpu_cores": cores(lambda s: s.server_cpu),
        "first_sample": asdict(first),
    }


def _outcome(done: list[Any], fake: Any, provider: str) -> dict[str, Any]:
    """Runs completed with the served file (sha256 of the fake, of the record, of the bytes)."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    verified, failures = 0, []
    for flow_run in done:
        if not flow_run.state.is_completed():
            failures.append(f"{flow_run.state.name}: {flow_run.state.message}")
            continue
        result = run_coro_as_sync(flow_run.state.aresult())
        stored = result.files[0]
        on_disk = hashlib.sha256(Path(unquote(urlsplit(stored.uri).path)).read_bytes())
        expected = fake.expected_sha256(result.task_id)
        verified += stored.sha256 == expected == on_disk.hexdigest()
    return {"verified": verified, "submits": fake.submits(provider), "failures": failures[:5]}


def _callback_lags(done: list[Any], fake: Any) -> dict[str, Any]:
    """Callback sent (the fake's clock) to the run's resume (the server's), per run."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    sent = {c["job_id"]: c["sent"] for c in fake.callbacks() if not c["forged"]}
    lags, early = [], 0
    for flow_run in done:
        task_id = run_coro_as_sync(flow_run.state.aresult()).task_id
        suspended_at, resumed_at = _suspensions(flow_run.id)[0]
        early += sent[task_id] < suspended_at  # called back before the run had suspended
        lags.append(resumed_at - sent[task_id])
    return {
        "lags": sorted(lags),
        "lag_p50": percentile(lags, 0.5),
        "lag_p95": percentile(lags, 0.95),
        "callbacks_before_suspension": early,
    }


def _schedule_lag_p95(job_seconds: float) -> float:
    """The default schedule's detection lag p95 over jobs of 0.9-1.1x ``job_seconds``."""
    step = 0.2 * job_seconds / (SAMPLES - 1)
    lags = [DEFAULT.check_times(0.9 * job_seconds + i * step).lag or 0.0 for i in range(SAMPLES)]
    return percentile(lags, 0.95)
