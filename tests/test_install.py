"""toolflows installed as a user installs it: a wheel, pip, and a Prefect project of their own.

The project has its own ``flows/``, ``blocks/`` and ``deployments/`` packages (the
folders Prefect projects usually have) and a fresh virtual environment where the
wheel is installed with pip, not editable. Every command runs there as the user's
shell would: the project as working directory, the project's venv first on PATH,
nothing of this repository or its venv in sight.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import BlockType
from prefect.deployments import run_deployment
from prefect.exceptions import FlowRunWaitTimeout
from prefect.flow_runs import wait_for_flow_run
from prefect.utilities.asyncutils import run_coro_as_sync

from testkit.prefect_stack import background, create_process_pool, run_command
from tests.helpers import PARAMS, PRESETS, aimed_at
from toolflows.deployments.registry import load_preset

REPO = Path(__file__).resolve().parents[1]
# What a checkout holds besides the sources: a build from a copy without these
# is a build from a clean tree (setuptools' build/ would carry stale modules).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "test-output"
)
USER_PACKAGES = ("flows", "blocks", "deployments")
HELLO_FLOW = '''"""The user's own flow."""

from prefect import flow


@flow(persist_result=True)
def hello(name: str = "world") -> str:
    return f"hello, {name}"
'''
POOL = "user-project"
# Generous: a loaded 2-core machine starts a flow run process in ~10 s.
RUN_SECONDS = 150


@dataclass(frozen=True)
class Project:
    """The user's project directory, its venv, and a clean environment for its commands."""

    root: Path
    venv: Path
    base_env: dict[str, str]

    def executable(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, **settings: str) -> dict[str, str]:
        return {**self.base_env, **settings}

    def run(self, command: list[str], **settings: str) -> subprocess.CompletedProcess:
        """A command in the project (exit 0 asserted)."""
        return run_command(command, self.env(**settings), self.root)

    def python(self, code: str, **settings: str) -> Any:
        """The JSON document that ``python -c code`` prints last, run in the project."""
        output = self.run([self.executable("python"), "-c", code], **settings).stdout
        return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a clean copy of the repository."""
    source = tmp_path_factory.mktemp("checkout") / "toolflows"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    run_command(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        dict(os.environ),
        out,
    )
    [built] = out.glob("toolflows-*.whl")
    return built


@pytest.fixture(scope="module")
def project(wheel, tmp_path_factory) -> Project:
    """A Prefect project with its own flows/, blocks/, deployments/ and the wheel pip-installed."""
    root = tmp_path_factory.mktemp("user-project")
    for package in USER_PACKAGES:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text(f'OWNER = "the project\'s {package}"\n')
    (root / "flows" / "hello.py").write_text(HELLO_FLOW)
    venv = root / ".venv"
    prefect_home = tmp_path_factory.mktemp("prefect-home")
    created = Project(root, venv, _clean_env(venv, prefect_home))
    created.run([_base_python(), "-m", "venv", str(venv)])
    created.run(
        [created.executable("python"), "-m", "pip", "install", "--quiet", "--no-compile",
         *_local_wheels(), "-c", str(REPO / "constraints.txt"), str(wheel)]
    )  # fmt: skip
    return created


def _local_wheels() -> list[str]:
    """pip's options to resolve from the wheels `make` downloaded for its own install.

    The same pinned versions as the package index, without fetching them again
    (pip keeps no cache here); without that folder, pip asks the index.
    """
    wheelhouse = Path(sys.prefix) / "wheelhouse"
    return ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse.is_dir() else []


def _base_python() -> str:
    """The interpreter this repository's venv was made from."""
    return getattr(sys, "_base_executable", sys.executable)


def _clean_env(venv: Path, prefect_home: Path) -> dict[str, str]:
    """This environment minus the repository, its venv and every Prefect or Python setting."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "PYTHON", "VIRTUAL_ENV"))
    }
    path = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not Path(entry).resolve().is_relative_to(REPO)
    ]
    return {
        **kept,
        "PATH": os.pathsep.join([str(venv / "bin"), *path]),
        "VIRTUAL_ENV": str(venv),
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


# -- the wheel ---------------------------------------------------------------------------


def test_the_wheel_ships_one_package_toolflows_with_its_data_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [entry_points_file] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(entry_points_file).decode())

    top_level = {name.split("/")[0] for name in names if not name.startswith("toolflows-")}
    assert top_level == {"toolflows"}
    assert "toolflows/py.typed" in names
    assert {"toolflows/engine.py", "toolflows/blocks/__init__.py", "toolflows/cli.py"} <= set(names)
    presets = {name for name in names if name.startswith("toolflows/deployments/presets/")}
    assert "toolflows/deployments/presets/heygen.json" in presets
    assert {name.rsplit("/", 1)[-1] for name in presets} == {
        path.name for path in (REPO / "deployments" / "presets").iterdir() if path.is_file()
    }
    assert entry_points["console_scripts"]["toolflows"] == "toolflows.cli:main"
    assert entry_points["prefect.collections"]["toolflows"] == "toolflows.blocks"


# -- imports in the user's project -------------------------------------------------------

IMPORT_EVERYTHING = """
import json, pkgutil, sys, sysconfig
from importlib import import_module
import toolflows

imported = []
for module in pkgutil.walk_packages(toolflows.__path__, "toolflows."):
    if module.name.rsplit(".", 1)[-1] != "__main__":
        import_module(module.name)
        imported.append(module.name)
user_packages = ("flows", "blocks", "deployments")
loaded_by_toolflows = sorted(name for name in sys.modules if name.split(".")[0] in user_packages)
import flows, blocks, deployments
print(json.dumps({
    "toolflows": toolflows.__file__,
    "site_packages": sysconfig.get_paths()["purelib"],
    "imported": imported,
    "loaded_by_toolflows": loaded_by_toolflows,
    "project_packages": {
        name: [import_module(name).__file__, import_module(name).OWNER] for name in user_packages
    },
}))
"""


def test_toolflows_and_the_projects_own_packages_each_come_from_their_own_place(project):
    found = project.python(IMPORT_EVERYTHING)

    assert Path(found["toolflows"]) == Path(found["site_packages"]) / "toolflows" / "__init__.py"
    assert Path(found["site_packages"]).is_relative_to(project.venv)
    assert {"toolflows.engine", "toolflows.cli", "toolflows.blocks.tool_method"} <= set(
        found["imported"]
    )
    assert "toolflows.deployments.deploy" in found["imported"]
    # Every module of toolflows imported with the project first on sys.path, and
    # not one of them reached for a top-level flows, blocks or deployments.
    assert found["loaded_by_toolflows"] == []
    assert found["project_packages"] == {
        package: [str(project.root / package / "__init__.py"), f"the project's {package}"]
        for package in USER_PACKAGES
    }


def test_the_projects_own_flow_still_imports_and_runs(project, prefect_api):
    said = project.python(
        "import json; from flows.hello import hello; print(json.dumps(hello('user')))",
        PREFECT_API_URL=prefect_api,
    )

    assert said == "hello, user"


# -- the demo, on Prefect's embedded server ----------------------------------------------


def test_toolflows_demo_runs_in_the_project(project, tmp_path):
    storage = tmp_path / "storage"
    home = tmp_path / "prefect-home"
    completed = project.run(
        [project.executable("toolflows"), "demo"],
        PREFECT_HOME=str(home),
        PREFECT_LOCAL_STORAGE_PATH=str(storage),
    )

    result = json.loads(completed.stdout)
    file = result["files"][0]
    stored = Path(file["uri"].removeprefix("file://"))
    assert result["status"] == "success"
    assert stored.is_relative_to(storage)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == file["sha256"]
    assert "sha256 verified" in completed.stderr
    assert "Starting temporary server" in completed.stderr  # README's first command: no API
    # The temporary server loaded toolflows' prefect.collections entry point on start:
    # its block catalog lists Tool Method though nobody registered it.
    assert "tool-method" in block_type_slugs(home / "prefect.db")


def block_type_slugs(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {slug for (slug,) in connection.execute("SELECT slug FROM block_type")}


# -- blocks register themselves ----------------------------------------------------------

COLLECTIONS = """
import json
from importlib.metadata import entry_points
from prefect.blocks.core import Block
from prefect.plugins import load_prefect_collections
from prefect.utilities.dispatch import get_registry_for_type

def has_tool_method():
    return "tool-method" in (get_registry_for_type(Block) or {})

before = has_tool_method()
load_prefect_collections()
print(json.dumps({
    "entry_points": {ep.name: ep.value for ep in entry_points(group="prefect.collections")},
    "before": before,
    "after": has_tool_method(),
}))
"""


def test_the_prefect_collections_entry_point_brings_the_tool_method_block(project):
    found = project.python(COLLECTIONS)

    assert found["entry_points"]["toolflows"] == "toolflows.blocks"
    assert (found["before"], found["after"]) == (False, True)


def test_prefect_block_register_by_the_short_module_name(project, prefect_api):
    completed = project.run(
        [project.executable("prefect"), "block", "register", "-m", "toolflows"],
        PREFECT_API_URL=prefect_api,
        COLUMNS="200",
    )

    assert "Successfully registered 1 block" in completed.stdout
    assert "Tool Method" in completed.stdout
    block_type = run_coro_as_sync(read_block_type("tool-method"))
    assert block_type.name == "Tool Method"
    assert block_type.description.startswith("An asynchronous generation API method")


async def read_block_type(slug: str) -> BlockType:
    async with get_client() as client:
        return await client.read_block_type_by_slug(slug)


# -- a process worker in the project -----------------------------------------------------


def prefect_yaml(project: Path) -> dict[str, Any]:
    """The project's prefect.yaml as ``prefect init`` makes it, with two deployments.

    The pull step runs every flow in the project directory, on ``sys.path``: the
    user's flow needs it, and it is where a top-level ``flows`` of toolflows was
    shadowed by the project's own.
    """
    work_pool = {"name": POOL, "work_queue_name": "default", "job_variables": {}}
    return {
        "name": "user-project",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        "deployments": [
            {"name": "project-hello", "entrypoint": "flows/hello.py:hello", "work_pool": work_pool},
            {
                "name": "project-run-tool-method",
                "entrypoint": "toolflows.engine.run_tool_method",
                "work_pool": work_pool,
            },
        ],
    }


@pytest.fixture(scope="module")
def worker(project, prefect_api, fake, storage_dir, tmp_path_factory) -> Iterator[Path]:
    """The project's deployments on a process pool, and a worker started in the project."""
    (project.root / "prefect.yaml").write_text(yaml.safe_dump(prefect_yaml(project.root)))
    run_coro_as_sync(create_process_pool(POOL))
    project.run(
        [project.executable("prefect"), "--no-prompt", "deploy", "--all"],
        PREFECT_API_URL=prefect_api,
    )
    inventory_key, _, variable = PRESETS["heygen"]
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = project.env(
        PREFECT_API_URL=prefect_api,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOCAL_STORAGE_PATH=str(storage_dir),
        **{variable: fake.api_keys[inventory_key]},
    )
    with background(
        [project.executable("prefect"), "worker", "start", "--pool", POOL], env, log, project.root
    ):
        yield log


def test_a_worker_in_the_project_runs_the_projects_flow_and_a_toolflows_deployment(worker, fake):
    inventory_key, name, _ = PRESETS["heygen"]
    method = aimed_at(fake, load_preset(inventory_key, name)).model_dump(mode="json")
    parameters = {
        "hello/project-hello": {"name": "worker"},
        "run_tool_method/project-run-tool-method": {"method": method, "params": PARAMS["heygen"]},
    }
    started = {
        deployment: run_deployment(deployment, parameters=given, timeout=0)
        for deployment, given in parameters.items()
    }

    try:
        runs = {
            deployment: run_coro_as_sync(wait_for_flow_run(run.id, timeout=RUN_SECONDS))
            for deployment, run in started.items()
        }
    except FlowRunWaitTimeout as timeout:
        raise AssertionError(f"{timeout}\n{worker.read_text(errors='replace')[-3000:]}") from None
    for deployment, run in runs.items():
        assert run.state.is_completed(), f"{deployment}: {run.state.message}\n{worker.read_text()}"
    assert run_coro_as_sync(runs["hello/project-hello"].state.aresult()) == "hello, worker"
    result = run_coro_as_sync(runs["run_tool_method/project-run-tool-method"].state.aresult())
    stored = result.files[0]
    assert stored.sha256 == fake.expected_sha256(result.task_id)
    assert hashlib.sha256(Path(stored.uri.removeprefix("file://")).read_bytes()).hexdigest() == (
        stored.sha256
    )
