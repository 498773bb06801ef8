"""The HTTP layer shared by venue adapters: rate limit, timeouts, error mapping, request counting.

Adapters call :meth:`VenueClient.get` and get the body bytes of a 2xx response, or a
:class:`~publisher.venues.base.VenueError` whose `reason` is one of the contract's error reasons.
Authentication is an :class:`httpx.Auth` the adapter passes to the client, as httpx intends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import msgspec

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
    """A small client over :class:`httpx.AsyncClient` for one source.

    `on_request` is called once per HTTP request sent (the poll loop counts them in metrics).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        auth: httpx.Auth,
        limiter: RateLimiter,
        describe_error: ErrorDescriber,
        on_request: Callable[[], None] = lambda: None,
    ):
        self._http = http
        self._auth = auth
        self._limiter = limiter
        self._describe = describe_error
        self._on_request = on_request

    @classmethod
    def for_source(
        cls,
        http: httpx.AsyncClient,
        source: SourceConfig,
        *,
        auth: httpx.Auth,
        describe_error: ErrorDescriber,
        on_request: Callable[[], None] = lambda: None,
    ) -> VenueClient:
        """The client of one configured source, paced at its `max_requests_per_s`."""
        return cls(
            http,
            auth=auth,
            limiter=RateLimiter(source.max_requests_per_s),
            describe_error=describe_error,
            on_request=on_request,
        )

    async def get(self, url: str, params: Mapping[str, Any] | None = None) -> bytes:
        """GET `url` (absolute, or relative to the client's base URL); body of a 2xx answer."""
        await self._limiter.acquire()
        self._on_request()
        try:
            response = await self._http.get(url, params=params, auth=self._auth)
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
