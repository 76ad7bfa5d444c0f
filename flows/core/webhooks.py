"""Provider callbacks: per-job URLs, their tokens, signatures, and a per-job wake-up limit.

A callback only wakes the waiter to check a job's status now; the status check decides.
So everything here guards cost, not correctness: an unguessable token keeps strangers
from making the waiter poll on their behalf, a signature proves the provider sent the
call, and the limiter makes a duplicated or replayed call cost at most one status request.
Every check answers True or False and never raises on what a stranger sent.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

if TYPE_CHECKING:  # the pure core checks signatures without importing pydantic
    from toolflows.core.definition import WebhookConfig

TOKEN_CHARS = 32  # 192 bits of the HMAC: unguessable, and short enough for any URL field

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{{TOKEN_CHARS}}}")
# Segments a reverse proxy's path prefix may have: unreserved characters only, so no
# percent-encoded slash or dot can make one path mean two things.
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
# Unix seconds have 10 digits until the year 2286; more is garbage, not a time.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_STANDARD_WEBHOOKS_SECRET_PREFIX = "whsec_"


def job_token(key: bytes, flow_run_id: str, job_key: str = "") -> str:
    """The token of one job's callback URL: the same for the same run and job, so a
    persisted submit (whose body carries the URL) stays valid when the run resumes."""
    digest = hmac.new(key, f"{flow_run_id}:{job_key}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:TOKEN_CHARS]


def token_matches(key: bytes, flow_run_id: str, job_key: str, token: str) -> bool:
    """Whether ``token`` is this job's, compared in constant time (no timing oracle)."""
    if not _TOKEN.fullmatch(token):
        return False
    expected = job_token(key, flow_run_id, job_key)
    return hmac.compare_digest(expected.encode("ascii"), token.encode("ascii"))


