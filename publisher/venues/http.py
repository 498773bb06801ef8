"""The HTTP layer shared by venue adapters: rate limit, timeouts, error mapping, request counting.

Adapters call :meth:`VenueClient.get` and get the body bytes of a 2xx response, or a
:class:`~publisher.venues.base.VenueError` whose `reason` is one of the contract's error reasons.
Authentication is an :class:`httpx.Auth` the adapter passes to the client, as httpx intends.

:class:`VenueClient` is a small client straight over an :class:`httpx.AsyncBaseTransport` (the
source's connection pool, :class:`~publisher.venues.transport.SourceTransport`, in production,
:class:`httpx.MockTransport` in unit tests). It does not go through
:class:`httpx.AsyncClient`: a poller needs none of its redirects, cookies, URL merging and hooks,
and they cost ~400 us of CPU per request here, as much as the transport itself; with a thousand
sources polling every second that is 40% of a core.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import msgspec

from publisher import __version__
from publisher.venues.base import SourceConfig, VenueError

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
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for APIs, and exponential backoff still applies


class VenueClient:
    """A small client over an :class:`httpx.AsyncBaseTransport` for one source.

    Requests go to `base_url` joined with a path (a leading slash is ignored, so a base URL's own
    path is kept, as with httpx's `base_url`), with `timeout_s` for each phase (connect, read,
    write, pool). `on_request` is called once per HTTP request sent (the poll loop counts them).
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
    ):
        self._transport = transport
        self._base_url = base_url.rstrip("/") + "/"
        self._auth = auth
        self._limiter = limiter
        self._describe = describe_error
        self._on_request = on_request
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
        """The client of one configured source: its base URL and timeout, paced at its
        `max_requests_per_s`."""
        return cls(
            transport,
            source.base_url,
            auth=auth,
            limiter=RateLimiter(source.max_requests_per_s),
            describe_error=describe_error,
            on_request=on_request,
            timeout_s=source.timeout_s,
        )

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> bytes:
        """GET `path` under the base URL; the body of a 2xx answer, else :class:`VenueError`."""
        await self._limiter.acquire()
        self._on_request()
        url = self._base_url + path.lstrip("/")
        if params:
            # encoded as httpx encodes `params=` for strings and ints, without its URL merging
            # (~40 us a request)
            url += "?" + urllib.parse.urlencode(params)
        request = httpx.Request("GET", url, headers=_HEADERS, extensions=self._extensions)
        try:
            response = await self._send(request)
        except httpx.TimeoutException as exc:
            raise VenueError("timeout", f"request timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            # refused, reset, dropped mid-response: the venue could not be reached properly
            raise VenueError("connect", f"connection failed ({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            return response.content
        detail = self._describe(status, response.content)
        if status in (401, 403):
            raise VenueError("auth", f"HTTP {status}: {detail}")
        if status == 429:
            raise VenueError("http_429", f"HTTP 429: {detail}", retry_after_s=_retry_after(response.headers))
        if status >= 500:
            raise VenueError("http_5xx", f"HTTP {status}: {detail}", retry_after_s=_retry_after(response.headers))
        raise VenueError("http_4xx", f"HTTP {status}: {detail}")

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send through the auth flow (as `AsyncClient` does: each request the flow yields is
        sent, its response handed back) and read the final response whole."""
        flow = self._auth.auth_flow(request)
        request = next(flow)
        while True:
            response = await self._transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
            try:
                request = flow.send(response)
            except StopIteration:
                return response


#: what httpx.AsyncClient sent by default, plus who we are
_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "user-agent": f"fill-publisher/{__version__}",
}
