"""What a test scripts (Behaviour, Fault) and what it can inspect (FakeJob, RecordedRequest)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from toolflows.fake_provider import model
from toolflows.fake_provider.http import Request

FaultKind = Literal["http", "reset", "drop_after_accept", "delay", "cut", "expired", "drip"]
Outcome = Literal["success", "failure", "cancelled"]
Kind = Literal["video", "image", "audio"]
CallbackMode = Literal["send", "drop", "duplicate", "forge"]

# Faults that replace the request's processing; the others disturb an answer already made.
PREEMPTIVE = frozenset({"http", "reset", "expired"})


@dataclass(frozen=True)
class Fault:
    """One disturbance applied to one request; build it with the classmethods."""

    kind: FaultKind
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None
    seconds: float = 0.0
    after_bytes: int = 0

    @classmethod
    def http(cls, status: int, headers: dict[str, str] | None = None, body: Any = None) -> Fault:
        """Answer `status` instead; `body` None → the provider's own error shape for it."""
        return cls("http", status=status, headers=tuple((headers or {}).items()), body=body)

    @classmethod
    def reset(cls) -> Fault:
        """Abort the connection (TCP RST) without processing or answering."""
        return cls("reset")

    @classmethod
    def drop_after_accept(cls) -> Fault:
        """Process the request (a submit creates its job), then abort without answering."""
        return cls("drop_after_accept")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Process, then wait before answering, to trigger client read timeouts."""
        return cls("delay", seconds=seconds)

    @classmethod
    def cut(cls, after_bytes: int) -> Fault:
        """Announce the full Content-Length, send `after_bytes` of the body, then close."""
        return cls("cut", after_bytes=after_bytes)

    @classmethod
    def drip(cls, seconds_per_byte: float) -> Fault:
        """Process, send the head at once, then the body one byte every `seconds_per_byte`."""
        return cls("drip", seconds=seconds_per_byte)

    @classmethod
    def expired(cls) -> Fault:
        """403 as an expired signed URL; URLs signed so far stay dead, fresh ones work."""
        return cls("expired")


@dataclass(frozen=True)
class Behaviour(model.Behaviour):
    """How the jobs submitted after `FakeProvider.script(...)` behave.

    - polls_until_done: status checks answered as running before the terminal one; or
      seconds_until_done (wins when set): time from submit, for benchmarks.
    - outcome / failure_reason: the terminal state, and the provider's failure text.
    - file_size, content_type (None → the real type, "" → no header), content_disposition,
      kind (video/image/audio: magic bytes and JSON shape), outputs (providers with lists),
      single_output / data_uri_output (Replicate quirks), ranges (CDN honours Range),
      files_on_api (the operation API serves its outputs on its own origin, only to a
      request carrying its key, as Gemini's ``files/ID:download`` does).
    - *_faults: one fault per request of that kind, in order; submit_fault hits only the
      first submit after `script()`.
    - submit_seconds: how long every submit takes to answer (a slow provider).
    - callback (providers that call back, when the submit named a URL): "send" once,
      "drop" (never sent), "duplicate" (the same callback twice), "forge" (right after the
      submit, a success claim with a wrong signature, then the real one);
      callback_delay: seconds between the event (the job's end) and its callback.
    - content_encoding: the CDN sends files compressed (gzip/deflate; Content-Length
      and Range count the compressed bytes); bomb_bytes > 0: a gzip body inflating
      to that many zero bytes instead of the file (a decompression bomb).
    """

    seconds_until_done: float | None = None
    outcome: Outcome = "success"
    failure_reason: str | None = None
    content_type: str | None = None
    content_disposition: str | None = None
    kind: Kind | None = None
    outputs: int = 1
    single_output: bool = False
    data_uri_output: bool = False
    ranges: bool = True
    files_on_api: bool = False
    content_encoding: Literal["gzip", "deflate"] | None = None
    bomb_bytes: int = 0
    status_faults: Sequence[Fault] = ()
    submit_fault: Fault | None = None
    submit_seconds: float = 0.0
    download_faults: Sequence[Fault] = ()
    result_faults: Sequence[Fault] = ()
    callback: CallbackMode = "send"
    callback_delay: float = 0.0

    def __post_init__(self) -> None:
        # Shared by every job of a script: freeze the fault lists.
        for name in ("status_faults", "download_faults", "result_faults"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.outcome not in ("success", "failure", "cancelled"):
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.kind not in (None, "video", "image", "audio"):
            raise ValueError(f"unknown kind {self.kind!r}")
        if self.callback not in ("send", "drop", "duplicate", "forge"):
            raise ValueError(f"unknown callback {self.callback!r}")
        if self.callback_delay < 0:
            raise ValueError("callback_delay must be >= 0")
        if self.file_size < 0 or self.outputs < 1 or self.polls_until_done < 0:
            raise ValueError("file_size and polls_until_done must be >= 0, outputs >= 1")


@dataclass(frozen=True)
class RecordedRequest(Request):
    """A request as the server saw it, and which origin saw it; header names are lower-case."""

    origin: Literal["api", "cdn"] = "api"


@dataclass
class FakeJob(model.FakeJob):
    """A job that can fail, be cancelled or deleted, and meet the faults scripted for it."""

    behaviour: Behaviour
    meta: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False
    deleted: bool = False
    url_generation: int = 0
    status_faults: deque[Fault] = field(init=False)
    download_faults: deque[Fault] = field(init=False)
    result_faults: deque[Fault] = field(init=False)

    def __post_init__(self) -> None:
        self.status_faults = deque(self.behaviour.status_faults)
        self.download_faults = deque(self.behaviour.download_faults)
        self.result_faults = deque(self.behaviour.result_faults)

    def progress(self) -> float | None:
        """As the shipped job's, but a cancelled job is over, and `seconds_until_done`
        (when set) counts time since the submit instead of status checks."""
        if self.cancelled:
            return self._finish()
        seconds = self.behaviour.seconds_until_done
        if seconds is None:
            return super().progress()
        elapsed = time.monotonic() - self.created
        return elapsed / seconds if elapsed < seconds else self._finish()

    @property
    def outcome(self) -> Outcome:
        return "cancelled" if self.cancelled else self.behaviour.outcome

    @property
    def status(self) -> str:
        """running / succeeded / failed / cancelled / deleted, whatever the provider calls it."""
        if self.deleted:
            return "deleted"
        if self.progress() is not None:
            return "running"
        return {"success": "succeeded", "failure": "failed", "cancelled": "cancelled"}[self.outcome]
