"""Keep secrets out of logs, artifacts, events and error messages (SPEC §7).

Two nets: values we know are secret (header values, resolved ``${VAR}``
values) are replaced wherever they appear, and URLs are scrubbed of query
parameters named like credentials (presigned URLs carry their signature in
the query, a value we never configured).
"""

from __future__ import annotations

import re
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

# Trailing punctuation belongs to the sentence around a URL, not to its last value.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]*[^\s\"'<>`.,;:!?)]")
_SCHEME_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


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
        self._secrets.update({secret, quote(secret, safe=""), quote_plus(secret, safe="")})
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def __call__(self, text: str) -> str:
        """``text`` with every known secret and every credential in a URL redacted."""
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)

    def scrub(self, value: Any) -> Any:
        """Redact every string inside ``value`` (dicts, lists, tuples); keys stay as they are."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {key: self.scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            scrubbed = [self.scrub(item) for item in value]
            return scrubbed if isinstance(value, list) else tuple(scrubbed)
        return value


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
