"""Where requests and credentials may go (SPEC §7).

Two questions, asked of every URL a provider hands us: may it receive the
configured headers (credentials), and may we fetch it at all (a download link
must not turn the runner into a proxy to the cloud metadata service or the
internal network).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import SplitResult, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Cloud metadata services hand out instance credentials; never fetch them,
# whatever the settings (AWS/GCP/Azure 169.254.169.254, AWS IPv6, Alibaba).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_METADATA_HOSTS = frozenset({"metadata.google.internal"})
# IPv6 ranges whose last 32 bits are an IPv4 address the packets end up at: NAT64
# (well-known and local-use prefixes) and the deprecated IPv4-compatible form.
_IPV4_IN_LAST_32_BITS = tuple(
    ipaddress.ip_network(network) for network in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96")
)

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


def unsafe_url_reason(url: str, *, endpoint: str, allow_private: bool) -> str | None:
    """Why ``url`` must not be fetched, as far as the URL alone tells; None when it may be.

    Only http(s) with a host and a valid port; never a cloud metadata name; an IP
    literal is judged by ``unsafe_address_reason`` at once. A host name is judged
    when the connection is made, on the very addresses it connects to
    (``unsafe_address_reason`` again): checking a name here and letting the
    connection resolve it again would let a DNS server answer differently the
    second time (DNS rebinding).
    """
    try:
        parts = _http_parts(url)
        parts.port  # noqa: B018 - raises ValueError on an invalid port
    except ValueError as exc:
        return str(exc)
    host = parts.hostname or ""
    if host.rstrip(".") in _METADATA_HOSTS:
        return f"{host} is a cloud metadata address"
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return None
    return _address_reason(
        literal,
        private_allowed=may_use_private_addresses(
            host, endpoint=endpoint, allow_private=allow_private
        ),
    )


def may_use_private_addresses(host: str, *, endpoint: str, allow_private: bool) -> bool:
    """Private and loopback addresses: on the endpoint's own host, or when allowed.

    A provider running on localhost serves its files there too; anything else
    needs ``allow_private`` (TOOLFLOWS_ALLOW_PRIVATE_URLS=1). Hosts are compared
    as written.
    """
    return allow_private or host.lower() == _hostname(endpoint)


def unsafe_address_reason(
    host: str, addresses: Sequence[str], *, private_allowed: bool
) -> str | None:
    """Why a connection to ``host`` must not be made to the addresses it resolved to.

    Link-local and cloud-metadata addresses are always refused, also in the
    IPv6 forms that reach them (mapped, compatible, 6to4, NAT64, Teredo);
    other non-public addresses unless ``private_allowed``. Every address must
    pass: a name answering one bad address among good ones is refused.
    """
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return f"{host} resolves to {text!r}, which is not an IP address"
        reason = _address_reason(address, private_allowed=private_allowed)
        if reason is not None:
            return reason if text == host else f"{host} resolves to {reason}"
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


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address delivers to (``::ffff:169.254.169.254`` ...)."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    embedded = [address.ipv4_mapped, address.sixtofour, address.teredo and address.teredo[1]]
    # "::" and "::1" lie in ::/96 but embed nothing.
    if any(address in network for network in _IPV4_IN_LAST_32_BITS) and int(address) > 1:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [ipv4 for ipv4 in embedded if ipv4 is not None]


def _address_reason(address: IPAddress, *, private_allowed: bool) -> str | None:
    judged = [(address, str(address))]
    judged += [(ipv4, f"{ipv4} (as {address})") for ipv4 in _embedded_ipv4(address)]
    for candidate, shown in judged:
        if candidate in _METADATA_ADDRESSES:
            return f"cloud metadata address {shown}"
        if candidate.is_link_local:
            return f"link-local address {shown}"
    if private_allowed:
        return None
    for candidate, shown in judged:
        if _is_non_public(candidate):
            return f"non-public address {shown} (set TOOLFLOWS_ALLOW_PRIVATE_URLS=1 to allow)"
    return None


def _is_non_public(address: IPAddress) -> bool:
    # is_global alone misses multicast, site-local and NAT64 ranges.
    is_site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    return (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or is_site_local
    )
