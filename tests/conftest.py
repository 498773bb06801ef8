"""Shared pytest fixtures.

Keep this file to fixtures that several test modules use and whose code exists; module-specific
helpers belong next to their tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from publisher.embedded_broker import EmbeddedBroker, confluent_kafka_available

if TYPE_CHECKING:
    from tests.harness.kafka import KafkaCluster, ScramUser

T = TypeVar("T")

# Three brokers so tests see what a real cluster does: partition leaders and the transaction
# coordinator on different hosts (the embedded broker's own default of one is for the demo).
TEST_BROKERS = 3


def _require_broker() -> None:
    if not confluent_kafka_available():
        pytest.skip("embedded broker needs confluent-kafka (pip install 'fill-publisher[demo]')")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One mock cluster for the whole session: shared, so never assume a topic is empty.

    Use `topic_prefix` for topic names, and never kill or pause this broker (use `fresh_broker`).
    """
    _require_broker()
    with EmbeddedBroker(TEST_BROKERS) as b:
        yield b


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A mock cluster of this test's own, free to kill, pause or restart."""
    _require_broker()
    with EmbeddedBroker(TEST_BROKERS) as b:
        yield b


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix unique to this test, e.g. `t-test-name-1a2b3c4d.`, for topic and group names.

    Legal in Kafka topic names ([a-zA-Z0-9._-], at most 249 characters) and unique across
    reruns against the same session broker.
    """
    name = re.sub(r"[^a-zA-Z0-9_-]+", "-", request.node.name)[:80].strip("-")
    return f"t-{name}-{uuid.uuid4().hex[:8]}."


# -- real Apache Kafka (tests/harness/kafka.py) ------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "realkafka: runs against a real Apache Kafka broker (JVM, KRaft)")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The suite runs on two pytest-xdist workers (pyproject.toml). Every real-Kafka test goes to
    one of them, together and first (xdist sends its largest work unit first): they share one
    session broker, each mostly waits (session timeouts, broker restarts), and the other worker
    meanwhile runs the rest of the suite, one test at a time as it frees up. (xdist's own
    `xdist_group` marks are not seen by this pytest's collection, so the grouping is done here.)"""
    from xdist.scheduler import LoadScopeScheduling

    class RealKafkaTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return "realkafka" if module in REAL_KAFKA_MODULES else nodeid

    return RealKafkaTogether(config, log)


#: the test modules that run real Apache Kafka (see pytest_xdist_make_scheduler)
REAL_KAFKA_MODULES = frozenset({
    "test_realkafka_checkpoints.py", "test_realkafka_config.py", "test_realkafka_delivery.py",
    "test_realkafka_failover.py", "test_realkafka_harness.py", "test_realkafka_shards.py",
    "test_sink_realkafka.py",
})


def _scram_users() -> tuple[ScramUser, ...]:
    from tests.harness.kafka import ScramUser

    return (ScramUser("fill-publisher", os.urandom(16).hex()),)


def require_real_kafka() -> None:
    """Skip with the one reason real Kafka cannot run here; fail instead when CI requires it."""
    from tests.harness import kafka

    reason = kafka.unavailable_reason()
    if reason is None:
        return
    if os.environ.get(kafka.REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {kafka.REQUIRE_ENV}=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def _in_thread(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a loop of its own, away from the tests' loops."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, factory()).result()


@pytest.fixture(scope="session")
def real_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One single-node real Kafka for the whole session: shared, so never stop, kill or
    reconfigure it (use `kafka_cluster`), and name topics with `topic_prefix`.

    Besides PLAINTEXT it has a SASL_SSL listener (`sasl_bootstrap`) with the SCRAM-SHA-512 users
    in `cluster.sasl_ssl.users` (random passwords, so a leak is recognisable in any output) and
    its certificate from `cluster.sasl_ssl.pki` (one JVM for both listeners)."""
    from tests.harness.kafka import KafkaCluster, SaslSsl
    from tests.harness.tls import Pki

    require_real_kafka()
    home = tmp_path_factory.mktemp("real-kafka")
    cluster = KafkaCluster(home, 1, sasl_ssl=SaslSsl(Pki(home), list(_scram_users())))
    try:
        _in_thread(cluster.start)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Awaitable[KafkaCluster]]]:
    """A factory for real Kafka clusters of this test's own: `await kafka_cluster(nodes=3, ...)`
    (KafkaCluster's arguments); free to stop, kill and restart; all killed at the end."""
    from tests.harness.kafka import KafkaCluster

    require_real_kafka()
    clusters: list[KafkaCluster] = []

    async def make(nodes: int = 1, **options: Any) -> KafkaCluster:
        cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"), nodes, **options)
        clusters.append(cluster)
        return await cluster.start()

    yield make
    for cluster in clusters:
        cluster.close()
