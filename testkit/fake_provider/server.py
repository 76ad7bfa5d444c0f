"""The full FakeProvider: the shipped one serving every provider shape, plus the
test-facing API (scripts, recorded requests, submits, cancels, connections, leaks)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from testkit.fake_provider.callbacks import CallbackRecord
from testkit.fake_provider.cdn import Cdn
from testkit.fake_provider.http import MisbehavingServer
from testkit.fake_provider.model import Behaviour, FakeJob, RecordedRequest
from testkit.fake_provider.providers import APIS
from testkit.fake_provider.state import State
from toolflows.fake_provider import server
from toolflows.fake_provider.http import Handler, HttpServer, Reply, Request
from toolflows.fake_provider.providers import Route

PROVIDERS = ("heygen", "fal", "runway", "replicate", "operation", "openai", "jobs")


class FakeProvider(server.FakeProvider):
    """Fake HeyGen/FAL/Runway/Replicate (+ generic APIs) and their CDN, on 127.0.0.1.

    `with FakeProvider() as fake:` starts both servers; `fake.api_url` takes the provider
    routes, `fake.cdn_url` serves output files. `api_keys["generic"]` is the Bearer token
    of the generic routes (providers "operation", "openai", "jobs").

    Replicate (body `webhook`), FAL (query `fal_webhook`), HeyGen (body `callback_url`)
    and "jobs" (body `callback`) call back a loopback URL when a job ends, signed with
    `webhook_secrets` ("replicate": Standard Webhooks' whsec_ secret; "heygen": hex HMAC
    in `Signature`; "generic": `X-Signature: sha256=<hex>`); `callbacks` records them.
    """

    default_api_keys: ClassVar[dict[str, str]] = {
        **server.FakeProvider.default_api_keys,
        "fal": "fal_test_key",
        "runway": "key_test",
        "replicate": "r8_test",
    }
    api_types = APIS
    state_type = State
    cdn_type = Cdn
    _state: State

    def stop(self) -> None:
        if self._loop is not None:
            self._run(self._state.callbacks.close())
        super().stop()

    def _server(self, origin: str, handler: Handler) -> HttpServer:
        return MisbehavingServer(handler, lambda: self._state.connected(origin))

    async def _api(self, request: Request) -> Reply:
        self._state.record("api", request)
        return await super()._api(request)

    async def _dispatch(self, route: Route, request: Request, params: dict[str, str]) -> Reply:
        if route.submit:
            self._state.count_submit(route.api.name)
        return await super()._dispatch(route, request, params)

    # -- scripting and inspection -------------------------------------------------------

    def script(self, provider: str | None = None, **behaviour: Any) -> None:
        """Behaviour of the jobs submitted from now on (to `provider`, or to any provider
        without a script of its own). The submit fault hits the next submit only."""
        if provider is not None and provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; one of {PROVIDERS}")
        self._state.script(provider, Behaviour(**behaviour))

    def requests(
        self,
        *,
        method: str | None = None,
        path_prefix: str | None = None,
        origin: Literal["api", "cdn"] | None = None,
    ) -> list[RecordedRequest]:
        with self._state.lock:
            recorded = list(self._state.recorded)
        return [
            r
            for r in recorded
            if (method is None or r.method == method.upper())
            and (path_prefix is None or r.path.startswith(path_prefix))
            and (origin is None or r.origin == origin)
        ]

    def submits(self, provider: str | None = None) -> int:
        """Submit requests that reached the server, answered or not."""
        with self._state.lock:
            counts = self._state.submit_counts
            return sum(counts.values()) if provider is None else counts[provider]

    def cancels(self, provider: str | None = None) -> list[str]:
        """Job ids named by cancel requests, in order (twice if cancelled twice)."""
        with self._state.lock:
            return [job for who, job in self._state.cancelled if provider in (None, who)]

    @property
    def connections_opened(self) -> dict[str, int]:
        """TCP connections accepted, per origin ("api", "cdn")."""
        with self._state.lock:
            return {"api": self._state.connections["api"], "cdn": self._state.connections["cdn"]}

    @property
    def credential_leaks(self) -> list[tuple[str, str]]:
        """(path, header name) of every credential-bearing header the CDN refused."""
        with self._state.lock:
            return list(self._state.leaks)

    def jobs(self, provider: str | None = None) -> list[FakeJob]:
        with self._state.lock:
            return [j for j in self._state.jobs.values() if provider in (None, j.provider)]

    @property
    def webhook_secrets(self) -> dict[str, str]:
        """Signing secrets of the callbacks, by provider key name; changes apply at once."""
        return self._state.webhook_secrets

    @property
    def callbacks(self) -> list[CallbackRecord]:
        """Every callback attempt, in order: real or forged, answered, failed or refused."""
        with self._state.lock:
            return list(self._state.callbacks.records)

    def reset(self) -> None:
        """Forget scripts, jobs, recordings and pending callbacks (open connections stay open)."""
        self._state.reset()
