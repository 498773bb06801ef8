"""What a venue answer may cost, and what an error may say: `VenueClient` over the sources'
`SourceTransport`, against hostile venues on 127.0.0.1 (tests/harness/hostile.py), in-process.

- size: an endless chunked body, 200 MB and a 1.5 GB gzip bomb end as `ResponseTooLarge`
  (reason decode) at `max_response_bytes`, quickly, the event loop never held for long;
- time: `timeout_s` bounds the whole request, so a venue dripping its answer times out;
- Retry-After: capped at 300 s and said so; an HTTP date is read;
- secrets: credentials an echoing venue sends back are masked before the text is cut;
- causes: a refused connection, a failed DNS lookup, an untrusted certificate and a proxy's
  credentials read as such (reason connect), without credentials;
- the rest of `decode`: corrupt gzip, a redirect, JSON nested too deeply (through the poll loop,
  no traceback), a paging loop; every httpcore error maps through httpx's own table.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import logging
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from publisher.metrics import Metrics
from publisher.poll import Poller
from publisher.secret import Secret
from publisher.sim.kalshi import generate_key_pair
from publisher.state import SourceState
from publisher.venues import kalshi, zll
from publisher.venues.errors import PagingError, ResponseTooLarge, VenueDecodeError, VenueError
from publisher.venues.http import MAX_RETRY_AFTER_S, RateLimiter, VenueClient, _retry_after
from publisher.venues.transport import SourceTransport, _as_httpx_error
from tests.harness.hostile import HostileVenue, Mode
from tests.harness.tls import Pki


class _NoAuth(httpx.Auth):
    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        yield request


@pytest.fixture
async def venue() -> AsyncIterator[HostileVenue]:
    async with HostileVenue() as server:
        yield server


def client(url: str, *, timeout_s: float = 5.0, max_bytes: int = 1 << 20, auth: httpx.Auth | None = None,
           describe: Any = kalshi.describe_error) -> VenueClient:
    return VenueClient(SourceTransport(url, ssl.create_default_context()), url, auth=auth or _NoAuth(),
                       limiter=RateLimiter(1000), describe_error=describe, timeout_s=timeout_s,
                       max_response_bytes=max_bytes)


class LoopLag:
    """The longest the event loop went without running a 10 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _tick(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - started - 0.01)


@pytest.mark.parametrize("mode", ["endless_chunked", "huge_body", "gzip_bomb"])
async def test_answers_are_capped_raw_and_decompressed(venue: HostileVenue, mode: Mode) -> None:
    venue.mode = mode
    venue.bomb  # noqa: B018 - built before the clock starts (the server shares this loop)
    c = client(venue.url, max_bytes=2 << 20)
    started = time.monotonic()
    async with LoopLag() as lag:
        with pytest.raises(ResponseTooLarge, match="exceeds 2097152 bytes") as caught:
            await c.get("/fills")
    assert caught.value.reason == "decode"
    assert ("decompressed" in str(caught.value)) == (mode == "gzip_bomb")
    assert time.monotonic() - started < 3.0
    assert lag.worst < 0.2, lag.worst
    venue.mode = "ok"  # the source carries on (a fresh connection)
    assert await c.get("/fills") == b'{"fills": [], "cursor": ""}'


