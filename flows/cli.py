"""The ``toolflows`` command: register, run, demo, serve, deploy, waiter (SPEC §3).

stdout carries exactly one JSON document; everything else (Prefect's logs,
the embedded server's output) goes to stderr. Exit 0 on success, 1 on a job
or HTTP error, 2 on bad usage or invalid config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.methods import load_method, prepare_method, read_definition_file

# The embedded server starts in 20-30 s on a loaded 2-core machine; Prefect's
# default of 20 s makes the first run fail there.
EPHEMERAL_STARTUP_TIMEOUT_SECONDS = "120"


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    )
    if args.command in (_run, _demo) and sys.stderr.isatty():
        # The live status line shows progress; keep warnings and errors as lines.
        # (Set before Prefect configures logging; the API still gets every log.)
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    sys.exit(args.command(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolflows",
        description="Run asynchronous generation APIs as Prefect flows: submit, poll, download.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    register = commands.add_parser("register", help="save definitions (.json/.yaml) as blocks")
    register.add_argument("files", nargs="+", metavar="FILE")
    register.set_defaults(command=_register)

    run = commands.add_parser("run", help="run a method and print its result as JSON")
    run.add_argument("method", metavar="METHOD", help='block name, "inventoryKey/name" or file')
    run.add_argument("--params", default=None, metavar="JSON|@FILE", help="request params")
    run.add_argument("--resume", default=None, metavar="TASK_ID", help="collect a submitted job")
    run.set_defaults(command=_run)

    demo = commands.add_parser("demo", help="a complete run against the built-in fake provider")
    demo.set_defaults(command=_demo)

    serve = commands.add_parser(
        "serve", help="serve every enabled method as its own deployment (foreground)"
    )
    serve.add_argument("--name-prefix", default="", metavar="PREFIX", help="deployment names")
    serve.set_defaults(command=_serve)

    waiter = commands.add_parser(
        "waiter", help="watch suspended runs' jobs and resume each run when its job ends"
    )
    waiter.add_argument(
        "--listen", default=None, metavar="HOST:PORT", help="receive provider callbacks here"
    )
    waiter.add_argument(
        "--public-url", default=None, metavar="URL", help="where providers reach --listen"
    )
    waiter.add_argument(
        "--scan-seconds", type=float, default=None, metavar="S", help="how often to look for runs"
    )
    waiter.set_defaults(command=_waiter)

    deploy = commands.add_parser(
        "deploy", help="create one deployment per enabled method on a work pool"
    )
    deploy.add_argument("--pool", required=True, metavar="NAME", help="a process work pool")
    deploy.add_argument("--name-prefix", default="", metavar="PREFIX", help="deployment names")
    deploy.set_defaults(command=_deploy)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
        params = parse_params(args.params)
    except ToolflowsError as error:
        return _print_error(error)

    async def check_then_run() -> Any:
        # A wrong config fails here, before any flow run exists: a definition file
        # whose ${VAR} are set is checked without even importing Prefect.
        definition = await load_method(args.method)
        await prepare_method(definition, params, submitting=args.resume is None)
        from toolflows.engine import run_tool_method

        return await run_tool_method(args.method, params, args.resume)

    return _print_outcome(check_then_run)


def _register(args: argparse.Namespace) -> int:
    try:
        # Every file is valid before anything is saved (or Prefect imported).
        definitions = [
            definition for file in args.files for definition in read_definition_file(file)
        ]
    except ToolflowsError as error:
        return _print_error(error)
    from toolflows.deployments.registry import register_definitions

    with _stdout_to_stderr() as stdout:
        try:
            saved = asyncio.run(register_definitions(definitions))
        except ToolflowsError as error:
            return _print_error(error, stdout)
        _write(stdout, {"status": "success", "registered": saved})
    return 0


def _demo(args: argparse.Namespace) -> int:
    from toolflows.demo import run_demo

    return _print_outcome(run_demo)


def _serve(args: argparse.Namespace) -> int:
    from toolflows.deployments.deploy import serve_methods

    with _stdout_to_stderr() as stdout:

        def announce(names: list[str]) -> None:
            _write(stdout, {"status": "serving", "deployments": names})

        try:
            asyncio.run(serve_methods(name_prefix=args.name_prefix, on_ready=announce))
        except ToolflowsError as error:
            return _print_error(error, stdout)
        except KeyboardInterrupt:
            pass
        except Exception as error:
            _write(stdout, _unexpected(error))
            return 1
    return 0


def _waiter(args: argparse.Namespace) -> int:
    from toolflows.core.webhooks import callback_url
    from toolflows.waiter import SCAN_SECONDS, Waiter, parse_listen

    try:
        listen = parse_listen(args.listen) if args.listen else None
        if args.public_url:
            if listen is None:
                raise ValueError("--public-url needs --listen (where the callbacks arrive)")
            callback_url(args.public_url, "00000000-0000-0000-0000-000000000000", "t" * 32)
    except ValueError as error:
        return _print_error(ToolflowsError(ErrorCode.CONFIG_INVALID, str(error)))
    with _stdout_to_stderr() as stdout:

        def announce(listening: str | None) -> None:
            _write(stdout, {"status": "waiting", "listening": listening})

        waiter = Waiter(
            listen=listen,
            public_url=args.public_url,
            scan_seconds=args.scan_seconds or SCAN_SECONDS,
            on_ready=announce,
        )
        try:
            asyncio.run(waiter.run())
        except KeyboardInterrupt:
            pass
        except Exception as error:
            traceback.print_exc()
            _write(stdout, _unexpected(error))
            return 1
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from toolflows.deployments.deploy import deploy_methods

    with _stdout_to_stderr() as stdout:
        try:
            names = asyncio.run(deploy_methods(args.pool, name_prefix=args.name_prefix))
        except ToolflowsError as error:
            return _print_error(error, stdout)
        except Exception as error:
            _write(stdout, _unexpected(error))
            return 1
        _write(stdout, {"status": "success", "workPool": args.pool, "deployments": names})
    return 0


def _unexpected(error: Exception) -> dict[str, Any]:
    """An error that is not a ToolflowsError (an unreachable API...), as the error document."""
    internal = {"code": "INTERNAL_ERROR", "message": f"{type(error).__name__}: {error}"}
    return {"status": "error", "error": internal}


def parse_params(raw: str | None) -> dict[str, Any]:
    """``--params``: inline JSON or ``@file``; must be a JSON object."""
    if raw is None:
        return {}
    source = "--params"
    if raw.startswith("@"):
        source = raw[1:]
        try:
            raw = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise ToolflowsError(ErrorCode.CONFIG_INVALID, f"cannot read {source}: {exc}") from None
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID, f"{source} is not valid JSON: {exc.msg} at {exc.pos}"
        ) from None
    if not isinstance(params, dict):
        raise ToolflowsError(ErrorCode.CONFIG_INVALID, f"{source} must be a JSON object")
    return params


def _print_outcome(start: Callable[[], Any]) -> int:
    """Run a coroutine on the embedded defaults; print its result or its error."""
    with _stdout_to_stderr() as stdout, _live_line_on_terminal():
        try:
            result = asyncio.run(start())
        except ToolflowsError as error:
            return _print_error(error, stdout)
        except Exception as error:
            internal = {"code": "INTERNAL_ERROR", "message": f"{type(error).__name__}: {error}"}
            _write(stdout, {"status": "error", "error": internal})
            return 1
        _write(stdout, result.to_json_dict())
    return 0


def _print_error(error: ToolflowsError, stdout: Any = None) -> int:
    _write(stdout or sys.stdout, {"status": "error", "error": error.to_dict()})
    return error.exit_code


def _write(stream: Any, document: dict[str, Any]) -> None:
    stream.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    stream.flush()


@contextmanager
def _live_line_on_terminal() -> Iterator[None]:
    """On a terminal, a redrawn status line replaces the INFO log lines."""
    from toolflows.console import start_live_line, stop_live_line

    if not sys.stderr.isatty():
        yield
        return
    start_live_line(sys.stderr)
    try:
        yield
    finally:
        stop_live_line()


@contextmanager
def _stdout_to_stderr() -> Iterator[Any]:
    """Point file descriptor 1 at stderr while Prefect runs; yield the real stdout.

    Done at the descriptor level so that subprocesses (the embedded server)
    and C extensions cannot write to stdout either.
    """
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(real_stdout), "w", encoding="utf-8") as stdout:
            yield stdout
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
