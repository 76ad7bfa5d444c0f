"""APIs that are not the four presets, written only from the SPEC, and the odd cases
of SPEC §4: result requests, binary bodies, 202-as-pending, operations, downloads."""

from __future__ import annotations

import pytest

from testkit.fake_provider import Fault
from tests.helpers import PARAMS, fake_method, generic_definition, run
from toolflows.core.errors import ErrorCode, ToolflowsError

pytestmark = pytest.mark.usefixtures("prefect_api")

VEO_ENDPOINT = "/v1beta/models/veo:predictLongRunning"


def status_checks(fake, prefix: str) -> int:
    return len(fake.requests(method="GET", path_prefix=prefix))


def test_operation_style_api(fresh_fake):
    fresh_fake.script("operation")
    method = generic_definition(
        fresh_fake, "/v1beta/models/veo:predictLongRunning", statusUrl="/v1beta/{id}"
    )

    result = run(method, {"instances": [{"prompt": "a cat"}]})

    assert result.task_id.startswith("operations/")
    assert result.data["done"] is True
    assert result.files[0].sha256 == fresh_fake.expected_sha256(result.task_id.split("/")[-1])
    assert result.files[0].mimetype == "video/mp4"


def test_operation_style_failure_reports_the_error_message(fresh_fake):
    fresh_fake.script("operation", outcome="failure", failure_reason="prompt blocked")
    method = generic_definition(
        fresh_fake, "/v1beta/models/veo:predictLongRunning", statusUrl="/v1beta/{id}"
    )

    with pytest.raises(ToolflowsError) as raised:
        run(method, {"instances": [{"prompt": "a cat"}]})

    assert raised.value.code is ErrorCode.TASK_FAILED
    assert "prompt blocked" in raised.value.message


def test_openai_style_result_request_returns_the_file(fresh_fake):
    fresh_fake.script("openai", file_size=100_000)
    method = generic_definition(
        fresh_fake, "/v1/videos", statusUrl="/v1/videos/{id}", resultUrl="/v1/videos/{id}/content"
    )

    result = run(method, {"model": "sora-2", "prompt": "a cat"})

    assert result.data["status"] == "completed"  # the last JSON payload seen
    file = result.files[0]
    assert (file.size, file.mimetype) == (100_000, "video/mp4")
    assert file.sha256 == fresh_fake.expected_sha256(result.task_id)


def test_synchronous_binary_answer_is_the_output(fresh_fake):
    fresh_fake.script("openai", kind="audio", file_size=20_000)
    method = generic_definition(fresh_fake, "/v1/audio/speech")

    result = run(method, {"model": "tts-1", "input": "hello", "voice": "alloy"})

    assert result.files[0].mimetype == "audio/mpeg"
    assert result.files[0].size == 20_000
    assert status_checks(fresh_fake, "/v1/") == 0


def test_202_while_running_then_the_result(fresh_fake):
    fresh_fake.script("jobs", polls_until_done=3, content_type="")
    method = generic_definition(fresh_fake, "/v2/jobs", statusUrl="/v2/jobs/{id}")

    result = run(method, {"prompt": "a cat"})

    assert status_checks(fresh_fake, "/v2/jobs/") == 4
    file = result.files[0]
    # No Content-Type, no extension in the URL: named and typed from the bytes.
    assert file.filename == f"file-{result.task_id}.mp4"
    assert file.mimetype == "video/mp4"
    assert file.sha256 == fresh_fake.expected_sha256(result.task_id)


def test_replicate_prefer_wait_finished_on_submit_skips_polling(fresh_fake):
    fresh_fake.script("replicate", polls_until_done=0)
    method = fake_method(fresh_fake, "replicate")
    method.adapter_config.headers["Prefer"] = "wait"

    result = run(method, PARAMS["replicate"])

    assert result.data["status"] == "succeeded"
    assert status_checks(fresh_fake, "/v1/predictions/") == 0
    assert result.files[0].sha256 == fresh_fake.expected_sha256(result.task_id)


def test_replicate_data_uri_outputs_are_decoded(fresh_fake):
    fresh_fake.script(
        "replicate", data_uri_output=True, kind="image", outputs=2, polls_until_done=0
    )
    # Replicate's quirk: "processing" with the outputs already inline as data: URIs.
    # A user who takes them as final says so with successValues.
    method = fake_method(fresh_fake, "replicate", success_values=["processing"])
    method.adapter_config.headers["Prefer"] = "wait"

    result = run(method, PARAMS["replicate"])

    assert [file.mimetype for file in result.files] == ["image/png", "image/png"]
    assert not fresh_fake.requests(origin="cdn")
    assert result.files[0].read_bytes().startswith(b"\x89PNG")


