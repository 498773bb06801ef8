"""The sources' connection pool (`SourceTransport`: httpcore on asyncio streams) against real
servers on 127.0.0.1: plain and TLS, keep-alive and its end, timeouts, refused and broken
connections, gzip, the environment's proxy; failures surface as httpx's exceptions, which
`VenueClient` turns into the contract's error reasons."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpcore
import httpx
import pytest

from publisher.config import ConfigError
from publisher.venues.transport import SourceTransport, environment_proxy, proxy_problem
from tests.harness.tls import Pki
from tests.test_config import base_config, load

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A tiny HTTP/1.1 server whose behaviour each test picks; counts its connections."""

    def __init__(self, respond: Callable[[bytes], bytes | None], tls: ssl.SSLContext | None = None,
                 close_after: bool = False, delay_s: float = 0.0):
        self.respond = respond
        self.tls = tls
        self.close_after = close_after
        self.delay_s = delay_s
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                answer = self.respond(head)
                if answer is None:  # drop the connection without an answer
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes = b'{"fills": []}', **headers: str) -> Callable[[bytes], bytes]:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return lambda _head: (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                          f"{extra}\r\n").encode() + body


def request(url: str, timeout_s: float = 5.0) -> httpx.Request:
    return httpx.Request("GET", url + "/fills?limit=5", headers={"accept-encoding": "gzip"},
                         extensions={"timeout": httpx.Timeout(timeout_s).as_dict()})


@pytest.fixture
async def transport() -> AsyncIterator[SourceTransport]:
    pool = SourceTransport("http://127.0.0.1", ssl.create_default_context())
    yield pool
    await pool.aclose()


async def test_get_reads_the_whole_body_and_keeps_the_connection(transport: SourceTransport) -> None:
    async with Server(ok(b'{"fills": [1, 2, 3]}')) as server:
        for _ in range(3):
            response = await transport.handle_async_request(request(server.url))
            await response.aread()
            assert response.status_code == 200
            assert response.content == b'{"fills": [1, 2, 3]}'
            assert response.headers["content-type"] == "application/json"
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /fills?limit=5 HTTP/1.1\r\n")


async def test_gzip_bodies_are_decoded(transport: SourceTransport) -> None:
    async with Server(ok(gzip.compress(b'{"fills": []}'), content_encoding="gzip")) as server:
        response = await transport.handle_async_request(request(server.url))
        await response.aread()
    assert response.content == b'{"fills": []}'


async def test_a_connection_the_venue_closed_is_replaced(transport: SourceTransport) -> None:
    async with Server(ok(), close_after=True) as server:
        for _ in range(3):
            assert (await transport.handle_async_request(request(server.url))).status_code == 200
            await asyncio.sleep(0.05)  # the close reaches us while the connection is idle
    assert server.connections == 3


async def test_read_timeout_is_an_httpx_timeout(transport: SourceTransport) -> None:
    async with Server(ok(), delay_s=2.0) as server:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(request(server.url, timeout_s=0.2))


async def test_refused_and_dropped_connections_are_transport_errors(transport: SourceTransport,
                                                                    unused_tcp_port: int) -> None:
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(request(f"http://127.0.0.1:{unused_tcp_port}"))
    async with Server(lambda _head: None) as server:  # accepts, reads the request, hangs up
        with pytest.raises(httpx.TransportError) as caught:
            await transport.handle_async_request(request(server.url))
    assert not isinstance(caught.value, httpx.TimeoutException)


async def test_tls_verifies_the_venue_certificate(tmp_path: Path) -> None:
    pki, stranger = Pki(tmp_path, "venue-ca"), Pki(tmp_path, "other-ca")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    trusting = ssl.create_default_context(cafile=pki.cafile)
    async with Server(ok(b'{"ok": true}'), tls=server_tls) as server:
        pool = SourceTransport(server.url, trusting)
        try:
            for _ in range(2):
                response = await pool.handle_async_request(request(server.url))
                await response.aread()
                assert response.content == b'{"ok": true}'
            assert server.connections == 1
        finally:
            await pool.aclose()
        pool = SourceTransport(server.url, ssl.create_default_context(cafile=stranger.cafile))
        try:
            with pytest.raises(httpx.ConnectError):
                await pool.handle_async_request(request(server.url))
        finally:
            await pool.aclose()


def test_the_proxy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    tls = ssl.create_default_context()
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "bypassed.example")
    assert isinstance(SourceTransport("https://api.example/x", tls).pool, httpcore.AsyncHTTPProxy)
    assert isinstance(SourceTransport("https://bypassed.example/x", tls).pool, httpcore.AsyncConnectionPool)
    assert not isinstance(SourceTransport("http://plain.example/x", tls).pool, httpcore.AsyncHTTPProxy)
    monkeypatch.setenv("ALL_PROXY", "http://proxy.internal:3128")
    assert isinstance(SourceTransport("http://plain.example/x", tls).pool, httpcore.AsyncHTTPProxy)
    monkeypatch.delenv("ALL_PROXY")
    # SOCKS works as with httpx (socksio is a dependency); a kind httpx refuses is refused
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:pw@proxy.internal:1080")
    assert isinstance(SourceTransport("https://api.example/x", tls).pool, httpcore.AsyncSOCKSProxy)
    monkeypatch.setenv("HTTPS_PROXY", "ftp://user:pw@proxy.internal:21")
    with pytest.raises(ValueError, match="ftp proxy; supported: http, https, socks5, socks5h") as caught:
        SourceTransport("https://api.example/x", tls)
    assert "pw" not in str(caught.value) and "HTTPS_PROXY" in str(caught.value)
    assert proxy_problem("https://bypassed.example/x") is None


