"""The HTTP layer shared by venue adapters: rate limit, timeouts, error mapping, request counting.

Adapters call :meth:`VenueClient.get` and get the body bytes of a 2xx response, or a
:class:`~publisher.venues.errors.VenueError` whose `reason` is one of the contract's error reasons.
Authentication is an :class:`httpx.Auth` the adapter passes to the client, as httpx intends.

:class:`VenueClient` is a small client straight over an :class:`httpx.AsyncBaseTransport` (the
source's connection pool, :class:`~publisher.venues.transport.SourceTransport`, in production,
:class:`httpx.MockTransport` in unit tests). It does not go through
:class:`httpx.AsyncClient`: a poller needs none of its redirects, cookies, URL merging and hooks,
and they cost as much CPU per request as the transport itself, which at a thousand sources polling
every second is a large share of a core (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import math
import re
import socket
import ssl
import time
import urllib.parse
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import msgspec

from publisher import __version__
from publisher.logs import redact
from publisher.venues.base import RESPONSE_BYTES_PER_FILL, RESPONSE_ENVELOPE_BYTES, SourceConfig
from publisher.venues.errors import ErrorReason, ResponseTooLarge, VenueDecodeError, VenueError

#: turns an error response into a short, secret-free description (venue error code and message)
ErrorDescriber = Callable[[int, bytes], str]


def _first_text(doc: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = doc.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def describe_json_error(
    body: bytes,
    *,
    code_keys: tuple[str, ...],
    message_keys: tuple[str, ...],
    nested: str | None = None,
    limit: int = 200,
) -> str:
    """`code: message` from a JSON error body, for :data:`ErrorDescriber` implementations.

    The first present key of `code_keys` and of `message_keys` is used; `nested` names a key whose
    object value holds them instead (e.g. `{"error": {"code": ..}}`). Only those venue-chosen texts
    are shown, never the raw body (a proxy could echo request headers, signatures included), and the
    result is cut to `limit` characters with control characters replaced.
    """
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return f"non-JSON error body ({len(body)} bytes)"
    if not isinstance(doc, dict):
        return "error body is not a JSON object"
    if nested is not None and isinstance(doc.get(nested), dict):
        doc = doc[nested]
    code = _first_text(doc, code_keys)
    message = _first_text(doc, message_keys)
    if code is not None and message is not None and code != message:
        text = f"{code}: {message}"
    else:
        text = code or message or "no error code or message"
    # redacted before it is cut: a venue echoing our headers would otherwise show the first part
    # of a key or signature cut in two, which no longer matches the whole value
    text = redact(text, _request_secrets.get())
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: the credentials of the request whose error body is being described (see VenueClient._error)
_request_secrets: contextvars.ContextVar[Sequence[str]] = contextvars.ContextVar("request_secrets", default=())


class RateLimiter:
    """Token bucket: `rate` requests per second with a burst of `burst` requests.

    Venues meter reads with token buckets too (Kalshi: bursts of up to 2 s of budget), so a steady
    pace with a small burst keeps us inside their budget without idling between pages.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._burst = max(1.0, burst if burst is not None else rate)
        self._tokens = self._burst
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until a request may be sent."""
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self._rate)


#: the longest Retry-After honoured: beyond it a venue's answer is a bug (`Retry-After: 1e12`), and
#: parking the source for longer than the slow auth backoff's cap helps no one
MAX_RETRY_AFTER_S = 300.0


def _retry_after(headers: httpx.Headers) -> tuple[float | None, str]:
    """A venue's Retry-After in seconds (delta seconds or an HTTP date), capped at
    :data:`MAX_RETRY_AFTER_S`, and a note for the log when it was capped or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None, ""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None, "; unreadable Retry-After ignored"
    if math.isnan(seconds):
        return None, "; unreadable Retry-After ignored"
    if seconds > MAX_RETRY_AFTER_S:
        return MAX_RETRY_AFTER_S, f"; Retry-After {value[:40]!r} capped at {MAX_RETRY_AFTER_S:g}s"
    return max(0.0, seconds), ""


#: the most of an error answer read (its description needs a few hundred bytes)
MAX_ERROR_BODY_BYTES = 65536
#: decompressed output per step: between steps the event loop runs other sources
INFLATE_STEP_BYTES = 1 << 20
#: httpx's exceptions and the reasons they count as, the most specific first (the one table)
_TRANSPORT_REASONS: tuple[tuple[type[Exception], ErrorReason], ...] = (
    (httpx.TimeoutException, "timeout"),
    (httpx.DecodingError, "decode"),
    (httpx.TransportError, "connect"),  # refused, reset, DNS, TLS, proxy, dropped mid-answer
)