async def test_a_page_at_the_limit_is_read_gzip_or_not() -> None:
    # not a limit on ordinary pages: one of exactly the limit is read, compressed or not
    body = b'{"fills": [], "cursor": "", "pad": "' + b"x" * 65_000 + b'"}'
    for encoding, payload in (("identity", body), ("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        def answer(_request: httpx.Request, payload: bytes = payload, encoding: str = encoding) -> httpx.Response:
            return httpx.Response(200, headers={"content-encoding": encoding}, stream=httpx.ByteStream(payload))

        for limit, fits in ((len(body), True), (len(body) - 1, False)):
            mocked = VenueClient(httpx.MockTransport(answer), "http://venue.test", auth=_NoAuth(),
                                 limiter=RateLimiter(1000), describe_error=kalshi.describe_error,
                                 max_response_bytes=limit)
            if fits:
                assert await mocked.get("/fills") == body, encoding
            else:
                with pytest.raises(ResponseTooLarge):
                    await mocked.get("/fills")


async def test_timeout_bounds_the_whole_request(venue: HostileVenue) -> None:
    venue.mode = "drip"  # a byte every 0.5 s: every single read is well within timeout_s
    started = time.monotonic()
    with pytest.raises(VenueError) as caught:
        await client(venue.url, timeout_s=1.0).get("/fills")
    took = time.monotonic() - started
    assert caught.value.reason == "timeout" and "no whole answer within timeout_s (1s)" in str(caught.value)
    assert 0.9 < took < 2.0, took


@pytest.mark.parametrize(("value", "expected", "note"), [
    ("1e12", MAX_RETRY_AFTER_S, "capped at 300s"),
    ("inf", MAX_RETRY_AFTER_S, "capped at 300s"),
    ("301", MAX_RETRY_AFTER_S, "capped at 300s"),
    ("120", 120.0, ""),
    ("-5", 0.0, ""),
    ("nan", None, "unreadable"),
    ("soon", None, "unreadable"),
])
def test_retry_after_is_capped(value: str, expected: float | None, note: str) -> None:
    seconds, said = _retry_after(httpx.Headers({"retry-after": value}))
    assert seconds == expected
    assert note in said and (bool(note) == bool(said))


def test_retry_after_as_an_http_date() -> None:
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds, _ = _retry_after(httpx.Headers({"retry-after": soon}))
    assert seconds is not None and 25 <= seconds <= 31
    later = email.utils.formatdate(time.time() + 86400, usegmt=True)
    assert _retry_after(httpx.Headers({"retry-after": later}))[0] == MAX_RETRY_AFTER_S


async def test_retry_after_forever_is_capped_end_to_end(venue: HostileVenue) -> None:
    venue.mode = "retry_after_forever"
    with pytest.raises(VenueError) as caught:
        await client(venue.url).get("/fills")
    assert caught.value.reason == "http_5xx" and caught.value.retry_after_s == MAX_RETRY_AFTER_S
    assert "Retry-After '1e12' capped at 300s" in str(caught.value)


def _pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


async def test_echoed_credentials_are_masked_before_the_text_is_cut(venue: HostileVenue) -> None:
    venue.mode = "echo_401"
    private_pem, _ = generate_key_pair()
    signer = kalshi.KalshiSigner("key-id-12345678", kalshi.load_private_key(private_pem.decode()))
    with pytest.raises(VenueError) as caught:
        await client(venue.url, auth=kalshi.KalshiAuth(signer)).get("/trade-api/v2/portfolio/fills")
    [signature] = venue.credentials
    text = str(caught.value)
    # the echo put the signature across the 200-character cut: masked before the cut, no piece of
    # it is left (the key id and timestamp, set by the same auth flow, are masked as well)
    assert caught.value.reason == "auth" and text.endswith("...") and "KALSHI-ACCESS-KEY: ***" in text, text
    assert not any(piece in text for piece in _pieces(signature)), text
    # ZLL's key the same way (no registered secret needed: it is a header the auth flow set)
    api_key = "zll-key-0123456789abcdefghijklmnop"
    with pytest.raises(VenueError) as caught:
        await client(venue.url, auth=zll.ZllAuth(Secret(api_key)), describe=zll.describe_error).get("/fills")
    text = str(caught.value)
    assert "X-API-KEY: ***" in text and not any(piece in text for piece in _pieces(api_key)), text


async def test_connect_errors_say_their_cause(unused_tcp_port: int, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    async def failure(url: str, tls: ssl.SSLContext | None = None) -> VenueError:
        c = VenueClient(SourceTransport(url, tls or ssl.create_default_context()), url, auth=_NoAuth(),
                        limiter=RateLimiter(1000), describe_error=kalshi.describe_error, timeout_s=5)
        with pytest.raises(VenueError) as caught:
            await c.get("/fills")
        assert caught.value.reason == "connect"
        return caught.value

    refused = await failure(f"http://127.0.0.1:{unused_tcp_port}")
    assert f"127.0.0.1:{unused_tcp_port} refused the connection" in str(refused)
    dns = await failure("http://venue.invalid:8080")
    assert "DNS lookup of venue.invalid failed" in str(dns)
    pki, stranger = Pki(tmp_path, "venue-ca"), Pki(tmp_path, "other-ca")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    server = await asyncio.start_server(lambda _r, w: None, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    try:
        untrusted = await failure(f"https://localhost:{port}", ssl.create_default_context(cafile=stranger.cafile))
    finally:
        server.close()
    assert f"TLS certificate of localhost:{port} not trusted" in str(untrusted), untrusted
    monkeypatch.setenv("HTTP_PROXY", f"http://proxyuser:hunter2@127.0.0.1:{unused_tcp_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = await failure("http://venue.example")
    assert "refused the connection" in str(proxied) and "hunter2" not in str(proxied)


async def test_an_endless_header_section_ends_the_request(venue: HostileVenue) -> None:
    venue.mode = "endless_headers"  # h11 refuses a header section beyond its 16 KiB limit
    started = time.monotonic()
    with pytest.raises(VenueError) as caught:
        await client(venue.url).get("/fills")
    assert caught.value.reason == "connect" and "RemoteProtocolError" in str(caught.value), caught.value
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(("mode", "needle"), [
    ("corrupt_gzip", "corrupt gzip body"),
    ("redirect", "HTTP 301 to 'https://elsewhere.example/trade-api'"),
])
async def test_unreadable_answers_are_decode(venue: HostileVenue, mode: Mode, needle: str) -> None:
    venue.mode = mode
    with pytest.raises(VenueDecodeError, match=needle) as caught:
        await client(venue.url).get("/fills")
    assert caught.value.reason == "decode" and "hunter2" not in str(caught.value)


class _Sink:
    def submit(self, batch: Any) -> None:
        pass


async def test_deep_json_and_paging_loops_are_decode_without_a_traceback(
        venue: HostileVenue, caplog: pytest.LogCaptureFixture) -> None:
    venue.mode = "deep_json"
    private_pem, _ = generate_key_pair()
    source = kalshi.KalshiSource(name="kalshi-deep", base_url=venue.url, api_key_id="k", private_key_env="UNUSED")
    transport = SourceTransport(venue.url, ssl.create_default_context())
    adapter = kalshi.create_adapter(source, Secret(private_pem.decode()), transport, lambda: None)
    metrics = Metrics()
    poller = Poller(source, adapter, SourceState(source, None, time.time_ns()), _Sink(),  # type: ignore[arg-type]
                    metrics.source("kalshi", "kalshi-deep"))
    with caplog.at_level(logging.WARNING):
        assert await poller.poll_once() is not None
        adapter._max_pages = 0  # the guard: more pages than it allows is a paging error
        venue.mode = "ok"
        assert await poller.poll_once() is not None
    lines = [r for r in caplog.records if r.name == "publisher.poll"]
    assert [r.exc_info for r in lines] == [None, None]  # no traceback: the venue's fault, not ours
    assert "poll failed, decode (unreadable answer: the answer is JSON nested too deeply" in lines[0].getMessage()
    assert "poll failed, decode (paging does not end: more than 0 pages" in lines[1].getMessage()
    assert metrics.registry.get_sample_value(
        "fillpub_poll_errors_total", {"venue": "kalshi", "source": "kalshi-deep", "reason": "decode"}) == 2
    assert issubclass(PagingError, VenueError) and not issubclass(PagingError, VenueDecodeError)
    await transport.aclose()


@pytest.mark.parametrize("error", [
    httpcore.ConnectTimeout, httpcore.ReadTimeout, httpcore.WriteTimeout, httpcore.PoolTimeout,
    httpcore.ConnectError, httpcore.ReadError, httpcore.WriteError, httpcore.ProxyError,
    httpcore.UnsupportedProtocol, httpcore.LocalProtocolError, httpcore.RemoteProtocolError,
])
def test_httpcore_errors_map_through_httpxs_own_table(error: type[Exception]) -> None:
    mapped = _as_httpx_error(error("boom"))
    assert type(mapped).__name__ == error.__name__ and type(mapped).__module__.startswith("httpx")
    assert str(mapped) == "boom"
    assert isinstance(_as_httpx_error(KeyError("x")), KeyError)  # not httpcore's: unchanged


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 4000, 65_537])
async def test_inflating_in_steps_gives_the_whole_body(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    from publisher.venues import http

    monkeypatch.setattr(http, "INFLATE_STEP_BYTES", 1000)  # step boundaries inside and at the body's end
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert await http._decoded(gzip.compress(body), "gzip", 1 << 20) == body
    assert await http._decoded(zlib.compress(body), "deflate", 1 << 20) == body
    with pytest.raises(VenueDecodeError, match=r"truncated gzip body|corrupt gzip body"):
        await http._decoded(gzip.compress(body)[:-12], "gzip", 1 << 20)
