"""The connection pool of one venue source: httpcore's HTTP/1.1 pool on plain asyncio streams.

httpx's own :class:`httpx.AsyncHTTPTransport` runs httpcore over anyio, whose cancel scopes (one
per socket read and write, for the timeout) and TLS wrapper cost ~15% of the CPU of each request;
with a thousand sources polling every second that is most of what separates them from a core.
:class:`SourceTransport` is the same httpcore pool (or proxy, as the environment names it) with a
network backend on asyncio's streams, timeouts by :func:`asyncio.timeout`, TLS by asyncio's own
`start_tls`. It reads each response whole (a poller wants the page, never a stream) and raises
httpx's exceptions, so :class:`~publisher.venues.http.VenueClient` sees what any httpx transport
gives.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Iterable
from typing import Any

import httpcore
import httpx

#: httpcore's exceptions and the httpx ones they stand for (as httpx's own transport maps them),
#: the most specific first
_EXCEPTIONS: list[tuple[type[Exception], type[httpx.TransportError]]] = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
]


class _Stream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection on an asyncio stream pair."""

    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("timed out reading the response") from None
        except OSError as exc:  # reset, broken pipe; ssl.SSLError is one too
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._writer.is_closing():
            raise httpcore.WriteError("the connection is closed")
        try:
            self._writer.write(buffer)
            if self._writer.transport.get_write_buffer_size():
                # the kernel did not take it all at once (requests are small: rare)
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout("timed out sending the request") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            self._writer.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except OSError as exc:  # certificate refused, handshake failed
            self._writer.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self  # the same stream pair, upgraded in place

    def get_extra_info(self, info: str) -> Any:
        writer = self._writer
        if info == "is_readable":
            # asked of an idle keep-alive connection: readable means the venue closed (or broke) it
            if self._reader.at_eof() or self._reader.exception() is not None:
                return True
            sock = writer.get_extra_info("socket")
            return sock is None or bool(select.select([sock], [], [], 0)[0])
        key = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername",
               "socket": "socket"}.get(info)
        return None if key is None else writer.get_extra_info(key)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio streams (see the module docstring)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        local = None if local_address is None else (local_address, 0)
        reader, writer = await _connected(asyncio.open_connection(host, port, local_addr=local), f"{host}:{port}", timeout)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # requests are small: send at once
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Stream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return _Stream(*await _connected(asyncio.open_unix_connection(path), path, timeout))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]], where: str,
                     timeout: float | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(timeout):
            return await opening
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"timed out connecting to {where}") from None
    except OSError as exc:  # refused, unreachable, name not resolved
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc


class SourceTransport(httpx.AsyncBaseTransport):
    """The connection pool of one source: a few connections (a source polls one page at a time),
    `tls` for verification, and the proxy the environment names for `base_url` (`HTTPS_PROXY`,
    `NO_PROXY`, ...), as :class:`httpx.AsyncClient` would pick it."""

    def __init__(self, base_url: str, tls: ssl.SSLContext, *, max_connections: int = 4,
                 max_keepalive_connections: int = 2):
        backend = AsyncioBackend()
        options: dict[str, Any] = {"ssl_context": tls, "max_connections": max_connections,
                                   "max_keepalive_connections": max_keepalive_connections, "network_backend": backend}
        proxy = _proxy_for(base_url)
        problem = _proxy_problem(base_url, proxy)
        if problem is not None:
            raise ValueError(problem)
        if proxy is None:
            self.pool: httpcore.AsyncConnectionPool = httpcore.AsyncConnectionPool(**options)
        else:
            # as httpx.AsyncHTTPTransport builds it (httpx.Proxy splits off the credentials)
            spec = httpx.Proxy(url=proxy)
            self.pool = httpcore.AsyncHTTPProxy(
                proxy_url=httpcore.URL(scheme=spec.url.raw_scheme, host=spec.url.raw_host, port=spec.url.port,
                                       target=spec.url.raw_path),
                proxy_auth=spec.raw_auth, proxy_headers=spec.headers.raw, proxy_ssl_context=spec.ssl_context, **options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self.pool.handle_async_request(core_request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError,
                httpcore.UnsupportedProtocol) as exc:
            raise _mapped(exc) from exc
        return httpx.Response(status_code=response.status, headers=response.headers, content=body,
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self.pool.aclose()


def _mapped(exc: Exception) -> httpx.TransportError:
    for core, mapped in _EXCEPTIONS:
        if isinstance(exc, core):
            return mapped(str(exc))
    return httpx.TransportError(str(exc))


def proxy_problem(base_url: str) -> str | None:
    """Why requests to `base_url` cannot use the proxy the environment names for them, or None.

    Only http and https proxies are supported. The text names the variables and the scheme,
    never the proxy URL itself (it may carry credentials)."""
    return _proxy_problem(base_url, _proxy_for(base_url))


def _proxy_problem(base_url: str, proxy: str | None) -> str | None:
    if proxy is None:
        return None
    scheme = urllib.parse.urlsplit(proxy).scheme.lower()
    if scheme in ("http", "https"):
        return None
    variable = urllib.parse.urlsplit(base_url).scheme.upper() + "_PROXY"
    return (f"the proxy named by {variable} (or ALL_PROXY) in the environment is a {scheme or 'schemeless'} "
            "proxy; only http and https proxies are supported")


def _proxy_for(base_url: str) -> str | None:
    # the scheme's own variable (HTTPS_PROXY for https), else ALL_PROXY; NO_PROXY exempts hosts
    url = urllib.parse.urlsplit(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and url.hostname and urllib.request.proxy_bypass(url.hostname):
        return None
    return proxy or None