def test_an_unusable_proxy_is_a_config_error_naming_the_source(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "ftp://user:hunter2@proxy.internal:21")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, base_config(tmp_path))
    assert caught.value.field == "sources[kalshi-main].base_url"
    assert "ftp" in str(caught.value) and "hunter2" not in str(caught.value)


async def test_requests_go_through_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # a plain-HTTP request through an HTTP proxy carries the absolute URL as its target
    async with Server(ok(b"{}")) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        pool = SourceTransport("http://venue.example", ssl.create_default_context())
        try:
            response = await pool.handle_async_request(request("http://venue.example"))
            await response.aread()
        finally:
            await pool.aclose()
    assert response.content == b"{}"
    assert proxy.requests[0].startswith(b"GET http://venue.example/fills?limit=5 HTTP/1.1\r\n")


# -- the proxy is the one httpx picks, for every standard form -------------------------------------

_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "no_proxy")
_URLS = ["https://venue.example/api", "http://venue.example/api", "https://api.example.com/x", "https://example.com/x",
         "https://notexample.com/x", "https://example.com:8443/x", "http://example.com/x", "https://127.0.0.1:8443/x",
         "https://[::1]:8443/x", "https://localhost/x", "https://192.168.3.4/x"]


@pytest.mark.parametrize("env", [
    {"HTTP_PROXY": "proxy.corp:3128"},  # no scheme, as many environments write it: an http proxy
    {"HTTPS_PROXY": "proxy.corp:3128"},
    {"HTTPS_PROXY": "http://user:pw@p.corp:1"},
    {"https_proxy": "http://lower.corp:1", "HTTPS_PROXY": "http://upper.corp:2"},
    {"ALL_PROXY": "http://all.corp:1", "HTTPS_PROXY": "https://tls.corp:2"},
    {"ALL_PROXY": "socks5://socks.corp:1080"},
    {"HTTP_PROXY": "socks5h://u:p@socks.corp:1080", "HTTPS_PROXY": "socks5://socks.corp:1081"},
    *({"HTTPS_PROXY": "http://p.corp:1", "HTTP_PROXY": "http://p.corp:2", "NO_PROXY": no_proxy} for no_proxy in (
        "example.com", ".example.com", "*", "127.0.0.1", "::1", "localhost", "http://example.com",
        "example.com:8443", "192.168.0.0/16", " venue.example , other.example", "*.example.com", "")),
], ids=lambda env: ",".join(f"{k}={v}" for k, v in env.items()))
def test_proxy_resolution_is_httpxs(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Side by side with httpx.AsyncClient (trust_env): the same proxy, or none, for every URL."""
    for name in _PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = httpx.AsyncClient()
    tls = ssl.create_default_context()
    for url in _URLS:
        chosen = client._transport_for_url(httpx.URL(url))  # httpx's own choice (an internal, fine in a test)
        theirs = None
        if chosen is not client._transport:
            core_url = chosen._pool._proxy_url  # type: ignore[attr-defined]
            theirs = (core_url.scheme.decode(), core_url.host.decode(), core_url.port)
        proxy = environment_proxy(url)
        ours = None if proxy is None else (proxy.url.scheme, proxy.url.host, proxy.url.port)
        assert ours == theirs, url
        pool = SourceTransport(url, tls).pool
        assert isinstance(pool, httpcore.AsyncSOCKSProxy) == (ours is not None and ours[0].startswith("socks"))
        assert isinstance(pool, httpcore.AsyncHTTPProxy) == (ours is not None and ours[0].startswith("http"))


def test_the_httpx_internals_the_transport_uses_still_exist() -> None:
    """Fails loudly when httpx moves or changes what environment_proxy and _as_httpx_error use."""
    from httpx._transports import default
    from httpx._utils import URLPattern, get_environment_proxies

    assert isinstance(get_environment_proxies(), dict)
    assert URLPattern("all://*example.com").matches(httpx.URL("https://api.example.com"))
    assert sorted([URLPattern("all://"), URLPattern("https://x.example")])[0].pattern == "https://x.example"
    with pytest.raises(httpx.ReadTimeout), default.map_httpcore_exceptions():
        raise httpcore.ReadTimeout("t")


async def test_requests_go_through_a_socks_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int]] = []

    async def relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    async with Server(ok(b'{"via": "socks"}')) as venue:
        venue_port = int(venue.url.rsplit(":", 1)[1])

        async def socks5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # RFC 1928, no authentication, CONNECT only; every target goes to the venue
            _, methods = await reader.readexactly(2)
            await reader.readexactly(methods)
            writer.write(b"\x05\x00")
            _, _, _, kind = await reader.readexactly(4)
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode() if kind == 3 \
                else socket.inet_ntoa(await reader.readexactly(4))
            asked.append((host, int.from_bytes(await reader.readexactly(2), "big")))
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", venue_port)
            writer.write(b"\x05\x00\x00\x01" + bytes(6))
            await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))

        proxy = await asyncio.start_server(socks5, "127.0.0.1", 0)
        monkeypatch.setenv("ALL_PROXY", f"socks5://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
        for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        pool = SourceTransport("http://venue.example:8080", ssl.create_default_context())
        try:
            response = await pool.handle_async_request(request("http://venue.example:8080"))
            await response.aread()
        finally:
            await pool.aclose()
            proxy.close()
    assert response.content == b'{"via": "socks"}'
    assert asked == [("venue.example", 8080)]