class VenueClient:
    """A small client over an :class:`httpx.AsyncBaseTransport` for one source.

    Requests go to `base_url` joined with a path (a leading slash is ignored, so a base URL's own
    path is kept, as with httpx's `base_url`). `timeout_s` bounds the whole request, from the
    first byte sent to the last one read (a venue dripping its answer a byte at a time times out
    like a silent one), and each of its steps. An answer is read up to `max_response_bytes`,
    compressed and again decompressed, so no venue can make us hold more (an endless body, a
    gzip bomb). `on_request` is called once per HTTP request sent (the poll loop counts them).
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        *,
        auth: httpx.Auth,
        limiter: RateLimiter,
        describe_error: ErrorDescriber,
        on_request: Callable[[], None] = lambda: None,
        timeout_s: float = 10.0,
        max_response_bytes: int = 200 * RESPONSE_BYTES_PER_FILL + RESPONSE_ENVELOPE_BYTES,
    ):
        self._transport = transport
        self._base_url = base_url.rstrip("/") + "/"
        self._auth = auth
        self._limiter = limiter
        self._describe = describe_error
        self._on_request = on_request
        self._timeout_s = timeout_s
        self._max_bytes = max_response_bytes
        self._extensions = {"timeout": httpx.Timeout(timeout_s).as_dict()}

    @classmethod
    def for_source(
        cls,
        transport: httpx.AsyncBaseTransport,
        source: SourceConfig,
        *,
        auth: httpx.Auth,
        describe_error: ErrorDescriber,
        on_request: Callable[[], None] = lambda: None,
    ) -> VenueClient:
        """The client of one configured source: its base URL, timeout and response limit, paced
        at its `max_requests_per_s`."""
        return cls(
            transport,
            source.base_url,
            auth=auth,
            limiter=RateLimiter(source.max_requests_per_s),
            describe_error=describe_error,
            on_request=on_request,
            timeout_s=source.timeout_s,
            max_response_bytes=source.response_limit,
        )

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> bytes:
        """GET `path` under the base URL; the body of a 2xx answer, else :class:`VenueError`."""
        await self._limiter.acquire()
        self._on_request()
        url = self._base_url + path.lstrip("/")
        if params:
            # encoded as httpx encodes `params=` for strings and ints, without its URL merging
            # (a measurable part of a request's CPU)
            url += "?" + urllib.parse.urlencode(params)
        request = httpx.Request("GET", url, headers=_HEADERS, extensions=self._extensions)
        try:
            async with asyncio.timeout(self._timeout_s):
                request, response, body = await self._send(request)
        except TimeoutError:
            raise VenueError("timeout", f"no whole answer within timeout_s ({self._timeout_s:g}s)") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _transport_error(exc, request.url) from None
        status = response.status_code
        if 200 <= status < 300:
            return body
        raise self._error(request, response, body)

    def _error(self, request: httpx.Request, response: httpx.Response, body: bytes) -> VenueError:
        """The VenueError for a non-2xx answer; its text never holds the request's credentials."""
        status = response.status_code
        # whatever the auth flow added to the request (a key, a signature) is a secret here: a
        # venue or proxy may echo the request's headers in its error body
        secrets = [value for name, value in request.headers.items() if _HEADERS.get(name, value) != value
                   or (name not in _HEADERS and name != "host")]
        token = _request_secrets.set(secrets)
        try:
            detail = redact(self._describe(status, body), secrets)
        finally:
            _request_secrets.reset(token)
        if status in (401, 403):
            return VenueError("auth", f"HTTP {status}: {detail}")
        if status == 429 or status >= 500:
            retry_after, note = _retry_after(response.headers)
            reason: ErrorReason = "http_429" if status == 429 else "http_5xx"
            return VenueError(reason, f"HTTP {status}: {detail}{note}", retry_after_s=retry_after)
        if status >= 400:
            return VenueError("http_4xx", f"HTTP {status}: {detail}")
        # 1xx/3xx: redirects are not followed (a poller's base URL names the API itself)
        where = _location(response.headers.get("location"))
        return VenueDecodeError(f"HTTP {status}{where}: not a page of fills (redirects are not followed; "
                                "check base_url)")

    async def _send(self, request: httpx.Request) -> tuple[httpx.Request, httpx.Response, bytes]:
        """Send through the auth flow (as `AsyncClient` does: each request the flow yields is
        sent, its response handed back) and read the final response whole, within the limits;
        the last request sent, its response and the body."""
        flow = self._auth.auth_flow(request)
        request = next(flow)
        while True:
            response = await self._transport.handle_async_request(request)
            body = await self._read(response)
            if self._auth.requires_response_body:
                # an auth flow that reads bodies gets the decoded one (none of ours does)
                response = httpx.Response(response.status_code, headers=_plain(response.headers), content=body,
                                          request=request)
            try:
                request = flow.send(response)
            except StopIteration:
                return request, response, body

    async def _read(self, response: httpx.Response) -> bytes:
        """The decoded body, at most `max_response_bytes` (an error answer: far less)."""
        status = response.status_code
        limit = self._max_bytes if 200 <= status < 300 else min(self._max_bytes, MAX_ERROR_BODY_BYTES)
        try:
            content = response.content  # a response built from bytes (e.g. httpx.MockTransport)
        except httpx.ResponseNotRead:
            pass
        else:
            if len(content) > limit:
                raise _too_large(status, limit)
            return content
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.stream:  # type: ignore[union-attr]  # transports give async streams
                size += len(chunk)
                if size > limit:
                    raise _too_large(status, limit)
                chunks.append(chunk)
        finally:
            await response.aclose()
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = response.headers.get("content-encoding")
        if encoding is None or not raw:
            return raw
        try:
            return await _decoded(raw, encoding, limit)
        except ResponseTooLarge:
            raise _too_large(status, limit, decoded=True) from None


