"""A hostile venue: a real HTTP/1.1 server on 127.0.0.1 that misbehaves as its `mode` says.

Each mode is one way a venue (or whatever answers in its name) can try to wedge, exhaust or
mislead a poller; the mode can be switched while a publisher polls it. `ok` answers an empty
Kalshi page, so a Kalshi source pointed at the server polls successfully between hostile cases.

- `endless_headers`: a 200 whose header section never ends;
- `endless_chunked`: a 200 whose chunked body never ends;
- `huge_body`: a 200 announcing (and sending) 200 MB;
- `gzip_bomb`: a 200 of ~1.5 MB gzip that inflates to 1.5 GB;
- `drip`: a 200 whose body arrives one byte every half second (within any per-read timeout);
- `retry_after_forever`: a 503 with `Retry-After: 1e12`;
- `echo_401`: a 401 whose JSON message echoes the request's headers, padded so that a 200-character
  cut of the message falls inside the request's credential (Kalshi's signature, ZLL's key);
- `deep_json`: a 200 page holding a value nested 100,000 deep;
- `corrupt_gzip`: a 200 claiming gzip that is not;
- `redirect`: a 301 to another host.

The server records every credential header it received (`credentials`), so a test can look for
any part of them in the publisher's output.
"""

from __future__ import annotations

import asyncio
import functools
import json
import zlib
from typing import Literal

Mode = Literal["ok", "endless_headers", "endless_chunked", "huge_body", "gzip_bomb", "drip", "retry_after_forever", "echo_401",
               "deep_json", "corrupt_gzip", "redirect"]

OK_PAGE = b'{"fills": [], "cursor": ""}'
#: the request headers that carry credentials, as the venues name them
CREDENTIAL_HEADERS = ("kalshi-access-signature", "x-api-key")
#: where the echoed credential starts in the venue's error text (`code: message`): the adapters
#: cut that text at 200 characters, so the cut falls 10 characters into the credential
CUT_INSIDE_AT = 187
_CHUNK = 64 * 1024


@functools.cache
def gzip_bomb(inflated_mib: int = 1536) -> bytes:
    """A valid gzip member of `inflated_mib` MiB of zeros, ~1 KB per MiB, built in about a second:
    one fully flushed deflate block sequence for 16 MiB, repeated (a full flush resets the
    compressor's history, so the same input gives the same bytes again)."""
    step = 16
    zeros = bytes(step << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(inflated_mib // step):
        crc = zlib.crc32(zeros, crc)
    size = (inflated_mib // step) * (step << 20)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    final = b"\x03\x00"  # a last, empty fixed-Huffman block
    return header + block * (inflated_mib // step) + final + crc.to_bytes(4, "little") + (size % 2**32).to_bytes(4, "little")


class HostileVenue:
    """See the module docstring. `async with HostileVenue() as venue: venue.mode = "drip"`."""

    def __init__(self, mode: Mode = "ok"):
        self.mode: Mode = mode
        self.requests = 0
        self.credentials: list[str] = []
        self._bomb: bytes | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HostileVenue:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    @property
    def bomb(self) -> bytes:
        if self._bomb is None:
            self._bomb = gzip_bomb()
        return self._bomb

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                self.requests += 1
                headers = _headers(head)
                self.credentials += [headers[name] for name in CREDENTIAL_HEADERS if name in headers]
                if not await self._answer(self.mode, head, headers, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # closing: end quietly (asyncio reports a cancelled connection task as an error)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, mode: Mode, head: str, headers: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is done."""
        if " /historical/cutoff" in head.split("\r\n", 1)[0].replace("/trade-api/v2", ""):
            # Kalshi's cutoff endpoint answers normally: the hostility is in the fills answers
            writer.write(_response(200, b'{"trades_created_ts": "2000-01-01T00:00:00Z"}'))
            await writer.drain()
            return True
        if mode == "ok":
            writer.write(_response(200, OK_PAGE))
        elif mode == "endless_headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                writer.write(b"x-filler: " + b"a" * 1000 + b"\r\n")
                await writer.drain()
        elif mode == "endless_chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                         + _chunk(b'{"fills": ['))
            filler = _chunk(b'{"fill_id": "x"},' * (_CHUNK // 17))
            while True:
                writer.write(filler)
                await writer.drain()
        elif mode == "huge_body":
            size = 200 * 1024 * 1024
            writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n".encode())
            filler = b" " * _CHUNK
            for _ in range(size // _CHUNK):
                writer.write(filler)
                await writer.drain()
        elif mode == "gzip_bomb":
            writer.write(_response(200, self.bomb, content_encoding="gzip"))
        elif mode == "drip":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 600\r\n\r\n")
            for byte in range(600):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.5 if byte else 0.0)
            return False
        elif mode == "retry_after_forever":
            writer.write(_response(503, b'{"code": "unavailable", "message": "come back later"}', retry_after="1e12"))
        elif mode == "echo_401":
            writer.write(_response(401, _echo(head, headers)))
        elif mode == "deep_json":
            writer.write(_response(200, b'{"fills": [], "cursor": "", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
        elif mode == "corrupt_gzip":
            writer.write(_response(200, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + b"not deflate at all" * 20,
                                   content_encoding="gzip"))
        elif mode == "redirect":
            writer.write(_response(301, b"", location="https://elsewhere.example/trade-api?token=hunter2"))
        await writer.drain()
        return True


def _headers(head: str) -> dict[str, str]:
    out = {}
    for line in head.split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _echo(head: str, headers: dict[str, str]) -> bytes:
    """A 401 body echoing the request's headers, the credential placed across the 200-char cut."""
    echoed = "; ".join(line for line in head.split("\r\n")[1:] if line)
    secret = next((headers[name] for name in CREDENTIAL_HEADERS if name in headers), "")
    code = "unauthorized"
    start = echoed.find(secret) if secret else 0
    prefix = len(code) + 2 + len("we got: ")  # the text is `code: message`
    padding = "." * max(0, CUT_INSIDE_AT - prefix - start)
    text = f"we got: {padding}{echoed}"
    # Kalshi's errors carry `message`, ZLL's (problem+json) `detail`
    return json.dumps({"code": code, "message": text, "detail": text}).encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _response(status: int, body: bytes, **headers: str) -> bytes:
    reason = {200: "OK", 301: "Moved Permanently", 401: "Unauthorized", 503: "Service Unavailable"}[status]
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body
