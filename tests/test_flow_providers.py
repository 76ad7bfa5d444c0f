"""End to end on a real Prefect API against the fake provider's real HTTP shapes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from testkit.fake_provider import Fault
from tests.helpers import PARAMS, fake_method, run
from toolflows.core.errors import ErrorCode, ToolflowsError

pytestmark = pytest.mark.usefixtures("prefect_api")

PROVIDERS = ["heygen", "fal", "runway", "replicate"]

FAILURE_REASONS = {
    "heygen": "Video is too long",
    "fal": "Runner disconnected",
    "runway": "An unexpected error occurred.",
    "replicate": "OOM",
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_success_stores_the_served_bytes(fresh_fake, provider):
    fresh_fake.script(provider, file_size=300_000)

    result = run(fake_method(fresh_fake, provider), PARAMS[provider])

    assert result.status == "success"
    assert result.method.startswith(provider + "/")
    assert result.task_id
    assert fresh_fake.submits(provider) == 1
    primary = result.files[0]
    assert primary.size == 300_000
    stored = Path(primary.uri.removeprefix("file://"))
    assert stored.is_file()
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == primary.sha256
    assert primary.sha256 == fresh_fake.expected_sha256(result.task_id)
    assert primary.read_bytes()[:12] == stored.read_bytes()[:12]
    assert f"/{result.task_id}/" in primary.uri
    assert result.filename == primary.filename
    assert result.mimetype == primary.mimetype
    assert result.warnings == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_failure_reports_the_providers_reason(fresh_fake, provider):
    fresh_fake.script(provider, outcome="failure")

    with pytest.raises(ToolflowsError) as raised:
        run(fake_method(fresh_fake, provider), PARAMS[provider])

    assert raised.value.code is ErrorCode.TASK_FAILED
    assert FAILURE_REASONS[provider] in raised.value.message
    assert raised.value.task_id
    assert fresh_fake.submits(provider) == 1


def test_heygen_thumbnail_is_not_the_primary_output(fresh_fake):
    fresh_fake.script("heygen")

    result = run(fake_method(fresh_fake, "heygen"), PARAMS["heygen"])

    assert len(result.files) == 1
    assert result.mimetype == "video/mp4"
    assert "thumb" not in result.files[0].source_url
    assert result.data["data"]["thumbnail_url"]


def test_timeout_carries_the_job_id_and_cancels_the_job(fresh_fake):
    fresh_fake.script("runway", polls_until_done=10_000)
    method = fake_method(fresh_fake, "runway", max_wait_seconds=1.0)

    with pytest.raises(ToolflowsError) as raised:
        run(method, PARAMS["runway"])

    error = raised.value
    assert error.code is ErrorCode.POLLING_TIMEOUT
    assert error.task_id
    assert error.task_id in error.message
    assert fresh_fake.submits("runway") == 1
    assert fresh_fake.cancels("runway") == [error.task_id]


def test_rate_limited_status_checks_are_retried_after_retry_after(fresh_fake):
    fresh_fake.script(
        "heygen",
        status_faults=[
            Fault.http(429, headers={"Retry-After": "1"}),
            Fault.http(503),
            Fault.reset(),
        ],
    )

    result = run(fake_method(fresh_fake, "heygen"), PARAMS["heygen"])

    assert result.files[0].sha256 == fresh_fake.expected_sha256(result.task_id)
    assert fresh_fake.submits("heygen") == 1
    status_times = [
        request.time
        for request in fresh_fake.requests(method="GET", path_prefix="/v1/video_status.get")
    ]
    # The check after the 429 waited at least the second the server asked for.
    assert status_times[1] - status_times[0] >= 0.95


def test_invalid_config_submits_nothing(fresh_fake):
    method = fake_method(fresh_fake, "heygen").model_dump()
    method["adapter_config"]["polling"]["interval_seconds"] = -1

    with pytest.raises(ToolflowsError) as raised:
        run(method, PARAMS["heygen"])

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "intervalSeconds" in raised.value.message
    assert fresh_fake.submits() == 0


def test_invalid_params_submit_nothing(fresh_fake):
    with pytest.raises(ToolflowsError) as raised:
        run(fake_method(fresh_fake, "fal"), {"prompt": "no image"})

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "image_url" in raised.value.message
    assert fresh_fake.submits() == 0


def test_missing_secret_is_named_and_submits_nothing(fresh_fake, monkeypatch):
    method = fake_method(fresh_fake, "heygen")
    monkeypatch.delenv("HEYGEN_API_KEY")

    with pytest.raises(ToolflowsError) as raised:
        run(method, PARAMS["heygen"])

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "HEYGEN_API_KEY" in raised.value.message
    assert fresh_fake.submits() == 0


def test_credentials_never_reach_the_cdn(fresh_fake):
    for provider in PROVIDERS:
        fresh_fake.script(provider)
        run(fake_method(fresh_fake, provider), PARAMS[provider])

    assert fresh_fake.requests(origin="cdn")
    assert fresh_fake.credential_leaks == []


def test_disabled_method_refuses_to_run(fresh_fake):
    method = fake_method(fresh_fake, "heygen").model_copy(update={"enabled": False})

    with pytest.raises(ToolflowsError) as raised:
        run(method, PARAMS["heygen"])

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "disabled" in raised.value.message
    assert fresh_fake.submits() == 0


def test_a_flow_retry_resumes_the_submitted_job_instead_of_paying_twice(fresh_fake):
    """The submit result is persisted per flow run: a retried run reads it back."""
    from prefect import flow

    from toolflows.engine import run_tool_method

    fresh_fake.script("heygen", status_faults=[Fault.http(401)])
    attempts = []

    @flow(retries=1, retry_delay_seconds=0)
    async def parent() -> object:
        attempts.append(1)
        return await run_tool_method.fn(
            fake_method(fresh_fake, "heygen").model_dump(), PARAMS["heygen"]
        )

    from prefect.utilities.asyncutils import run_coro_as_sync

    result = run_coro_as_sync(parent())

    assert len(attempts) == 2
    assert fresh_fake.submits("heygen") == 1
    assert result.files[0].sha256 == fresh_fake.expected_sha256(result.task_id)