def _too_large(status: int, limit: int, *, decoded: bool = False) -> ResponseTooLarge:
    what = "decompressed " if decoded else ""
    return ResponseTooLarge(f"HTTP {status}: the {what}answer exceeds {limit} bytes (max_response_bytes)")


async def _decoded(raw: bytes, encoding: str, limit: int) -> bytes:
    """`raw` with its content codings undone, at most `limit` bytes, inflating a step at a time."""
    data = raw
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding in ("gzip", "x-gzip"):
            data = await _inflate(data, zlib.MAX_WBITS | 16, limit, "gzip")
        elif coding == "deflate":
            # zlib-wrapped as the standard says, or raw deflate as some servers send it (as httpx)
            try:
                data = await _inflate(data, zlib.MAX_WBITS, limit, "deflate")
            except VenueDecodeError as exc:
                if isinstance(exc, ResponseTooLarge):
                    raise
                data = await _inflate(data, -zlib.MAX_WBITS, limit, "deflate")
        elif coding != "identity":
            raise VenueDecodeError(f"the answer's content-encoding {coding[:40]!r} was not asked for")
    return data


async def _inflate(data: bytes, wbits: int, limit: int, name: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    pending = data
    try:
        while not inflater.eof:
            want = min(INFLATE_STEP_BYTES, limit + 1 - size)
            part = inflater.decompress(pending, want)
            size += len(part)
            if size > limit:
                raise ResponseTooLarge(f"the decompressed answer exceeds {limit} bytes")
            parts.append(part)
            pending = inflater.unconsumed_tail
            if not pending and len(part) < want:
                break  # every input byte used and no output held back: truncated unless at eof
            await asyncio.sleep(0)  # a big answer: let the other sources run between steps
    except zlib.error as exc:
        raise VenueDecodeError(f"corrupt {name} body ({exc})") from None
    if not inflater.eof:
        raise VenueDecodeError(f"truncated {name} body")
    return b"".join(parts)


def _plain(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    # the headers of a decoded body: no content coding, no length of the coded one
    return [(k, v) for k, v in headers.raw if k.lower() not in (b"content-encoding", b"content-length")]


def _location(value: str | None) -> str:
    if not value:
        return ""
    # scheme, host and path only: a query or user part may carry a token
    parts = urllib.parse.urlsplit(value)
    shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}" if parts.scheme else parts.path
    return f" to {shown[:120]!r}"


def _transport_error(exc: Exception, url: httpx.URL) -> VenueError:
    """The VenueError for an exception of the transport, reason from :data:`_TRANSPORT_REASONS`,
    message naming the cause (DNS, refused, TLS verification, ...) without credentials."""
    reason: ErrorReason = next((r for cls, r in _TRANSPORT_REASONS if isinstance(exc, cls)), "connect")
    cause = _cause(exc, url)
    if reason == "timeout":
        return VenueError("timeout", f"request timed out ({cause})")
    if reason == "decode":
        return VenueDecodeError(f"unreadable answer ({cause})")
    return VenueError("connect", f"connection failed ({cause})")


_CREDENTIALS_IN_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def _cause(exc: BaseException, url: httpx.URL) -> str:
    """What an exception chain says went wrong, in words, for the log."""
    where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            text = f"DNS lookup of {url.host} failed: {current.strerror or current}"
            break
        if isinstance(current, ssl.SSLCertVerificationError):
            text = f"TLS certificate of {where} not trusted: {current.verify_message or current.reason}"
            break
        if isinstance(current, ssl.SSLError):
            text = f"TLS handshake with {where} failed: {current.reason or current}"
            break
        if isinstance(current, ConnectionRefusedError):
            text = f"{where} refused the connection"
            break
        if isinstance(current, ConnectionResetError):
            text = f"{where} reset the connection"
            break
        if isinstance(current, httpx.ProxyError):
            text = f"the proxy failed: {current}"
            break
        current = current.__cause__ or current.__context__
    # a proxy's or URL's credentials never reach the log
    return redact(_CREDENTIALS_IN_URL.sub(r"\1***@", text))[:300]


#: what httpx.AsyncClient sent by default, plus who we are
_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "user-agent": f"fill-publisher/{__version__}",
}
