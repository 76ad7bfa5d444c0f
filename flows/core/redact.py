"""Keep secrets and runaway provider text out of logs, artifacts, events and errors (SPEC §7).

Two nets for secrets: values we know are secret (header values, resolved
``${VAR}`` values) are replaced wherever they appear, and URLs are scrubbed of
query parameters named like credentials (presigned URLs carry their signature
in the query, a value we never configured). Text shown to people is also cut
to ``MAX_DISPLAY_CHARS`` with its control characters escaped: a provider's
message can be megabytes long, or forge log lines. Payloads (``data``) keep
everything but the known secret values: they are the provider's answer as sent.

Everything here runs in time linear in the text: it sees every byte a
provider sends.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

SECRET_WORDS = (
    "key",
    "token",
    "signature",
    "sig",
    "auth",
    "jwt",
    "secret",
    "password",
    "credential",
)
REDACTED = "[REDACTED]"

# Shorter values ("1", "on", "us", "abc") occur all over ordinary text:
# scrubbing them would garble every log line while protecting nothing a
# guess could not find anyway.
MIN_SECRET_LENGTH = 4

MAX_DISPLAY_CHARS = 4096
"""The most characters of one message shown in an error, a log line, an artifact or an
event; a provider's full answer stays in the result's ``data``."""

_SCHEME_FIRST_CHARACTERS = frozenset(string.ascii_letters)
_SCHEME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "+.-")
# A URL runs to the first space or quote; trailing punctuation belongs to the
# sentence around it, not to its last value.
_URL_BODY = re.compile(r"[^\s\"'<>`]*")
_URL_TRAILING_PUNCTUATION = ".,;:!?)"
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_SCHEME_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# Control characters but newline and tab: a NUL breaks databases, an escape
# sequence or a carriage return can rewrite a terminal or forge a log line, a
# bidirectional override can disguise what a text says.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def display_text(text: str, limit: int = MAX_DISPLAY_CHARS) -> str:
    """``text`` as it may be shown: control characters escaped, at most ``limit`` characters."""
    text = _CONTROL.sub(lambda match: ascii(match.group(0))[1:-1], text)
    if len(text) <= limit:
        return text
    marker = f"… [cut: {len(text)} characters in all]"
    return text[: max(0, limit - len(marker))] + marker


def is_secret_name(name: str) -> bool:
    """Whether a parameter or header name looks like it carries a credential.

    A plain substring match on purpose: over-redacting ``author`` costs a
    little readability, missing ``x-api-key-v2`` would leak a key.
    """
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def redact_url(url: str) -> str:
    """``url`` with credential-like query (and fragment) values and any password redacted.

    Works on the text rather than a parsed URL so that malformed input (which
    a log line may well contain) gets the same treatment instead of an
    exception; parameters that are not secret keep their exact spelling.
    """
    rest, hash_mark, fragment = url.partition("#")
    rest, question_mark, query = rest.partition("?")
    return (
        _redact_password(rest)
        + question_mark
        + _redact_parameters(query)
        + hash_mark
        + _redact_parameters(fragment)
    )


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers for display: names kept, every value hidden.

    Every configured header is treated as a credential: which ones are is
    a provider's choice (``X-Api-Key``, ``Authorization``, ``X-Goog-...``).
    """
    return dict.fromkeys(headers, REDACTED)


