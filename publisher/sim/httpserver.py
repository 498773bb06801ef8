"""The venue simulators' HTTP/1.1 server: hand-written on stdlib streams, with fault features.

The simulators need what a well-behaved server library refuses to do: a handler can drop the
connection without an answer or reset it (:class:`DropConnection`), or stall before answering, to
exercise a client's transport error handling. It stays cheap with a thousand idle keep-alive
connections (one small task each, no thread) and never falls over on what a broken client sends:
a malformed request gets a 400 and the connection is closed; a handler that raises gets a 500
whose body says nothing about the error. The service's own endpoints use
:mod:`publisher.httpserver` (h11) instead; both share its :class:`Request` and :class:`Response`.

Supported: keep-alive (the HTTP/1.1 default, `Connection: close` honoured, HTTP/1.0 closes unless
it asks for keep-alive), pipelined requests (answered in order), `Content-Length` request bodies.
Not supported: chunked request bodies (501), `Expect: 100-continue`, HEAD semantics, TLS.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from http import HTTPStatus
from urllib.parse import parse_qs

from publisher.httpserver import DateHeader, Handler, Request, Response
from publisher.listener import StreamServer

__all__ = ["DropConnection", "Handler", "HttpServer", "Request", "Response"]

log = logging.getLogger(__name__)

#: request line plus headers; larger heads are refused (400) rather than buffered
MAX_HEAD_BYTES = 16 * 1024
#: request bodies are small JSON documents (simulator control); anything larger is refused (413)
MAX_BODY_BYTES = 1024 * 1024
#: an idle keep-alive connection (or one trickling a request head) is closed after this long
IDLE_TIMEOUT_S = 75.0

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TARGET = re.compile(rb"^/[\x21-\x7e]*$")
_VERSIONS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}


class DropConnection(Exception):
    """Raise from a handler to close the socket without answering.

    With `reset=True` the socket is closed with SO_LINGER 0, so the peer sees a TCP RST instead of
    an orderly FIN (simulators use both to exercise a client's transport error handling).
    """

    def __init__(self, reset: bool = False):
        super().__init__("connection dropped" + (" (reset)" if reset else ""))
        self.reset = reset


class _Refused(Exception):
    """The request cannot be served; answer `status` and close the connection."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _error_response(status: int) -> Response:
    # a fixed body: nothing from the request or from an exception is ever echoed back
    phrase = HTTPStatus(status).phrase.lower()
    return Response(status, b'{"error": "%s"}' % phrase.encode("ascii"))


class HttpServer(StreamServer):
    """Serves `handler` on `host:port` (port 0 picks a free port; see :attr:`port` after start)."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
    ):
        # no connection limit: benchmarks hold a thousand keep-alive connections, and open them at
        # once (a short backlog would turn that into SYN retries and one-second stalls)
        super().__init__(host, port, max_connections=None, backlog=4096, read_limit=MAX_HEAD_BYTES)
        self._handler = handler
        self._idle_timeout_s = idle_timeout_s
        self._max_body_bytes = max_body_bytes
        self._date = DateHeader()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_requests(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the peer went away or idled out: nothing to answer
        except asyncio.CancelledError:
            pass  # close() ended the connection: end normally, close() awaits the task
        except Exception:  # never let one connection's surprise reach the event loop
            log.exception("HTTP connection failed")
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _serve_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout_s):
                    parsed = await self._read_request(reader)
            except _Refused as refused:
                await self._write(writer, _error_response(refused.status), keep_alive=False)
                return
            if parsed is None:
                return
            request, keep_alive = parsed
            try:
                response = await self._handler(request)
                if not isinstance(response, Response) or not isinstance(response.body, bytes):
                    raise TypeError(f"handler returned {response!r:.100}, not a Response with a bytes body")
            except DropConnection as drop:
                _abort(writer, reset=drop.reset)
                return
            except Exception:
                log.exception("HTTP handler failed on %s %s", request.method, request.path)
                response = _error_response(500)
            await self._write(writer, response, keep_alive)
            if not keep_alive:
                return

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[Request, bool] | None:
        """The next request and whether the connection stays open after it; None on a clean EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Refused(400) from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _Refused(400) from None  # half a request then EOF: answer if still writable
            return None
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]) or parts[2] not in _VERSIONS:
            raise _Refused(400)
        method, target, version = parts[0].decode("ascii"), parts[1].decode("ascii"), _VERSIONS[parts[2]]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):  # also refuses obsolete line folding
                raise _Refused(400)
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if "transfer-encoding" in headers:
            raise _Refused(501)
        body = b""
        length_text = headers.get("content-length")
        if length_text is not None:
            if not length_text.isdigit() or not length_text.isascii():
                raise _Refused(400)
            length = int(length_text)
            if length > self._max_body_bytes:
                raise _Refused(413)
            body = await reader.readexactly(length)
        path, _, query = target.partition("?")
        tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        keep_alive = "close" not in tokens if version == (1, 1) else "keep-alive" in tokens
        request = Request(method, path, parse_qs(query, keep_blank_values=True), headers, body)
        return request, keep_alive

    async def _write(self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
        try:
            head = self._render_head(response, keep_alive)
        except ValueError:
            log.exception("HTTP handler produced an invalid response")
            response = _error_response(500)
            head = self._render_head(response, keep_alive)
        writer.write(head + response.body)
        await writer.drain()

    def _render_head(self, response: Response, keep_alive: bool) -> bytes:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            if not 100 <= response.status <= 999:
                raise
            phrase = ""
        for text in (response.content_type, *(part for header in response.headers for part in header)):
            if "\r" in text or "\n" in text:
                raise ValueError("CR or LF inside a response header")  # would allow header injection
        lines = [
            f"HTTP/1.1 {response.status} {phrase}",
            f"Date: {self._date.get()}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _abort(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # linger on with a zero timeout: close() discards the connection with an RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()
