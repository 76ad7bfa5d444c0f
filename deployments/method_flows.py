"""One Prefect flow per saved method, importable as a deployment entrypoint.

``method_flow(definition)`` builds a flow named after the method
(``heygen.create_avatar_video_v2``: Prefect refuses ``/`` in names) whose
parameters are the method's ``requestSchema`` properties, so the Prefect UI
shows a typed form. It runs the same engine as ``run_tool_method`` and loads
the method's block at run time, so edits made to the block in the UI apply to
the next run.

Deployments name these flows by attribute of this module, one per ToolMethod
block (``-`` becomes ``_``): ``toolflows.deployments.method_flows.heygen_create_avatar_video_v2``
or ``deployments/method_flows.py:heygen_create_avatar_video_v2`` is the block
``heygen-create-avatar-video-v2``. No attribute is written per method: the
module ``__getattr__`` (PEP 562) builds the flow from the saved block on first
access. Prefect resolves entrypoints with ``getattr`` on the imported module
(``prefect.flows.load_flow_from_entrypoint``: the worker, the runner's engine
process, ``prefect deploy``), so a fresh process finds the flow, and the
function's ``__name__``/``__qualname__`` is that attribute, which is how
``Flow.to_deployment`` writes the entrypoint.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.states import State
from prefect.types import BANNED_CHARACTERS
from prefect.utilities.asyncutils import run_coro_as_sync

from toolflows.blocks import ToolMethod
from toolflows.cancel import cancel_remote_job
from toolflows.core.definition import MethodDefinition, parse_definition
from toolflows.deployments.flow_parameters import (
    FlowParameter,
    flow_parameters,
    flow_signature,
    request_params,
)
from toolflows.engine import run_tool_method
from toolflows.models import ToolResult

# Attributes that may name a block: what a block name becomes with `-` → `_`.
# Anything else (dunders probed by pickle, inspect, pytest) never calls the API.
_BLOCK_ATTRIBUTE = re.compile(r"[a-z0-9][a-z0-9_]*")


def method_flow(
    definition: MethodDefinition | dict[str, Any], block_name: str | None = None
) -> Flow[..., ToolResult]:
    """The flow of one method, saved as the ToolMethod block ``block_name``.

    Args:
        definition: the method; its ``requestSchema`` gives the flow's parameters.
        block_name: the block the flow runs (default: the method's slug).

    Returns:
        A flow whose keyword parameters are the request params.

    Example:
        ```python
        flow = method_flow(load_preset("fal", "kling_image_to_video"))
        result = await flow(prompt="a cat surfing", image_url="https://…/cat.png")
        ```
    """
    definition = parse_definition(definition)
    block = block_name or definition.slug
    parameters = flow_parameters(definition.request_schema)

    async def run_method(**values: Any) -> ToolResult:
        return await run_tool_method.fn(block, request_params(parameters, values))

    run_method.__signature__ = flow_signature(parameters)  # type: ignore[attr-defined]
    run_method.__name__ = run_method.__qualname__ = flow_attribute(block)
    return Flow(
        run_method,
        name=flow_name(definition),
        description=definition.description or f"Run {definition.qualified_name}.",
        # A run of a method behaves as a run of the generic flow.
        persist_result=run_tool_method.persist_result,
        retries=run_tool_method.retries,
        retry_delay_seconds=run_tool_method.retry_delay_seconds,
        timeout_seconds=run_tool_method.timeout_seconds,
        on_cancellation=[_cancel_hook(block, parameters)],
    )


def flow_name(definition: MethodDefinition) -> str:
    """``inventoryKey.name``, the method's own spelling where Prefect allows it."""
    name = f"{definition.inventory_key}.{definition.name}"
    return "".join("-" if char in BANNED_CHARACTERS else char for char in name)


def flow_attribute(block_name: str) -> str:
    """The attribute of this module that holds the flow of a block."""
    return block_name.replace("-", "_")


def block_name_of(attribute: str) -> str:
    return attribute.replace("_", "-")


def __getattr__(attribute: str) -> Flow[..., ToolResult]:
    """The flow of the ToolMethod block named by ``attribute``, built on first access."""
    if not _BLOCK_ATTRIBUTE.fullmatch(attribute):
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    block_name = block_name_of(attribute)
    try:
        # Runs in a thread of its own when called inside an event loop, as
        # `prefect deploy` does when it resolves entrypoints.
        block = run_coro_as_sync(ToolMethod.aload(block_name))
    except ValueError:
        raise AttributeError(
            f"module {__name__!r} has no attribute {attribute!r}: no ToolMethod block "
            f"named {block_name!r} (save one with `toolflows register FILE`)"
        ) from None
    built = method_flow(block.definition(), block_name)
    globals()[attribute] = built
    return built


def _cancel_hook(
    block_name: str, parameters: list[FlowParameter]
) -> Callable[[Flow[..., Any], FlowRun, State[Any]], Awaitable[None]]:
    """The generic flow's ``on_cancellation`` hook, shown this run as a generic one."""

    async def cancel_remote_method_job(
        flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]
    ) -> None:
        generic_parameters = {
            "method": block_name,
            "params": request_params(parameters, flow_run.parameters),
        }
        generic_run = flow_run.model_copy(update={"parameters": generic_parameters})
        await cancel_remote_job(flow, generic_run, state)

    return cancel_remote_method_job
