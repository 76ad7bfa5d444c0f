"""Benchmark 4: the polling schedule, on a simulated clock.

``PollSchedule.check_times(duration)`` says when each status check of a job
lasting ``duration`` seconds happens (base delays, instant requests): the
status requests a provider's rate limit counts, and the detection lag (first
check at or after the finish, minus the finish). Pure arithmetic, no server.

- default: 5 s, x1.5, capped at 30 s (SPEC §2);
- baseline: the original system's fixed 5 s interval;
- low latency, for short jobs: 1 s, x1.2, capped at 5 s.

The deadline is 3600 s for all of them, so that a 30 min job can finish (the
default ``maxWaitSeconds`` of 300 s would cut it, and would make a 5 min job's
last check land exactly on the deadline). A job never lasts exactly a round
number of seconds: requests and lag are averaged over jobs lasting 0.9x-1.1x
the nominal duration (201 evenly spaced durations); the value at exactly the
nominal duration is kept in the details.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import Context, Row
from toolflows.core.backoff import PollSchedule
from toolflows.core.definition import PollingConfig

DEADLINE = 3600.0
DURATIONS = (30.0, 300.0, 1800.0)
SAMPLES = 201
DEFAULT = PollingConfig(max_wait_seconds=DEADLINE, jitter=0).schedule
FIXED_5S = PollSchedule(
    interval_seconds=5,
    backoff_factor=1,
    max_interval_seconds=5,
    jitter=0,
    max_wait_seconds=DEADLINE,
)
LOW_LATENCY = PollSchedule(
    interval_seconds=1,
    backoff_factor=1.2,
    max_interval_seconds=5,
    jitter=0,
    max_wait_seconds=DEADLINE,
)


@dataclass(frozen=True)
class Outcome:
    """Mean requests and lag over jobs of about one duration."""

    requests: float
    lag: float
    exact_requests: int
    exact_lag: float


def simulate(schedule: PollSchedule, duration: float) -> Outcome:
    lows, highs = 0.9 * duration, 1.1 * duration
    step = (highs - lows) / (SAMPLES - 1)
    waits = [schedule.check_times(lows + i * step) for i in range(SAMPLES)]
    if any(wait.lag is None for wait in waits):
        raise AssertionError(f"a {duration:g} s job missed the {DEADLINE:g} s deadline")
    exact = schedule.check_times(duration)
    return Outcome(
        requests=sum(wait.requests for wait in waits) / SAMPLES,
        lag=sum(wait.lag or 0.0 for wait in waits) / SAMPLES,
        exact_requests=exact.requests,
        exact_lag=exact.lag or 0.0,
    )


def _label(duration: float) -> str:
    return f"{duration:g} s" if duration < 60 else f"{duration / 60:g} min"


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for duration in DURATIONS:
        default, fixed = simulate(DEFAULT, duration), simulate(FIXED_5S, duration)
        judged = duration >= 300
        details = {"default": default.__dict__, "fixed_5s": fixed.__dict__}
        rows.append(
            Row(
                f"4. {_label(duration)} job: status requests (default vs fixed 5 s)",
                default.requests,
                fixed.requests,
                "requests",
                "<= 1/3 baseline" if judged else "(context)",
                default.requests <= fixed.requests / 3 if judged else None,
                details=details,
            )
        )
        rows.append(
            Row(
                f"4. {_label(duration)} job: mean detection lag",
                default.lag,
                fixed.lag,
                "s",
                f"<= {0.1 * duration:g} s (10%)" if judged else "(context)",
                default.lag <= 0.1 * duration if judged else None,
                details=details,
            )
        )
    short = DURATIONS[0]
    low, fixed = simulate(LOW_LATENCY, short), simulate(FIXED_5S, short)
    details = {"low_latency": low.__dict__, "fixed_5s": fixed.__dict__}
    rows.append(
        Row(
            f"4. {_label(short)} job, low latency (1 s x1.2 cap 5 s): requests",
            low.requests,
            fixed.requests,
            "requests",
            "(context)",
            None,
            details=details,
        )
    )
    rows.append(
        Row(
            f"4. {_label(short)} job, low latency (1 s x1.2 cap 5 s): mean lag",
            low.lag,
            fixed.lag,
            "s",
            "(context)",
            None,
            details=details,
        )
    )
    return rows
