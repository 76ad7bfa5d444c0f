"""One flow per method: its parameters form, its entrypoint, and its deployments.

The flows run the saved block on a real Prefect API; `serve` and `deploy` run
as the installed ``toolflows`` command.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling
from prefect.utilities.asyncutils import run_coro_as_sync

import toolflows.deployments.method_flows as method_flows_module
from testkit.prefect_stack import stop_group, wait_for
from tests.helpers import FAST_POLLING, PARAMS, fake_method
from toolflows.core.definition import MethodDefinition
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.deployments.method_flows import flow_attribute, flow_name, method_flow
from toolflows.deployments.registry import load_preset, preset_files, register_definitions
from toolflows.methods import read_definition_file, validate_params

pytestmark = pytest.mark.usefixtures("prefect_api")

PROJECT = Path(__file__).resolve().parents[1]
PRESETS = [definition for file in preset_files() for definition in read_definition_file(file)]
ODD_NAMES_SCHEMA = {
    "type": "object",
    "required": ["image-url", "class"],
    "properties": {
        "image-url": {"type": "string", "description": "The first frame"},
        "class": {"type": "integer", "enum": [1, 2]},
        "2x": {"type": "boolean", "title": "Double size"},
        "json": {"$ref": "#/$defs/Options"},
        "a_b": {"type": "string"},
        "a-b": {"type": "string"},
        "return_state": {"type": "string"},
    },
    "$defs": {"Options": {"type": "object", "properties": {"loud": {"type": "boolean"}}}},
}


def save(*definitions: MethodDefinition) -> None:
    run_coro_as_sync(register_definitions(list(definitions)))


def published(flow) -> dict[str, Any]:
    return flow.parameters.model_dump_for_openapi()


def toolflows_command() -> str:
    return str(Path(sys.executable).with_name("toolflows"))


def odd_names_method(fake) -> MethodDefinition:
    os.environ["GENERIC_API_KEY"] = fake.api_keys["generic"]
    return MethodDefinition.model_validate(
        {
            "inventory_key": "acme",
            "name": "odd/names",
            "endpoint": f"{fake.api_url}/v2/jobs",
            "request_schema": ODD_NAMES_SCHEMA,
            "adapter_config": {
                "headers": {"Authorization": "Bearer ${GENERIC_API_KEY}"},
                "polling": {**FAST_POLLING, "status_url": "/v2/jobs/{id}"},
            },
        }
    )


# -- the parameters form --------------------------------------------------------------


@pytest.mark.parametrize("definition", PRESETS, ids=lambda definition: definition.slug)
def test_the_parameters_form_is_the_request_schema(definition):
    schema = definition.request_schema

    form = published(method_flow(definition))

    assert list(form["properties"]) == list(schema["properties"])
    with_default = {name for name, prop in schema["properties"].items() if "default" in prop}
    assert set(form.get("required", [])) == set(schema["required"]) - with_default
    for name, prop in schema["properties"].items():
        field = form["properties"][name]
        # Types, enums, formats, nested objects, descriptions: the property as written.
        assert {key: field[key] for key in prop} == prop
        if name not in schema["required"] and "default" not in prop:
            assert field["default"] is None  # left empty: not sent


def test_a_method_flow_is_named_after_the_method_and_typed():
    flow = method_flow(load_preset("fal", "kling_image_to_video"))

    parameters = inspect.signature(flow.fn).parameters

    assert flow.name == "fal.kling_image_to_video"
    assert flow.fn.__qualname__ == "fal_kling_image_to_video"
    assert flow.description.startswith("Kling 2.1 image-to-video")
    assert parameters["prompt"].annotation.__origin__ is str
    assert parameters["cfg_scale"].annotation.__origin__ == float | None
    assert parameters["duration"].default == "5"
    assert parameters["prompt"].default is inspect.Parameter.empty
    assert {p.kind for p in parameters.values()} == {inspect.Parameter.KEYWORD_ONLY}


def test_property_names_that_cannot_be_parameters_get_one_and_keep_their_title(fake):
    form = published(method_flow(odd_names_method(fake)))

    titles = {name: field["title"] for name, field in form["properties"].items()}
    assert titles == {
        "image_url": "image-url",
        "class_": "class",
        "param_2x": "Double size",
        "json_": "json",
        "a_b": "a_b",
        "a_b_": "a-b",
        "return_state_": "return_state",
    }
    assert form["required"] == ["image_url", "class_"]
    assert form["properties"]["class_"]["enum"] == [1, 2]
    assert form["properties"]["image_url"]["description"] == "The first frame"
    # The schema's $defs cannot travel with the form: references are inlined.
    assert form["properties"]["json_"]["properties"] == {"loud": {"type": "boolean"}}


def test_a_method_without_request_schema_takes_one_params_object():
    definition = load_preset("heygen", "create_avatar_video_v2").model_copy(
        update={"request_schema": None}
    )

    form = published(method_flow(definition))

    assert list(form["properties"]) == ["params"]
    assert form["properties"]["params"]["type"] == "object"
    assert "required" not in form


# -- running ----------------------------------------------------------------------------


def test_a_method_flow_runs_the_saved_block(fresh_fake):
    fresh_fake.script("heygen", polls_until_done=2)
    method = fake_method(fresh_fake, "heygen")
    save(method)

    result = run_coro_as_sync(method_flow(method)(**PARAMS["heygen"], title="hello"))

    job = fresh_fake.jobs("heygen")[0]
    assert result.task_id == job.id
    assert result.method == "heygen/create_avatar_video_v2"
    assert result.files[0].sha256 == fresh_fake.expected_sha256(job.id)
    assert job.input == {**PARAMS["heygen"], "title": "hello"}  # empty optionals not sent


def test_params_are_sent_under_their_property_names(fresh_fake):
    fresh_fake.script("jobs", polls_until_done=1, content_type="")
    method = odd_names_method(fresh_fake)
    save(method)
    flow = method_flow(method)

    run_coro_as_sync(
        flow(image_url="https://example.com/a.png", class_=2, json_={"loud": True}, a_b_="x")
    )

    sent = fresh_fake.jobs("jobs")[0].input
    assert sent == {
        "image-url": "https://example.com/a.png",
        "class": 2,
        "json": {"loud": True},
        "a-b": "x",
    }


@pytest.mark.parametrize(
    ("provider", "params", "problem"),
    [
        ("fal", {**PARAMS["fal"], "duration": "7"}, "duration: '7' is not one of"),
        ("heygen", {"video_inputs": []}, "video_inputs: [] should be non-empty"),
    ],
)
def test_params_are_checked_against_the_whole_schema_before_the_submit(
    fresh_fake, provider, params, problem
):
    method = fake_method(fresh_fake, provider)
    save(method)

    with pytest.raises(ToolflowsError) as raised:
        run_coro_as_sync(method_flow(method)(**params))

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert problem in raised.value.message
    assert fresh_fake.submits() == 0


def test_edits_to_the_block_apply_to_the_next_run(fresh_fake):
    method = fake_method(fresh_fake, "runway")
    save(method)
    flow = method_flow(method)
    save(method.model_copy(update={"enabled": False}))  # as unticked in the UI

    with pytest.raises(ToolflowsError) as raised:
        run_coro_as_sync(flow(**PARAMS["runway"]))

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "disabled" in raised.value.message
    assert fresh_fake.submits() == 0


def test_the_cancel_hook_cancels_the_job_of_a_method_run(fresh_fake):
    fresh_fake.script("fal", polls_until_done=10_000)
    method = fake_method(fresh_fake, "fal", max_wait_seconds=0.5, cancel_on_timeout=False)
    save(method)
    flow = method_flow(method)
    state = run_coro_as_sync(flow(**PARAMS["fal"], return_state=True))
    assert fresh_fake.cancels() == []  # the run left its job running

    async def run_hook() -> None:  # as the runner does for a cancelled run
        async with get_client() as client:
            flow_run = await client.read_flow_run(state.state_details.flow_run_id)
        await flow.on_cancellation_hooks[0](flow, flow_run, state)

    run_coro_as_sync(run_hook())

    assert fresh_fake.cancels("fal") == [fresh_fake.jobs("fal")[0].id]


# -- entrypoints ------------------------------------------------------------------------


def test_the_module_builds_the_flow_of_a_saved_block_on_first_access(fake):
    save(fake_method(fake, "runway"))

    flow = method_flows_module.runway_image_to_video

    assert flow.name == "runway.image_to_video"
    assert method_flows_module.runway_image_to_video is flow
    with pytest.raises(AttributeError, match="no ToolMethod block named 'acme-missing'"):
        _ = method_flows_module.acme_missing
    with pytest.raises(AttributeError):
        _ = method_flows_module.__wrapped__


def test_entrypoints_resolve_in_a_fresh_process(fake, prefect_api):
    save(fake_method(fake, "heygen"))
    script = (
        "import json\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "for entrypoint in (\n"
        "    'deployments/method_flows.py:heygen_create_avatar_video_v2',\n"
        "    'toolflows.deployments.method_flows.heygen_create_avatar_video_v2',\n"
        "):\n"
        "    flow = load_flow_from_entrypoint(entrypoint)\n"
        "    print(json.dumps([flow.name, flow.parameters.model_dump_for_openapi()]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    expected = published(method_flow(load_preset("heygen", "create_avatar_video_v2")))
    for line in completed.stdout.splitlines():
        name, form = json.loads(line)
        assert name == "heygen.create_avatar_video_v2"
        assert form == json.loads(json.dumps(expected))
    assert len(completed.stdout.splitlines()) == 2


# -- deployments ------------------------------------------------------------------------


def test_prefect_yaml_deploys_the_generic_flow_and_every_preset():
    config = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    entries = {entry["name"]: entry for entry in config["deployments"]}

    expected = {
        d.slug: f"toolflows.deployments.method_flows.{flow_attribute(d.slug)}" for d in PRESETS
    }
    assert {name: entry["entrypoint"] for name, entry in entries.items()} == {
        "run-tool-method": "toolflows.engine.run_tool_method",
        "toolflows-waiter": "toolflows.waiter.waiter_flow",
        **expected,
    }
    assert config["pull"] == []  # the worker imports the installed package
    assert {entry["work_pool"]["name"] for entry in entries.values()} == {"toolflows"}
    scheduled = [(name, s) for name, entry in entries.items() for s in entry["schedules"]]
    assert len(scheduled) == 1
    name, schedule = scheduled[0]
    assert schedule["active"] is False  # each run is a paid job
    definition = next(d for d in PRESETS if d.slug == name)
    validate_params(definition, schedule["parameters"])  # the example would run as written


def create_process_pool(name: str) -> None:
    from prefect.workers.process import ProcessWorker

    async def create() -> None:
        async with get_client() as client:
            template = ProcessWorker.get_default_base_job_template()
            pool = WorkPoolCreate(name=name, type="process", base_job_template=template)
            await client.create_work_pool(pool, overwrite=True)

    run_coro_as_sync(create())


def read_deployment(name: str) -> Any:
    async def read() -> Any:
        async with get_client() as client:
            try:
                return await client.read_deployment_by_name(name)
            except ObjectNotFound:
                return None

    return run_coro_as_sync(read())


def test_deploy_creates_one_deployment_per_enabled_method_with_its_form(fake, prefect_api):
    odd_names = odd_names_method(fake)
    save(fake_method(fake, "fal"), fake_method(fake, "heygen"), odd_names)
    retired = fake_method(fake, "runway").model_copy(update={"name": "retired", "enabled": False})
    save(retired)
    create_process_pool("method-flows-test")

    completed = subprocess.run(
        [toolflows_command(), "deploy", "--pool", "method-flows-test", "--name-prefix", "t-"],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["status"] == "success"
    assert summary["workPool"] == "method-flows-test"
    assert "run_tool_method/t-run-tool-method" in summary["deployments"]
    assert "runway.retired/t-runway-retired" not in summary["deployments"]
    assert read_deployment("run_tool_method/t-run-tool-method").entrypoint == (
        "toolflows.engine.run_tool_method"
    )
    for definition in (load_preset("fal", "kling_image_to_video"), odd_names):
        deployment = read_deployment(f"{flow_name(definition)}/t-{definition.slug}")
        assert deployment.entrypoint == (
            f"toolflows.deployments.method_flows.{flow_attribute(definition.slug)}"
        )
        assert deployment.work_pool_name == "method-flows-test"
        assert deployment.pull_steps == []
        assert deployment.enforce_parameter_schema is True
        # What the API serves the UI form is what the flow publishes.
        expected = method_flow(definition).parameters.model_dump(mode="json", exclude_unset=True)
        assert deployment.parameter_openapi_schema == expected
    form = read_deployment(f"acme.odd-names/t-{odd_names.slug}").parameter_openapi_schema
    assert form["properties"]["image_url"] == {
        "type": "string",
        "description": "The first frame",
        "title": "image-url",
        "position": 0,
    }
    assert form["required"] == ["image_url", "class_"]


def test_deploy_to_a_missing_work_pool_is_config_invalid(prefect_api):
    completed = subprocess.run(
        [toolflows_command(), "deploy", "--pool", "no-such-pool"],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert completed.returncode == 2
    error = json.loads(completed.stdout)["error"]
    assert error["code"] == "CONFIG_INVALID"
    assert "prefect work-pool create no-such-pool --type process" in error["message"]


@pytest.fixture
def served(prefect_api, fake, tmp_path) -> Iterator[list[str]]:
    """``toolflows serve`` in the background; yields the deployment names it printed."""
    save(fake_method(fake, "heygen"), fake_method(fake, "fal"))
    stdout, stderr = tmp_path / "serve.out", tmp_path / "serve.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        server = subprocess.Popen(
            [toolflows_command(), "serve", "--name-prefix", "served-"],
            env={
                **os.environ,
                "PREFECT_API_URL": prefect_api,
                "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            },
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        # One JSON document, printed once the deployments exist.
        summary = wait_for(lambda: printed_document(server, stdout, stderr), 120, "serve")
        assert summary["status"] == "serving"
        yield summary["deployments"]
    finally:
        stop_group(server)


def printed_document(process: subprocess.Popen, stdout: Path, stderr: Path) -> Any:
    try:
        return json.loads(stdout.read_text())
    except json.JSONDecodeError:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {stderr.read_text()}") from None
        return None


def test_serve_runs_each_method_as_its_own_deployment(served, fresh_fake):
    fake = fresh_fake
    fake.script("fal", polls_until_done=10_000)
    heygen = "heygen.create_avatar_video_v2/served-heygen-create-avatar-video-v2"
    fal = "fal.kling_image_to_video/served-fal-kling-image-to-video"
    assert {heygen, fal, "run_tool_method/served-run-tool-method"} <= set(served)

    finished = run_deployment(heygen, parameters=PARAMS["heygen"], timeout=120)
    waiting = run_deployment(fal, parameters=PARAMS["fal"], timeout=0)
    wait_for(lambda: len(fake.requests(method="GET", path_prefix="/fal-ai/")) >= 2, 90, "polls")
    run_coro_as_sync(cancel(waiting.id))
    wait_for(lambda: fake.cancels("fal"), 60, "the provider to see the cancel")

    assert finished.state.is_completed(), finished.state.message
    result = finished.state.result()
    assert result.files[0].sha256 == fake.expected_sha256(result.task_id)
    assert fake.cancels("fal")[0] == fake.jobs("fal")[0].id


async def cancel(flow_run_id) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