def test_every_item_of_an_output_list_is_stored_under_its_own_name(fresh_fake):
    fresh_fake.script("runway", outputs=3)

    result = run(fake_method(fresh_fake, "runway"), PARAMS["runway"])

    assert len(result.files) == 3
    assert len({file.uri for file in result.files}) == 3
    for index, file in enumerate(result.files):
        assert file.sha256 == fresh_fake.expected_sha256(result.task_id, index)


def test_a_failed_download_degrades_to_a_warning(fresh_fake):
    fresh_fake.script("heygen", download_faults=[Fault.http(404)])

    result = run(fake_method(fresh_fake, "heygen"), PARAMS["heygen"])

    assert result.status == "success"
    assert result.files == []
    assert result.data["data"]["status"] == "completed"
    assert [warning.code for warning in result.warnings] == ["DOWNLOAD_FAILED"]
    assert "404" in result.warnings[0].message


def test_a_required_download_that_fails_fails_the_run(fresh_fake):
    fresh_fake.script("heygen", download_faults=[Fault.http(404)])

    with pytest.raises(ToolflowsError) as raised:
        run(fake_method(fresh_fake, "heygen", download="required"), PARAMS["heygen"])

    assert raised.value.code is ErrorCode.DOWNLOAD_FAILED
    assert raised.value.task_id


@pytest.mark.parametrize("ranges", [True, False])
def test_a_download_cut_mid_stream_is_resumed_or_restarted(fresh_fake, ranges):
    fresh_fake.script(
        "runway", file_size=3_000_000, ranges=ranges, download_faults=[Fault.cut(1_000_000)]
    )

    result = run(fake_method(fresh_fake, "runway"), PARAMS["runway"])

    assert result.files[0].sha256 == fresh_fake.expected_sha256(result.task_id)
    downloads = fresh_fake.requests(origin="cdn")
    assert len(downloads) == 2
    resumed_from = downloads[1].headers.get("range")
    assert resumed_from == ("bytes=1000000-" if ranges else None)


def test_a_transient_download_error_is_retried(fresh_fake):
    fresh_fake.script("runway", download_faults=[Fault.http(503), Fault.reset()])

    result = run(fake_method(fresh_fake, "runway"), PARAMS["runway"])

    assert result.files[0].sha256 == fresh_fake.expected_sha256(result.task_id)


def test_download_false_returns_the_payload_only(fresh_fake):
    fresh_fake.script("runway")

    result = run(fake_method(fresh_fake, "runway", download=False), PARAMS["runway"])

    assert result.files == []
    assert result.data["status"] == "SUCCEEDED"
    assert not fresh_fake.requests(origin="cdn")


def test_max_download_bytes_is_enforced_while_streaming(fresh_fake):
    fresh_fake.script("runway", file_size=2_000_000)
    method = fake_method(fresh_fake, "runway")
    method.adapter_config.max_download_bytes = 1_000_000

    result = run(method, PARAMS["runway"])

    assert result.files == []
    assert "maxDownloadBytes" in result.warnings[0].message


def test_a_4xx_status_fails_fast_with_http_error(fresh_fake):
    fresh_fake.script("heygen", status_faults=[Fault.http(401)])

    with pytest.raises(ToolflowsError) as raised:
        run(fake_method(fresh_fake, "heygen"), PARAMS["heygen"])

    assert raised.value.code is ErrorCode.HTTP_ERROR
    assert raised.value.http_status == 401
    assert raised.value.task_id
    assert status_checks(fresh_fake, "/v1/video_status.get") == 1


def test_a_submit_without_job_id_names_the_keys(fresh_fake):
    method = generic_definition(fresh_fake, "/v1/videos", taskIdPath="job.ref")

    with pytest.raises(ToolflowsError) as raised:
        run(method, {"model": "sora-2", "prompt": "a cat"})

    assert raised.value.code is ErrorCode.TASK_ID_NOT_FOUND
    assert "'job.ref'" in raised.value.message
    assert "id" in raised.value.message


def test_a_provider_cancelled_job_is_cancelled_not_failed(fresh_fake):
    fresh_fake.script("replicate", outcome="cancelled")

    with pytest.raises(ToolflowsError) as raised:
        run(fake_method(fresh_fake, "replicate"), PARAMS["replicate"])

    assert raised.value.code is ErrorCode.CANCELLED
