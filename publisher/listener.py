"""A TCP server's listening side: bind, accept within a connection limit, survive running out of
file descriptors without flooding the log, close every connection on shutdown.

Our own accept loop rather than asyncio's `start_server`: on EMFILE (and ENFILE, ENOBUFS, ENOMEM)
asyncio logs a traceback per failed attempt and keeps trying up to `backlog` times per event loop
turn, each scheduling another retry, which wrote hundreds of thousands of log lines in seconds.
Here an accept error pauses accepting for `ACCEPT_RETRY_S` and is logged at most once per
`ACCEPT_ERROR_LOG_INTERVAL_S` with how often it happened since.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import socket
import time
from typing import Self

log = logging.getLogger(__name__)

#: accepting is paused this long after an accept error (EMFILE and the like)
ACCEPT_RETRY_S = 0.5
#: a recurring accept error, or the connection limit, is logged at most once per this interval
ACCEPT_ERROR_LOG_INTERVAL_S = 60.0


class ThrottledLog:
    """A recurring condition, logged at most once per interval with how often it happened since."""

    def __init__(self, message: str, interval_s: float):
        self._message = message
        self._interval_s = interval_s
        self._last = -float("inf")
        self._count = 0

    def note(self, detail: object) -> None:
        """One more occurrence; logs it if the last line is `interval_s` old."""
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            if self._count == 1:
                log.warning("%s (%s); logged at most every %gs", self._message, detail, self._interval_s)
            else:
                log.warning("%s (%s); %d times since the last such line, logged at most every %gs",
                            self._message, detail, self._count, self._interval_s)
            self._last = now
            self._count = 0


def dial_url(host: str, port: int) -> str:
    """`http://host:port` for a server bound to `host`, a wildcard host shown as 127.0.0.1."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class StreamServer(abc.ABC):
    """Accepts connections on `host:port` (port 0 picks a free port; see :attr:`port` after start)
    and runs :meth:`serve_connection` for each in a task of its own.

    With `max_connections`, accepting pauses while that many are open: newcomers wait in the
    kernel's listen backlog until one ends (logged at most once per interval).
    """

    def __init__(self, host: str, port: int, *, max_connections: int | None, backlog: int, read_limit: int):
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections) if max_connections is not None else None
        self._backlog = backlog
        self._read_limit = read_limit
        self._listeners: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._accept_errors = ThrottledLog("accepting an HTTP connection failed, pausing accepts",
                                           ACCEPT_ERROR_LOG_INTERVAL_S)
        self._at_limit = ThrottledLog("HTTP connection limit reached, new connections wait",
                                      ACCEPT_ERROR_LOG_INTERVAL_S)

    @abc.abstractmethod
    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until it ends; must not raise (a cancellation ends it at close)."""

    async def start(self) -> None:
        """Bind every address `host` resolves to and start accepting connections."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self._host or None, self._port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                listener = socket.socket(family, kind, proto)
                self._listeners.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self._port == 0 and len(self._listeners) > 1:
                    # every address on the one ephemeral port the first bind picked
                    address = (address[0], self._listeners[0].getsockname()[1], *address[2:])
                listener.bind(address)
                listener.listen(self._backlog)
                listener.setblocking(False)
        except OSError:
            for listener in self._listeners:
                listener.close()
            self._listeners = []
            raise
        self._port = self._listeners[0].getsockname()[1]
        self._acceptors = [asyncio.create_task(self._accept(listener), name="http-accept")
                           for listener in self._listeners]

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when constructed with port 0)."""
        if not self._listeners:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """`http://host:port`, with a wildcard host shown as 127.0.0.1 so it can be dialled."""
        return dial_url(self._host, self.port)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    async def close(self) -> None:
        """Stop accepting and close every open connection (in-flight handlers are cancelled)."""
        if not self._listeners:
            return
        tasks = [*self._acceptors, *self._connections]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        self._acceptors = []

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        slots = self._slots
        while True:
            if slots is not None:
                if slots.locked():
                    self._at_limit.note(f"{self._max_connections} open")
                await slots.acquire()
            try:
                sock, _ = await loop.sock_accept(listener)
            except BaseException as exc:
                if slots is not None:
                    slots.release()
                if isinstance(exc, ConnectionAbortedError):
                    continue  # the client gave up while waiting in the backlog
                if not isinstance(exc, OSError):
                    raise
                self._accept_errors.note(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            task = asyncio.create_task(self._serve_socket(sock), name="http-connection")
            self._connections.add(task)
            task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        if self._slots is not None:
            self._slots.release()

    async def _serve_socket(self, sock: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=self._read_limit)
        except OSError:
            sock.close()
            return
        await self.serve_connection(reader, writer)
