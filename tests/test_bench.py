"""The benchmark suite runs end to end (smoke sizes): a table and a results file.

Figures are not asserted (they are measurements, not tests); that every
benchmark runs, and reports each figure against its baseline and target, is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ["figure", "toolflows", "baseline", "ratio", "target", "met/unmet"]


def test_the_smoke_benchmarks_print_the_table_and_write_the_results(tmp_path):
    results = tmp_path / "results.json"

    finished = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr[-3000:]
    table = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in finished.stdout.splitlines()
        if line.startswith("| ")
    ]
    assert table[0] == HEADER
    figures = [row[0] for row in table[1:]]
    # Every one of the six benchmarks contributed rows.
    assert {figure.split(".")[0] for figure in figures} == {"1", "2", "3", "4", "5", "6"}
    written = json.loads(results.read_text())
    assert written["mode"] == "smoke"
    assert written["failures"] == {}
    assert [row["figure"] for row in written["rows"]] == figures
    judged = [row for row in written["rows"] if row["met"] is not None]
    assert judged and all(isinstance(row["met"], bool) for row in judged)
    assert all(row["target"] for row in judged)
