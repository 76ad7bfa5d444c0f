"""Provider text that tries to cost us time or to fool a reader (issue 9).

Redaction sees every byte a provider sends, so it must run in linear time: each case
compares n with 8n characters (a ratio, not an absolute time, so a loaded machine
does not decide). What is shown (errors, logs) is cut and has its controls escaped.
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolflows.core.detection import JobState, detect_status
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import MAX_DISPLAY_CHARS, Redactor, display_text, redact_url

SMALL = 20_000
GROWTH = 8
# Linear work grows 8x; quadratic work 64x. The bound leaves room for noise.
MAX_RATIO = 24

PATHOLOGICAL: dict[str, Callable[[int], str]] = {
    "letters": lambda n: "a" * n,
    "base64": lambda n: base64.b64encode(random.Random(n).randbytes(n * 3 // 4)).decode(),
    "scheme without slashes": lambda n: "a:" * (n // 2),
    "schemes without a body": lambda n: "a://." * (n // 5),
    "digits before slashes": lambda n: "9://" * (n // 4),
    "punctuation after a url": lambda n: "http://x" + "." * n,
    "urls back to back": lambda n: "http://h/?key=1" * (n // 15),
    "secret prefixes": lambda n: "sk-live-" * (n // 8),
}


def seconds_to_redact(text: str) -> float:
    """CPU seconds of this thread (best of 3): other processes on the machine do not count."""
    redact = Redactor(["sk-live-123456", "Bearer abc/def+ghi"])
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        redact(text)
        best = min(best, time.thread_time() - started)
    return best


@pytest.mark.parametrize("shape", PATHOLOGICAL)
def test_redaction_takes_linear_time_on_pathological_text(shape):
    make = PATHOLOGICAL[shape]
    small = seconds_to_redact(make(SMALL))
    large = seconds_to_redact(make(SMALL * GROWTH))
    # A floor keeps timer noise on microsecond runs from deciding.
    assert large / max(small, 1e-4) < MAX_RATIO, (shape, small, large)


def test_a_megabytes_long_data_uri_is_redacted_in_well_under_a_second():
    uri = "data:video/mp4;base64," + base64.b64encode(random.randbytes(6 * 1024 * 1024)).decode()
    started = time.perf_counter()
    shown = Redactor(["sk-live-123456"])(uri)
    assert time.perf_counter() - started < 1.0
    assert len(shown) <= MAX_DISPLAY_CHARS
    assert shown.startswith("data:video/mp4;base64,")


# The regex the redactor used to find URLs with (quadratic): still the definition of
# what a URL in a text is, so the one-pass scan must find exactly the same ones.
_URL_AS_DEFINED = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]*[^\s\"'<>`.,;:!?)]")
_PIECES = st.sampled_from(
    [*"ab9+.-:/ ?=&#@\"'<>`,;!)\n", "key=", "://", "token=", "http", "u:pw@", "sig="]
)


@given(st.lists(_PIECES, max_size=40).map("".join))
def test_the_linear_scan_finds_exactly_the_urls_the_regex_defines(text):
    expected = _URL_AS_DEFINED.sub(lambda match: redact_url(match.group(0)), text)
    assert Redactor()(text) == display_text(expected)


def test_a_url_after_a_false_start_is_still_redacted():
    shown = Redactor()("9://ahttp://h.test/?token=t0k 0://x https://h/?sig=s")
    assert "t0k" not in shown
    assert "sig=s" not in shown


def test_a_long_message_is_cut_to_the_display_limit_with_a_note_of_its_length():
    message = "boom " * 30_000
    shown = display_text(message)
    assert len(shown) == MAX_DISPLAY_CHARS
    assert shown.startswith("boom boom")
    assert shown.endswith(f"[cut: {len(message)} characters in all]")


def test_short_text_is_shown_as_it_is():
    assert display_text("Task 42 status: processing\n\tstep 2") == (
        "Task 42 status: processing\n\tstep 2"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("nul\x00inside", "nul\\x00inside"),
        ("red\x1b[31m", "red\\x1b[31m"),
        ("over\rwrite", "over\\rwrite"),
        ("\u202eevil.mp4", "\\u202eevil.mp4"),
        ("line\u2028break", "line\\u2028break"),
        ("del\x7f", "del\\x7f"),
    ],
)
def test_control_characters_are_escaped_for_display(text, shown):
    assert display_text(text) == shown


def test_a_secret_is_redacted_before_the_text_is_cut():
    secret = "sk-live-123456"
    text = "x" * (MAX_DISPLAY_CHARS - 40) + secret + "y" * 10_000
    shown = Redactor([secret])(text)
    assert secret[:8] not in shown
    assert len(shown) <= MAX_DISPLAY_CHARS


def test_an_error_message_is_cut_and_its_controls_escaped():
    reason = "\x00" + "because " * 20_000
    error = ToolflowsError(ErrorCode.TASK_FAILED, reason, task_id="t1")
    assert len(error.message) <= MAX_DISPLAY_CHARS
    assert error.message.startswith("\\x00because")
    assert len(str(error)) < MAX_DISPLAY_CHARS + 40
    assert len(error.to_dict()["message"]) <= MAX_DISPLAY_CHARS


@pytest.mark.parametrize(
    ("payload", "state"),
    [
        ({"status": "running " * 20_000}, JobState.PENDING),
        ({"status": "fail\x00ed\x1b[2K"}, JobState.PENDING),
        ({"finish_reason": "FILTERED " * 20_000}, JobState.FAILED),
        ({"x" * 50_000: {"status": "x" * 50_000}}, JobState.PENDING),
    ],
)
def test_a_status_value_is_kept_for_display_cut_and_escaped(payload, state):
    status = detect_status(payload)
    assert status.state is state
    assert status.value is not None and status.path is not None
    for shown in (status.value, status.path):
        assert len(shown) <= MAX_DISPLAY_CHARS
        assert "\x00" not in shown and "\x1b" not in shown
