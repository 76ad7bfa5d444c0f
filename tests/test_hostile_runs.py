"""Hostile provider answers over whole flow runs (issue 9): job ids that try to steer
files, echoed credentials, huge messages, failure reasons in unusual places.

Every run goes over real sockets to the fake provider, on a real Prefect API.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventResourceFilter
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.fake_provider import FakeProvider, Fault
from tests.helpers import FAST_POLLING, run
from tests.test_http_safety import (
    assert_no_leaks,
    flow_run_artifacts,
    flow_run_logs,
    stored_texts,
)
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.engine import run_tool_method

pytestmark = pytest.mark.usefixtures("prefect_api")

OUTPUT_BYTES = b"hostile but harmless"
OUTPUT_URI = "data:text/plain;base64,aG9zdGlsZSBidXQgaGFybWxlc3M="


def echo_method(fake: FakeProvider, name: str = "echo", **polling: Any) -> dict[str, Any]:
    """The fake's job API for the submit; status checks go to the fake's echo probe, whose
    answer (the request's query, echoed) holds a ``download_url``: a finished job."""
    os.environ["GENERIC_API_KEY"] = fake.api_keys["generic"]
    return {
        "inventoryKey": "acme",
        "name": name,
        "endpoint": fake.api_url + "/v2/jobs",
        "adapterConfig": {
            "headers": {"Authorization": "Bearer ${GENERIC_API_KEY}"},
            "polling": {
                "statusUrl": "/_probe/headers?job={id}&download_url=" + quote(OUTPUT_URI),
                "intervalSeconds": FAST_POLLING["interval_seconds"],
                "maxIntervalSeconds": FAST_POLLING["max_interval_seconds"],
                "maxWaitSeconds": FAST_POLLING["max_wait_seconds"],
                **polling,
            },
        },
    }


def submit_answering(fake: FakeProvider, job_id: Any) -> None:
    """The next submit to the job API answers 202 with ``job_id`` as the job's id."""
    fake.script("jobs", submit_fault=Fault.http(202, body={"job": {"id": job_id}}))


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


# -- job ids steer no file (point 2) ------------------------------------------------------

STEERING_IDS = ["..", "../..", "../other_method/T1", ".", "a/b", "a\\..\\..\\b", "/etc/x"]


@pytest.mark.parametrize("job_id", STEERING_IDS)
def test_a_job_id_cannot_steer_a_file_out_of_its_own_folder(fresh_fake, storage_dir, job_id):
    submit_answering(fresh_fake, job_id)
    method = echo_method(fresh_fake)
    # Prefect persists task results in the storage root: the method folders are ours.
    before = files_under(storage_dir / "acme")

    result = run(method, {"prompt": "a cat"})

    assert result.task_id == job_id
    (stored,) = result.files
    path = Path(stored.uri.removeprefix("file://"))
    assert path.read_bytes() == OUTPUT_BYTES
    method_folder = storage_dir / "acme" / "echo"
    # One new folder right under the method's folder, holding the file.
    assert path.parent.parent == method_folder
    assert path.parent.name not in (".", "..", "")
    assert files_under(storage_dir / "acme") - before == {path}


def test_ids_that_differ_only_in_case_or_in_unsafe_characters_get_their_own_folders(
    fresh_fake, storage_dir
):
    folders = set()
    for job_id in ["JobA", "joba", "a/b", "a_b", "a\\b", "a b"]:
        submit_answering(fresh_fake, job_id)
        result = run(echo_method(fresh_fake, name="twins"), {"prompt": "a cat"})
        folder = Path(result.files[0].uri.removeprefix("file://")).parent
        folders.add(folder.name.casefold())
    assert len(folders) == 6


@pytest.mark.parametrize("name", ["../escape", "odd/names", ".."])
def test_a_method_name_cannot_add_or_climb_folders(fresh_fake, storage_dir, name):
    submit_answering(fresh_fake, "job-1")

    result = run(echo_method(fresh_fake, name=name), {"prompt": "a cat"})

    path = Path(result.files[0].uri.removeprefix("file://"))
    assert path.read_bytes() == OUTPUT_BYTES
    inventory, method, job, _file = path.relative_to(storage_dir).parts
    assert (inventory, job) == ("acme", "job-1")
    assert method not in (".", "..")


@pytest.mark.parametrize(
    "job_id", ["x" * 10_000, "nul\x00inside", "line\nbreak\r\x1b[31m", "\u202eevil"]
)
def test_an_enormous_or_control_character_id_gives_a_normal_result(fresh_fake, job_id):
    submit_answering(fresh_fake, job_id)

    result = run(echo_method(fresh_fake), {"prompt": "a cat"})

    assert result.task_id == job_id
    (stored,) = result.files
    assert Path(stored.uri.removeprefix("file://")).read_bytes() == OUTPUT_BYTES
    assert len(Path(stored.uri).parent.name) <= 100


# -- echoed credentials are scrubbed from everything (point 5) ----------------------------

ECHO_SECRET = "hostile/echo-s3cret"


def events_of(resource_id: str) -> list[str]:
    """Every event about ``resource_id``, as JSON text, once the first one arrived."""

    async def read() -> list[Any]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(resource=EventResourceFilter(id=[resource_id])), limit=50
            )
            return page.events

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        events = run_coro_as_sync(read())
        if events:
            return [json.dumps(event.model_dump(mode="json")) for event in events]
        time.sleep(0.3)
    return []


