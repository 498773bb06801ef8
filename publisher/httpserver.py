"""The service's HTTP/1.1 server: h11 speaks the protocol, this module bounds what a client may cost.

h11 parses requests and frames responses (keep-alive, pipelining, HTTP/1.0, `Connection: close`,
HEAD answered with the GET headers and no body), so a keep-alive client never desynchronises. On
top of it this server bounds every resource a client can hold:

- at most `max_connections` open connections; beyond that the server stops accepting and the
  kernel's listen backlog holds newcomers until a connection ends;
- a request head (request line and headers) over `max_head_bytes` gets 431, a declared request
  body over `max_body_bytes` 413, a chunked request body 501 (nothing served here takes a body
  of unknown length);
- an idle keep-alive connection is closed after `idle_timeout_s`; a request must arrive whole
  within `request_timeout_s` of its first byte (slow clients) and its answer must be taken
  within `write_timeout_s` (clients that do not read);
- accept errors (out of file descriptors, EMFILE) pause accepting briefly and are logged at most
  once a minute with how often they happened, never once per attempt (:mod:`publisher.listener`).

A malformed request gets a 4xx and the connection is closed; a handler that raises gets a 500
whose body says nothing about the error. The venue simulators use their own server with fault
features (:mod:`publisher.sim.httpserver`) and share :class:`Request` and :class:`Response`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs

import h11

from publisher.listener import StreamServer

log = logging.getLogger(__name__)

#: request line plus headers; larger heads are refused with 431
MAX_HEAD_BYTES = 16 * 1024
#: the service's endpoints take no request body; a larger declared one is refused with 413
MAX_BODY_BYTES = 16 * 1024
#: scrapers and probes need a handful; the rest of a flood waits in the listen backlog
MAX_CONNECTIONS = 64
#: an idle keep-alive connection is closed after this long (above Prometheus' scrape intervals)
IDLE_TIMEOUT_S = 75.0
#: from a request's first byte to its last
REQUEST_TIMEOUT_S = 10.0
#: for the client to take an answer off the socket
WRITE_TIMEOUT_S = 10.0
#: an error answer is followed by reading (and discarding) what the client still sends for up to
#: this long, so closing with unread data does not reset the connection before the client reads it
LINGER_S = 1.0
_LINGER_MAX_BYTES = 1024 * 1024
_READ_CHUNK = 16 * 1024
_BACKLOG = 512
_VERSIONS = (b"1.0", b"1.1")


@dataclass(slots=True)
class Request:
    """One parsed request, handed to the handler."""

    method: str
    #: URL path without the query string; percent-decoding is NOT applied
    path: str
    #: parsed with `urllib.parse.parse_qs(keep_blank_values=True)`
    query: dict[str, list[str]]
    #: lower-cased names; a repeated header's values are joined with ", "
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    """What a handler answers; the server adds Content-Length, Date and Connection."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """The request cannot be served; answer `status` and close the connection."""

    def __init__(self, status: int, method: bytes):
        super().__init__(status)
        self.status = status
        #: the refused request's method (a refused HEAD is answered without a body too)
        self.method = method


class DateHeader:
    """`Date` header value, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


def _error_response(status: int) -> Response:
    # a fixed body: nothing from the request or from an exception is ever echoed back
    phrase = HTTPStatus(status).phrase.lower()
    return Response(status, f"{phrase}\n".encode("ascii"), "text/plain; charset=utf-8", [("Connection", "close")])


