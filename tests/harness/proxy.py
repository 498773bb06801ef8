"""A fault-injecting TCP proxy in front of a whole Kafka cluster, for outages with data intact.

Killing the embedded broker loses its data, so an outage that must end with the data still there
has to happen on the network. A plain port-forward in front of the bootstrap address is not
enough: clients learn every broker's advertised address from Metadata responses (and the group
and transaction coordinators' from FindCoordinator responses) and then connect there directly.

So this proxy listens once per upstream broker and rewrites the host/port of every broker in
Metadata responses and of the coordinator in FindCoordinator responses to its own listeners.
Kafka's framing is parsed (4-byte size, then the request header's api_key, api_version and
correlation id); for each connection the proxy remembers which correlation ids were Metadata or
FindCoordinator requests and decodes exactly those responses with aiokafka's protocol classes.
Every other byte passes through untouched. A broker that appears later in Metadata gets its own
listener on the fly.

Limits: PLAINTEXT only (no TLS or SASL framing), and only the request versions aiokafka itself
sends (Metadata v0-v5, FindCoordinator v0-v1, all non-flexible). A response of another version is
passed through unchanged and counted in `unrewritten` (a client using it would bypass the proxy,
so tests assert that stays empty).

The proxy runs its own asyncio loop in a daemon thread, not in the test's loop: it must keep
forwarding while a test blocks its loop or uses sync code, and its controls (`cut`, `stall`,
`slow`, `restore`) are plain blocking calls that are safe from sync and async tests alike.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from aiokafka.protocol import coordination, metadata
from aiokafka.protocol.api import Response
from aiokafka.protocol.metadata import MetadataRequest_v1, MetadataResponse_v1

__all__ = ["KafkaProxy"]

_METADATA = 3
_FIND_COORDINATOR = 10
_SIZE = struct.Struct(">i")
_REQ_HEADER = struct.Struct(">hhi")  # api_key, api_version, correlation_id
_CORR = struct.Struct(">i")
_MAX_FRAME = 256 * 1024 * 1024  # larger sizes mean we lost the framing, not a real request

T = TypeVar("T")


def _response_classes() -> dict[tuple[int, int], type[Response]]:
    """(api_key, api_version) -> aiokafka response class, for the APIs we rewrite."""
    table: dict[tuple[int, int], type[Response]] = {}
    for module in (metadata, coordination):
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, Response) and obj is not Response
                    and isinstance(getattr(obj, "API_KEY", None), int)
                    and obj.API_KEY in (_METADATA, _FIND_COORDINATOR)):
                table[(obj.API_KEY, obj.API_VERSION)] = obj
    return table


_RESPONSES = _response_classes()


@dataclass(eq=False)  # identity hashing: connections live in a set
class _Conn:
    """One proxied client connection and its upstream."""

    client_w: asyncio.StreamWriter
    upstream_w: asyncio.StreamWriter | None = None
    # correlation id -> (api_key, api_version) of requests whose responses we rewrite
    pending: dict[int, tuple[int, int]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class KafkaProxy:
    """Fronts every broker of a cluster; `bootstrap_servers` is the proxied bootstrap.

    States: flowing (default), `cut()` (every connection closed with a reset, new ones reset on
    accept: clients see connection errors), `stall()` (connections accepted and kept, no byte
    forwarded in either direction: clients see request timeouts), `slow(delay_s)` (each frame
    delayed), `restore()` (flowing again; stalled bytes are then delivered in order).
    """

    def __init__(self, upstream_bootstrap: str, host: str = "127.0.0.1"):
        self._upstream_bootstrap = upstream_bootstrap
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kafka-proxy",
                                        daemon=True)
        # upstream (host, port) -> our listening port; guarded by running on the proxy loop only
        self._ports: dict[tuple[str, int], int] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._listen_lock: asyncio.Lock | None = None  # created on the proxy loop
        self._conns: set[_Conn] = set()
        self._cut = False
        self._flowing: asyncio.Event | None = None
        self._delay_s = 0.0
        self._bootstrap: str | None = None
        self.unrewritten: list[tuple[int, int]] = []  # (api_key, api_version) passed through
        self.connections_accepted = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> KafkaProxy:
        """Discover the upstream brokers and listen for each; blocks until ready."""
        self._thread.start()
        self._bootstrap = self._call(self._start())
        return self

    def close(self) -> None:
        """Stop listening, drop every connection and end the proxy thread."""
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> KafkaProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def bootstrap_servers(self) -> str:
        """The proxied bootstrap string: one proxy listener per upstream broker."""
        assert self._bootstrap is not None, "start() the proxy first"
        return self._bootstrap

    # -- controls --------------------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every connection and every new one until `restore()`."""
        self._call(self._set(cut=True))

    def stall(self) -> None:
        """Keep connections open (and accept new ones) but forward nothing until `restore()`."""
        self._call(self._set(flowing=False))

    def slow(self, delay_s: float) -> None:
        """Delay every forwarded frame, in both directions, by `delay_s`."""
        self._call(self._set(delay_s=delay_s))

    def restore(self) -> None:
        """Back to normal forwarding; bytes held by `stall()` go through in order."""
        self._call(self._set(cut=False, flowing=True, delay_s=0.0))

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- internals -------------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _set(self, *, cut: bool | None = None, flowing: bool | None = None,
                   delay_s: float | None = None) -> None:
        assert self._flowing is not None
        if delay_s is not None:
            self._delay_s = delay_s
        if flowing is not None:
            if flowing:
                self._flowing.set()
            else:
                self._flowing.clear()
        if cut is not None:
            self._cut = cut
            if cut:
                for conn in list(self._conns):
                    self._drop(conn, reset=True)

    async def _start(self) -> str:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._listen_lock = asyncio.Lock()
        brokers = await self._discover()
        ports = [await self._listener_for(h, p) for h, p in brokers]
        return ",".join(f"{self._host}:{port}" for port in ports)

    async def _discover(self) -> list[tuple[str, int]]:
        """The advertised (host, port) of every upstream broker, via one Metadata v1 request."""
        last: Exception | None = None
        for hostport in self._upstream_bootstrap.split(","):
            host, _, port = hostport.strip().rpartition(":")
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError as e:
                last = e
                continue
            try:
                req = MetadataRequest_v1([])
                body = req.build_request_header(1, "kafka-proxy").encode() + req.encode()
                writer.write(_SIZE.pack(len(body)) + body)
                (size,) = _SIZE.unpack(await reader.readexactly(4))
                resp = MetadataResponse_v1.decode((await reader.readexactly(size))[4:])
                return [(h, p) for _node, h, p, _rack in resp.brokers]
            finally:
                writer.close()
        raise ConnectionError(f"no upstream broker reachable at {self._upstream_bootstrap}: {last}")

    async def _listener_for(self, host: str, port: int) -> int:
        """Our port for an upstream broker, starting a listener the first time."""
        key = (host, port)
        assert self._listen_lock is not None
        # Two responses naming the same new broker may be rewritten concurrently.
        async with self._listen_lock:
            if key not in self._ports:
                server = await asyncio.start_server(
                    lambda r, w: self._accept(r, w, key), self._host, 0)
                self._servers.append(server)
                self._ports[key] = server.sockets[0].getsockname()[1]
        return self._ports[key]

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            self._drop(conn, reset=False)
        for server in self._servers:
            await server.wait_closed()

    def _drop(self, conn: _Conn, *, reset: bool) -> None:
        self._conns.discard(conn)
        for task in conn.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for w in (conn.client_w, conn.upstream_w):
            if w is None:
                continue
            if reset:
                _abort(w)
            else:
                w.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                      upstream: tuple[str, int]) -> None:
        self.connections_accepted += 1
        conn = _Conn(client_w)
        if self._cut:
            _abort(client_w)
            return
        try:
            up_r, up_w = await asyncio.open_connection(*upstream)
        except OSError:
            _abort(client_w)  # the broker itself is down: look like it
            return
        if self._cut:  # cut while we were connecting
            _abort(client_w)
            _abort(up_w)
            return
        conn.upstream_w = up_w
        self._conns.add(conn)
        conn.tasks = [
            asyncio.create_task(self._pump_requests(conn, client_r, up_w)),
            asyncio.create_task(self._pump_responses(conn, up_r, client_w)),
        ]

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readexactly(4)
            (size,) = _SIZE.unpack(head)
            if not 0 <= size <= _MAX_FRAME:
                return None
            return await reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _forward(self, writer: asyncio.StreamWriter, payload: bytes) -> None:
        assert self._flowing is not None
        await self._flowing.wait()
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
            await self._flowing.wait()  # a stall may have begun during the delay
        writer.write(_SIZE.pack(len(payload)) + payload)
        await writer.drain()

    async def _pump_requests(self, conn: _Conn, reader: asyncio.StreamReader,
                             upstream_w: asyncio.StreamWriter) -> None:
        try:
            while (frame := await self._read_frame(reader)) is not None:
                if len(frame) >= _REQ_HEADER.size:
                    api_key, api_version, corr = _REQ_HEADER.unpack_from(frame)
                    if api_key in (_METADATA, _FIND_COORDINATOR):
                        conn.pending[corr] = (api_key, api_version)
                await self._forward(upstream_w, frame)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._drop(conn, reset=False)

    async def _pump_responses(self, conn: _Conn, reader: asyncio.StreamReader,
                              client_w: asyncio.StreamWriter) -> None:
        try:
            while (frame := await self._read_frame(reader)) is not None:
                if len(frame) >= _CORR.size:
                    (corr,) = _CORR.unpack_from(frame)
                    api = conn.pending.pop(corr, None)
                    if api is not None:
                        frame = await self._rewrite(api, frame)
                await self._forward(client_w, frame)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._drop(conn, reset=False)

    async def _rewrite(self, api: tuple[int, int], frame: bytes) -> bytes:
        """Point the broker addresses in a Metadata/FindCoordinator response at our listeners."""
        cls = _RESPONSES.get(api)
        if cls is None:
            self.unrewritten.append(api)
            return frame
        resp = cls.decode(frame[_CORR.size:])
        if api[0] == _METADATA:
            brokers = []
            for node_id, host, port, *rest in resp.brokers:
                brokers.append((node_id, self._host, await self._listener_for(host, port), *rest))
            resp.__dict__["brokers"] = brokers
        elif resp.error_code == 0 and resp.port >= 0:
            resp.__dict__["port"] = await self._listener_for(resp.host, resp.port)
            resp.__dict__["host"] = self._host
        return frame[:_CORR.size] + resp.encode()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashed or unreachable broker's peer would see it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
