"""Run one measurement in this fresh process: ``python -m bench.worker MODULE:FUNC ARGS OUT``.

The driver starts a worker per measurement so that the CPU time and the peak
RSS the kernel reports belong to that measurement alone. ``ARGS`` is a JSON
object of keyword arguments; the function's JSON-able result goes to ``OUT``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    target, raw_args, out = argv
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(f"bench.{module_name}"), function_name)
    result = function(**json.loads(raw_args))
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