class HttpServer(StreamServer):
    """Serves `handler` on `host:port` (port 0 picks a free port; see :attr:`port` after start)."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
    ):
        super().__init__(host, port, max_connections=max_connections, backlog=_BACKLOG, read_limit=_READ_CHUNK)
        self._conn_settings = _ConnectionSettings(handler, DateHeader(), idle_timeout_s, request_timeout_s,
                                                  write_timeout_s, max_head_bytes, max_body_bytes)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _Connection(self._conn_settings, reader, writer).serve()


@dataclass(frozen=True, slots=True)
class _ConnectionSettings:
    """What every connection of one server shares: the handler and the bounds."""

    handler: Handler
    date: DateHeader
    idle_timeout_s: float
    request_timeout_s: float
    write_timeout_s: float
    max_head_bytes: int
    max_body_bytes: int


class _Connection:
    """One client connection: h11's state machine fed from the socket within the server's bounds."""

    def __init__(self, settings: _ConnectionSettings, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._settings = settings
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=settings.max_head_bytes)
        #: read from the socket, not yet handed to h11 (see :meth:`_feed`)
        self._pending = b""

    async def serve(self) -> None:
        writer = self._writer
        try:
            await self._serve_requests()
        except (ConnectionError, TimeoutError):
            writer.transport.abort()  # gone, idled out or not reading: nothing more to say
            return
        except asyncio.CancelledError:
            # close() ended the connection: end normally, the task is ours and close() awaits it
            writer.transport.abort()
            return
        except Exception:  # never let one connection's surprise reach the event loop
            log.exception("HTTP connection failed")
            writer.transport.abort()
            return
        writer.close()

    async def _serve_requests(self) -> None:
        conn = self._h11
        while True:
            try:
                request = await self._read_request()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, b"")
                return
            except _Refused as refused:
                await self._refuse(refused.status, refused.method)
                return
            if request is None:
                return
            try:
                response = await self._settings.handler(request)
                if not isinstance(response, Response) or not isinstance(response.body, bytes):
                    raise TypeError(f"handler returned {response!r:.100}, not a Response with a bytes body")
            except Exception:
                log.exception("HTTP handler failed on %s %s", request.method, request.path)
                response = _error_response(500)
            await self._send(response, request.method == "HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # Connection: close, HTTP/1.0, or a body we did not read
            conn.start_next_cycle()

    async def _read_request(self) -> Request | None:
        """The next whole request; None when the client closed or idled out between requests."""
        settings, conn = self._settings, self._h11
        loop = asyncio.get_running_loop()
        #: bytes of this request handed to h11 so far (pipelined ones may be buffered already)
        fed = len(conn.trailing_data[0])
        started = fed > 0 or bool(self._pending)
        deadline = loop.time() + (settings.request_timeout_s if started else settings.idle_timeout_s)
        head: h11.Request | None = None
        body_length = 0
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if not self._pending:
                    try:
                        async with asyncio.timeout_at(deadline):
                            data = await self._reader.read(_READ_CHUNK)
                    except TimeoutError:
                        if started:
                            raise  # a slow client: close without a word
                        return None
                    if not data:
                        conn.receive_data(b"")  # the EOF
                        continue
                    if not started:
                        started = True
                        deadline = loop.time() + settings.request_timeout_s
                    self._pending = data
                # while the head is incomplete, at most one byte past the head limit: h11 then sees
                # every oversized head as incomplete and answers 431, even one that arrived whole
                # (h11 bounds only incomplete heads); a body, no further than its end
                fed += self._feed(settings.max_head_bytes + 1 - fed if head is None else body_length - len(body))
            elif isinstance(event, h11.Request):
                head = event
                body_length = self._check_head(event)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _request(head, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _feed(self, limit: int) -> int:
        """Hand up to `limit` (at least one) pending bytes to h11; how many it got."""
        limit = max(1, limit)
        piece, self._pending = self._pending[:limit], self._pending[limit:]
        self._h11.receive_data(piece)
        return len(piece)

    def _check_head(self, head: h11.Request) -> int:
        """The request's body length, or :class:`_Refused` when it cannot be served."""
        if head.http_version not in _VERSIONS:
            raise _Refused(400, head.method)
        length = 0
        for name, value in head.headers:
            if name == b"transfer-encoding":
                raise _Refused(501, head.method)
            if name == b"content-length":
                length = int(value)
                if length > self._settings.max_body_bytes:
                    raise _Refused(413, head.method)
        return length

    async def _send(self, response: Response, head_request: bool) -> None:
        """Write `response`; for a HEAD request (`head_request`) h11 frames the GET headers and
        the body is left out."""
        conn = self._h11
        try:
            head = self._response_head(response)
        except (h11.LocalProtocolError, ValueError):
            # h11 refuses CR/LF inside a header (header injection) and impossible status codes
            log.exception("HTTP handler produced an invalid response")
            response = _error_response(500)
            head = self._response_head(response)
        data = conn.send(head) or b""
        if response.body and not head_request:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        self._writer.write(data)
        async with asyncio.timeout(self._settings.write_timeout_s):
            await self._writer.drain()

    def _response_head(self, response: Response) -> h11.Response:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        return h11.Response(
            status_code=response.status,
            reason=reason,
            headers=[
                ("Date", self._settings.date.get()),
                ("Content-Type", response.content_type),
                ("Content-Length", str(len(response.body))),
                *response.headers,
            ],
        )

    async def _refuse(self, status: int, method: bytes) -> None:
        """Answer `status` if the protocol state still allows an answer, then close gracefully."""
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send(_error_response(status), method == b"HEAD")
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.write_eof()
        # what the client still sends (the body we refused) is read and dropped for a moment:
        # closing with unread data would reset the connection and could destroy our answer
        discarded = 0
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(LINGER_S):
                while discarded < _LINGER_MAX_BYTES and (chunk := await self._reader.read(_READ_CHUNK)):
                    discarded += len(chunk)


def _request(head: h11.Request, body: bytes) -> Request:
    headers: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    path, _, query = head.target.decode("ascii").partition("?")
    return Request(head.method.decode("ascii"), path, parse_qs(query, keep_blank_values=True), headers, body)
