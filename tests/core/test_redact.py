"""Secrets never appear in logs, artifacts, events or error messages."""

from __future__ import annotations

import pytest

from toolflows.core.redact import (
    MIN_SECRET_LENGTH,
    REDACTED,
    Redactor,
    is_secret_name,
    redact_headers,
    redact_url,
)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("X-Api-Key", True),
        ("access_token", True),
        ("X-Amz-Signature", True),
        ("X-Amz-Credential", True),
        ("X-Amz-Security-Token", True),
        ("sig", True),
        ("Authorization", True),
        ("jwt", True),
        ("client_secret", True),
        ("PASSWORD", True),
        ("video_id", False),
        ("Expires", False),
        ("page", False),
        ("", False),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://bucket.s3.amazonaws.com/v.mp4?X-Amz-Credential=AKIA%2F1&X-Amz-Expires=600"
            "&X-Amz-Signature=abc123",
            "https://bucket.s3.amazonaws.com/v.mp4?X-Amz-Credential=[REDACTED]&X-Amz-Expires=600"
            "&X-Amz-Signature=[REDACTED]",
        ),
        (
            "https://acct.blob.core.windows.net/c/v.mp4?sv=2020&se=2030&sig=Zm9v%3D",
            "https://acct.blob.core.windows.net/c/v.mp4?sv=2020&se=2030&sig=[REDACTED]",
        ),
        ("https://api.test/s?api%5Fkey=k1&id=7", "https://api.test/s?api%5Fkey=[REDACTED]&id=7"),
        ("https://api.test/s?id=7&Token=", "https://api.test/s?id=7&Token=[REDACTED]"),
        ("https://user:hunter2@api.test/x", "https://user:[REDACTED]@api.test/x"),
        ("https://user:p%40ss@api.test:8443", "https://user:[REDACTED]@api.test:8443"),
        ("https://user@api.test/x", "https://user@api.test/x"),
        (
            "https://app.test/cb#access_token=t0k&state=1",
            "https://app.test/cb#access_token=[REDACTED]&state=1",
        ),
        ("https://api.test/x?id=1&flag&b=%20", "https://api.test/x?id=1&flag&b=%20"),
        ("https://api.test/path/key/value", "https://api.test/path/key/value"),
        # Malformed URLs get the same treatment instead of an exception.
        ("http://[::1/x?key=1", "http://[::1/x?key=[REDACTED]"),
        ("https://a:b@[bad/x?token=2", "https://a:[REDACTED]@[bad/x?token=[REDACTED]"),
        ("not a url ?secret=1", "not a url ?secret=[REDACTED]"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_is_idempotent() -> None:
    once = redact_url("https://u:p@h.test/x?sig=1")
    assert redact_url(once) == once


def test_redact_headers_hides_every_value_and_keeps_names() -> None:
    headers = {"X-Api-Key": "k-123456", "Accept": "application/json"}
    assert redact_headers(headers) == {"X-Api-Key": REDACTED, "Accept": REDACTED}


def test_redactor_replaces_known_values_everywhere() -> None:
    redact = Redactor(["sk-live-123456", "Bearer eyJhbGciOi"])
    text = "header Bearer eyJhbGciOi failed; key sk-live-123456, again sk-live-123456"
    assert redact(text) == f"header {REDACTED} failed; key {REDACTED}, again {REDACTED}"


def test_redactor_catches_the_url_encoded_forms_of_a_secret() -> None:
    redact = Redactor(["ab+cd/ef= gh"])
    text = "a https://h.test/x?v=ab%2Bcd%2Fef%3D%20gh b ab%2Bcd%2Fef%3D+gh"
    assert "ab%2Bcd" not in redact(text)
    assert redact(text) == f"a https://h.test/x?v={REDACTED} b {REDACTED}"


def test_the_longest_secret_wins_when_one_contains_another() -> None:
    redact = Redactor(["abcd", "abcd-efgh"])
    assert redact("x abcd-efgh y abcd") == f"x {REDACTED} y {REDACTED}"


def test_short_values_are_ignored_as_too_common_to_scrub() -> None:
    short = "x" * (MIN_SECRET_LENGTH - 1)
    redact = Redactor([short, "", "on"])
    assert redact(f"{short} on the box") == f"{short} on the box"


def test_add_registers_a_secret_later() -> None:
    redact = Redactor()
    assert redact("token-value-1") == "token-value-1"
    redact.add("token-value-1")
    assert redact("got token-value-1") == f"got {REDACTED}"


def test_redactor_scrubs_every_url_in_a_text() -> None:
    redact = Redactor()
    text = (
        "Polling 3/13: https://api.test/s?id=1&key=k1, "
        'downloaded "https://cdn.test/v.mp4?X-Amz-Signature=s1" ok'
    )
    assert redact(text) == (
        f"Polling 3/13: https://api.test/s?id=1&key={REDACTED}, "
        f'downloaded "https://cdn.test/v.mp4?X-Amz-Signature={REDACTED}" ok'
    )


def test_punctuation_after_a_url_survives() -> None:
    redact = Redactor()
    assert (
        redact("see (https://h.test/x?key=abc). Then")
        == f"see (https://h.test/x?key={REDACTED}). Then"
    )


def test_redacting_twice_changes_nothing_more() -> None:
    redact = Redactor(["sk-123456"])
    once = redact("sk-123456 at https://u:pw@h.test/x?sig=1&a=2, done")
    assert redact(once) == once


def test_text_without_secrets_is_unchanged() -> None:
    text = "Task 42 status: processing (https://api.test/s?id=42)"
    assert Redactor(["sk-123456"])(text) == text


def test_scrub_replaces_secret_values_in_strings_and_keys_at_any_depth() -> None:
    redact = Redactor(["sk-123456", "ab+cd/ef"])
    value = {
        "sk-123456": "key sk-123456",
        "echo": "?k=ab%2Bcd%2Fef&j=ab%2bcd%2fef",
        "urls": ["https://cdn.test/a?sig=1", ("sk%2D123456", "sk-123456", 3)],
        "n": 1,
        "none": None,
        "nested": {"msg": "https://u:pw@h.test", "deeper": [{"x-sk-123456-y": True}]},
    }
    assert redact.scrub(value) == {
        REDACTED: f"key {REDACTED}",
        "echo": f"?k={REDACTED}&j={REDACTED}",
        # Only the known values: URLs keep their query and password as sent.
        "urls": ["https://cdn.test/a?sig=1", ("sk%2D123456", REDACTED, 3)],
        "n": 1,
        "none": None,
        "nested": {"msg": "https://u:pw@h.test", "deeper": [{f"x-{REDACTED}-y": True}]},
    }


def test_scrub_returns_a_payload_without_secrets_as_it_is() -> None:
    payload = {"a": ["b", {"c": "https://h.test/?token=1"}]}
    assert Redactor(["sk-123456"]).scrub(payload) is payload
    assert Redactor().scrub(payload) is payload


def test_scrub_does_not_modify_its_input() -> None:
    original = {"a": ["sk-123456"]}
    Redactor(["sk-123456"]).scrub(original)
    assert original == {"a": ["sk-123456"]}


def test_scrub_handles_json_as_deep_as_the_parser_allows() -> None:
    deep: object = "sk-123456"
    for _ in range(50_000):
        deep = [deep]
    scrubbed = Redactor(["sk-123456"]).scrub({"d": deep})["d"]
    for _ in range(50_000):
        scrubbed = scrubbed[0]
    assert scrubbed == REDACTED
