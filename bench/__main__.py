"""``python -m bench [--smoke] [--only NAME ...]``: the toolflows benchmark suite.

Starts the services every benchmark shares (a Prefect API server, the fake
provider, moto's S3), each in a process of its own, runs the benchmarks one
after the other (never two at once: the machine has 2 cores), prints the
table and writes ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import download, many_jobs, poll_cost, schedule, startup, waiting
from bench.common import Context, Row, Sizes
from bench.fakectl import FakeProcess
from bench.services import MotoServer, PrefectServer

BENCHMARKS: dict[str, Callable[[Context], list[Row]]] = {
    "poll_cost": poll_cost.run,
    "many_jobs": many_jobs.run,
    "download": download.run,
    "schedule": schedule.run,
    "startup": startup.run,
    "waiting": waiting.run,
}
RESULTS = Path(__file__).resolve().parent / "results.json"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if (
        unit in ("", "jobs", "requests", "runs", "processes", "submits")
        and float(value).is_integer()
    ):
        text = f"{int(value)}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def render(rows: list[Row]) -> str:
    """The results as a plain-text table (also fine as Markdown)."""
    header = ("figure", "toolflows", "baseline", "ratio", "target", "met/unmet")
    lines = [
        (
            row.figure,
            _number(row.toolflows, row.unit),
            _number(row.baseline, row.unit),
            "-" if row.ratio is None else f"{row.ratio:.2f}x",
            row.target,
            {True: "met", False: "UNMET", None: "-"}[row.met],
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small sizes (< 2 min, for CI)")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"where to write the JSON (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    sizes = Sizes.small() if args.smoke else Sizes.full()
    names = args.only or list(BENCHMARKS)
    workdir = Path(tempfile.mkdtemp(prefix="toolflows-bench-"))
    print(f"work directory: {workdir}", file=sys.stderr)
    started = time.perf_counter()
    rows: list[Row] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    load: dict[str, tuple[float, float, float]] = {}
    try:
        with FakeProcess() as fake:
            server = PrefectServer(workdir / "server-home", workdir / "server.log")
            moto = MotoServer(workdir / "moto.log") if "download" in names else None
            try:
                server.start()
                if moto is not None:
                    moto.start()
                ctx = Context(sizes=sizes, workdir=workdir, fake=fake, server=server, moto=moto)
                timings["services"] = time.perf_counter() - started
                for name in names:
                    load[name] = os.getloadavg()
                    print(f"running {name} ...", file=sys.stderr, flush=True)
                    begun = time.perf_counter()
                    try:
                        rows += BENCHMARKS[name](ctx)
                    except Exception:
                        failures[name] = traceback.format_exc()
                        print(failures[name], file=sys.stderr)
                    timings[name] = time.perf_counter() - begun
            finally:
                server.stop()
                if moto is not None:
                    moto.stop()
    finally:
        if not args.keep and not failures:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started
    print(render(rows))
    print(f"\n{'smoke' if sizes.smoke else 'full'} run: {total:.0f} s", end="")
    print(" (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    for name in failures:
        print(f"FAILED: {name} (traceback above; logs in {workdir})")
    args.results.write_text(
        json.dumps(
            {
                "mode": "smoke" if sizes.smoke else "full",
                "sizes": sizes.__dict__,
                "seconds": total,
                "timings": timings,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_before": load,
                    "load_average_at_end": os.getloadavg(),
                },
                "rows": [row.to_json() for row in rows],
                "failures": failures,
            },
            indent=2,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
