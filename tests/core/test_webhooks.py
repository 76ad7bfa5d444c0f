"""Callback tokens, URLs, signatures and the per-job wake-up limit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from urllib.parse import urlsplit

import pytest

from toolflows.core.definition import WebhookConfig
from toolflows.core.webhooks import (
    TOKEN_CHARS,
    WakeLimiter,
    callback_url,
    job_token,
    parse_callback_path,
    place_callback,
    signature_valid,
    token_matches,
    verify_hmac_sha256,
    verify_standard_webhooks,
)

KEY = b"waiter-key-0123456789"
RUN = "0b6f3c1e-8a4d-4f2b-9c7e-5d1a2b3c4d5e"
OTHER_RUN = "6a1f0c2d-3b4e-4a5f-8c6d-7e8f9a0b1c2d"
TOKEN = job_token(KEY, RUN, "render")

# The Standard Webhooks specification's published test vector (the svix libraries test it).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# RFC 4231 test case 2: HMAC-SHA256 with key "Jefe".
RFC_KEY = "Jefe"
RFC_DATA = b"what do ya want for nothing?"
RFC_DIGEST = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def spec_headers(
    signature: str = SPEC_SIGNATURE, timestamp: int | str = SPEC_TIMESTAMP
) -> dict[str, str]:
    return {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def replicate_signed(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers as Replicate's docs say to check them: the key is the base64 after
    ``whsec_``, the signed content ``id.timestamp.body``, the signature its base64 HMAC."""
    key = base64.b64decode(secret.split("_")[1])
    signed = f"{message_id}.{timestamp}.{body.decode()}".encode()
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


# Tokens


def test_a_token_is_32_url_safe_characters_and_the_same_each_time() -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", TOKEN)
    assert len(TOKEN) == TOKEN_CHARS
    assert job_token(KEY, RUN, "render") == TOKEN


def test_a_token_is_the_base64url_hmac_of_run_and_job() -> None:
    digest = hmac.new(KEY, f"{RUN}:render".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(digest).decode()[:32] == TOKEN


def test_tokens_differ_per_run_job_and_key() -> None:
    tokens = {
        TOKEN,
        job_token(KEY, OTHER_RUN, "render"),
        job_token(KEY, RUN, "upscale"),
        job_token(KEY, RUN),
        job_token(b"another waiter key", RUN, "render"),
    }
    assert len(tokens) == 5


def test_token_matches_only_its_own_run_job_and_key() -> None:
    assert token_matches(KEY, RUN, "render", TOKEN)
    assert not token_matches(KEY, OTHER_RUN, "render", TOKEN)
    assert not token_matches(KEY, RUN, "upscale", TOKEN)
    assert not token_matches(b"another waiter key", RUN, "render", TOKEN)
    flipped = ("A" if TOKEN[0] != "A" else "B") + TOKEN[1:]
    assert not token_matches(KEY, RUN, "render", flipped)


@pytest.mark.parametrize("token", ["", TOKEN[:31], TOKEN + "x", "é" * 32, "\ud800" * 32])
def test_token_matches_refuses_garbage_without_raising(token: str) -> None:
    assert not token_matches(KEY, RUN, "render", token)


# URLs


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://hooks.example.com", f"https://hooks.example.com/hooks/{RUN}/{TOKEN}"),
        ("https://hooks.example.com/", f"https://hooks.example.com/hooks/{RUN}/{TOKEN}"),
        ("http://10.0.0.5:8787", f"http://10.0.0.5:8787/hooks/{RUN}/{TOKEN}"),
        (
            "https://example.com/toolflows/",
            f"https://example.com/toolflows/hooks/{RUN}/{TOKEN}",
        ),
    ],
)
def test_callback_url(public_url: str, expected: str) -> None:
    url = callback_url(public_url, RUN, TOKEN)
    assert url == expected
    assert parse_callback_path(urlsplit(url).path) == (RUN, TOKEN)


@pytest.mark.parametrize(
    "public_url",
    [
        "hooks.example.com",
        "/hooks",
        "ftp://hooks.example.com",
        "https://",
        "https://hooks.example.com?x=1",
        "https://hooks.example.com/?",
        "https://hooks.example.com/#frag",
        "https://hooks.example.com:99999",
        "https://hooks.example.com/a%2Fb",
        "https://hooks.example.com/../x",
    ],
)
def test_callback_url_refuses_a_bad_public_url(public_url: str) -> None:
    with pytest.raises(ValueError):
        callback_url(public_url, RUN, TOKEN)


