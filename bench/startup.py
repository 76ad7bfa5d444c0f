"""Benchmark 5: start-up of ``toolflows run`` on Prefect's embedded defaults.

``toolflows run FILE --params JSON`` of the Replicate ``Prefer: wait`` preset,
aimed at the fake, whose job is done when the submit answers (one submit, one
small download, no poll), with no ``PREFECT_API_URL`` and a fresh
``PREFECT_HOME`` per run: what a new user's first command costs. Its wall
time is set against a hello-world Prefect flow with one task, run the same
way (``python -c``, fresh home, embedded server). Both get the same
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (120, the CLI's own
default; Prefect's 20 s can be too short on a busy 2-core machine).

The two kinds of runs alternate (hello, toolflows, hello, ...), so a change
of load on the machine hits both; the medians are compared. Overhead =
median(toolflows) - median(hello world).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import REPLICATE_PARAMS, Context, Row, clean_env, median
from toolflows.cli import EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP_TIMEOUT

TARGET_OVERHEAD_SECONDS = 1.0
PRESETS = Path(__file__).resolve().parent.parent / "deployments" / "presets"
HELLO_WORLD = """
from prefect import flow, task

@task
def hello():
    return "hello"

@flow
def hello_flow():
    return hello()

print(hello_flow())
"""


def _definition(api_url: str) -> dict[str, Any]:
    """The ``create_prediction_wait`` preset as shipped, its origin moved to the fake."""
    presets = json.loads((PRESETS / "replicate.json").read_text())
    (definition,) = [p for p in presets if p["name"] == "create_prediction_wait"]
    endpoint = urlsplit(definition["endpoint"])
    return {**definition, "endpoint": api_url + endpoint.path}


def _timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    started = time.perf_counter()
    with log.open("wb") as stderr:
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=stderr, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited {done.returncode} (log {log})")
    return wall, done.stdout.decode()


def run(ctx: Context) -> list[Row]:
    workdir = ctx.workdir / "startup"
    workdir.mkdir()
    definition = workdir / "replicate-wait.json"
    definition.write_text(json.dumps(_definition(ctx.fake.api_url)))
    toolflows = str(Path(sys.executable).with_name("toolflows"))
    client = ctx.fake.client
    assert client is not None
    client.reset()
    client.script("replicate", polls_until_done=0, file_size=64 * 1024)
    walls: dict[str, list[float]] = {"hello": [], "toolflows": []}
    for attempt in range(ctx.sizes.startup_repeats):
        for kind in ("hello", "toolflows"):
            home = workdir / f"home-{kind}-{attempt}"
            env = {
                **clean_env(),
                **ctx.key_env(),
                "PREFECT_HOME": str(home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": STARTUP_TIMEOUT,
            }
            if kind == "hello":
                command = [sys.executable, "-c", HELLO_WORLD]
            else:
                params = json.dumps(REPLICATE_PARAMS)
                command = [toolflows, "run", str(definition), "--params", params]
            wall, stdout = _timed(command, env, workdir / f"{kind}-{attempt}.log")
            if kind == "hello":
                assert stdout.strip().endswith("hello"), stdout
            else:
                assert json.loads(stdout)["status"] == "success", stdout
            walls[kind].append(wall)
    tf, hello = median(walls["toolflows"]), median(walls["hello"])
    overhead = tf - hello
    return [
        Row(
            f"5. start-up: toolflows run vs hello-world flow (median of {len(walls['hello'])})",
            tf,
            hello,
            "s",
            "(context)",
            None,
            details={"walls": walls},
        ),
        Row(
            "5. start-up: toolflows' own overhead (difference of medians)",
            overhead,
            None,
            "s",
            f"<= {TARGET_OVERHEAD_SECONDS:g} s",
            overhead <= TARGET_OVERHEAD_SECONDS,
        ),
    ]
