"""Deployments of the saved methods: one per enabled ToolMethod block, plus the generic flow.

Entrypoints are module paths (``toolflows.engine.run_tool_method``,
``toolflows.deployments.method_flows.heygen_create_avatar_video_v2``), not files: the
code is installed where flows run (``pip install -e .``), so the runner of
``serve`` and a process worker both import it, and no code storage or pull
step is needed (a deployment with a module-path entrypoint and no pull steps
is imported as is by ``prefect.flows.load_flow_from_flow_run``).

Deployment names are ``<prefix><block name>`` (``heygen-create-avatar-video-v2``)
and ``<prefix>run-tool-method``; a run is started as
``heygen.create_avatar_video_v2/heygen-create-avatar-video-v2``.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.runner import Runner
from prefect.types.entrypoint import EntrypointType

from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.deployments.method_flows import method_flow
from toolflows.deployments.registry import saved_methods
from toolflows.engine import run_tool_method

GENERIC_DEPLOYMENT = "run-tool-method"


async def method_deployments(
    *, name_prefix: str = "", work_pool_name: str | None = None
) -> list[RunnerDeployment]:
    """The generic deployment and one per enabled saved method (not yet applied)."""
    deployments = [
        await run_tool_method.ato_deployment(
            name=f"{name_prefix}{GENERIC_DEPLOYMENT}",
            work_pool_name=work_pool_name,
            entrypoint_type=EntrypointType.MODULE_PATH,
            tags=["toolflows"],
        )
    ]
    for block_name, definition in (await saved_methods()).items():
        if not definition.enabled:
            continue
        deployments.append(
            await method_flow(definition, block_name).ato_deployment(
                name=f"{name_prefix}{block_name}",
                work_pool_name=work_pool_name,
                entrypoint_type=EntrypointType.MODULE_PATH,
                tags=["toolflows", definition.inventory_key],
            )
        )
    return deployments


def full_name(deployment: RunnerDeployment) -> str:
    """``flow/deployment``: how ``run_deployment`` and ``prefect deployment run`` name it."""
    return f"{deployment.flow_name}/{deployment.name}"


async def deploy_methods(work_pool_name: str, *, name_prefix: str = "") -> list[str]:
    """Create or update the deployments on a work pool; their full names."""
    async with get_client() as client:
        try:
            await client.read_work_pool(work_pool_name)
        except ObjectNotFound:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID,
                f"no work pool named {work_pool_name!r}: create one with "
                f"`prefect work-pool create {work_pool_name} --type process`",
            ) from None
    deployments = await method_deployments(name_prefix=name_prefix, work_pool_name=work_pool_name)
    for deployment in deployments:
        await deployment.aapply()
    return [full_name(deployment) for deployment in deployments]


async def serve_methods(
    *, name_prefix: str = "", on_ready: Callable[[list[str]], None] = lambda names: None
) -> None:
    """Serve the deployments from this process until it is stopped.

    ``on_ready`` gets their full names once they exist in the API.
    """
    runner = Runner(name=f"{name_prefix}toolflows")
    deployments = await method_deployments(name_prefix=name_prefix)
    for deployment in deployments:
        await runner.aadd_deployment(deployment)
    on_ready([full_name(deployment) for deployment in deployments])
    await runner.start()