@pytest.mark.parametrize(
    ("flow_run_id", "token"),
    [(RUN.upper(), TOKEN), ("not-a-uuid", TOKEN), (RUN, TOKEN[:20]), (RUN, "a/b" + TOKEN[3:])],
)
def test_callback_url_refuses_what_the_listener_would_not_take(
    flow_run_id: str, token: str
) -> None:
    with pytest.raises(ValueError):
        callback_url("https://hooks.example.com", flow_run_id, token)


@pytest.mark.parametrize(
    "path",
    [
        f"/hooks/{RUN}/{TOKEN}",
        f"/toolflows/hooks/{RUN}/{TOKEN}",
        f"/a/b.c/~d_e-f/hooks/{RUN}/{TOKEN}",
        f"/hooks/hooks/{RUN}/{TOKEN}",
    ],
)
def test_parse_callback_path_matches_the_end(path: str) -> None:
    assert parse_callback_path(path) == (RUN, TOKEN)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/hooks",
        f"/hooks/{RUN}",
        f"hooks/{RUN}/{TOKEN}",
        f"/hooks/{RUN}/{TOKEN}/",
        f"/hooks/{RUN}/{TOKEN}/extra",
        f"/hooks/{RUN}/{TOKEN}x",
        f"/hooks/{RUN}/{TOKEN[:31]}",
        f"/hooks/{RUN}/{TOKEN[:31]}%",
        f"/hooks/{RUN.upper()}/{TOKEN}",
        f"/hooks/{RUN.replace('-', '')}/{TOKEN}",
        f"/hooks/{{{RUN}}}/{TOKEN}",
        f"/hooks/{RUN}%2F{TOKEN}",
        f"/hooks%2F{RUN}/{TOKEN}",
        f"/a%2Fb/hooks/{RUN}/{TOKEN}",
        f"/../hooks/{RUN}/{TOKEN}",
        f"/x/./hooks/{RUN}/{TOKEN}",
        f"//hooks/{RUN}/{TOKEN}",
        f"/x//hooks/{RUN}/{TOKEN}",
        f"/HOOKS/{RUN}/{TOKEN}",
        f"/hook/{RUN}/{TOKEN}",
        f"/é/hooks/{RUN}/{TOKEN}",
        f"/hooks/{RUN}/{TOKEN}?x=1",
    ],
)
def test_parse_callback_path_refuses_anything_else(path: str) -> None:
    assert parse_callback_path(path) is None


def test_every_token_makes_a_url_the_listener_takes() -> None:
    for index in range(200):
        run = str(uuid.uuid4())
        token = job_token(KEY, run, f"job-{index}")
        assert parse_callback_path(f"/p/hooks/{run}/{token}") == (run, token)


# Standard Webhooks


def test_the_specification_vector_verifies() -> None:
    assert verify_standard_webhooks(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)


def test_a_secret_without_its_prefix_is_taken_as_base64() -> None:
    bare = SPEC_SECRET.removeprefix("whsec_")
    assert verify_standard_webhooks(bare, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)


def test_a_call_signed_as_replicate_documents_verifies() -> None:
    secret = "whsec_" + base64.b64encode(b"replicate signing key 32 bytes!!").decode()
    body = b'{"id": "abc", "status": "succeeded", "output": ["https://x/y.mp4"]}'
    headers = replicate_signed(secret, "msg_2", 1_700_000_000, body)
    assert verify_standard_webhooks(secret, headers, body, now=1_700_000_100)
    assert not verify_standard_webhooks(secret, headers, body + b" ", now=1_700_000_100)


@pytest.mark.parametrize(
    "body",
    [SPEC_BODY + b" ", b'{"test": 2432232315}', b"", SPEC_BODY[:-1]],
)
def test_a_tampered_body_is_refused(body: bytes) -> None:
    assert not verify_standard_webhooks(SPEC_SECRET, spec_headers(), body, now=SPEC_TIMESTAMP)


