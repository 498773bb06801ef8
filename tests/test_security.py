"""Security checks: secrets never leak, TLS/SASL settings reach aiokafka, and the metrics server
survives what a port scanner sends.

1. Secrets (Kalshi private key, ZLL API key, SASL password) are grepped for, whole and PEM line by
   line, in everything a running `fill-publisher run` child puts out: every log line (exception
   text included), the /metrics text, and every record it wrote (fills, dead letters,
   checkpoints: values, keys, headers). One run fails to authenticate to Kafka over SASL (the mock
   broker has no SASL), one runs normally with venue auth failures, transport faults and dead
   letters.
2. `client_options` and the producer the sink builds carry SSL / SASL_SSL / SCRAM settings into
   aiokafka; the SSL context really trusts the configured CA and presents the client certificate
   (a TLS handshake against a local server that requires it); a missing CA file is a config error.
3. `/metrics` `/healthz` `/readyz` only: 404 elsewhere, 405 for other methods, and garbage,
   oversized heads (431) and half-open connections leave it answering.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from publisher.config import ConfigError, KafkaConfig, load_settings
from publisher.endpoints import make_handler
from publisher.httpserver import MAX_HEAD_BYTES, HttpServer
from publisher.kafkaclient import client_options, consumer_options
from publisher.metrics import Metrics
from publisher.secret import Secret
from publisher.sink import TransactionalSink
from tests.harness.delivery import read_log
from tests.harness.stack import PublisherProcess, Stack, secret_needles, wait_until
from tests.harness.tls import Pki

FAST = {"poll_interval_s": 0.2, "lookback_s": 30, "page_limit": 20, "max_requests_per_s": 200, "timeout_s": 5}
SASL_PASSWORD = "sasl-Pa55word-that-must-never-show-7f3e9c"


@pytest.fixture
async def stack(broker: Any, topic_prefix: str, tmp_path: Path) -> Any:
    s = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    yield s
    await s.close()


def assert_no_secret(where: str, text: str | bytes, needles: list[str]) -> None:
    data = text.encode() if isinstance(text, str) else text
    for needle in needles:
        assert needle.encode() not in data, f"a secret ({len(needle)} chars) appears in {where}"


# -- 1. secrets in a running publisher's output --------------------------------------------------


@pytest.mark.integration
async def test_no_secret_in_logs_metrics_or_records_of_a_faulty_run(broker: Any, stack: Stack) -> None:
    kalshi = await stack.kalshi("kalshi-sec", **FAST)
    zll = await stack.zll("zll-sec", **FAST)
    rejected = await stack.kalshi("kalshi-denied", **FAST)
    rejected.faults.set("auth", 1.0)
    proc = stack.publisher().start()
    await proc.wait_ready()
    for sim in (kalshi, zll):
        for mode in ("non_numeric_price", "missing_field", "bad_enum"):
            sim.add_fills(3)
            sim.bad_fills[sim.add_fill().fill_id] = mode
        for kind in ("http_500", "reset", "malformed_json", "http_429"):
            sim.faults.inject(kind)  # type: ignore[arg-type]
        sim.start_generator(20)

    async def everything_happened() -> bool:
        dead = await proc.metric("fillpub_fills_invalid_total")
        failed = {r: await proc.metric("fillpub_poll_errors_total", reason=r)
                  for r in ("auth", "http_5xx", "connect", "decode", "http_429")}
        return dead >= 6 and all(v >= 1 for v in failed.values())

    await wait_until(everything_happened, "dead letters and every kind of poll error", context=proc.log_tail)
    metrics_text = await proc.metrics_text()
    code, _ = await proc.terminate()
    assert code == 0, proc.log_tail()

    needles = secret_needles(stack.secrets())
    assert len(needles) > 50  # three whole secrets and the ~26 lines of each of the two PEM keys
    logs = proc.logs()
    assert "venue rejected our credentials" in logs and "connection failed" in logs
    assert_no_secret("the log", logs, needles)
    assert "***" not in logs  # nothing even reached the log redactor
    assert_no_secret("/metrics", metrics_text, needles)
    records = await read_log(stack.bootstrap, list(stack.topics.values()))
    assert {r.topic for r in records} == set(stack.topics.values())  # fills, dead letters, checkpoints
    for record in records:
        where = f"a record of {record.topic}"
        assert_no_secret(where, record.value or b"", needles)
        assert_no_secret(where, record.key or b"", needles)
        for name, value in record.headers:
            assert_no_secret(where, name.encode() + b"=" + (value or b""), needles)


@pytest.mark.integration
async def test_no_secret_in_output_when_sasl_authentication_fails(broker: Any, stack: Stack) -> None:
    await stack.kalshi("kalshi-sec", **FAST)
    await stack.zll("zll-sec", **FAST)
    # the mock broker speaks no SASL: every connection attempt fails, over and over
    config = stack.write_config(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                                sasl_username="fill-publisher", sasl_password_env="TEST_SASL_PASSWORD")
    env = {"TEST_SASL_PASSWORD": SASL_PASSWORD}
    proc = PublisherProcess(config, stack.tmp / "publisher.log", stack.http_port, env=env).start()
    await wait_until(lambda: len(proc.log_lines("kafka not reachable")) >= 3, "three failed Kafka connects",
                     timeout_s=20, context=proc.log_tail)
    response = await proc.get("/readyz")
    assert response is not None and response.status_code == 503
    metrics_text = await proc.metrics_text()
    code, _ = await proc.terminate()
    assert code == 0, proc.log_tail()
    check = subprocess.run([sys.executable, "-m", "publisher", "check-config", "--config", str(config)],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=30)
    assert check.returncode == 0, check.stderr

    needles = secret_needles([*stack.secrets(), SASL_PASSWORD])
    logs = proc.logs()
    for where, text in (("the log", logs), ("/metrics", metrics_text),
                        ("check-config's output", check.stdout + check.stderr)):
        assert_no_secret(where, text, needles)
    assert "***" not in logs


# -- 2. TLS and SASL settings reach aiokafka ----------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_kafka(pki: Pki, protocol: str = "SSL", **extra: Any) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers="kafka-0:9093,kafka-1:9093", security_protocol=protocol,  # type: ignore[arg-type]
                       ssl_cafile=pki.cafile, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key, **extra)


async def _mutual_tls_handshake(client_context: ssl.SSLContext, pki: Pki) -> str:
    """Handshake with a local server that requires a client certificate from `pki`'s CA; returns the
    client certificate's common name as the server saw it."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.cafile)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subject = dict(item[0] for item in writer.get_extra_info("peercert")["subject"])
        if not seen.done():
            seen.set_result(subject["commonName"])
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context,
                                                       server_hostname="localhost")
        assert await reader.read() == b"ok"
        writer.close()
        return await asyncio.wait_for(seen, 5)
    finally:
        server.close()
        await server.wait_closed()


