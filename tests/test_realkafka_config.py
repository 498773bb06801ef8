"""Real Apache Kafka and the publisher's Kafka settings (issue 10, scenarios 6 and 7).

- a broker whose `transaction.max.timeout.ms` is below what the producer asks for
  (`kafka.transaction_timeout_s` plus the sink's margin) refuses InitProducerId with
  INVALID_TRANSACTION_TIMEOUT; the publisher must say so, naming both settings, and exit 2 (a
  configuration error), not hang or retry as if Kafka were away. Its own broker: the setting is
  static.
- SASL_SSL with SCRAM-SHA-512 against the session broker's SASL_SSL listener (TLS with the test
  PKI): fills published exactly once; a wrong password gives a clear error and no secret reaches
  any output.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.kafka import KafkaCluster, ScramUser
from tests.harness.stack import Stack, secret_needles
from tests.test_faults_kafka import (  # noqa: F401 - cleanup is a fixture
    COMMON,
    LOOKBACK_S,
    cleanup,
    generate,
    observe,
    stop_generating,
    until,
)
from tests.test_realkafka_delivery import FAST_KAFKA, create_topics, judge_run, two_sources

pytestmark = [pytest.mark.realkafka, pytest.mark.integration]

EXIT_CONFIG = 2


async def test_transaction_timeout_above_broker_max_is_a_clear_config_error(
        kafka_cluster: Callable[..., Awaitable[KafkaCluster]], topic_prefix: str, tmp_path: Path,
        cleanup: list[Any]) -> None:
    """transaction.max.timeout.ms 20 s on the broker, the producer asks 5 s + 30 s: exit 2 within
    seconds, the error names `kafka.transaction_timeout_s` and `transaction.max.timeout.ms`, and
    the publisher never pretends Kafka is unreachable."""
    cluster = await kafka_cluster(1, broker_config={"transaction.max.timeout.ms": "20000"})
    stack = Stack(tmp_path, cluster.bootstrap, topic_prefix, kafka_extra=FAST_KAFKA)
    cleanup.append(stack)
    await stack.kalshi("kalshi-a", **COMMON)
    await create_topics(cluster, stack)
    proc = stack.publisher().start()
    cleanup.append(proc)
    t0 = time.monotonic()
    code = await proc._wait(30)
    took = time.monotonic() - t0
    logs = proc.logs()
    assert code == EXIT_CONFIG, logs[-3000:]
    assert "kafka.transaction_timeout_s" in logs and "transaction.max.timeout.ms" in logs, logs[-3000:]
    assert "not reachable" not in logs, logs[-3000:]
    assert stack.sources[0].sim.requests == 0  # never polled
    line = next(x for x in logs.splitlines() if "transaction.max.timeout.ms" in x)
    observe("real 6 transaction timeout above broker max", exit_code=code, exit_after_s=round(took, 2), line=line)


def scram_user(cluster: KafkaCluster) -> ScramUser:
    assert cluster.sasl_ssl is not None
    return cluster.sasl_ssl.users[0]


def sasl_settings(cluster: KafkaCluster, tmp: Path, password: str) -> dict[str, Any]:
    assert cluster.sasl_ssl is not None
    password_file = tmp / "kafka-password"
    password_file.write_text(password + "\n")
    return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": scram_user(cluster).name, "sasl_password_file": str(password_file),
            "ssl_cafile": cluster.sasl_ssl.pki.cafile}


async def test_sasl_ssl_scram_publishes_and_wrong_password_is_clear(
        real_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """SCRAM-SHA-512 over TLS: every fill exactly once (judged over the plain listener). Then the
    same config with a wrong password: not ready, an ERROR line saying Kafka rejected the
    credentials (user named, password never), and no secret in the log or the metrics."""
    password = scram_user(real_kafka).password
    stack = Stack(tmp_path, real_kafka.sasl_bootstrap, topic_prefix,
                  kafka_extra={**FAST_KAFKA, **sasl_settings(real_kafka, tmp_path, password)})
    cleanup.append(stack)
    await two_sources(real_kafka, stack)
    started_ns = time.time_ns()
    generate(stack, 40)
    proc = stack.publisher().start()
    cleanup.append(proc)
    await proc.wait_ready(60)
    await until("first commits", lambda: proc.metric("fillpub_fills_published_total"), 20)
    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    metrics_ok = await proc.metrics_text()
    code, _took = await proc.terminate()
    assert code == 0, proc.log_tail()

    wrong = "not-" + password
    stack.kafka_extra.update(sasl_settings(real_kafka, tmp_path, wrong))
    bad = stack.publisher()
    bad.log_path = tmp_path / "wrong-password.log"
    bad.start()
    cleanup.append(bad)
    await until("a rejected login", lambda: bad.log_lines("ERROR", "kafka rejected our credentials"), 30)
    ready = await bad.get("/readyz")
    assert ready is not None and ready.status_code == 503
    metrics_bad = await bad.metrics_text()
    code, _took = await bad.terminate()
    assert code == 0, bad.log_tail()
    line = bad.log_lines("ERROR", "kafka rejected our credentials")[0]
    assert scram_user(real_kafka).name in line and "SCRAM-SHA-512" in line, line
    outputs = {"log (good)": proc.logs(), "log (wrong password)": bad.logs(), "metrics (good)": metrics_ok,
               "metrics (wrong password)": metrics_bad}
    for needle in secret_needles([password, wrong, *stack.secrets()]):
        for name, text in outputs.items():
            assert needle not in text, f"a secret reached the {name}"
    observe("real 7 sasl_ssl scram", fills_in=len(expected), fills_out=len(consumed), wrong_password_line=line)
