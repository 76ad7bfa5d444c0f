"""The shipped fake's state, plus what tests script and inspect: scripts, recorded
traffic, cancels, credential leaks, connections, idempotency keys, signed CDN links,
callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from testkit.fake_provider.callbacks import DEFAULT_WEBHOOK_SECRETS, Callbacks
from testkit.fake_provider.content import ScriptedFile
from testkit.fake_provider.model import Behaviour, FakeJob, Fault, RecordedRequest
from toolflows.fake_provider import state
from toolflows.fake_provider.content import FakeFile
from toolflows.fake_provider.http import Request

HEYGEN_URL_LIFETIME = 7 * 86400
RUNWAY_URL_LIFETIME = 48 * 3600


@dataclass
class _Script:
    behaviour: Behaviour
    submit_fault: Fault | None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class State(state.State):
    jobs: dict[str, FakeJob]

    def __init__(self, api_keys: dict[str, str]) -> None:
        super().__init__(api_keys)
        self._secret = secrets.token_bytes(16)
        self.webhook_secrets = dict(DEFAULT_WEBHOOK_SECRETS)
        self.callbacks = Callbacks(self.lock, self.webhook_secrets)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.jobs = {}
            self.scripts: dict[str | None, _Script] = {}
            self.recorded: list[RecordedRequest] = []
            self.submit_counts: Counter[str] = Counter()
            self.cancelled: list[tuple[str, str]] = []
            self.leaks: list[tuple[str, str]] = []
            self.connections: Counter[str] = Counter()
            self.idempotency_keys: dict[str, str] = {}
        self.callbacks.reset()

    # -- scripting and jobs -------------------------------------------------------------

    def script(self, provider: str | None, behaviour: Behaviour) -> None:
        with self.lock:
            self.scripts[provider] = _Script(behaviour, behaviour.submit_fault)

    def take_behaviour(self, provider: str) -> tuple[Behaviour, Fault | None]:
        """Behaviour for a new job, and the script's one-shot submit fault if still unused."""
        with self.lock:
            script = self.scripts.get(provider) or self.scripts.get(None)
            if script is None:
                return Behaviour(), None
            fault, script.submit_fault = script.submit_fault, None
            return script.behaviour, fault

    def get_job(self, provider: str, job_id: str) -> FakeJob | None:
        """The job, unless a delete removed it."""
        job = super().get_job(provider, job_id)
        return None if job is None or job.deleted else job

    def job_for_key(self, key: str) -> str | None:
        """The job an ``Idempotency-Key`` already created, if any."""
        with self.lock:
            return self.idempotency_keys.get(key)

    def remember_key(self, key: str, job_id: str) -> None:
        with self.lock:
            self.idempotency_keys.setdefault(key, job_id)

    def pop_fault(
        self, job: FakeJob, which: Literal["status", "download", "result"]
    ) -> Fault | None:
        with self.lock:
            queue = getattr(job, f"{which}_faults")
            return queue.popleft() if queue else None

    def poll(self, job: FakeJob) -> float | None:
        """As the shipped poll; the check that sees a job end sends its callback."""
        progress = super().poll(job)
        self.callbacks.settle(job)
        return progress

    def cancel(self, job: FakeJob, *, delete: bool = False) -> bool:
        """Record a cancel request; True when the job was still running (now cancelled).

        `delete`: the provider cancels with a delete verb (Runway, HeyGen, OpenAI), which
        removes a job already finished: it answers 404 from then on.
        """
        with self.lock:
            self.cancelled.append((job.provider, job.id))
            running = job.progress() is not None
            job.cancelled = job.cancelled or running
            job.deleted = job.deleted or (delete and not running)
        self.callbacks.settle(job)
        return running

    # -- recording ----------------------------------------------------------------------

    def record(self, origin: Literal["api", "cdn"], request: Request) -> None:
        entry = RecordedRequest(**vars(request), origin=origin)
        with self.lock:
            self.recorded.append(entry)

    def count_submit(self, provider: str) -> None:
        with self.lock:
            self.submit_counts[provider] += 1

    def connected(self, origin: str) -> None:
        with self.lock:
            self.connections[origin] += 1

    def leak(self, path: str, header: str) -> None:
        with self.lock:
            self.leaks.append((path, header))

    # -- CDN links ----------------------------------------------------------------------

    def _signature(self, path: str, expires: int, generation: int) -> str:
        message = f"{path}|{expires}|{generation}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:40]

    def file_url(self, job: FakeJob, file: FakeFile) -> str:
        """Absolute CDN URL of a file, signed like the provider signs its links."""
        url = super().file_url(job, file)
        signing = file.signing if isinstance(file, ScriptedFile) else None
        if signing is None:
            return url
        path = self.file_path(job, file)
        with self.lock:
            generation = job.url_generation
        if signing == "cloudfront":
            expires = int(time.time()) + HEYGEN_URL_LIFETIME
            signature = self._signature(path, expires, generation)
            return f"{url}?Expires={expires}&Signature={signature}&Key-Pair-Id=K2FAKEPAIR"
        expires = int(time.time()) + RUNWAY_URL_LIFETIME
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps({"exp": expires, "path": path}).encode())
        return f"{url}?_jwt={header}.{payload}.{self._signature(path, expires, generation)}"

    def signature_valid(self, job: FakeJob, path: str, query: dict[str, str]) -> bool:
        """A signed link works until it expires or an `expired` fault retired its generation."""
        if "_jwt" in query:
            try:
                _, payload, signature = query["_jwt"].split(".")
                expires = int(json.loads(base64.urlsafe_b64decode(payload + "==="))["exp"])
            except (ValueError, KeyError, TypeError):
                return False
        else:
            try:
                expires, signature = int(query["Expires"]), query["Signature"]
            except (KeyError, ValueError):
                return False
        with self.lock:
            generation = job.url_generation
        expected = self._signature(path, expires, generation)
        return expires > time.time() and hmac.compare_digest(signature, expected)

    def expire_links(self, job: FakeJob) -> None:
        with self.lock:
            job.url_generation += 1
