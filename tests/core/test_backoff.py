"""The polling schedule: delays, deadline, jitter, Retry-After, simulated waits."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from toolflows.core.backoff import (
    MAX_COUNTED_POLLS,
    MAX_RETRY_AFTER_SECONDS,
    PollSchedule,
    SimulatedWait,
    parse_retry_after,
)
from toolflows.core.definition import PollingConfig

DEFAULT = PollingConfig().schedule


def schedule_with(**changes: float) -> PollSchedule:
    """The default schedule with some settings changed (unchecked by ``PollingConfig``)."""
    return replace(DEFAULT, **changes)


FIXED_5S = schedule_with(backoff_factor=1)
NOW = 1_700_000_000.0  # a fixed "current time" (2023-11-14) for date-based headers


def test_default_delays_grow_by_half_and_stop_at_the_cap() -> None:
    delays = [DEFAULT.base_delay(n) for n in range(1, 9)]
    assert delays == [5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0, 30.0]


def test_factor_one_gives_the_fixed_interval() -> None:
    assert {FIXED_5S.base_delay(n) for n in range(1, 50)} == {5.0}


def test_delay_stays_capped_however_many_polls() -> None:
    assert DEFAULT.base_delay(100_000) == 30.0


def test_zero_interval_never_waits() -> None:
    schedule = schedule_with(interval_seconds=0)
    assert [schedule.base_delay(n) for n in (1, 2, 50)] == [0.0, 0.0, 0.0]
    assert schedule.next_delay(3, remaining_seconds=60, rng=random.Random(1)) == 0.0
    assert schedule.planned_polls() == MAX_COUNTED_POLLS


def test_poll_numbers_are_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        DEFAULT.base_delay(0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"interval_seconds": -1}, "negative"),
        ({"max_interval_seconds": -1}, "negative"),
        ({"backoff_factor": 0.5}, "at least 1"),
        ({"jitter": 1.5}, "between 0 and 1"),
        ({"jitter": -0.1}, "between 0 and 1"),
        ({"max_wait_seconds": -5}, "must not be negative"),
    ],
)
def test_nonsensical_schedules_are_refused(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schedule_with(**settings)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # 12 checks due before 300 s (the last at 275.9375), then one at the deadline.
        (DEFAULT, 13),
        # Checks at 5, 10, ..., 300.
        (FIXED_5S, 60),
        (schedule_with(interval_seconds=10, backoff_factor=1, max_wait_seconds=25), 3),
        (schedule_with(max_wait_seconds=0), 1),
        (schedule_with(max_wait_seconds=3), 1),
        (schedule_with(max_wait_seconds=3600), 123),
    ],
)
def test_planned_polls(schedule: PollSchedule, expected: int) -> None:
    assert schedule.planned_polls() == expected


def test_jitter_stays_within_ten_percent_and_varies() -> None:
    rng = random.Random(42)
    delays = [DEFAULT.next_delay(1, remaining_seconds=1000, rng=rng) for _ in range(2000)]
    assert min(delays) >= 4.5
    assert max(delays) <= 5.5
    # Uniform over ±10%: many distinct values reaching close to both edges.
    assert len(set(delays)) > 1900
    assert min(delays) < 4.55
    assert max(delays) > 5.45


def test_jitter_applies_to_the_capped_delay() -> None:
    rng = random.Random(7)
    delays = [DEFAULT.next_delay(40, remaining_seconds=1000, rng=rng) for _ in range(500)]
    assert 27.0 <= min(delays) < 28.0
    assert 32.0 < max(delays) <= 33.0


def test_seeded_rng_makes_delays_reproducible() -> None:
    first = [DEFAULT.next_delay(2, remaining_seconds=99, rng=random.Random(3)) for _ in range(3)]
    second = [DEFAULT.next_delay(2, remaining_seconds=99, rng=random.Random(3)) for _ in range(3)]
    assert first == second


def test_no_jitter_gives_the_base_delay() -> None:
    schedule = schedule_with(jitter=0)
    assert [schedule.next_delay(n, remaining_seconds=1000) for n in (1, 2, 3)] == [5.0, 7.5, 11.25]


@pytest.mark.parametrize(
    ("poll_number", "remaining", "retry_after", "expected"),
    [
        (1, 300, 20, 20.0),  # the server asks for more than our 5 s
        (1, 300, 2, 5.0),  # asking for less never shortens our own delay
        (1, 300, 0, 5.0),
        (6, 300, 45, 45.0),  # above the cap too: the server knows best
        (1, 3, None, 3.0),  # clipped to the deadline
        (1, 10, 60, 10.0),  # even a Retry-After never oversleeps the deadline
        (4, 0, None, 0.0),
        (4, -2, None, 0.0),  # deadline already passed: check now, never negative
    ],
)
def test_next_delay_honours_retry_after_and_the_deadline(
    poll_number: int, remaining: float, retry_after: float | None, expected: float
) -> None:
    schedule = schedule_with(jitter=0)
    delay = schedule.next_delay(poll_number, remaining_seconds=remaining, retry_after=retry_after)
    assert delay == expected


def test_retry_after_raises_a_jittered_delay() -> None:
    rng = random.Random(0)
    delays = [
        DEFAULT.next_delay(1, remaining_seconds=300, retry_after=8, rng=rng) for _ in range(200)
    ]
    assert set(delays) == {8.0}


def test_check_times_of_a_short_job() -> None:
    wait = DEFAULT.check_times(30)
    assert wait == SimulatedWait(
        check_times=(5.0, 12.5, 23.75, 40.625), detected_at=40.625, lag=10.625
    )
    assert wait.requests == 4


@pytest.mark.parametrize(
    ("schedule", "job_duration", "requests", "detected_at", "lag"),
    [
        # Default backoff vs the original fixed 5 s interval, 300 s deadline.
        (DEFAULT, 30, 4, 40.625, 10.625),
        (FIXED_5S, 30, 6, 30.0, 0.0),
        (DEFAULT, 300, 13, 300.0, 0.0),  # the last check lands on the deadline
        (FIXED_5S, 300, 60, 300.0, 0.0),
        (DEFAULT, 1800, 13, None, None),  # the deadline comes first
        (FIXED_5S, 1800, 60, None, None),
        # With a deadline long enough for the 30 min job: 63 requests instead of 360.
        (schedule_with(max_wait_seconds=3600), 300, 13, 305.9375, 5.9375),
        (schedule_with(max_wait_seconds=3600), 1800, 63, 1805.9375, 5.9375),
        (schedule_with(backoff_factor=1, max_wait_seconds=3600), 1800, 360, 1800.0, 0.0),
        (DEFAULT, 0, 1, 5.0, 5.0),
    ],
)
def test_simulated_waits(
    schedule: PollSchedule,
    job_duration: float,
    requests: int,
    detected_at: float | None,
    lag: float | None,
) -> None:
    wait = schedule.check_times(job_duration)
    assert wait.requests == requests
    assert wait.detected_at == detected_at
    assert wait.lag == lag
    assert list(wait.check_times) == sorted(wait.check_times)
    assert wait.check_times[-1] <= schedule.max_wait_seconds


def test_simulated_wait_of_a_zero_delay_schedule_ends() -> None:
    wait = schedule_with(interval_seconds=0).check_times(10)
    assert wait.requests == MAX_COUNTED_POLLS
    assert wait.detected_at is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"RETRY-AFTER": " 7 "}, 7.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500", "Retry-After": "9"}, 1.5),  # the precise one wins
        (
            {"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)},
            90.0,
        ),
        ({"Retry-After": "Tue, 14 Nov 2023 22:14:20 -0000"}, 60.0),  # zone-less: GMT
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW - 60, UTC), usegmt=True)}, 0.0),
        ({"RateLimit-Reset": "30"}, 30.0),
        ({"X-RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Reset": str(int(NOW + 45))}, 45.0),  # an epoch timestamp
        ({"x-ratelimit-reset": str(int(NOW - 45))}, 0.0),  # a reset in the past
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "999999999"}, MAX_RETRY_AFTER_SECONDS),
        ({"Retry-After": "soon", "RateLimit-Reset": "4"}, 4.0),  # garbage falls through
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"retry-after-ms": ""}, None),
        ({"Content-Type": "application/json"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_reads_httpx_headers() -> None:
    httpx = pytest.importorskip("httpx")
    assert parse_retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0


def test_http_date_defaults_to_the_current_time() -> None:
    in_a_minute = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 60, UTC)
    seconds = parse_retry_after({"Retry-After": format_datetime(in_a_minute, usegmt=True)})
    assert seconds is not None
    assert 55 <= seconds <= 61


def test_a_methods_polling_settings_make_its_schedule() -> None:
    polling = PollingConfig(
        interval_seconds=2, backoff_factor=2, max_interval_seconds=9, jitter=0, max_wait_seconds=60
    )
    assert polling.schedule == PollSchedule(
        interval_seconds=2, backoff_factor=2, max_interval_seconds=9, jitter=0, max_wait_seconds=60
    )


def test_checks_made_by_picks_up_the_schedule_where_the_clock_is() -> None:
    schedule = PollSchedule(
        interval_seconds=5,
        backoff_factor=2,
        max_interval_seconds=20,
        jitter=0,
        max_wait_seconds=600,
    )
    # Checks at 5, 15, 35, 55, 75 ... seconds after the submit.
    assert schedule.checks_made_by(0) == 0
    assert schedule.checks_made_by(4.9) == 0
    assert schedule.checks_made_by(5) == 1
    assert schedule.checks_made_by(34) == 2
    assert schedule.checks_made_by(60) == 4
    assert schedule.checks_made_by(10_000) == schedule.planned_polls()
