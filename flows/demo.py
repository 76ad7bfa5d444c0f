"""``toolflows demo``: a complete run against the built-in fake provider, no setup.

It runs the HeyGen preset unchanged except for its origin, which points at the
fake provider on loopback, then checks the stored file against the bytes the
fake served.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from prefect.logging import get_logger

from toolflows.core.definition import MethodDefinition
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.deployments.registry import load_preset
from toolflows.engine import run_tool_method
from toolflows.fake_provider import FakeProvider
from toolflows.models import ToolResult

DEMO_PARAMS = {
    "video_inputs": [
        {
            "character": {"type": "avatar", "avatar_id": "Daisy-inskirt-20220818"},
            "voice": {"type": "text", "input_text": "Hello from toolflows!", "voice_id": "demo"},
        }
    ],
    "dimension": {"width": 1280, "height": 720},
}


def retarget(definition: MethodDefinition, base_url: str) -> MethodDefinition:
    """The same method with its endpoint's origin replaced (e.g. by a fake provider's)."""
    base = urlsplit(base_url)
    endpoint = urlsplit(definition.endpoint)
    moved = urlunsplit((base.scheme, base.netloc, endpoint.path, endpoint.query, ""))
    return definition.model_copy(update={"endpoint": moved})


async def run_demo() -> ToolResult:
    """Run the HeyGen preset against the fake provider and verify the stored bytes."""
    logger = get_logger("toolflows.demo")
    with FakeProvider() as fake:
        os.environ["HEYGEN_API_KEY"] = fake.api_keys["heygen"]
        method = retarget(load_preset("heygen", "create_avatar_video_v2"), fake.api_url)
        polling = method.adapter_config.polling.model_copy(
            update={"interval_seconds": 0.5, "max_interval_seconds": 1, "max_wait_seconds": 60}
        )
        method.adapter_config.polling = polling
        logger.info("Fake provider at %s (files at %s)", fake.api_url, fake.cdn_url)
        result = await run_tool_method(method.model_dump(), DEMO_PARAMS)
        expected = fake.expected_sha256(result.task_id)
    stored = result.files[0] if result.files else None
    if stored is None or stored.sha256 != expected:
        raise ToolflowsError(
            ErrorCode.DOWNLOAD_FAILED,
            f"demo: stored file does not match the served bytes (expected sha256 {expected})",
            task_id=result.task_id,
        )
    logger.info("Demo OK: %s (%d bytes, sha256 verified)", stored.uri, stored.size)
    return result
