"""The simulators' asyncio HTTP server against real sockets: keep-alive, errors, garbage, drops."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from publisher.sim.httpserver import DropConnection, HttpServer, Request, Response


async def _handler(request: Request) -> Response:
    if request.path == "/echo":
        body = b"%s %s %s %s" % (
            request.method.encode(),
            request.path.encode(),
            repr(sorted(request.query.items())).encode(),
            request.body,
        )
        return Response(200, body, content_type="text/plain", headers=[("X-Test", "1")])
    if request.path == "/drop":
        raise DropConnection()
    if request.path == "/reset":
        raise DropConnection(reset=True)
    if request.path == "/boom":
        raise RuntimeError("secret internals")
    if request.path == "/slow":
        await asyncio.sleep(30)
    if request.path == "/inject":
        return Response(200, headers=[("X-Bad", "a\r\nSet-Cookie: x=1")])
    return Response(404, b'{"error": "not found"}')


@pytest.fixture
async def server():
    async with HttpServer(_handler) as srv:
        yield srv


async def _raw(server: HttpServer, data: bytes, *, eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    if eof:
        writer.write_eof()
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_keep_alive_reuses_one_connection(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        first = await client.get("/echo", params={"a": ["1", "2"], "b": ""})
        second = await client.post("/echo", content=b"payload")
        assert len(server._connections) == 1  # both requests on one socket
    assert first.status_code == 200
    assert first.text == "GET /echo [('a', ['1', '2']), ('b', [''])] "
    assert first.headers["x-test"] == "1" and first.headers["content-type"] == "text/plain"
    assert "date" in first.headers
    assert second.text.endswith(" payload")


async def test_connection_close_honoured(server: HttpServer) -> None:
    answer = await _raw(server, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Connection: close" in answer


async def test_pipelined_and_http10(server: HttpServer) -> None:
    answer = await _raw(server, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    assert answer.count(b"HTTP/1.1 404") == 2  # HTTP/1.0 without keep-alive closes after it


async def test_handler_404(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/nothing")
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


async def test_handler_exception_is_500_without_details(server: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="publisher.sim.httpserver"):
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/boom")
            after = await client.get("/nothing")
    assert response.status_code == 500
    assert b"secret" not in response.content
    assert after.status_code == 404  # the connection and the server carry on
    assert "handler failed" in caplog.text


async def test_header_injection_becomes_500(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/inject")
    assert response.status_code == 500
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\x13\x37 binary junk\r\n\r\n",
        b"GET /x\r\n\r\n",
        b"GET /x HTTP/2.0\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
    ],
)
async def test_garbage_gets_400_and_close(server: HttpServer, garbage: bytes) -> None:
    answer = await _raw(server, garbage)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in answer
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/still-alive")).status_code == 404


async def test_truncated_request_then_eof(server: HttpServer) -> None:
    answer = await _raw(server, b"\x16\x03\x01 tls hello", eof=True)
    assert answer.startswith(b"HTTP/1.1 400")


async def test_chunked_body_not_implemented(server: HttpServer) -> None:
    answer = await _raw(server, b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 501")


@pytest.mark.parametrize("path", ["/drop", "/reset"])
async def test_drop_connection_is_a_transport_error(server: HttpServer, path: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, transport=httpx.AsyncHTTPTransport(retries=0)) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(path)
        assert (await client.get("/nothing")).status_code == 404


async def test_many_concurrent_keep_alive_connections(server: HttpServer) -> None:
    streams = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(1000)]
    for _, writer in streams:
        writer.write(b"GET /a HTTP/1.1\r\n\r\n")
    for reader, _ in streams:
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert len(server._connections) == 1000
    for _, writer in streams:
        writer.close()


async def test_url_and_ephemeral_port(server: HttpServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