def callback_url(public_url: str, flow_run_id: str, token: str) -> str:
    """The URL a provider calls back: ``public_url`` + ``/hooks/<flow run id>/<token>``.

    Raises ValueError for a ``public_url`` that is not absolute http(s), or whose result
    the listener would not take (a query or fragment would swallow the appended path):
    every URL handed out is one ``parse_callback_path`` takes.
    """
    parts = urlsplit(public_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("public URL must be absolute http(s), e.g. https://host/prefix")
    _ = parts.port  # raises ValueError for a port that is not a number in range
    url = public_url.rstrip("/") + f"/hooks/{flow_run_id}/{token}"
    if parse_callback_path(urlsplit(url).path) != (flow_run_id, token):
        raise ValueError(
            "callback URL would not be accepted: the public URL needs plain path segments and "
            f"no query or fragment, the flow run id a lowercase UUID, the token {TOKEN_CHARS} "
            "URL-safe characters"
        )
    return url


def parse_callback_path(path: str) -> tuple[str, str] | None:
    """``(flow run id, token)`` when a raw (not percent-decoded) URL path ends in
    ``/hooks/<uuid>/<token>``; None for anything else.

    Only the end is matched, so a reverse proxy may keep or strip a path prefix; the
    prefix is plain segments only (no ``.``/``..``, no percent-encoding, no empty one).
    """
    segments = path.split("/")
    if segments[0] != "" or len(segments) < 4:
        return None
    prefix, (hooks, flow_run_id, token) = segments[1:-3], segments[-3:]
    if hooks != "hooks" or not _UUID.fullmatch(flow_run_id) or not _TOKEN.fullmatch(token):
        return None
    if any(segment in {".", ".."} or not _PREFIX_SEGMENT.fullmatch(segment) for segment in prefix):
        return None
    return flow_run_id, token


def verify_standard_webhooks(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_seconds: float = 300,
) -> bool:
    """Whether a call is signed per Standard Webhooks, as Replicate sends it.

    ``headers`` must have lowercased names (``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature``). The signature is base64 HMAC-SHA256 over
    ``"<id>.<timestamp>.<body>"`` with the base64-decoded part of a ``whsec_`` secret;
    the header lists ``v1,<signature>`` entries separated by spaces (one must match, so a
    provider can rotate its secret). A timestamp more than ``tolerance_seconds`` from
    ``now`` is refused: an old signed call cannot be replayed forever.
    """
    key = _standard_webhooks_key(secret)
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if key is None or not message_id or timestamp is None or signatures is None:
        return False
    if not _TIMESTAMP.fullmatch(timestamp) or abs(now - int(timestamp)) > tolerance_seconds:
        return False
    try:
        signed = f"{message_id}.{timestamp}.".encode() + body
    except UnicodeEncodeError:
        return False
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            return True
    return False


def _standard_webhooks_key(secret: str) -> bytes | None:
    """The HMAC key of a Standard Webhooks secret (``whsec_<base64>``, or bare base64)."""
    encoded = secret.strip().removeprefix(_STANDARD_WEBHOOKS_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def verify_hmac_sha256(secret: str, signature: str | None, body: bytes) -> bool:
    """Whether ``signature`` (a header value) is the hex HMAC-SHA256 of ``body`` under
    ``secret`` (its UTF-8 bytes); a ``sha256=`` prefix and any hex case are accepted.
    An empty secret verifies nothing: it is an unset variable, not a key."""
    if not secret or signature is None:
        return False
    candidate = signature.strip().lower().removeprefix("sha256=")
    if not _HEX_SHA256.fullmatch(candidate):
        return False
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode("ascii"), candidate.encode("ascii"))


def signature_valid(
    config: WebhookConfig,
    secret: str | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
) -> bool:
    """Whether a call is signed as ``config.signing`` says (always, for ``"none"``).

    ``secret`` is ``config.secret`` with its ``${VAR}`` resolved; ``headers`` have
    lowercased names. A signing method whose secret resolved to nothing refuses all calls.
    """
    if config.signing == "none":
        return True
    if not secret:
        return False
    if config.signing == "standard-webhooks":
        return verify_standard_webhooks(secret, headers, body, now=now)
    return verify_hmac_sha256(secret, headers.get(config.signature_header.lower()), body)


class WakeLimiter:
    """At most one wake-up per job per ``min_interval_seconds``.

    A duplicated or replayed callback then costs at most one status request. Memory is
    bounded: entries older than the interval are dropped, and past ``max_jobs`` the
    oldest go first (a dropped job can at worst be woken once more than it needed).
    """

    def __init__(self, min_interval_seconds: float, max_jobs: int = 100_000) -> None:
        self._min_interval = min_interval_seconds
        self._max_jobs = max_jobs
        self._last_wake: OrderedDict[str, float] = OrderedDict()

    def allow(self, job: str, now: float) -> bool:
        """Whether ``job`` may be woken at ``now`` (a monotonic clock); records it if so."""
        last = self._last_wake.get(job)
        if last is not None and now - last < self._min_interval:
            return False
        self._last_wake[job] = now
        self._last_wake.move_to_end(job)
        while self._last_wake:
            oldest_wake = next(iter(self._last_wake.values()))
            if len(self._last_wake) <= self._max_jobs and now - oldest_wake < self._min_interval:
                break
            self._last_wake.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._last_wake)


def place_callback(
    config: WebhookConfig, endpoint: str, params: dict[str, Any], url: str
) -> tuple[dict[str, Any], str]:
    """The submit's params and endpoint carrying the callback URL where the API takes it.

    A dotted ``field`` is set in a copy of the params (its parents made objects as
    needed); a ``query`` parameter is appended to the endpoint.
    """
    if config.query:
        separator = "&" if "?" in endpoint else "?"
        return params, f"{endpoint}{separator}{urlencode({config.query: url})}"
    assert config.field
    placed = copy.deepcopy(params)
    *parents, leaf = config.field.split(".")
    holder = placed
    for name in parents:
        child = holder.get(name)
        if not isinstance(child, dict):
            child = holder[name] = {}
        holder = child
    holder[leaf] = url
    return placed, endpoint
