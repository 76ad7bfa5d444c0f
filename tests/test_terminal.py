"""On a terminal, ``toolflows run`` redraws a live status line; stdout stays one JSON."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.helpers import PARAMS, fake_method


def test_a_terminal_gets_a_live_status_line_and_a_download_bar(fresh_fake, prefect_api, tmp_path):
    fresh_fake.script("heygen", polls_until_done=3, file_size=3_000_000)
    method = tmp_path / "method.json"
    method.write_text(json.dumps(fake_method(fresh_fake, "heygen").model_dump()))
    terminal, terminal_side = pty.openpty()

    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("toolflows")),
            "run",
            str(method),
            "--params",
            json.dumps(PARAMS["heygen"]),
        ],
        stdout=subprocess.PIPE,
        stderr=terminal_side,
        env={**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "120"},
    )
    os.close(terminal_side)
    screen = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        screen += chunk
    stdout = process.stdout.read()
    assert process.wait(timeout=60) == 0, screen.decode(errors="replace")[-2000:]

    result = json.loads(stdout)
    text = screen.decode(errors="replace")
    assert "\r" in text
    assert "status: processing" in text
    assert "next check in" in text
    assert f"job {result['taskId']}" in text
    assert "video.mp4 [" in text and "/s" in text
    assert "2.9MiB/2.9MiB" in text
    # The INFO log lines give way to the live line on a terminal.
    assert "Polling 1/" not in text
