"""Test helpers: presets pointed at the fake provider, with fast polling."""

from __future__ import annotations

import asyncio
import hashlib
import os
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import FlowRun, State
from prefect.exceptions import ObjectAlreadyExists
from prefect.flow_engine import run_flow
from prefect.types.entrypoint import EntrypointType
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic.alias_generators import to_camel

from testkit.prefect_stack import create_process_pool, read_flow_run
from toolflows.core.definition import MethodDefinition
from toolflows.demo import retarget
from toolflows.deployments.registry import load_preset
from toolflows.engine import run_tool_method
from toolflows.models import ToolResult

PRESETS = {
    "heygen": ("heygen", "create_avatar_video_v2", "HEYGEN_API_KEY"),
    "fal": ("fal", "kling_image_to_video", "FAL_KEY"),
    "fal_image": ("fal", "flux_dev_image", "FAL_KEY"),
    "runway": ("runway", "image_to_video", "RUNWAYML_API_SECRET"),
    "replicate": ("replicate", "create_prediction", "REPLICATE_API_TOKEN"),
}

PARAMS = {
    "heygen": {
        "video_inputs": [
            {
                "character": {"type": "avatar", "avatar_id": "Daisy-inskirt-20220818"},
                "voice": {"type": "text", "input_text": "Hello", "voice_id": "v1"},
            }
        ]
    },
    "fal": {"prompt": "a cat surfing", "image_url": "https://example.com/cat.png"},
    "runway": {
        "model": "gen4_turbo",
        "promptImage": "https://example.com/first.png",
        "ratio": "1280:720",
    },
    "replicate": {"version": "39ed52f2", "input": {"prompt": "corgi"}},
}

FAST_POLLING = {
    "interval_seconds": 0.05,
    "backoff_factor": 1.5,
    "max_interval_seconds": 0.2,
    "jitter": 0.1,
    "max_wait_seconds": 20,
}


def aimed_at(fake: Any, definition: MethodDefinition, **polling: Any) -> MethodDefinition:
    """A preset aimed at the fake provider, polling fast (``polling`` overrides)."""
    method = retarget(definition, fake.api_url).model_copy(deep=True)
    method.adapter_config.polling = method.adapter_config.polling.model_copy(
        update={**FAST_POLLING, **polling}
    )
    return method


def fake_method(fake: Any, provider: str, **polling: Any) -> MethodDefinition:
    """The provider's preset aimed at the fake, its key in the environment, polling fast."""
    inventory_key, name, variable = PRESETS[provider]
    os.environ[variable] = fake.api_keys[inventory_key]
    return aimed_at(fake, load_preset(inventory_key, name), **polling)


def generic_definition(fake: Any, endpoint: str, **polling: Any) -> dict[str, Any]:
    """A definition as a user would write it from the SPEC, for one of the fake's generic APIs."""
    os.environ["GENERIC_API_KEY"] = fake.api_keys["generic"]
    return {
        "inventoryKey": "acme",
        "name": endpoint.strip("/").replace("/", "_").replace(":", "_"),
        "endpoint": fake.api_url + endpoint,
        "adapterConfig": {
            "headers": {"Authorization": "Bearer ${GENERIC_API_KEY}"},
            "polling": {**{to_camel(key): value for key, value in FAST_POLLING.items()}, **polling},
        },
    }


def run(
    method: MethodDefinition | dict[str, Any] | str,
    params: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ToolResult:
    """Run the flow to completion from sync test code."""
    if isinstance(method, MethodDefinition):
        method = method.model_dump()
    return run_coro_as_sync(run_tool_method(method, params, **kwargs))


def artifacts_of(flow_run_id: Any) -> list[Any]:
    """The artifacts a flow run created, read back through the Prefect API."""

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )

    return run_coro_as_sync(read())


def assert_completed_with_the_served_files(runs: list[FlowRun], fake: Any) -> None:
    """Each run completed with the file the fake served: recorded and stored sha256 agree."""
    for run in runs:
        assert run.state.is_completed(), run.state.message
        result = run_coro_as_sync(run.state.aresult())
        stored = result.files[0]
        assert stored.sha256 == fake.expected_sha256(result.task_id)
        path = Path(unquote(urlsplit(stored.uri).path))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == stored.sha256


# -- deployment runs executed in this process (a worker's flow run process, in a test) --

# A suspending job polled every 1-2 s once it is checked (inline, or by a waiter).
SUSPENDING_POLLING = {"interval_seconds": 1, "max_interval_seconds": 2, "max_wait_seconds": 120}


async def deploy_generic_flow(pool: str, name: str) -> UUID:
    """``run_tool_method`` deployed on a process pool (created unless it exists)."""
    with suppress(ObjectAlreadyExists):
        await create_process_pool(pool)
    deployment = await run_tool_method.ato_deployment(
        name=name, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH
    )
    return await deployment.aapply()


def start_suspending_run(deployment_id: UUID, fake: Any, job_seconds: float) -> FlowRun:
    """A deployment run of a Runway job (done ``job_seconds`` after its submit) that
    suspends while the job is pending."""
    fake.script("runway", seconds_until_done=job_seconds)
    method = fake_method(fake, "runway", wait="suspend", **SUSPENDING_POLLING)
    parameters = {
        "method": method.model_dump(mode="json", by_alias=True),
        "params": PARAMS["runway"],
    }

    async def create() -> FlowRun:
        async with get_client() as client:
            return await client.create_flow_run_from_deployment(
                deployment_id, parameters=parameters
            )

    return run_coro_as_sync(create())


def execute(flow_run_id: UUID) -> None:
    """Run the flow run here as ``prefect.engine`` runs it in a worker's flow run process."""

    async def engine() -> None:
        flow_run = await read_flow_run(flow_run_id)
        await run_flow(run_tool_method, flow_run=flow_run, return_type="state")

    asyncio.run(engine())


def states_of(flow_run_id: UUID) -> list[State]:
    async def read() -> list[State]:
        async with get_client() as client:
            return await client.read_flow_run_states(flow_run_id)

    return run_coro_as_sync(read())


def state_names(flow_run_id: UUID) -> list[str]:
    return [state.name for state in states_of(flow_run_id)]
