"""CPU and memory of processes, read from the kernel (``/proc``, ``getrusage``).

Every benchmark charges CPU to the process that spent it: the measured process
(toolflows or its baseline), the Prefect API server and the fake provider each
run in a process of their own, so one never pays for another. ``psutil`` is not
a dependency of the project, and ``/proc`` says all we need.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def wait_or_kill(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Let a process that was asked to stop exit; kill it if it has not in ``timeout`` s."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def own_cpu_seconds() -> float:
    """User + system CPU of this process, all threads (``time.process_time``)."""
    return time.process_time()


def own_peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss(pid: int | str = "self") -> int:
    """Resident set size now, in bytes."""
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * _PAGE


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may hold spaces: the fields start after its closing ")".
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """A process and its live descendants (a worker and the flow run processes it spawned)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.append(current)
        pending += _children(current)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its live descendants (a server and its uvicorn child)."""
    return sum(process_cpu_seconds(member) for member in process_tree(pid))


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (0 once it is gone).

    Shared pages are split between the processes sharing them, so the PSS of
    several processes adds up to what they really occupy (RSS would count
    the shared libraries of each again).
    """
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_pss_bytes(pid: int) -> int:
    """PSS of a process and its live descendants."""
    return sum(pss_bytes(member) for member in process_tree(pid))


def command_line(pid: int) -> str:
    """The command line of a process ("" once it is gone)."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@dataclass
class CpuMeter:
    """CPU spent by a set of processes between ``start()`` and ``stop()``."""

    pids: tuple[int, ...]
    started: float = 0.0
    seconds: float = 0.0

    def _now(self) -> float:
        return sum(tree_cpu_seconds(pid) for pid in self.pids)

    def start(self) -> CpuMeter:
        self.started = self._now()
        return self

    def stop(self) -> float:
        self.seconds = self._now() - self.started
        return self.seconds


class RssSampler:
    """Highest RSS of a process while a block runs, sampled every ``interval`` seconds.

    ``ru_maxrss`` is a high-water mark for the whole life of the process; a
    sampler tells the growth caused by one step (a download) after warm-up.
    """

    def __init__(self, pid: int | str = "self", interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = current_rss(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.baseline = current_rss(self.pid)
        self.peak = self.baseline
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss(self.pid))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, current_rss(self.pid))
            except OSError:
                return

    @property
    def growth(self) -> int:
        return self.peak - self.baseline
