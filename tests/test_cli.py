"""The CLI contract of SPEC §3, through real subprocesses: one JSON document, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PARAMS, fake_method

_api_url: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _subprocesses_use_the_test_api(prefect_api):
    _api_url["PREFECT_API_URL"] = prefect_api


def toolflows(*args: str) -> tuple[int, Any, str]:
    """Run the installed ``toolflows`` command; return (exit code, parsed stdout, stderr)."""
    completed = subprocess.run(
        [_toolflows(), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **_api_url},
    )
    # stdout is exactly one JSON document, whatever happened.
    document = json.loads(completed.stdout)
    return completed.returncode, document, completed.stderr


def _toolflows() -> str:
    return str(Path(sys.executable).with_name("toolflows"))


def definition_file(tmp_path: Path, method: Any, name: str = "method.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(method.model_dump()))
    return path


def test_run_a_definition_file_prints_the_result(fresh_fake, tmp_path):
    fresh_fake.script("heygen", file_size=5_000)
    method = definition_file(tmp_path, fake_method(fresh_fake, "heygen"))
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS["heygen"]))

    code, result, stderr = toolflows("run", str(method), "--params", f"@{params}")

    assert code == 0, stderr
    assert result["status"] == "success"
    assert result["method"] == "heygen/create_avatar_video_v2"
    assert set(result) == {
        "status",
        "taskId",
        "method",
        "data",
        "files",
        "filename",
        "mimetype",
        "warnings",
    }
    file = result["files"][0]
    assert set(file) == {"uri", "filename", "mimetype", "size", "sha256", "sourceUrl"}
    assert (file["filename"], file["mimetype"], file["size"]) == ("video.mp4", "video/mp4", 5_000)
    assert (result["filename"], result["mimetype"]) == ("video.mp4", "video/mp4")
    stored = Path(file["uri"].removeprefix("file://")).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == file["sha256"]
    assert file["sha256"] == fresh_fake.expected_sha256(result["taskId"])
    # The original guide's log lines, on stderr.
    task_id = result["taskId"]
    assert f"Task ID detected: data.video_id = {task_id}" in stderr
    assert "Polling 1/" in stderr
    assert f"Task {task_id} status: processing" in stderr
    assert "Downloaded 5000 bytes as video.mp4" in stderr
    assert fresh_fake.api_keys["heygen"] not in stderr


def test_job_failure_exits_1_with_the_error_document(fresh_fake, tmp_path):
    fresh_fake.script("replicate", outcome="failure")
    method = definition_file(tmp_path, fake_method(fresh_fake, "replicate"))

    code, result, _ = toolflows("run", str(method), "--params", json.dumps(PARAMS["replicate"]))

    assert code == 1
    assert result["status"] == "error"
    assert result["error"]["code"] == "TASK_FAILED"
    assert result["error"]["message"] == "OOM"
    assert result["error"]["taskId"]


def test_invalid_config_exits_2_and_submits_nothing(fresh_fake, tmp_path):
    method = fake_method(fresh_fake, "heygen").model_dump()
    method["adapter_config"]["polling"]["unknownKey"] = 1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(method))

    code, result, _ = toolflows("run", str(path), "--params", json.dumps(PARAMS["heygen"]))

    assert code == 2
    assert result["error"]["code"] == "CONFIG_INVALID"
    assert "unknownKey" in result["error"]["message"]
    assert fresh_fake.submits() == 0


def test_params_that_are_not_json_exit_2(fresh_fake, tmp_path):
    method = definition_file(tmp_path, fake_method(fresh_fake, "heygen"))

    code, result, _ = toolflows("run", str(method), "--params", "{video_inputs: 1")

    assert code == 2
    assert result["error"]["code"] == "CONFIG_INVALID"
    assert fresh_fake.submits() == 0


def test_register_then_run_by_block_name_and_by_inventory_key(fresh_fake, tmp_path):
    method = fake_method(fresh_fake, "fal")
    path = definition_file(tmp_path, method)

    code, registered, stderr = toolflows("register", str(path))
    assert code == 0, stderr
    assert registered["registered"] == [
        {"block": "fal-kling-image-to-video", "method": "fal/kling_image_to_video"}
    ]

    params = json.dumps(PARAMS["fal"])
    for reference in ("fal-kling-image-to-video", "fal/kling_image_to_video"):
        fresh_fake.script("fal")
        code, result, stderr = toolflows("run", reference, "--params", params)
        assert code == 0, stderr
        assert result["files"][0]["sha256"] == fresh_fake.expected_sha256(result["taskId"])


def test_unknown_method_name_exits_2(fresh_fake):
    code, result, _ = toolflows("run", "nobody/nothing")

    assert code == 2
    assert "nobody-nothing" in result["error"]["message"]


def test_resume_collects_a_job_without_submitting(fresh_fake, tmp_path):
    fresh_fake.script("runway", polls_until_done=1)
    method = definition_file(tmp_path, fake_method(fresh_fake, "runway"))
    code, first, _ = toolflows("run", str(method), "--params", json.dumps(PARAMS["runway"]))
    assert code == 0
    assert fresh_fake.submits("runway") == 1

    code, resumed, stderr = toolflows("run", str(method), "--resume", first["taskId"])

    assert code == 0, stderr
    assert resumed["taskId"] == first["taskId"]
    assert resumed["files"][0]["sha256"] == first["files"][0]["sha256"]
    assert fresh_fake.submits("runway") == 1


# -- a wrong config fails at once, cleanly (issue 9, point 13) ----------------------------

# Well under a second on an idle machine (no Prefect import, no flow run); the bound
# leaves room for a loaded 2-core box running the suite in parallel, and stays well
# below what starting a Prefect server would take (20 s and more).
CONFIG_ERROR_SECONDS = 8.0
# A ${VAR} missing from the environment may be a Secret block: looking costs the import
# of Prefect (~2 s idle) and one API request, still no flow run.
SECRET_LOOKUP_SECONDS = 10.0


def timed_toolflows(*args: str, env: dict[str, str] | None = None) -> tuple[float, int, Any, str]:
    started = time.monotonic()
    completed = subprocess.run(
        [_toolflows(), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **_api_url, **(env or {})},
    )
    return (
        time.monotonic() - started,
        completed.returncode,
        json.loads(completed.stdout),
        completed.stderr,
    )


def assert_clean_config_error(
    seconds: float,
    code: int,
    document: Any,
    stderr: str,
    *words: str,
    limit: float = CONFIG_ERROR_SECONDS,
) -> None:
    assert (code, document["status"]) == (2, "error"), stderr[-2000:]
    assert document["error"]["code"] == "CONFIG_INVALID"
    for word in words:
        assert word in document["error"]["message"]
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 1, stderr[-2000:]
    assert seconds < limit, f"took {seconds:.1f} s"


def schema_method(fresh_fake: Any) -> dict[str, Any]:
    method = fake_method(fresh_fake, "heygen").model_dump(by_alias=False)
    method["request_schema"] = {
        "type": "object",
        "required": ["title"],
        "properties": {"title": {"type": "string"}},
    }
    return method


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("unknown key", ["unknownKey"]),
        ("statusURL", ["statusURL", "did you mean statusUrl"]),
        ("invalid params", ["invalid params", "title"]),
        ("params not an object", ["must be a JSON object"]),
        ("disabled", ["disabled"]),
    ],
)
def test_a_wrong_config_exits_2_at_once_without_a_flow_run(fresh_fake, tmp_path, case, words):
    method = schema_method(fresh_fake)
    params: Any = {"title": "hi"}
    if case == "unknown key":
        method["adapter_config"]["polling"]["unknownKey"] = 1
    elif case == "statusURL":
        method["adapter_config"]["polling"]["statusURL"] = "/v1/status?id={id}"
    elif case == "invalid params":
        params = {"title": 3}
    elif case == "params not an object":
        params = [1]
    else:
        method["enabled"] = False
    path = tmp_path / "method.json"
    path.write_text(json.dumps(method))

    outcome = timed_toolflows("run", str(path), "--params", json.dumps(params))

    assert_clean_config_error(*outcome, *words)
    assert fresh_fake.submits() == 0


def test_a_missing_variable_exits_2_before_any_flow_run(fresh_fake, tmp_path):
    method = schema_method(fresh_fake)
    method["adapter_config"]["headers"]["X-Other"] = "${TOOLFLOWS_NEVER_SET}"
    path = tmp_path / "method.json"
    path.write_text(json.dumps(method))

    outcome = timed_toolflows("run", str(path), "--params", '{"title": "hi"}')

    assert_clean_config_error(
        *outcome, "TOOLFLOWS_NEVER_SET", "toolflows-never-set", limit=SECRET_LOOKUP_SECONDS
    )
    assert fresh_fake.submits() == 0


def test_register_refuses_a_bad_file_at_once(fresh_fake, tmp_path):
    good = definition_file(tmp_path, fake_method(fresh_fake, "fal"), name="good.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "inventoryKey: acme\nname: jobs\nendpoint: https://api.test/x\n"
        "adapterConfig: {polling: {statusURL: /x}}\n"
    )

    outcome = timed_toolflows("register", str(good), str(bad))

    assert_clean_config_error(*outcome, "bad.yaml", "did you mean statusUrl")


def test_a_run_that_may_suspend_waits_inline_outside_a_deployment(fresh_fake, tmp_path):
    fresh_fake.script("heygen", polls_until_done=3)
    method = definition_file(tmp_path, fake_method(fresh_fake, "heygen", wait="suspend"))

    code, result, stderr = toolflows("run", str(method), "--params", json.dumps(PARAMS["heygen"]))

    assert code == 0, stderr
    assert result["status"] == "success"
    assert "not from a deployment" in stderr
    assert "Suspending" not in stderr
    assert fresh_fake.submits("heygen") == 1


@pytest.mark.parametrize(
    "arguments",
    [
        ["--public-url", "https://hooks.example.com/toolflows"],  # nothing listens
        ["--listen", "127.0.0.1"],  # no port
        ["--listen", "127.0.0.1:99999"],
        ["--listen", "127.0.0.1:0", "--public-url", "ftp://hooks.example.com"],
        ["--listen", "127.0.0.1:0", "--public-url", "https://hooks.example.com/?a=1"],
    ],
)
def test_the_waiter_refuses_bad_arguments_before_it_starts(arguments):
    code, document, _ = toolflows("waiter", *arguments)

    assert code == 2
    assert document["error"]["code"] == "CONFIG_INVALID"
