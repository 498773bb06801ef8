"""The service's HTTP server (h11) against real clients over TCP: httpx for what a scraper does,
raw sockets for pipelining, oversized heads and slow clients, and child processes for the
resource bounds (connection limit and memory under a flood, EMFILE without a log flood)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from publisher.httpserver import MAX_HEAD_BYTES, HttpServer, Request, Response
from publisher.sim.httpserver import HttpServer as SimHttpServer


async def _handler(request: Request) -> Response:
    if request.path == "/echo":
        body = b"%s %s %s %s" % (request.method.encode(), request.path.encode(),
                                 repr(sorted(request.query.items())).encode(), request.body)
        return Response(200, body, "text/plain", [("X-Test", "1")])
    if request.path == "/big":
        return Response(200, b"x" * (8 * 1024 * 1024), "text/plain")
    if request.path == "/boom":
        raise RuntimeError("secret internals")
    if request.path == "/inject":
        return Response(200, headers=[("X-Bad", "a\r\nSet-Cookie: x=1")])
    if request.path == "/slow":
        await asyncio.sleep(30)
    return Response(404, b"not found\n", "text/plain")


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    async with HttpServer(_handler, idle_timeout_s=2, request_timeout_s=0.5, write_timeout_s=0.5) as srv:
        yield srv


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One response off a raw connection: status line, headers, and Content-Length bytes of body
    (so a HEAD answer that wrongly carried a body would show up as the next response's start)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {k.decode().lower(): v.decode().strip() for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, b""


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_head_then_get_on_one_keep_alive_connection(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        head = await client.head("/echo")
        get = await client.get("/echo", params={"a": ["1", "2"], "b": ""})
        post = await client.post("/echo", content=b"payload")
        assert server.connections == 1  # all three on one socket
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(b"HEAD /echo [] "))
    assert get.text == "GET /echo [('a', ['1', '2']), ('b', [''])] "
    assert get.headers["x-test"] == "1" and get.headers["content-type"] == "text/plain" and "date" in get.headers
    assert post.text.endswith(" payload")


async def test_pipelined_requests_answered_in_order_head_without_body(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"HEAD /echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /echo?n=3 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    bodies = []
    for expect_body in (True, False, True):
        status, headers, _ = await _read_response(reader)
        assert status == b"HTTP/1.1 200 OK"
        length = int(headers["content-length"])
        bodies.append(await asyncio.wait_for(reader.readexactly(length), 5) if expect_body else b"")
    assert bodies == [b"GET /echo [('n', ['1'])] ", b"", b"GET /echo [('n', ['3'])] "]
    # the HEAD answer carried no body: the connection is in step and still serves
    writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 5)
    assert rest.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"connection: close" in rest.lower()
    writer.close()


async def test_http10_closes_after_its_answer(server: HttpServer) -> None:
    answer = await _raw(server.port, b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    assert answer.count(b"HTTP/1.1 404") == 1


@pytest.mark.parametrize("trickle", [False, True])
async def test_oversized_head_is_431(server: HttpServer, trickle: bool) -> None:
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for start in range(0, len(head), 1024 if trickle else len(head)):
        writer.write(head[start:start + (1024 if trickle else len(head))])
        await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    # a head just within the limit is served
    fits = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
    fits += b"a" * (MAX_HEAD_BYTES - len(fits) - 4) + b"\r\n\r\n"
    assert len(fits) == MAX_HEAD_BYTES
    assert (await _raw(server.port, fits)).startswith(b"HTTP/1.1 200")


async def test_large_body_refused_with_a_readable_413(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/echo", content=b"x" * (1024 * 1024))
        assert response.status_code == 413
        assert (await client.post("/echo", content=b"small")).text.endswith(" small")


async def test_slow_client_and_idle_connection_are_closed(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /echo HTTP/1.1\r\nHo")  # then nothing more: slowloris
    await writer.drain()
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
    assert 0.4 <= time.monotonic() - started < 3
    writer.close()
    # an idle keep-alive connection lives idle_timeout_s (2 s here), not request_timeout_s
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    await _read_response(reader)
    await reader.readexactly(len(b"GET /echo [] "))
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 1.5 <= time.monotonic() - started < 4.5
    writer.close()
    assert server.connections == 0


async def test_client_that_does_not_read_its_answer_is_dropped(server: HttpServer) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 5
    while server.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert server.connections == 0  # aborted after write_timeout_s, its 8 MiB buffer freed
    sock.close()


async def test_handler_errors_are_500_without_details(server: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="publisher.httpserver"):
        async with httpx.AsyncClient(base_url=server.url) as client:
            boom = await client.get("/boom")
            inject = await client.get("/inject")
            after = await client.get("/nothing")
    assert boom.status_code == 500 and b"secret" not in boom.content
    assert inject.status_code == 500 and "set-cookie" not in inject.headers
    assert after.status_code == 404  # the connection and the server carry on
    assert "handler failed" in caplog.text and "invalid response" in caplog.text


@pytest.mark.parametrize("server_class", [HttpServer, SimHttpServer], ids=["service", "simulators"])
async def test_close_ends_open_connections_quietly(
    caplog: pytest.LogCaptureFixture, server_class: type[HttpServer | SimHttpServer]
) -> None:
    server = server_class(_handler)
    await server.start()
    idle = await asyncio.open_connection("127.0.0.1", server.port)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        slow = asyncio.create_task(client.get("/slow"))
        await asyncio.sleep(0.1)
        with caplog.at_level(logging.ERROR):
            await asyncio.wait_for(server.close(), 2)
            await asyncio.sleep(0.01)
        with pytest.raises(httpx.TransportError):
            await slow
    assert await asyncio.wait_for(idle[0].read(), 1) == b""
    idle[1].close()
    assert not caplog.records  # closing is quiet: no "Exception in callback" from asyncio


async def test_connection_limit_holds_and_waiting_clients_are_served_later(caplog: pytest.LogCaptureFixture) -> None:
    async with HttpServer(_handler, max_connections=4) as server:
        streams = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(10)]
        with caplog.at_level(logging.WARNING, logger="publisher.listener"):
            for _, writer in streams:
                writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            for reader, _ in streams[:4]:
                assert (await _read_response(reader))[0] == b"HTTP/1.1 404 Not Found"
            await asyncio.sleep(0.2)
            assert server.connections == 4
            for _, writer in streams[:4]:
                writer.close()
            for reader, _ in streams[4:8]:
                assert (await _read_response(reader))[0] == b"HTTP/1.1 404 Not Found"
            assert server.connections == 4
        assert len([r for r in caplog.records if "connection limit" in r.getMessage()]) == 1
        for _, writer in streams[4:]:
            writer.close()


# -- resource bounds, measured on a child process --------------------------------------------

_CHILD = textwrap.dedent("""
    import asyncio, resource, sys, logging
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    nofile = int(sys.argv[1])
    if nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    from publisher.endpoints import make_handler
    from publisher.metrics import Metrics
    if sys.argv[2] == "simulators":
        from publisher.sim.httpserver import HttpServer
    else:
        from publisher.httpserver import HttpServer

    async def main():
        server = HttpServer(make_handler(Metrics(), lambda: None))
        await server.start()
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.close()

    asyncio.run(main())
