"""FakeProvider: both origins on their own event loop thread.

A thread of its own lets sync code, async code and code running inside another event
loop (Prefect's) all talk to it over real sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Any, ClassVar

from toolflows.fake_provider.cdn import Cdn
from toolflows.fake_provider.http import Handler, HttpServer, Reply, Request
from toolflows.fake_provider.model import FakeJob
from toolflows.fake_provider.providers import Api, HeyGen, OpenAI, Refused, Route
from toolflows.fake_provider.state import State

HOST = "127.0.0.1"


class FakeProvider:
    """Fake HeyGen (avatar video) and OpenAI-style videos, and their CDN, on 127.0.0.1.

    `with FakeProvider() as fake:` starts both servers; `fake.api_url` takes the provider
    routes, `fake.cdn_url` serves output files. `api_keys["generic"]` is the Bearer token
    of the OpenAI-style routes. The class attributes say what is served, so that a
    subclass can serve more.
    """

    default_api_keys: ClassVar[dict[str, str]] = {
        "heygen": "hg_test_key",
        "generic": "generic_test_key",
    }
    # Tried in order: the first route whose pattern matches a path takes it.
    api_types: ClassVar[tuple[type[Api], ...]] = (HeyGen, OpenAI)
    state_type: ClassVar[type[State]] = State
    cdn_type: ClassVar[type[Cdn]] = Cdn

    def __init__(self, port: int = 0, cdn_port: int = 0) -> None:
        self.api_keys = dict(self.default_api_keys)
        self.api_url = ""
        self.cdn_url = ""
        self._ports = (port, cdn_port)
        self._state = self.state_type(self.api_keys)
        self._cdn = self.cdn_type(self._state)
        self._routes: list[Route] = [
            route for api in self.api_types for route in api(self._state).routes()
        ]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[HttpServer] = []

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeProvider:
        if self._loop is not None:
            raise RuntimeError("FakeProvider already started")
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="fake-provider", daemon=True)
        self._thread.start()
        self._loop = loop
        self._servers = [self._server("api", self._api), self._server("cdn", self._cdn.handle)]
        ports = [
            self._run(server.start(HOST, p))
            for server, p in zip(self._servers, self._ports, strict=True)
        ]
        self.api_url, self.cdn_url = (f"http://{HOST}:{port}" for port in ports)
        self._state.api_url, self._state.cdn_url = self.api_url, self.cdn_url
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        for server in self._servers:
            self._run(server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def _run(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _server(self, origin: str, handler: Handler) -> HttpServer:
        """The server of one origin ("api" or "cdn")."""
        return HttpServer(handler)

    # -- routing ------------------------------------------------------------------------

    async def _api(self, request: Request) -> Reply:
        allowed = False
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            if route.method != request.method:
                allowed = True
                continue
            return await self._dispatch(route, request, match.groupdict())
        if allowed:
            return Reply.json(405, {"detail": "Method Not Allowed"})
        return Reply.json(404, {"detail": "Not Found"})

    async def _dispatch(self, route: Route, request: Request, params: dict[str, str]) -> Reply:
        """Answer a request on the route it matched, if its credentials pass."""
        refusal = route.api.check(request)
        if refusal is not None:
            return refusal
        try:
            return await route.handler(request, **params)
        except Refused as refused:
            return refused.reply

    # -- inspection ---------------------------------------------------------------------

    def job(self, job_id: str) -> FakeJob:
        with self._state.lock:
            return self._state.jobs[job_id]

    def expected_sha256(self, job_id: str, output_index: int = 0) -> str:
        """sha256 of what the CDN serves for that output (index 0 = primary)."""
        return self.job(job_id).files[output_index].sha256()


def main(argv: list[str] | None = None, fake_type: type[FakeProvider] = FakeProvider) -> None:
    """Run the fake in the foreground for manual demos until Ctrl-C."""
    package = fake_type.__module__.rpartition(".")[0]
    parser = argparse.ArgumentParser(prog=f"python -m {package}", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="API port (default: any free)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (default: any free)")
    args = parser.parse_args(argv)
    with fake_type(port=args.port, cdn_port=args.cdn_port) as fake:
        print(f"API  {fake.api_url}", flush=True)
        print(f"CDN  {fake.cdn_url}", flush=True)
        for provider, key in fake.api_keys.items():
            print(f"key  {provider}: {key}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
