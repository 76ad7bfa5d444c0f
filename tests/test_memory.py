"""Downloads stream (SPEC §4.5): peak memory does not grow with the size of the output,
nor with the compression ratio of a gzip-encoded one (a decompression bomb).

``toolflows run`` runs in a child process against the fake provider; the child's peak
RSS comes from the kernel (``wait4`` rusage) once it exits. The fake provider runs in
this process, so sampling our own RSS during the big run shows it streams too.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.fake_provider import FakeProvider
from tests.helpers import PARAMS, fake_method

MIB = 1024 * 1024
BIG_FILE = 256 * MIB
SMALL_FILE = 1 * MIB
ALLOWED_GROWTH = 64 * MIB
# ~1 MB of gzip inflating to 1 GiB of zeros, under a cap that stops it at 256 MiB.
BOMB = 1024 * MIB
BOMB_CAP = 256 * MIB


@dataclass(frozen=True)
class MeasuredRun:
    exit_code: int
    result: dict[str, Any]
    stderr: str
    peak_rss: int  # bytes


def run_cli_measuring_peak_rss(
    fake: FakeProvider,
    workdir: Path,
    api_url: str,
    file_size: int,
    *,
    max_download_bytes: int | None = None,
    **behaviour: Any,
) -> MeasuredRun:
    """``toolflows run`` a HeyGen method whose video is ``file_size`` bytes; its peak RSS.

    ``behaviour``: more of the fake's script (a gzip bomb); ``max_download_bytes``
    overrides the method's cap.
    """
    fake.script("heygen", polls_until_done=0, file_size=file_size, **behaviour)
    definition = workdir / f"method-{file_size}.json"
    method = fake_method(fake, "heygen", max_wait_seconds=120)
    if max_download_bytes is not None:
        method.adapter_config.max_download_bytes = max_download_bytes
    definition.write_text(json.dumps(method.model_dump()))
    params = workdir / "params.json"
    params.write_text(json.dumps(PARAMS["heygen"]))
    stdout_path, stderr_path = workdir / f"out-{file_size}", workdir / f"err-{file_size}"
    command = [str(Path(sys.executable).with_name("toolflows")), "run", str(definition)]
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            [*command, "--params", f"@{params}"],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "PREFECT_API_URL": api_url},
        )
        _, wait_status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(wait_status)
    return MeasuredRun(
        exit_code=child.returncode,
        result=json.loads(stdout_path.read_text()),
        stderr=stderr_path.read_text(),
        peak_rss=usage.ru_maxrss * 1024,  # Linux reports KiB
    )


class RssSampler:
    """The highest resident set size of this process while it runs (sampled)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.baseline = current_rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def test_peak_memory_does_not_grow_with_the_file_size(fresh_fake, tmp_path, prefect_api):
    with RssSampler() as provider_memory:
        big = run_cli_measuring_peak_rss(fresh_fake, tmp_path, prefect_api, BIG_FILE)

    assert big.exit_code == 0, big.stderr[-3000:]
    (file,) = big.result["files"]
    stored = Path(file["uri"].removeprefix("file://"))
    try:
        assert file["size"] == BIG_FILE
        assert stored.stat().st_size == BIG_FILE
        expected = fresh_fake.expected_sha256(big.result["taskId"])
        assert file["sha256"] == expected
        assert sha256_of(stored) == expected
    finally:
        stored.unlink(missing_ok=True)  # 256 MiB of test data
    # The fake provider (in this process) streamed the file instead of buffering it.
    assert provider_memory.growth <= ALLOWED_GROWTH, (
        f"the fake provider grew by {provider_memory.growth / MIB:.0f} MiB serving 256 MiB"
    )

    small = run_cli_measuring_peak_rss(fresh_fake, tmp_path, prefect_api, SMALL_FILE)

    assert small.exit_code == 0, small.stderr[-3000:]
    assert small.result["files"][0]["sha256"] == fresh_fake.expected_sha256(small.result["taskId"])
    assert small.peak_rss > 20 * MIB  # a real measurement of a Python process
    growth = big.peak_rss - small.peak_rss
    assert growth <= ALLOWED_GROWTH, (
        f"peak RSS {big.peak_rss / MIB:.0f} MiB for 256 MiB vs {small.peak_rss / MIB:.0f} MiB"
        f" for 1 MiB: grew {growth / MIB:.0f} MiB"
    )


def test_a_gzip_bomb_does_not_fill_memory(fresh_fake, tmp_path, prefect_api):
    bomb = run_cli_measuring_peak_rss(
        fresh_fake, tmp_path, prefect_api, SMALL_FILE, bomb_bytes=BOMB, max_download_bytes=BOMB_CAP
    )
    small = run_cli_measuring_peak_rss(fresh_fake, tmp_path, prefect_api, SMALL_FILE)

    assert bomb.exit_code == 0, bomb.stderr[-3000:]
    assert bomb.result["files"] == []
    (warning,) = bomb.result["warnings"]
    assert warning["code"] == "DOWNLOAD_FAILED"
    assert "maxDownloadBytes" in warning["message"]
    assert small.exit_code == 0, small.stderr[-3000:]
    growth = bomb.peak_rss - small.peak_rss
    assert growth <= ALLOWED_GROWTH, (
        f"peak RSS {bomb.peak_rss / MIB:.0f} MiB inflating a bomb vs {small.peak_rss / MIB:.0f}"
        f" MiB for 1 MiB: grew {growth / MIB:.0f} MiB"
    )