def test_a_wrong_secret_is_refused() -> None:
    wrong = "whsec_" + base64.b64encode(b"not the secret").decode()
    assert not verify_standard_webhooks(wrong, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)


def test_a_changed_id_or_timestamp_is_refused() -> None:
    other_id = {**spec_headers(), "webhook-id": "msg_other"}
    assert not verify_standard_webhooks(SPEC_SECRET, other_id, SPEC_BODY, now=SPEC_TIMESTAMP)
    moved = spec_headers(timestamp=SPEC_TIMESTAMP + 1)
    assert not verify_standard_webhooks(SPEC_SECRET, moved, SPEC_BODY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize(
    ("offset", "valid"), [(-300, True), (300, True), (-301, False), (301, False)]
)
def test_the_timestamp_must_be_within_the_tolerance(offset: float, valid: bool) -> None:
    now = SPEC_TIMESTAMP + offset
    assert verify_standard_webhooks(SPEC_SECRET, spec_headers(), SPEC_BODY, now=now) is valid


def test_one_valid_signature_among_several_is_enough() -> None:
    rotated = f"v1,{base64.b64encode(b'x' * 32).decode()} v2,abc {SPEC_SIGNATURE} v1,!!"
    headers = spec_headers(signature=rotated)
    assert verify_standard_webhooks(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


def test_a_valid_signature_under_another_version_is_refused() -> None:
    headers = spec_headers(signature=SPEC_SIGNATURE.replace("v1,", "v1a,"))
    assert not verify_standard_webhooks(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused(missing: str) -> None:
    headers = spec_headers()
    del headers[missing]
    assert not verify_standard_webhooks(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


def test_header_names_are_looked_up_lowercased() -> None:
    headers = {name.title(): value for name, value in spec_headers().items()}
    assert not verify_standard_webhooks(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize(
    "headers",
    [
        spec_headers(signature=""),
        spec_headers(signature="v1,"),
        spec_headers(signature="v1,%%%not base64%%%"),
        spec_headers(signature="v1,é" + SPEC_SIGNATURE[3:]),
        spec_headers(signature="v1," + "A" * 100_000),
        spec_headers(signature=" ".join(["v1,AAAA"] * 5_000)),
        spec_headers(timestamp=""),
        spec_headers(timestamp="soon"),
        spec_headers(timestamp=" 1614265330"),
        spec_headers(timestamp="+1614265330"),
        spec_headers(timestamp="1614265330.0"),
        spec_headers(timestamp="١٦١٤٢٦٥٣٣٠"),  # Arabic-Indic digits: isdigit() yet not ASCII
        spec_headers(timestamp="9" * 5_000),
        {**spec_headers(), "webhook-id": ""},
        {**spec_headers(), "webhook-id": "\ud800"},
    ],
)
def test_garbage_headers_are_refused_without_raising(headers: dict[str, str]) -> None:
    assert not verify_standard_webhooks(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_%%%", "not base64!", "whsec_é"])
def test_an_unusable_secret_verifies_nothing(secret: str) -> None:
    assert not verify_standard_webhooks(secret, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)


# Generic HMAC-SHA256


@pytest.mark.parametrize(
    "signature",
    [RFC_DIGEST, RFC_DIGEST.upper(), f"sha256={RFC_DIGEST}", f" sha256={RFC_DIGEST.upper()} "],
)
def test_the_rfc_4231_vector_verifies_in_every_accepted_form(signature: str) -> None:
    assert verify_hmac_sha256(RFC_KEY, signature, RFC_DATA)


def test_hmac_refuses_a_tampered_body_or_a_wrong_secret() -> None:
    assert not verify_hmac_sha256(RFC_KEY, RFC_DIGEST, RFC_DATA + b"!")
    assert not verify_hmac_sha256("jefe", RFC_DIGEST, RFC_DATA)


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "sha256=",
        RFC_DIGEST[:-1],
        RFC_DIGEST + "0",
        "sha1=" + RFC_DIGEST,
        RFC_DIGEST[:-1] + "g",
        "é" * 64,
        "f" * 100_000,
        base64.b64encode(bytes.fromhex(RFC_DIGEST)).decode(),
    ],
)
def test_hmac_refuses_garbage_without_raising(signature: str | None) -> None:
    assert not verify_hmac_sha256(RFC_KEY, signature, RFC_DATA)


def test_hmac_with_an_empty_secret_verifies_nothing() -> None:
    empty_key_digest = hmac.new(b"", RFC_DATA, hashlib.sha256).hexdigest()
    assert not verify_hmac_sha256("", empty_key_digest, RFC_DATA)


# Dispatch by the method's webhook config


def test_signature_valid_follows_the_configured_signing() -> None:
    unsigned = WebhookConfig(field="webhook")
    assert signature_valid(unsigned, None, {}, b"anything", now=0)

    standard = WebhookConfig(field="webhook", signing="standard-webhooks", secret="${S}")
    headers = spec_headers()
    assert signature_valid(standard, SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)
    assert not signature_valid(standard, SPEC_SECRET, headers, b"{}", now=SPEC_TIMESTAMP)
    assert not signature_valid(standard, "", headers, SPEC_BODY, now=SPEC_TIMESTAMP)

    generic = WebhookConfig(
        query="cb", signing="hmac-sha256", secret="${S}", signature_header="X-Hub-Signature-256"
    )
    signed = {"x-hub-signature-256": f"sha256={RFC_DIGEST}"}
    assert signature_valid(generic, RFC_KEY, signed, RFC_DATA, now=0)
    assert not signature_valid(generic, RFC_KEY, {"x-signature": RFC_DIGEST}, RFC_DATA, now=0)
    assert not signature_valid(generic, None, signed, RFC_DATA, now=0)


# Wake-up limit


def test_one_wake_up_per_job_per_interval() -> None:
    limiter = WakeLimiter(min_interval_seconds=5)
    assert limiter.allow("a", now=100)
    assert not limiter.allow("a", now=100)
    assert not limiter.allow("a", now=104.9)
    assert limiter.allow("b", now=104.9)
    assert limiter.allow("a", now=105)
    assert not limiter.allow("a", now=109)


def test_a_refused_wake_up_does_not_extend_the_interval() -> None:
    limiter = WakeLimiter(min_interval_seconds=5)
    assert limiter.allow("a", now=0)
    for second in range(1, 5):
        assert not limiter.allow("a", now=second)
    assert limiter.allow("a", now=5)


def test_memory_is_bounded_by_max_jobs_dropping_the_oldest() -> None:
    limiter = WakeLimiter(min_interval_seconds=60, max_jobs=3)
    for index, job in enumerate(["a", "b", "c", "d"]):
        assert limiter.allow(job, now=index)
    assert len(limiter) == 3
    assert limiter.allow("a", now=4)  # forgotten: may wake once more
    assert not limiter.allow("d", now=4)  # newest kept


def test_expired_entries_are_dropped() -> None:
    limiter = WakeLimiter(min_interval_seconds=1)
    for index in range(1_000):
        assert limiter.allow(f"job-{index}", now=index * 0.01)
    assert len(limiter) <= 101
    assert limiter.allow("late", now=1_000)
    assert len(limiter) == 1


def test_a_callback_field_is_set_in_a_copy_of_the_params_at_its_dotted_path() -> None:
    config = WebhookConfig(field="notify.url")
    params = {"input": {"prompt": "corgi"}, "notify": "not an object"}

    placed, endpoint = place_callback(
        config, "https://api.example.com/v1/x", params, "https://h/cb"
    )

    assert placed == {"input": {"prompt": "corgi"}, "notify": {"url": "https://h/cb"}}
    assert params["notify"] == "not an object"  # the caller's params are untouched
    assert endpoint == "https://api.example.com/v1/x"


def test_a_callback_query_parameter_is_appended_encoded_to_the_endpoint() -> None:
    config = WebhookConfig(query="fal_webhook")
    url = "https://hooks.example.com/toolflows/hooks/x/y?a=1&b=2"

    placed, endpoint = place_callback(config, "https://queue.fal.run/app?mode=x", {"p": 1}, url)

    assert placed == {"p": 1}
    assert endpoint == (
        "https://queue.fal.run/app?mode=x&fal_webhook="
        "https%3A%2F%2Fhooks.example.com%2Ftoolflows%2Fhooks%2Fx%2Fy%3Fa%3D1%26b%3D2"
    )
