"""The real deployment path: a Prefect server, a process work pool, a worker, deployments.

Everything runs as it would on a machine of its own: ``prefect server start``
(SQLite in a temporary ``PREFECT_HOME``), ``prefect worker start`` in a
directory without the code (the worker imports the installed package), the
presets saved as blocks aimed at the fake provider, deployed both with
``toolflows deploy --pool`` and with ``prefect deploy --all`` (prefect.yaml),
then runs triggered by deployment name and checked through the Prefect API.
This module starts its own server: it does not use the ``prefect_api`` fixture.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.prefect_stack import (
    BIN,
    PROJECT,
    aimed_at_api,
    create_process_pool,
    free_port,
    log_tails,
    prefect_server,
    process_worker,
    read_flow_run,
    run_command,
    stack_env,
    wait_for,
)
from tests.helpers import PARAMS, PRESETS, aimed_at
from toolflows.deployments.registry import preset_files, register_definitions
from toolflows.methods import read_definition_file

POOL = "toolflows"  # the work pool prefect.yaml names
PRESET_DEFINITIONS = [d for file in preset_files() for d in read_definition_file(file)]
# Generous: a loaded 2-core machine starts a flow run process in ~10 s.
RUN_SECONDS = 150


@dataclass
class Stack:
    api_url: str
    logs: Path
    toolflows_deploy: dict[str, Any]

    def log_tails(self) -> str:
        return log_tails(self.logs)


@pytest.fixture(scope="module")
def stack(fake, tmp_path_factory) -> Iterator[Stack]:
    """Server, pool, saved presets, deployments (both ways) and a worker."""
    home = tmp_path_factory.mktemp("prefect-home")
    work = tmp_path_factory.mktemp("worker-cwd")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    provider_keys = {variable: fake.api_keys[key] for key, _, variable in PRESETS.values()}
    env = stack_env(home, api_url, **provider_keys)
    server_env = {
        **env,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_UI_ENABLED": "true",  # the browser test looks at it
    }
    with ExitStack() as running:
        running.enter_context(prefect_server(home, server_env, api_url))
        running.enter_context(aimed_at_api(api_url))
        run_coro_as_sync(create_process_pool(POOL))
        presets = [aimed_at(fake, definition) for definition in PRESET_DEFINITIONS]
        run_coro_as_sync(register_definitions(presets))
        worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
        running.enter_context(process_worker(POOL, worker_env, home / "worker.log", work))
        deployed = run_command(
            [str(BIN / "toolflows"), "deploy", "--pool", POOL, "--name-prefix", "ci-"], env, work
        )
        run_command([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env, PROJECT)
        yield Stack(api_url, home, json.loads(deployed.stdout))


RUNS = {
    # deployment name → parameters: a method deployed by each tool, and the generic flow
    "heygen.create_avatar_video_v2/ci-heygen-create-avatar-video-v2": PARAMS["heygen"],
    "runway.image_to_video/runway-image-to-video": PARAMS["runway"],
    "run_tool_method/run-tool-method": {
        "method": "fal/kling_image_to_video",
        "params": PARAMS["fal"],
    },
}


@pytest.fixture(scope="module")
def finished_runs(stack) -> dict[str, FlowRun]:
    """The runs of RUNS, started together by deployment name, once they are final."""
    started = {
        name: run_deployment(name, parameters=params, timeout=0) for name, params in RUNS.items()
    }

    def all_final() -> dict[str, FlowRun] | None:
        runs = {name: run_coro_as_sync(read_flow_run(run.id)) for name, run in started.items()}
        return runs if all(run.state and run.state.is_final() for run in runs.values()) else None

    try:
        return wait_for(all_final, RUN_SECONDS, "the runs to finish")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}\n{stack.log_tails()}") from None


def test_toolflows_deploy_creates_a_deployment_per_method_on_the_pool(stack):
    summary = stack.toolflows_deploy

    expected = {f"{d.inventory_key}.{d.name}/ci-{d.slug}" for d in PRESET_DEFINITIONS}
    assert summary["status"] == "success"
    assert set(summary["deployments"]) == expected | {"run_tool_method/ci-run-tool-method"}
    for name in summary["deployments"]:
        deployment = run_coro_as_sync(read_deployment(name))
        assert deployment.work_pool_name == POOL
        assert deployment.entrypoint.startswith(
            ("toolflows.deployments.method_flows.", "toolflows.engine.")
        )


def test_prefect_deploy_all_creates_the_prefect_yaml_deployments(stack):
    config = yaml.safe_load((PROJECT / "prefect.yaml").read_text())

    for entry in config["deployments"]:
        deployment = run_coro_as_sync(read_deployment_named(entry["name"]))
        assert deployment.entrypoint == entry["entrypoint"]
        assert deployment.work_pool_name == POOL
        assert deployment.pull_steps == []
        schedules = entry["schedules"]
        assert [s.active for s in deployment.schedules] == [s["active"] for s in schedules]
        assert [s.parameters for s in deployment.schedules] == [s["parameters"] for s in schedules]


def test_runs_on_the_worker_complete_and_store_the_bytes_the_provider_served(finished_runs, fake):
    for name, flow_run in finished_runs.items():
        assert flow_run.state.is_completed(), f"{name}: {flow_run.state.message}"
        result = run_coro_as_sync(flow_run.state.aresult())
        job = fake.job(result.task_id)
        stored = result.files[0]
        assert stored.sha256 == fake.expected_sha256(job.id), name
        assert hashlib.sha256(local_path(stored.uri).read_bytes()).hexdigest() == stored.sha256
        assert job.input == sent_params(name), name


def test_a_run_publishes_its_file_artifacts_and_the_completed_event(finished_runs, stack, fake):
    flow_run = finished_runs["heygen.create_avatar_video_v2/ci-heygen-create-avatar-video-v2"]
    result = run_coro_as_sync(flow_run.state.aresult())
    stored = result.files[0]

    artifacts = run_coro_as_sync(read_artifacts(flow_run.id))
    event = wait_for(lambda: completed_event(stack.api_url, flow_run.id), 60, "the event")

    assert any(stored.uri in str(artifact.data) for artifact in artifacts)
    summary = [a for a in artifacts if a.key == "toolflows-heygen-create-avatar-video-v2"]
    assert len(summary) == 1
    assert result.task_id in summary[0].data
    assert event["payload"]["method"] == "heygen/create_avatar_video_v2"
    assert event["payload"]["taskId"] == result.task_id
    assert event["payload"]["files"][0]["uri"] == stored.uri
    assert event["payload"]["files"][0]["sha256"] == fake.expected_sha256(result.task_id)


def sent_params(deployment_name: str) -> dict[str, Any]:
    parameters = RUNS[deployment_name]
    return parameters["params"] if deployment_name.startswith("run_tool_method/") else parameters


def local_path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(unquote(urlsplit(uri).path))


async def read_deployment(name: str) -> Any:
    async with get_client() as client:
        return await client.read_deployment_by_name(name)


async def read_deployment_named(name: str) -> Any:
    """A deployment by its own name alone (prefect.yaml names each one once)."""
    async with get_client() as client:
        deployments = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
        )
    assert len(deployments) == 1, [d.name for d in deployments]
    return deployments[0]


async def read_artifacts(flow_run_id: Any) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def completed_event(api_url: str, flow_run_id: Any) -> dict[str, Any] | None:
    """The ``toolflows.job.completed`` event related to the flow run, once persisted."""
    answer = httpx.post(
        f"{api_url}/events/filter",
        json={"filter": {"event": {"name": ["toolflows.job.completed"]}}, "limit": 50},
        timeout=10,
    )
    answer.raise_for_status()
    for event in answer.json()["events"]:
        related = {resource["prefect.resource.id"] for resource in event["related"]}
        if f"prefect.flow-run.{flow_run_id}" in related:
            return event
    return None


BROWSER_FLAGS = [
    # No background traffic: this machine has no network but loopback.
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = PROJECT / "test-output" / "screenshots"


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            yield page
        finally:
            browser.close()


def chromium() -> str:
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).exists():
            return candidate
    raise AssertionError(
        "Chromium is not installed: `apt-get install -y chromium` (make test does)"
    )


def visit(
    page: Any, stack: Stack, path: str, shot: str, expect: str, tab: str | None = None
) -> str:
    """Open a UI page (and tab), wait for ``expect``, keep a screenshot; return the page text."""
    ui = stack.api_url.removesuffix("/api")
    page.goto(ui + path, wait_until="networkidle")
    if tab:
        page.get_by_role("tab", name=tab).or_(page.get_by_text(tab, exact=True)).first.click()
    page.get_by_text(expect, exact=False).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"), full_page=True)
    return page.inner_text("body")


def test_the_ui_run_form_shows_the_methods_request_schema(stack, browser_page):
    deployment = run_coro_as_sync(
        read_deployment("fal.kling_image_to_video/fal-kling-image-to-video")
    )
    definition = next(d for d in PRESET_DEFINITIONS if d.name == "kling_image_to_video")

    text = visit(
        browser_page,
        stack,
        f"/deployments/deployment/{deployment.id}/run",
        "run-form",
        "Parameters",
    )

    fields = definition.request_schema["properties"]
    required = set(definition.request_schema["required"])
    for name in fields:
        label = name if name in required else f"{name} (Optional)"
        assert label in text, f"{label!r} missing from the run form"


def test_the_ui_block_catalog_lists_the_tool_method_block(stack, browser_page):
    text = visit(browser_page, stack, "/blocks/catalog", "block-catalog", "Tool Method")

    assert "Tool Method" in text
    assert "An asynchronous generation API method" in text


def test_the_ui_shows_a_finished_runs_file_link_artifact(stack, finished_runs, browser_page):
    flow_run = finished_runs["heygen.create_avatar_video_v2/ci-heygen-create-avatar-video-v2"]
    stored = run_coro_as_sync(flow_run.state.aresult()).files[0]

    text = visit(
        browser_page,
        stack,
        f"/runs/flow-run/{flow_run.id}",
        "flow-run-artifacts",
        "toolflows-heygen-create-avatar-video-v2",
        tab="Artifacts",
    )

    assert f"{stored.filename}: video/mp4" in text
    browser_page.get_by_text(f"{stored.filename}: video/mp4").first.click()
    link = browser_page.get_by_role("link", name=stored.filename).first
    link.wait_for(timeout=30_000)
    browser_page.screenshot(path=str(SCREENSHOTS / "link-artifact.png"), full_page=True)
    assert link.get_attribute("href") == stored.uri
