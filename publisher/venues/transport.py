"""The connection pool of one venue source: httpcore's HTTP/1.1 pool on plain asyncio streams.

httpx's own :class:`httpx.AsyncHTTPTransport` runs httpcore over anyio, whose cancel scopes (one
per socket read and write, for the timeout) and TLS wrapper are a good part of the CPU of each
request; with a thousand sources polling every second that is most of what separates them from a
core (bench/README.md).
:class:`SourceTransport` is the same httpcore pool (or proxy) with a network backend on asyncio's
streams, timeouts by :func:`asyncio.timeout`, TLS by asyncio's own `start_tls`. Everything else is
httpx's: the proxy is the one :class:`httpx.AsyncClient` picks from the environment (its own
resolution, not a copy of it), the pool or proxy is built as :class:`httpx.AsyncHTTPTransport`
builds it, and httpcore's exceptions become httpx's through httpx's own table. The response is a
stream, as any httpx transport returns it: :class:`~publisher.venues.http.VenueClient` reads it
within its limits.

The two httpx internals this needs (the environment's proxy map and the exception table) are used
in :func:`environment_proxy` and :func:`_as_httpx_error` only; tests/test_transport.py fails
loudly when httpx changes them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import select
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

import httpcore
import httpx

# the only httpx internals used, each in one function below (see the module docstring)
from httpx._transports.default import map_httpcore_exceptions
from httpx._utils import URLPattern, get_environment_proxies

#: the proxy kinds httpx supports (SOCKS through httpcore, with the socksio package)
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


def environment_proxy(url: str | httpx.URL) -> httpx.Proxy | None:
    """The proxy :class:`httpx.AsyncClient` (with `trust_env`, its default) sends `url` through,
    from `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case); None: direct.

    httpx's own map and matching (internals): a proxy without a scheme is an http one, `NO_PROXY`
    follows curl's rules as httpx reads them, and the most specific pattern wins. Raises
    :class:`ValueError` for a proxy httpx would refuse too (an unknown scheme, a broken URL).
    """
    target = httpx.URL(url)
    # as AsyncClient orders its mounts: the most specific pattern first
    for pattern, proxy in sorted((URLPattern(key), value) for key, value in get_environment_proxies().items()):
        if pattern.matches(target):
            if proxy is None:
                return None
            try:
                return httpx.Proxy(url=proxy)
            except (ValueError, httpx.InvalidURL):
                # the scheme only: the rest of the URL may carry credentials
                scheme = urllib.parse.urlsplit(proxy).scheme.lower()
                raise ValueError(f"a {scheme} proxy" if scheme.isalnum() else "not a usable proxy URL") from None
    return None


def _as_httpx_error(exc: Exception) -> Exception:
    """httpcore's exception as the httpx exception httpx's transport raises for it (httpx's own
    table, an internal); any other exception unchanged."""
    try:
        with map_httpcore_exceptions():
            raise exc
    except Exception as mapped:  # noqa: BLE001 - whatever the table made of it
        return mapped


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


class _ResponseStream(httpx.AsyncByteStream):
    """A response body as httpcore streams it, with httpx's exceptions (as httpx's transport)."""

    __slots__ = ("_core",)

    def __init__(self, core: httpcore.Response):
        self._core = core

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._core.aiter_stream():
                yield part
        except Exception as exc:
            raise _as_httpx_error(exc) from exc

    async def aclose(self) -> None:
        try:
            await self._core.aclose()
        except Exception as exc:
            raise _as_httpx_error(exc) from exc


class SourceTransport(httpx.AsyncBaseTransport):
    """The connection pool of one source: a few connections (a source polls one page at a time),
    `tls` for verification, and the proxy the environment names for `base_url`
    (:func:`environment_proxy`), built as :class:`httpx.AsyncHTTPTransport` builds it.

    Raises :class:`ValueError` when that proxy cannot be used (:func:`proxy_problem` says why)."""

    def __init__(self, base_url: str, tls: ssl.SSLContext, *, max_connections: int = 4,
                 max_keepalive_connections: int = 2):
        problem, proxy = _proxy(base_url)
        if problem is not None:
            raise ValueError(problem)
        options: dict[str, Any] = {"ssl_context": tls, "max_connections": max_connections,
                                   "max_keepalive_connections": max_keepalive_connections,
                                   "network_backend": AsyncioBackend()}
        self.pool: httpcore.AsyncConnectionPool
        if proxy is None:
            self.pool = httpcore.AsyncConnectionPool(**options)
            return
        url = httpcore.URL(scheme=proxy.url.raw_scheme, host=proxy.url.raw_host, port=proxy.url.port,
                           target=proxy.url.raw_path)
        if proxy.url.scheme in ("socks5", "socks5h"):
            self.pool = httpcore.AsyncSOCKSProxy(proxy_url=url, proxy_auth=proxy.raw_auth, **options)
        else:
            self.pool = httpcore.AsyncHTTPProxy(proxy_url=url, proxy_auth=proxy.raw_auth,
                                                proxy_headers=proxy.headers.raw,
                                                proxy_ssl_context=proxy.ssl_context, **options)

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
        except Exception as exc:
            raise _as_httpx_error(exc) from exc
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response), extensions=response.extensions)

    async def aclose(self) -> None:
        await self.pool.aclose()


def proxy_problem(base_url: str) -> str | None:
    """Why requests to `base_url` cannot use the proxy the environment names for them, or None.

    The text names the variables and the scheme, never the proxy URL itself (it may carry
    credentials)."""
    return _proxy(base_url)[0]


def _proxy(base_url: str) -> tuple[str | None, httpx.Proxy | None]:
    variable = urllib.parse.urlsplit(base_url).scheme.upper() + "_PROXY"
    where = f"the proxy named by {variable} (or ALL_PROXY) in the environment"
    try:
        proxy = environment_proxy(base_url)
    except ValueError as exc:
        return f"{where} is {exc}; supported: {', '.join(PROXY_SCHEMES)}", None
    if proxy is not None and proxy.url.scheme in ("socks5", "socks5h") and not _socksio_available():
        return f"{where} is a SOCKS proxy, which needs the socksio package", None
    return None, proxy


def _socksio_available() -> bool:
    return importlib.util.find_spec("socksio") is not None