def test_a_credential_the_provider_echoes_is_scrubbed_from_everything_a_run_produces(
    fresh_fake, storage_dir
):
    os.environ["HOSTILE_ECHO_SECRET"] = ECHO_SECRET
    encoded = quote(ECHO_SECRET, safe="")
    fresh_fake.script(
        "jobs",
        submit_fault=Fault.http(
            202,
            body={
                "job": {"id": "echo-1"},
                "debug": {
                    "request": f"https://api.test/v2/jobs?token={encoded}",
                    "lowercase": f"?token={encoded.lower()}",
                    "note": f"you sent X-Extra-Token={ECHO_SECRET}.",
                    ECHO_SECRET: "as a key",
                },
            },
        ),
    )
    method = echo_method(fresh_fake)
    method["adapterConfig"]["headers"]["X-Extra-Token"] = "${HOSTILE_ECHO_SECRET}"
    # The echo probe answers the status check with the request's headers and query.
    method["adapterConfig"]["polling"]["statusUrl"] += "&k=${HOSTILE_ECHO_SECRET}"
    started = time.time()

    state = run_coro_as_sync(run_tool_method(method, {"prompt": "a cat"}, return_state=True))

    result = state.result()
    (status_check,) = fresh_fake.requests(path_prefix="/_probe/headers")
    assert status_check.query["k"] == ECHO_SECRET  # the provider did get, and echo, it
    assert result.data["headers"]["x-extra-token"] == "[REDACTED]"
    assert result.data["query"]["k"] == "[REDACTED]"
    assert result.data["query"]["job"] == "echo-1"  # the rest of the payload as sent
    assert result.data["headers"]["authorization"] == "[REDACTED]"
    flow_run_id = state.state_details.flow_run_id
    places: dict[str, str | bytes] = {
        "result": json.dumps(result.to_json_dict()),
        **{f"log {n}": message for n, message in enumerate(flow_run_logs(flow_run_id))},
        **{f"artifact {n}": text for n, text in enumerate(flow_run_artifacts(flow_run_id))},
        **{
            f"event {n}": text for n, text in enumerate(events_of("toolflows.job.acme-echo.echo-1"))
        },
        **stored_texts(storage_dir, started),
    }
    assert any(place.startswith("event") for place in places)
    secrets = [ECHO_SECRET, encoded, encoded.lower(), fresh_fake.api_keys["generic"]]
    assert_no_leaks(secrets, places)


# -- long messages are cut, fast (point 3) ------------------------------------------------


def test_a_huge_failure_message_gives_a_short_error_quickly(fresh_fake):
    reason = "the model refused: " + "because " * 15_000  # 120,000 characters
    fresh_fake.script("jobs", polls_until_done=0, outcome="failure", failure_reason=reason)
    method = echo_method(fresh_fake)
    method["adapterConfig"]["polling"]["statusUrl"] = "/v2/jobs/{id}"
    started = time.monotonic()

    state = run_coro_as_sync(run_tool_method(method, {"prompt": "a cat"}, return_state=True))

    elapsed = time.monotonic() - started
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ToolflowsError), repr(error)[:500]
    assert error.code is ErrorCode.TASK_FAILED
    assert error.message.startswith("the model refused: because because")
    assert len(error.message) <= 4096
    assert len(json.dumps(error.to_dict())) < 5000
    assert len(state.message or "") < 5000
    assert elapsed < 15, elapsed  # was 15 s of redaction alone
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert logs
    assert max(len(message) for message in logs) < 16_000


# -- failure reasons where real APIs put them (point 15) ------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"status": "failed", "errorMessage": "Insufficient credits"}, "Insufficient credits"),
        ({"status": "FAILED", "task_error": {"code": 7, "message": "GPU lost"}}, "GPU lost"),
        ({"data": {"state": "error", "failure_detail": "bad frame"}}, "bad frame"),
    ],
)
def test_a_failed_job_reports_the_providers_reason_from_its_field(fresh_fake, answer, reason):
    fresh_fake.script("jobs", polls_until_done=5, status_faults=[Fault.http(200, body=answer)])
    method = echo_method(fresh_fake)
    method["adapterConfig"]["polling"]["statusUrl"] = "/v2/jobs/{id}"

    with pytest.raises(ToolflowsError) as raised:
        run(method, {"prompt": "a cat"})

    assert raised.value.code is ErrorCode.TASK_FAILED
    assert raised.value.message == reason
    assert raised.value.task_id == fresh_fake.jobs("jobs")[0].id


def test_an_enormous_id_in_an_error_is_cut_in_the_message_and_kept_whole_in_task_id(fresh_fake):
    job_id = "y" * 10_000
    submit_answering(fresh_fake, job_id)
    method = echo_method(fresh_fake, maxWaitSeconds=1.0)
    # The echo holds no output and no status: the job never ends.
    method["adapterConfig"]["polling"]["statusUrl"] = "/_probe/headers?job={id}"

    with pytest.raises(ToolflowsError) as raised:
        run(method, {"prompt": "a cat"})

    error = raised.value
    assert error.code is ErrorCode.POLLING_TIMEOUT
    assert error.task_id == job_id
    assert "yyyyyyyy" in error.message
    assert len(error.message) <= 4096