class Redactor:
    """Scrubs the known secret values of one run, and credential URLs, from text.

    Example:
        >>> redact = Redactor(["sk-live-1234"])
        >>> redact("GET https://api.example.com/x?token=abc with sk-live-1234")
        'GET https://api.example.com/x?token=[REDACTED] with [REDACTED]'
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Remember a secret value, also in the percent-encoded forms a URL gives it."""
        if len(secret) < MIN_SECRET_LENGTH:
            return
        encoded = {quote(secret, safe=""), quote_plus(secret, safe="")}
        self._secrets.update({secret, *encoded, *map(_lowercase_escapes, encoded)})
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def __call__(self, text: str) -> str:
        """``text`` for display: secrets and URL credentials redacted, cut, controls escaped."""
        return display_text(_redact_urls_in(self.secrets_out(text)))

    def secrets_out(self, text: str) -> str:
        """``text`` with every known secret value replaced, and nothing else changed."""
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)

    def scrub(self, payload: Any) -> Any:
        """A provider's JSON ``payload`` with the known secret values replaced, in strings and
        in keys at any depth; everything else as sent.

        A payload that holds no secret is returned as it is (no copy). Walks without
        recursion: JSON as deep as the parser allows must not exhaust the stack here.
        """
        if self._pattern is None or not self._holds_secret(payload):
            return payload
        return self._rebuilt(payload)

    def _holds_secret(self, payload: Any) -> bool:
        assert self._pattern is not None
        pending = [payload]
        while pending:
            value = pending.pop()
            if isinstance(value, str):
                if self._pattern.search(value):
                    return True
            elif isinstance(value, dict):
                pending.extend(value.keys())
                pending.extend(value.values())
            elif isinstance(value, list | tuple):
                pending.extend(value)
        return False

    def _rebuilt(self, payload: Any) -> Any:
        """A copy of ``payload`` with secrets replaced, built bottom-up from an explicit stack."""
        done: dict[int, Any] = {}
        pending: list[tuple[Any, bool]] = [(payload, False)]
        while pending:
            value, children_done = pending.pop()
            if isinstance(value, str):
                done[id(value)] = self.secrets_out(value)
            elif not isinstance(value, dict | list | tuple):
                done[id(value)] = value
            elif not children_done:
                pending.append((value, True))
                children = value.values() if isinstance(value, dict) else value
                pending.extend((child, False) for child in children)
            elif isinstance(value, dict):
                done[id(value)] = {
                    self.secrets_out(key) if isinstance(key, str) else key: done[id(item)]
                    for key, item in value.items()
                }
            else:
                items = [done[id(item)] for item in value]
                done[id(value)] = items if isinstance(value, list) else tuple(items)
        return done[id(payload)]


def _lowercase_escapes(text: str) -> str:
    """``%2F`` → ``%2f``: some servers echo a URL with its escapes in lowercase hex."""
    return _PERCENT_ESCAPE.sub(lambda escape: escape.group(0).lower(), text)


def _redact_urls_in(text: str) -> str:
    """Every URL in ``text`` passed through ``redact_url``, in one pass.

    URLs are found from their ``://``, then their scheme is read backwards: a regex
    looking for a scheme at every position takes quadratic time on a long run of
    letters (base64 data, a padded message).
    """
    pieces = []
    kept_until = 0
    position = text.find("://")
    while position >= 0:
        start = position
        while start > kept_until and text[start - 1] in _SCHEME_CHARACTERS:
            start -= 1
        while start < position and text[start] not in _SCHEME_FIRST_CHARACTERS:
            start += 1
        after_scheme = position + 3
        if start < position:
            body = text[after_scheme : _URL_BODY.match(text, after_scheme).end()]
            end = after_scheme + len(body.rstrip(_URL_TRAILING_PUNCTUATION))
            if end > after_scheme:
                pieces += [text[kept_until:start], redact_url(text[start:end])]
                kept_until = after_scheme = end
        position = text.find("://", after_scheme)
    pieces.append(text[kept_until:])
    return "".join(pieces)


def _redact_password(before_query: str) -> str:
    """``scheme://user:password@host/...`` → ``scheme://user:[REDACTED]@host/...``."""
    scheme = _SCHEME_PREFIX.match(before_query)
    if scheme is None:
        return before_query
    after_scheme = before_query[scheme.end() :]
    authority, slash, path = after_scheme.partition("/")
    userinfo, at_sign, host = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at_sign or not colon:
        return before_query
    return f"{scheme.group(0)}{user}:{REDACTED}@{host}{slash}{path}"


def _redact_parameters(query: str) -> str:
    """``a=1&token=x`` → ``a=1&token=[REDACTED]``, other pairs untouched."""
    if not query:
        return query
    pairs = []
    for pair in query.split("&"):
        name, equals, _value = pair.partition("=")
        if equals and is_secret_name(unquote_plus(name)):
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    return "&".join(pairs)
