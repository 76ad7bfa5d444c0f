"""What a run shows in Prefect: artifacts and events, read back through the API."""

from __future__ import annotations

import re
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.utilities.asyncutils import run_coro_as_sync

from tests.helpers import PARAMS, artifacts_of, fake_method
from toolflows.core.errors import ToolflowsError
from toolflows.engine import run_tool_method

pytestmark = pytest.mark.usefixtures("prefect_api")


def run_state(method, params):
    return run_coro_as_sync(run_tool_method(method.model_dump(), params, return_state=True))


def events_named(name: str, resource_id: str, timeout: float = 20) -> list:
    """Events arrive asynchronously: wait for them."""

    async def read():
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[name]),
                    resource=EventResourceFilter(id=[resource_id]),
                ),
                limit=10,
            )
            return page.events

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = run_coro_as_sync(read())
        if events:
            return events
        time.sleep(0.3)
    return []


def test_a_run_shows_links_summary_progress_and_emits_completed(fresh_fake):
    fresh_fake.script("runway", outputs=2, polls_until_done=4)
    state = run_state(fake_method(fresh_fake, "runway"), PARAMS["runway"])
    result = state.result()
    artifacts = artifacts_of(state.state_details.flow_run_id)

    # Prefect stores link artifacts as markdown links; the run's result is untyped.
    links = [a for a in artifacts if a.type == "markdown" and str(a.data).startswith("[")]
    summaries = [a for a in artifacts if a.type == "markdown" and a.key]
    progresses = [a for a in artifacts if a.type == "progress"]
    assert sorted(str(link.data) for link in links) == sorted(
        f"[{file.filename}]({file.uri})" for file in result.files
    )
    (summary,) = summaries
    assert summary.key == "toolflows-runway-image-to-video"
    assert result.task_id in summary.data
    for status in ("PENDING", "THROTTLED", "RUNNING", "SUCCEEDED"):
        assert f"| {status} |" in summary.data
    assert re.search(r"\| RUNNING \| \d+% \|", summary.data)
    (progress,) = progresses
    assert float(progress.data) == 100.0

    events = events_named(
        "toolflows.job.completed", f"toolflows.job.runway-image-to-video.{result.task_id}"
    )
    assert len(events) == 1
    payload = events[0].payload
    assert payload["taskId"] == result.task_id
    assert [file["uri"] for file in payload["files"]] == [file.uri for file in result.files]
    assert payload["files"][0]["size"] == result.files[0].size
    assert fresh_fake.api_keys["runway"] not in str(events[0].model_dump())


def test_a_failed_job_emits_failed_with_the_reason(fresh_fake):
    fresh_fake.script("replicate", outcome="failure")
    method = fake_method(fresh_fake, "replicate")

    with pytest.raises(ToolflowsError) as raised:
        run_coro_as_sync(run_tool_method(method.model_dump(), PARAMS["replicate"]))

    task_id = raised.value.task_id
    events = events_named(
        "toolflows.job.failed", f"toolflows.job.replicate-create-prediction.{task_id}"
    )
    assert len(events) == 1
    assert events[0].payload["error"] == {
        "code": "TASK_FAILED",
        "message": "OOM",
        "taskId": task_id,
    }
    assert events[0].resource["toolflows.method"] == "replicate/create_prediction"
