"""The CLI contract of SPEC §3, through real subprocesses: one JSON document, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
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


def test_demo_on_embedded_defaults(tmp_path):
    """The README's first command: no API URL, Prefect's embedded server."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp_path / "storage")
    completed = subprocess.run(
        [_toolflows(), "demo"], capture_output=True, text=True, timeout=300, env=env
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    file = result["files"][0]
    stored = Path(file["uri"].removeprefix("file://"))
    assert stored.is_relative_to(tmp_path / "storage")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == file["sha256"]
    assert "Starting temporary server" in completed.stderr