async def test_ssl_context_trusts_the_configured_ca_and_presents_the_client_cert(pki: Pki, tmp_path: Path) -> None:
    options = client_options(tls_kafka(pki), None)
    assert options["security_protocol"] == "SSL"
    assert not {"sasl_mechanism", "sasl_plain_username", "sasl_plain_password"} & set(options)
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(i[0] for i in ca["subject"])["commonName"] for ca in context.get_ca_certs()] == [pki.ca_name]
    assert await _mutual_tls_handshake(context, pki) == "fill-publisher-client"
    # a context built for another CA refuses this server: trust comes from ssl_cafile alone
    other = client_options(tls_kafka(Pki(tmp_path, "other-ca")), None)["ssl_context"]
    with pytest.raises(ssl.SSLCertVerificationError):
        await _mutual_tls_handshake(other, pki)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_options(pki: Pki, mechanism: str) -> None:
    kafka = tls_kafka(pki, "SASL_SSL", sasl_mechanism=mechanism, sasl_username="fillpub",
                      sasl_password_env="UNUSED")
    options = consumer_options(kafka, Secret(SASL_PASSWORD))
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        mechanism, "fillpub", SASL_PASSWORD)
    assert options["check_crcs"] is True


def test_sasl_plaintext_has_no_tls_and_plaintext_neither() -> None:
    sasl = KafkaConfig(bootstrap_servers="k:9092", security_protocol="SASL_PLAINTEXT",
                       sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password_env="UNUSED")
    options = client_options(sasl, Secret(SASL_PASSWORD))
    assert "ssl_context" not in options and options["sasl_mechanism"] == "SCRAM-SHA-256"
    plain = client_options(KafkaConfig(bootstrap_servers="k:9092"), None)
    assert plain == {"bootstrap_servers": "k:9092", "client_id": "fill-publisher", "security_protocol": "PLAINTEXT",
                     "request_timeout_ms": 30000}


async def test_the_sinks_producer_carries_security_and_transaction_settings(pki: Pki) -> None:
    kafka = tls_kafka(pki, "SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="fillpub",
                      sasl_password_env="UNUSED", transactional_id_prefix="fp-eu-1", client_id="fp-client",
                      request_timeout_s=12, transaction_timeout_s=45)
    producer: AIOKafkaProducer = TransactionalSink(kafka, Secret(SASL_PASSWORD), Metrics())._producers.build()
    try:
        client = producer.client
        assert client._bootstrap_servers == "kafka-0:9093,kafka-1:9093"
        assert client._client_id == "fp-client"
        assert client._security_protocol == "SASL_SSL"
        assert isinstance(client._ssl_context, ssl.SSLContext)
        assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("fillpub", SASL_PASSWORD)
        assert client._request_timeout_ms == 12000
        txn = producer._txn_manager
        assert txn is not None
        assert txn.transactional_id == "fp-eu-1"
        assert txn.transaction_timeout_ms >= 45000  # the broker never aborts before the client gives up
        assert producer._sender._acks == -1  # acks=all, as transactions require
        assert SASL_PASSWORD not in repr(producer) + repr(client)
    finally:
        await producer.stop()


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
@pytest.mark.parametrize("field", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_missing_tls_file_is_a_config_error_naming_the_field(
    pki: Pki, tmp_path: Path, stack_config: dict[str, Any], protocol: str, field: str
) -> None:
    kafka = stack_config["kafka"]
    kafka.update(security_protocol=protocol, ssl_cafile=pki.cafile, ssl_certfile=pki.client_cert,
                 ssl_keyfile=pki.client_key)
    if protocol == "SASL_SSL":
        kafka.update(sasl_mechanism="PLAIN", sasl_username="u", sasl_password_env="TEST_SASL_PASSWORD")
    kafka[field] = str(tmp_path / "gone.pem")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stack_config))
    with pytest.raises(ConfigError) as info:
        load_settings(path, {"TEST_SASL_PASSWORD": SASL_PASSWORD})
    assert info.value.field == f"kafka.{field}"
    assert "No such file or directory" in info.value.problem


