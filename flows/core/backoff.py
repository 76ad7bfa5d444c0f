"""The polling schedule: when to check a job's status again (SPEC §2, §4.6).

Delays grow exponentially so a long job costs few requests while a short one
is still noticed quickly; jitter spreads many flows polling the same provider;
a server's ``Retry-After`` always wins over our own guess; and no delay ever
sleeps past the deadline, so a timeout is reported on time.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

# A zero delay never advances a clock that only counts sleeps; without this bound
# counting the checks of such a schedule would never end.
MAX_COUNTED_POLLS = 10_000

# Longest wait a server may impose: beyond a day a header is more likely a bug
# (or a hostile value) than a real plan, and the deadline caps it anyway.
MAX_RETRY_AFTER_SECONDS = 86_400.0

# Longest pause before re-sending a request that failed (``retry_delay``).
MAX_RETRY_DELAY_SECONDS = 8.0

# A reset "delta" this large is a Unix timestamp (2001-09-09 onwards), not a duration.
_EPOCH_THRESHOLD = 1e9

_default_rng = random.Random()


@dataclass(frozen=True)
class SimulatedWait:
    """How a schedule would follow one job on a simulated clock (for benchmarks).

    ``check_times`` are seconds from the submit; ``detected_at`` is the first
    check that saw the job finished (None when the deadline came first), and
    ``lag`` how long after the job finished that check came.
    """

    check_times: tuple[float, ...]
    detected_at: float | None
    lag: float | None

    @property
    def requests(self) -> int:
        """Status requests made: what a provider's rate limit counts."""
        return len(self.check_times)


@dataclass(frozen=True)
class PollSchedule:
    """Delays between status checks, from ``adapterConfig.polling``.

    Built by ``PollingConfig.schedule``, which holds the defaults: a method's
    settings are written once. ``backoff_factor=1`` gives the fixed interval
    of the original system.
    """

    interval_seconds: float
    backoff_factor: float
    max_interval_seconds: float
    jitter: float
    max_wait_seconds: float

    def __post_init__(self) -> None:
        # A shrinking or negative schedule would hammer the provider; refuse it early.
        if self.interval_seconds < 0 or self.max_interval_seconds < 0:
            raise ValueError("poll intervals must not be negative")
        if self.backoff_factor < 1:
            raise ValueError("backoff_factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be a fraction between 0 and 1")
        if self.max_wait_seconds < 0:
            raise ValueError("max_wait_seconds must not be negative")

    def base_delay(self, poll_number: int) -> float:
        """Delay before status check ``poll_number`` (1-based), capped, without jitter."""
        if poll_number < 1:
            raise ValueError(f"poll_number is 1-based, got {poll_number}")
        if self.interval_seconds == 0:
            return 0.0
        try:
            delay = self.interval_seconds * self.backoff_factor ** (poll_number - 1)
        except OverflowError:  # far past the cap anyway
            return self.max_interval_seconds
        return min(delay, self.max_interval_seconds)

    def planned_polls(self) -> int:
        """How many checks the wait makes at most, for ``Polling 3/13`` logs.

        Every check due before the deadline, plus the last one at the deadline
        (delays are clipped to it). Jitter and ``Retry-After`` move the real
        checks, so the deadline, not this count, ends the wait. Cached: a job
        asks for it at every check, and a zero interval walks 10,000 steps.
        """
        return _planned_polls(self)

    def next_delay(
        self,
        poll_number: int,
        *,
        remaining_seconds: float,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to sleep before check ``poll_number``.

        The jittered base delay, raised to at least what the server asked
        (``retry_after``), then clipped to ``remaining_seconds`` so the wait
        never oversleeps its deadline. Never negative.
        """
        base = self.base_delay(poll_number)
        spread = base * self.jitter
        delay = base + (rng or _default_rng).uniform(-spread, spread)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return max(0.0, min(delay, remaining_seconds))

    def check_times(self, job_duration: float) -> SimulatedWait:
        """Simulate waiting for a job that finishes ``job_duration`` s after its submit.

        Base delays (no jitter) and instant requests: the checks stop at the
        first one at or after ``job_duration``, or at the deadline.
        """
        times = self._check_times_until(job_duration)
        detected_at = times[-1] if times[-1] >= job_duration else None
        lag = None if detected_at is None else detected_at - job_duration
        return SimulatedWait(check_times=times, detected_at=detected_at, lag=lag)

    def checks_made_by(self, elapsed: float) -> int:
        """Checks this schedule (without jitter) has made ``elapsed`` seconds after the submit.

        Where a waiter that starts watching a job late (a restart) picks its schedule up.
        """
        return sum(1 for at in self._check_times_until(elapsed) if at <= elapsed)

    def _check_times_until(self, job_duration: float) -> tuple[float, ...]:
        times: list[float] = []
        clock = 0.0
        while len(times) < MAX_COUNTED_POLLS:
            clock = min(clock + self.base_delay(len(times) + 1), self.max_wait_seconds)
            times.append(clock)
            if clock >= job_duration or clock >= self.max_wait_seconds:
                break
        return tuple(times)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None when it did not say (usably).

    Reads, most precise first: ``retry-after-ms``, ``Retry-After`` (seconds or
    an HTTP date, relative to ``now``, default the current time),
    ``RateLimit-Reset`` and ``X-RateLimit-Reset`` (seconds, or a Unix timestamp
    when the number is that large). Header names are matched case-insensitively
    because a plain dict is not. The first usable header wins; a moment in the
    past means 0; waits are capped at a day.
    """
    by_name = {name.lower(): value for name, value in headers.items()}
    current = time.time() if now is None else now
    candidates = (
        ("retry-after-ms", _milliseconds),
        ("retry-after", _seconds_or_http_date),
        ("ratelimit-reset", _seconds_or_epoch),
        ("x-ratelimit-reset", _seconds_or_epoch),
    )
    for name, parse in candidates:
        raw = by_name.get(name)
        if raw is None:
            continue
        seconds = parse(str(raw).strip(), current)
        if seconds is not None:
            return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
    return None


def _finite_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def retry_delay(attempt: int) -> float:
    """Delay before re-sending a request that failed on attempt ``attempt`` (1-based).

    Submits that never reached the server and broken downloads back off alike:
    1, 2, 4, 8, 8, ... seconds (a server's Retry-After may ask for longer).
    """
    return min(2.0 ** (attempt - 1), MAX_RETRY_DELAY_SECONDS)


def _milliseconds(text: str, now: float) -> float | None:
    number = _finite_number(text)
    return None if number is None else number / 1000


def _seconds_or_http_date(text: str, now: float) -> float | None:
    number = _finite_number(text)
    if number is not None:
        return number
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000" dates carry no zone; HTTP dates are GMT
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() - now


def _seconds_or_epoch(text: str, now: float) -> float | None:
    number = _finite_number(text)
    if number is None:
        return None
    return number - now if number > _EPOCH_THRESHOLD else number


@functools.lru_cache(maxsize=256)
def _planned_polls(schedule: PollSchedule) -> int:
    return len(schedule._check_times_until(math.inf))
