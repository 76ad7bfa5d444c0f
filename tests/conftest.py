"""Shared fixtures: one real Prefect API for the session, a fake provider per test module.

Settings are set before Prefect is imported: Prefect reads them at import.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="toolflows-tests-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_DIR / "storage")
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server (subprocess) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def storage_dir() -> Path:
    """Where the embedded default result storage keeps files in this session."""
    return _SESSION_DIR / "storage"


@pytest.fixture(scope="module")
def fake() -> Iterator[object]:
    """The fake provider (API and CDN origins on loopback), shared by a module."""
    from testkit.fake_provider import FakeProvider

    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def fresh_fake(fake: object) -> object:
    """The module's fake provider, with its script and records cleared for this test."""
    fake.reset()  # type: ignore[attr-defined]
    return fake


# `make test` runs the files in parallel (pytest-xdist, `--dist loadfile`: a file's tests
# share one worker and its module fixtures). The suite lasts as long as its slowest
# worker, so the longest files start first, each on a worker of its own.
LONGEST_FIRST = (
    "test_waiter.py",
    "test_bench.py",
    "test_scale_out.py",
    "test_install.py",
    "test_worker_integration.py",
    "test_paid_runs.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every file keeps its own order
