"""Where credentials may go and which URLs may be fetched at all."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from toolflows.core.urls import (
    may_receive_credentials,
    may_use_private_addresses,
    origin,
    same_origin,
    unsafe_address_reason,
    unsafe_url_reason,
)

ENDPOINT = "https://api.heygen.com/v2/video/generate"

# A fake DNS: names tests use, each with the addresses it "resolves" to.
FAKE_DNS = {
    "cdn.example.com": ["93.184.216.34"],
    "dual.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
    "rebind.example.com": ["93.184.216.34", "10.0.0.7"],
    "internal.corp": ["10.1.2.3"],
    "meta.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:169.254.169.254"],
    "sixtofour.example.com": ["2002:a9fe:a9fe::1"],
    "nat64.example.com": ["64:ff9b::a9fe:a9fe"],
    "localhost": ["127.0.0.1", "::1"],
    "api.heygen.com": ["10.9.9.9"],
}


def reason_for(url: str, *, endpoint: str = ENDPOINT, allow_private: bool = False) -> str | None:
    """Why ``url`` is refused: by the URL alone, else by the addresses its host resolves to
    (as the connection judges them, on the addresses it will use)."""
    reason = unsafe_url_reason(url, endpoint=endpoint, allow_private=allow_private)
    host = urlsplit(url).hostname or ""
    if reason is not None or host not in FAKE_DNS:
        return reason
    private_allowed = may_use_private_addresses(
        host, endpoint=endpoint, allow_private=allow_private
    )
    return unsafe_address_reason(host, FAKE_DNS[host], private_allowed=private_allowed)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://API.HeyGen.com/v2/x?y=1", ("https", "api.heygen.com", 443)),
        ("http://api.test/x", ("http", "api.test", 80)),
        ("HTTPS://api.test:8443", ("https", "api.test", 8443)),
        ("http://localhost:8080/a", ("http", "localhost", 8080)),
        ("http://127.0.0.1:8080/a", ("http", "127.0.0.1", 8080)),
        ("http://[::1]:9000/", ("http", "::1", 9000)),
        ("https://user:pw@api.test/", ("https", "api.test", 443)),
    ],
)
def test_origin(url: str, expected: tuple[str, str, int]) -> None:
    assert origin(url) == expected


@pytest.mark.parametrize(
    "url", ["ftp://files.test/a", "file:///etc/passwd", "/relative/path", "https:///nohost"]
)
def test_origin_of_a_url_without_one(url: str) -> None:
    with pytest.raises(ValueError):
        origin(url)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://api.test/a", "https://API.test:443/b?c=1", True),
        ("http://api.test/a", "http://api.test:80", True),
        ("https://api.test/a", "http://api.test/a", False),
        ("https://api.test/a", "https://api.test:8443/a", False),
        ("https://api.test/a", "https://eu.api.test/a", False),
        ("http://localhost:8080", "http://127.0.0.1:8080", False),
        ("https://api.test/a", "ftp://api.test/a", False),
        ("https://api.test:99999/a", "https://api.test/a", False),  # invalid port
    ],
)
def test_same_origin(a: str, b: str, same: bool) -> None:
    assert same_origin(a, b) is same
    assert same_origin(b, a) is same


@pytest.mark.parametrize(
    ("url", "endpoint", "allowed_hosts", "allowed"),
    [
        ("https://api.heygen.com/v1/video_status.get?video_id=1", ENDPOINT, (), True),
        ("https://api.heygen.com:443/v1/x", ENDPOINT, (), True),
        ("https://files.heygen.com/v.mp4", ENDPOINT, (), False),
        ("http://api.heygen.com/v1/x", ENDPOINT, (), False),  # downgraded scheme
        ("https://api.heygen.com:8443/v1/x", ENDPOINT, (), False),
        ("https://eu.heygen.com/status/1", ENDPOINT, ["EU.heygen.com"], True),
        ("https://eu.heygen.com:8443/status/1", ENDPOINT, ["eu.heygen.com"], True),
        ("http://eu.heygen.com/status/1", ENDPOINT, ["eu.heygen.com"], False),  # no clear text
        ("https://evil.eu.heygen.com/x", ENDPOINT, ["eu.heygen.com"], False),  # exact host only
        ("https://heygen.com.evil.test/x", ENDPOINT, ["heygen.com"], False),
        ("http://poll.local:9000/s", "http://api.local:8000/submit", ["poll.local"], True),
        ("http://127.0.0.1:8080/s", "http://localhost:8080/submit", (), False),
        ("ftp://eu.heygen.com/x", ENDPOINT, ["eu.heygen.com"], False),
        ("not a url", ENDPOINT, ["eu.heygen.com"], False),
    ],
)
def test_may_receive_credentials(
    url: str, endpoint: str, allowed_hosts: tuple[str, ...] | list[str], allowed: bool
) -> None:
    assert may_receive_credentials(url, endpoint=endpoint, allowed_hosts=allowed_hosts) is allowed


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example.com/v.mp4",
        "https://dual.example.com/v.mp4",
        "http://93.184.216.34/v.mp4",
        "https://[2606:2800:220:1::1]/v.mp4",
        "HTTPS://CDN.example.com/v.mp4?sig=1",
    ],
)
def test_public_urls_may_be_fetched(url: str) -> None:
    assert reason_for(url) is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://cdn.example.com/v.mp4", "only http and https"),
        ("gopher://cdn.example.com/", "only http and https"),
        ("https:///v.mp4", "no host"),
        ("https://cdn.example.com:99999/v.mp4", "out of range"),
    ],
)
def test_malformed_urls_are_refused(url: str, fragment: str) -> None:
    reason = reason_for(url, allow_private=True)
    assert reason is not None
    assert fragment in reason


def test_an_answer_that_is_no_address_is_refused() -> None:
    reason = unsafe_address_reason("odd.test", ["not-an-ip"], private_allowed=True)
    assert reason == "odd.test resolves to 'not-an-ip', which is not an IP address"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/", "cloud metadata"),
        ("http://100.100.100.200/latest/", "cloud metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
        ("http://Metadata.Google.Internal./x", "cloud metadata"),
        ("http://meta.example.com/x", "resolves to cloud metadata address 169.254.169.254"),
        ("http://mapped.example.com/x", "cloud metadata"),
        ("http://sixtofour.example.com/x", "cloud metadata address 169.254.169.254 (as 2002:"),
        ("http://nat64.example.com/x", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/x", "cloud metadata"),
        ("http://[2002:a9fe:a9fe::]/x", "cloud metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/x", "cloud metadata"),
        ("http://[64:ff9b:1::a9fe:a9fe]/x", "cloud metadata"),
        ("http://[::a9fe:a9fe]/x", "cloud metadata"),
        ("http://[2001:0:4136:e378:8000:63bf:5601:5601]/x", "cloud metadata"),  # Teredo
        ("http://[2002:a9fe:101::]/x", "link-local address 169.254.1.1"),
        ("http://169.254.10.1/x", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
    ],
)
def test_link_local_and_metadata_addresses_are_always_refused(url: str, fragment: str) -> None:
    # Neither the setting nor being the endpoint's own host makes them safe.
    for endpoint in (ENDPOINT, url):
        reason = reason_for(url, endpoint=endpoint, allow_private=True)
        assert reason is not None
        assert fragment in reason


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v.mp4",
        "http://localhost/v.mp4",
        "http://[::1]/v.mp4",
        "http://10.0.0.5/v.mp4",
        "http://192.168.1.20/v.mp4",
        "http://172.16.0.1/v.mp4",
        "http://100.64.0.1/v.mp4",  # carrier-grade NAT
        "http://0.0.0.0/v.mp4",
        "http://[::]/v.mp4",
        "http://224.0.0.1/v.mp4",  # multicast
        "http://240.0.0.1/v.mp4",  # reserved
        "http://[fc00::1]/v.mp4",
        "http://[fec0::1]/v.mp4",  # site-local
        "http://[::ffff:10.0.0.1]/v.mp4",
        "http://[64:ff9b::10.0.0.1]/v.mp4",  # NAT64 to a private address
        "http://[2002:0a00:0001::]/v.mp4",  # 6to4 of 10.0.0.1
        "http://internal.corp/v.mp4",
        "http://rebind.example.com/v.mp4",  # one private answer is enough
    ],
)
def test_private_addresses_need_permission(url: str) -> None:
    refused = reason_for(url)
    assert refused is not None
    assert "non-public address" in refused
    assert "TOOLFLOWS_ALLOW_PRIVATE_URLS" in refused
    assert reason_for(url, allow_private=True) is None


@pytest.mark.parametrize(
    ("url", "endpoint", "allowed"),
    [
        ("http://localhost:9000/v.mp4", "http://LOCALHOST:8000/submit", True),  # any port
        ("http://127.0.0.1:8000/v.mp4", "http://127.0.0.1:8000/submit", True),
        ("http://127.0.0.1:8000/v.mp4", "http://localhost:8000/submit", False),  # as written
        ("http://localhost:8000/v.mp4", "http://127.0.0.1:8000/submit", False),
        ("https://api.heygen.com/files/1", ENDPOINT, True),  # endpoint on a private network
        ("http://10.0.0.5/v.mp4", "http://10.0.0.6/submit", False),
    ],
)
def test_private_addresses_on_the_endpoints_own_host(
    url: str, endpoint: str, allowed: bool
) -> None:
    assert (reason_for(url, endpoint=endpoint) is None) is allowed


def test_a_host_name_is_left_to_the_connection() -> None:
    """No DNS here: the connection resolves, checks and uses the same addresses."""
    assert unsafe_url_reason("http://localhost/x", endpoint=ENDPOINT, allow_private=False) is None
    assert unsafe_url_reason("http://127.0.0.1/x", endpoint=ENDPOINT, allow_private=False)


def test_reasons_never_contain_the_query() -> None:
    reason = unsafe_url_reason(
        "http://10.0.0.1/v.mp4?sig=s3cr3t", endpoint=ENDPOINT, allow_private=False
    )
    assert reason is not None
    assert "s3cr3t" not in reason