""")


class _Child:
    def __init__(self, tmp_path: Path, nofile: int = 0, server: str = "service"):
        self.log = tmp_path / "child.log"
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(nofile), server], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
                                     cwd=Path(__file__).parent.parent)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def status(self, field: str) -> int:
        """A /proc/<pid>/status field in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        return self.log.read_text()


async def _healthz(port: int) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code


async def test_400_connections_with_1_mib_bodies_stay_within_the_limit_and_memory(tmp_path: Path) -> None:
    child = _Child(tmp_path)
    try:
        assert await _healthz(child.port) == 200
        rss_before, fds_before = child.status("VmRSS"), child.open_fds()
        body = b"x" * (1024 * 1024)
        head = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        most_fds = 0

        async def flood(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", child.port)
            try:
                # half declare their body (413 at once), half send one without declaring it
                writer.write((head if i % 2 else b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") + body)
                await asyncio.wait_for(writer.drain(), 30)
                await asyncio.wait_for(reader.read(), 30)
            except (ConnectionError, TimeoutError):
                pass  # refused or reset once answered: what matters is the server's side
            finally:
                writer.close()

        async def watch() -> None:
            nonlocal most_fds
            while True:
                most_fds = max(most_fds, child.open_fds())
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(flood(i) for i in range(400)))
        watcher.cancel()
        peak = child.status("VmHWM")
        assert await _healthz(child.port) == 200  # and it still serves
    finally:
        log = child.stop()
    assert most_fds <= fds_before + 64 + 2, most_fds  # MAX_CONNECTIONS, plus the listener's churn
    assert peak - rss_before < 40 * 1024, (rss_before, peak)  # KiB: not 400 MiB of bodies
    assert "Traceback" not in log


@pytest.mark.parametrize("server", ["service", "simulators"])
async def test_out_of_file_descriptors_is_logged_once_not_per_attempt(tmp_path: Path, server: str) -> None:
    child = _Child(tmp_path, nofile=48, server=server)
    held: list[socket.socket] = []
    try:
        for _ in range(120):  # more than the child has descriptors: its accepts fail with EMFILE
            held.append(socket.create_connection(("127.0.0.1", child.port)))
        await asyncio.sleep(3)  # several accept retries' worth
        for sock in held:
            sock.close()
        held.clear()
        assert await _healthz(child.port) == 200  # it recovers once descriptors are free
    finally:
        for sock in held:
            sock.close()
        log = child.stop()
    lines = log.splitlines()
    emfile = [line for line in lines if "accepting an HTTP connection failed" in line]
    assert len(emfile) == 1 and "Too many open files" in emfile[0], lines[-5:]
    assert len(lines) < 10, lines[:10]
