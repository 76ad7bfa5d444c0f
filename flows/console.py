"""A live status line for people watching ``toolflows run`` in a terminal.

The engine reports what it is doing (``show_status``, ``show_download``);
nobody listens unless the CLI, seeing a terminal on stderr, installs a
``LiveLine``. Then one line is redrawn in place (status, elapsed, next check;
a download bar with bytes and rate) instead of log lines. stdout is never
touched: it carries the JSON result.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

BAR_WIDTH = 24
REDRAW_INTERVAL_SECONDS = 0.1


class LiveLine:
    """One redrawn line on a terminal."""

    def __init__(self, stream: TextIO, started_at: float | None = None) -> None:
        self.stream = stream
        self.started_at = started_at or time.monotonic()
        self._last_draw = 0.0
        self._download: tuple[str, float, int] | None = None  # name, start time, start bytes

    def status(self, task_id: str | None, status: str, next_check_in: float | None) -> None:
        elapsed = time.monotonic() - self.started_at
        text = f"job {task_id or '-'}  status: {status}  elapsed {_duration(elapsed)}"
        if next_check_in is not None:
            text += f"  next check in {next_check_in:.1f}s"
        self._draw(text, force=True)

    def download(self, filename: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self._download is None or self._download[0] != filename or done < self._download[2]:
            self._download = (filename, now, done)
        _, started, start_bytes = self._download
        rate = (done - start_bytes) / max(now - started, 1e-6)
        if total:
            filled = min(BAR_WIDTH, int(BAR_WIDTH * done / total))
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            text = f"{filename} [{bar}] {_size(done)}/{_size(total)} {_size(rate)}/s"
        else:
            text = f"{filename} {_size(done)} {_size(rate)}/s"
        self._draw(text, force=total is not None and done >= total)

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, text: str, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_INTERVAL_SECONDS:
            return
        self._last_draw = now
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()


_live: LiveLine | None = None


def start_live_line(stream: TextIO = sys.stderr) -> LiveLine:
    global _live
    _live = LiveLine(stream)
    return _live


def stop_live_line() -> None:
    global _live
    if _live is not None:
        _live.finish()
    _live = None


def show_status(task_id: str | None, status: str, next_check_in: float | None = None) -> None:
    if _live is not None:
        _live.status(task_id, status, next_check_in)


def show_download(filename: str, done: int, total: int | None) -> None:
    if _live is not None:
        _live.download(filename, done, total)


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
