"""The contract's endpoints over real HTTP: /readyz says why it is 503, HEAD answers without a
body, /metrics negotiates OpenMetrics and gzip, and carries build_info and the process metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from publisher import __version__
from publisher.app import Publisher
from publisher.config import load_settings
from publisher.endpoints import make_handler
from publisher.httpserver import HttpServer
from publisher.metrics import Metrics


class _Readiness:
    reason: str | None = "restoring checkpoints"

    def __call__(self) -> str | None:
        return self.reason


@pytest.fixture
def readiness() -> _Readiness:
    return _Readiness()


@pytest.fixture
async def client(readiness: _Readiness) -> AsyncIterator[httpx.AsyncClient]:
    metrics = Metrics()
    metrics.source("zll", "zll-main").published.inc(3)
    async with HttpServer(make_handler(metrics, readiness)) as server, \
            httpx.AsyncClient(base_url=server.url) as http:
        yield http


async def test_readyz_503_says_why_then_200(client: httpx.AsyncClient, readiness: _Readiness) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.text == "not ready: restoring checkpoints\n"
    head = await client.head("/readyz")
    assert head.status_code == 503 and head.content == b""
    assert head.headers["content-length"] == str(len(response.content))
    readiness.reason = None
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/nothing"])
async def test_head_is_get_without_a_body_on_one_connection(client: httpx.AsyncClient, path: str) -> None:
    head = await client.head(path)
    get = await client.get(path)
    assert head.status_code == get.status_code
    assert head.content == b"" and int(head.headers["content-length"]) > 0
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # process_cpu_seconds_total may tick between the two
        assert head.headers["content-length"] == get.headers["content-length"]


async def test_metrics_text_has_build_info_and_process_metrics(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "content-encoding" not in response.headers
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    build = families["fillpub_build_info"]
    assert build.type == "gauge"
    assert [(s.labels, s.value) for s in build.samples] == [({"version": __version__}, 1.0)]
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds", "python_info"):
        assert name in families, name
    published = families["fillpub_fills_published"].samples
    assert [(s.labels, s.value) for s in published if s.name.endswith("_total")] == [
        ({"venue": "zll", "source": "zll-main"}, 3.0)]


async def test_metrics_gzip_when_asked(client: httpx.AsyncClient) -> None:
    raw = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in raw.headers["vary"]
    text = raw.text  # httpx decodes it
    assert "fillpub_build_info" in text
    async with client.stream("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as stream:
        body = b"".join([chunk async for chunk in stream.aiter_raw()])
    assert gzip.decompress(body).decode().startswith("# HELP")


async def test_metrics_openmetrics_when_asked(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0, text/plain;version=0.0.4;q=0.5"})
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(response.text)}
    assert families["fillpub_build_info"].samples[0].labels == {"version": __version__}
    assert families["fillpub_fills_published"].type == "counter"
    assert "process_cpu_seconds" in families


async def test_metrics_restricted_to_named_series(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", params={"name[]": "fillpub_build_info"})
    assert [f.name for f in text_string_to_metric_families(response.text)] == ["fillpub_build_info"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_publisher_readyz_names_the_start_up_step_it_waits_for(tmp_path: Path) -> None:
    key = tmp_path / "zll.key"
    key.write_text("c2VjcmV0LWtleS1mb3ItdGVzdHM=\n")
    with socket.socket() as closed:  # a port nothing listens on: Kafka is away
        closed.bind(("127.0.0.1", 0))
        kafka_port = closed.getsockname()[1]
    port = _free_port()
    config = {"kafka": {"bootstrap_servers": f"127.0.0.1:{kafka_port}", "request_timeout_s": 1},
              "http": {"host": "127.0.0.1", "port": port},
              "sources": [{"name": "zll-main", "venue": "zll", "base_url": "http://127.0.0.1:1",
                           "api_key_file": str(key), "subaccount_index": 0}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    publisher = Publisher(load_settings(path, {}))
    stop = asyncio.Event()
    serving = asyncio.create_task(publisher.serve(stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(100):
                with contextlib.suppress(httpx.ConnectError):
                    response = await http.get("/readyz")
                    break
                await asyncio.sleep(0.05)
            assert response.status_code == 503
            # the wording is app.py's (the shards' start-up has its own steps); it names the step
            assert response.text.startswith("not ready: ") and response.text.endswith("\n")
            assert "waiting for" in response.text and "Kafka" in response.text, response.text
            assert (await http.get("/healthz")).status_code == 200
    finally:
        stop.set()
        assert await asyncio.wait_for(serving, 10) == 0
