"""Shared pytest fixtures.

Keep this file to fixtures that several test modules use and whose code exists; module-specific
helpers belong next to their tests.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from publisher.embedded_broker import EmbeddedBroker, confluent_kafka_available

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