def test_ca_file_without_a_certificate_is_a_config_error(tmp_path: Path, stack_config: dict[str, Any]) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    stack_config["kafka"].update(security_protocol="SSL", ssl_cafile=str(not_pem))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stack_config))
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.field == "kafka.ssl_cafile"


def test_missing_ca_file_stops_run_with_exit_2_and_one_line(tmp_path: Path, stack_config: dict[str, Any]) -> None:
    stack_config["kafka"].update(security_protocol="SSL", ssl_cafile=str(tmp_path / "no-ca.pem"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stack_config))
    result = subprocess.run([sys.executable, "-m", "publisher", "run", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fill-publisher: config error: kafka.ssl_cafile: cannot read '{tmp_path / 'no-ca.pem'}': "
        "No such file or directory"]


@pytest.fixture
def stack_config(tmp_path: Path) -> dict[str, Any]:
    """A minimal valid config (one ZLL source) to break in one place."""
    key = tmp_path / "zll.key"
    key.write_text("c2VjcmV0LWtleS1mb3ItdGVzdHM=\n")
    return {"kafka": {"bootstrap_servers": "kafka-0:9093"},
            "sources": [{"name": "zll-main", "venue": "zll", "base_url": "https://zll.example",
                         "api_key_file": str(key), "subaccount_index": 0}]}


# -- 3. the metrics/health server ---------------------------------------------------------------


@pytest.fixture
async def endpoints() -> Any:
    metrics = Metrics()
    metrics.source("zll", "zll-main")
    server = HttpServer(make_handler(metrics, lambda: None), "127.0.0.1", 0, idle_timeout_s=30, request_timeout_s=30)
    await server.start()
    yield server
    await server.close()


async def exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes, read until the server closes (or 5 s pass); the answer, b"" for none."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    except (TimeoutError, ConnectionError):
        return b""
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def get(port: int, path: str) -> bytes:
    return await exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


async def assert_serving(port: int) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert status_of(await get(port, path)) == 200, path
    assert b"fillpub_poll_requests_total" in await get(port, "/metrics")


async def test_only_the_three_paths_answer(endpoints: HttpServer) -> None:
    port = endpoints.port
    await assert_serving(port)
    assert status_of(await get(port, "/healthz?probe=1")) == 200  # the query is not part of the path
    for path in ("/", "/metrics/", "/health", "/healthz/x", "/METRICS", "/%2e%2e/etc/passwd", "/_sim/stats",
                 "/readyz/../metrics"):
        assert status_of(await get(port, path)) == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
        answer = await exchange(port, f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                      "Connection: close\r\n\r\n".encode())
        assert status_of(answer) == 405 and b"Allow: GET, HEAD" in answer, method


async def test_garbage_oversized_and_half_open_connections_leave_it_answering(endpoints: HttpServer) -> None:
    port = endpoints.port
    # half-open: a request head that never ends, held open while everything else goes on
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    await idle_writer.drain()
    garbage = [  # (bytes, the status they get)
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200) + b"\r\n\r\n", 400),  # TLS hello
        (b"\x00\xff\xfe\r\n\r\n", 400),
        (b"GET /healthz\r\n\r\n", 400),  # HTTP/0.9 style
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400),
        (b"GET /he\xffalthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nBad Header Line\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host (RFC 9112 3.2)
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n", 413),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES * 2) + b"\r\n\r\n", 431),  # oversized head
        (b"GET /healthz HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 5000 + b"\r\n", 431),
    ]
    answers = await asyncio.gather(*(exchange(port, data) for data, _ in garbage),
                                   exchange(port, os.urandom(4096), half_close=True))
    for (data, status), answer in zip([*garbage, (b"random bytes, then EOF", 400)], answers, strict=True):
        assert answer and status_of(answer) == status, (data[:60], answer[:80])
    # a partial request then a half-close: the server answers 400 (or nothing) and lets go
    partial = await exchange(port, b"GET /healthz HTTP/1.1\r\nHo", half_close=True)
    assert partial == b"" or status_of(partial) == 400
    # connections that vanish without a word, and ones reset mid-request
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.send(b"GET /metr")
        sock.close()
    await assert_serving(port)
    # the half-open connection is still held, and finishing its request gets an answer
    idle_writer.write(b"Connection: close\r\n\r\n")
    assert status_of(await asyncio.wait_for(idle_reader.read(), 5)) == 200
    idle_writer.close()
