"""The run's connections: each host resolved once, every address checked, a checked one used.

httpx's own transport resolves a host name when it connects. Checking the name
beforehand (as a URL check must) and letting the connection resolve it again
would let a DNS server answer a harmless address to the check and
169.254.169.254 to the connection (DNS rebinding). So the run's client uses
this transport: httpx's connection pool (``httpcore``, its public API) on a
network backend that resolves asynchronously, refuses any address the policy
of ``toolflows.core.urls`` refuses, and connects to the address it checked. TLS
and ``Host`` still name the host: httpcore passes the hostname to TLS apart.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpcore
import httpx

from toolflows.core.urls import unsafe_address_reason

# httpcore asks its network stream for 64 KiB per read. asyncio receives up to
# 256 KiB per recv, so asking for that much cuts the trips through anyio,
# httpcore and h11 per byte by 4 (1 GiB download: ~620 -> ~755 MiB/s). An upper
# bound only: a read returns what has arrived, nothing is allocated at that size.
SOCKET_READ_BYTES = 256 * 1024
# How long an idle pooled connection is kept (httpx's default).
KEEPALIVE_SECONDS = 5.0

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, from the event loop's resolver.

    ``getaddrinfo`` blocks, so the loop runs it in a thread: a slow DNS server
    must not stall every other job of the run.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class UnsafeAddress(Exception):
    """A connection the address policy refused; nothing was sent."""


class CheckedNetwork(httpcore.AsyncNetworkBackend):
    """Connects only to addresses that passed the policy, resolving each host once.

    ``private_allowed(host)`` tells whether ``host`` may use private and loopback
    addresses (the endpoint's own host, or the opt-in); ``resolve`` is called
    once per new connection.
    """

    def __init__(self, *, private_allowed: Callable[[str], bool], resolve: Resolver) -> None:
        self._private_allowed = private_allowed
        self._resolve = resolve
        self._sockets = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._addresses(host, port, timeout)
        reason = unsafe_address_reason(host, addresses, private_allowed=self._private_allowed(host))
        if reason is not None:
            raise UnsafeAddress(reason)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                stream = await self._sockets.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return WideReadStream(stream)
        assert failure is not None  # _addresses never returns an empty list
        raise failure

    async def sleep(self, seconds: float) -> None:
        await self._sockets.sleep(seconds)

    async def _addresses(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The addresses to check and connect to: a literal as it is, a name resolved."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            with anyio.fail_after(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve host {host}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve host {host}")
        return addresses


class WideReadStream(httpcore.AsyncNetworkStream):
    """A connection that receives up to ``SOCKET_READ_BYTES`` per read (see there)."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max(max_bytes, SOCKET_READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return WideReadStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


# httpcore's errors and the httpx errors they mean, most specific first (httpx's own
# transport maps them the same way, in a module of its that is not public).
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise httpcore's errors as the httpx errors callers handle."""
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _HTTPX_ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc)) from exc
        raise


class ProviderResponse(httpx.Response):
    """A response whose body toolflows may read itself: within a size cap and a time bound.

    ``body`` is the body once read that way (``content`` then returns it);
    ``read_by`` is when (event loop clock) that read must be over, or None.
    """

    body: bytes | None = None
    read_by: float | None = None

    @property
    def content(self) -> bytes:
        return super().content if self.body is None else self.body


class _ResponseBody(httpx.AsyncByteStream):
    """httpcore's response body, raising httpx errors."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _httpx_errors():
                await close()


class CheckedTransport(httpx.AsyncBaseTransport):
    """httpx's HTTP/1.1 transport, over ``CheckedNetwork`` connections."""

    def __init__(self, network: CheckedNetwork, *, max_connections: int) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_SECONDS,
            network_backend=network,
        )

    async def handle_async_request(self, request: httpx.Request) -> ProviderResponse:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        return ProviderResponse(
            status_code=response.status,
            headers=response.headers,
            # An async pool's bodies are async iterables.
            stream=_ResponseBody(response.stream),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        with _httpx_errors():
            await self._pool.aclose()
