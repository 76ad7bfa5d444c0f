"""Where requests and credentials may go (SPEC §7).

Two questions, asked of every URL a provider hands us: may it receive the
configured headers (credentials), and may we fetch it at all (a download link
must not turn the runner into a proxy to the cloud metadata service or the
internal network).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import SplitResult, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Cloud metadata services hand out instance credentials; never fetch them,
# whatever the settings (AWS/GCP/Azure 169.254.169.254, AWS IPv6, Alibaba).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_METADATA_HOSTS = frozenset({"metadata.google.internal"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` as written, lowercased, with the default port filled in.

    Hosts are compared as written, never resolved: ``localhost`` and
    ``127.0.0.1`` are different origins, as for a browser. Raises ValueError
    for a URL that is not http(s) with a host: it has no origin credentials
    could be tied to.
    """
    parts = _http_parts(url)
    port = parts.port
    return (
        parts.scheme,
        parts.hostname or "",
        _DEFAULT_PORTS[parts.scheme] if port is None else port,
    )


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs share scheme, host and port; False when either has no origin."""
    try:
        return origin(a) == origin(b)
    except ValueError:
        return False


def may_receive_credentials(url: str, *, endpoint: str, allowed_hosts: Iterable[str] = ()) -> bool:
    """Whether a request to ``url`` may carry the method's configured headers.

    Yes on the endpoint's origin. A status or result link elsewhere only when
    the user listed its host in ``allowedHosts`` (exact host, any case), and
    only over https unless the endpoint itself is plain http: a key must not
    travel in clear text because a provider's link said so.
    """
    if same_origin(url, endpoint):
        return True
    try:
        scheme, host, _port = origin(url)
        endpoint_scheme = origin(endpoint)[0]
    except ValueError:
        return False
    allowed = {allowed_host.strip().lower() for allowed_host in allowed_hosts}
    return host in allowed and (scheme == "https" or endpoint_scheme == "http")


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (DNS may answer several)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def unsafe_url_reason(
    url: str,
    *,
    endpoint: str,
    allow_private: bool,
    resolve: Callable[[str], list[str]] = resolve_host,
) -> str | None:
    """Why ``url`` must not be fetched, or None when it may be.

    Only http(s). Link-local and cloud-metadata addresses are always refused.
    Private, loopback and other non-public addresses are allowed only on the
    endpoint's own host (a provider running on localhost serves its files
    there too) or with ``allow_private`` (TOOLFLOWS_ALLOW_PRIVATE_URLS=1).
    Every address the host resolves to must pass, since the connection may
    use any of them.
    """
    try:
        parts = _http_parts(url)
        parts.port  # noqa: B018 - raises ValueError on an invalid port
    except ValueError as exc:
        return str(exc)
    host = parts.hostname or ""
    if host.rstrip(".") in _METADATA_HOSTS:
        return f"{host} is a cloud metadata address"
    private_allowed = allow_private or host == _hostname(endpoint)
    try:
        literal = _parse_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        return _address_reason(literal, private_allowed=private_allowed)
    try:
        addresses = [_parse_address(address) for address in resolve(host)]
    except (OSError, ValueError):
        addresses = []
    if not addresses:
        return f"cannot resolve host {host}"
    for address in addresses:
        reason = _address_reason(address, private_allowed=private_allowed)
        if reason is not None:
            return f"{host} resolves to {reason}"
    return None


def _http_parts(url: str) -> SplitResult:
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise ValueError(f"only http and https URLs are allowed, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError("URL has no host")
    return parts


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url.strip()).hostname
    except ValueError:
        return None


def _parse_address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text)
    # "::ffff:169.254.169.254" reaches the IPv4 address it embeds.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _address_reason(address: IPAddress, *, private_allowed: bool) -> str | None:
    if address in _METADATA_ADDRESSES:
        return f"cloud metadata address {address}"
    if address.is_link_local:
        return f"link-local address {address}"
    if private_allowed:
        return None
    # is_global alone misses multicast, site-local and NAT64 ranges.
    is_site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    if (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or is_site_local
    ):
        return f"non-public address {address} (set TOOLFLOWS_ALLOW_PRIVATE_URLS=1 to allow)"
    return None
