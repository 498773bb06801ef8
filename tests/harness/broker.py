"""Topic creation that works on real Kafka and on librdkafka's mock broker.

aiokafka's `AIOKafkaAdminClient.create_topics` sends CreateTopics to the controller named in the
Metadata response. The mock advertises controller id 0, which names no broker, so aiokafka fails
with `AttributeError: 'NoneType' object has no attribute 'nodeId'`. `EmbeddedBroker` now sets a
real controller id, but that only changes the error: the mock does not implement CreateTopics at
all (it is missing from its ApiVersions, so aiokafka raises IncompatibleBrokerVersion) and has
no topic configs. Its topics are auto-created with 4 partitions, or created with a chosen
partition count through `EmbeddedBroker.create_topic` (librdkafka's mock API).

:func:`ensure_topics` is the portable recipe, meant to be lifted into the product's Kafka layer:

1. send CreateTopics with aiokafka's own client, to the controller if Metadata names one, else to
   any broker (KRaft brokers forward it to the controller; a ZooKeeper-era non-controller answers
   NOT_CONTROLLER and the next broker is tried);
2. TOPIC_ALREADY_EXISTS counts as success (several instances start at once);
3. a broker without CreateTopics (the mock) gets the topics auto-created through a Metadata
   request with `allow_auto_topic_creation`, and the result says so, since partitions and
   configs such as `cleanup.policy=compact` were not applied.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, for_code
from aiokafka.protocol.admin import CreateTopicsRequest
from aiokafka.protocol.metadata import MetadataRequest

_NO_ERROR = 0
_LEADER_NOT_AVAILABLE = 5
_TOPIC_ALREADY_EXISTS = 36
_NOT_CONTROLLER = 41


@dataclass(frozen=True)
class TopicSpec:
    """What a topic should look like where the broker lets us say."""

    name: str
    partitions: int
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


@dataclass
class EnsureResult:
    """Which topics were created, already existed, or were only auto-created (no configs)."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    auto_created: list[str] = field(default_factory=list)


async def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], *, timeout_ms: int = 30000
) -> EnsureResult:
    """Create `specs` on any Kafka-protocol broker; see the module docstring for the recipe."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="topic-setup",
                            request_timeout_ms=timeout_ms)
    await client.bootstrap()
    try:
        return await _ensure(client, specs, timeout_ms)
    finally:
        await client.close()


async def _ensure(client: AIOKafkaClient, specs: list[TopicSpec], timeout_ms: int) -> EnsureResult:
    result = EnsureResult()
    request = CreateTopicsRequest(
        [(s.name, s.partitions, s.replication_factor, [], list(s.configs.items())) for s in specs],
        timeout_ms, False,
    )
    controller = client.cluster.controller
    nodes = [b.nodeId for b in client.cluster.brokers()]
    if controller is not None:
        nodes.remove(controller.nodeId)
        nodes.insert(0, controller.nodeId)
    for node in nodes:
        try:
            resp = await client.send(node, request)
        except IncompatibleBrokerVersion:
            # No CreateTopics on this broker (librdkafka's mock): fall back to auto-creation.
            result.auto_created = await _auto_create(client, [s.name for s in specs])
            return result
        errors = {topic: code for topic, code, *_ in resp.topic_errors}
        if any(code == _NOT_CONTROLLER for code in errors.values()):
            continue
        for topic, code in errors.items():
            if code == _NO_ERROR:
                result.created.append(topic)
            elif code == _TOPIC_ALREADY_EXISTS:
                result.existing.append(topic)
            else:
                raise for_code(code)(f"creating topic {topic!r}")
        return result
    raise KafkaError("no broker accepted CreateTopics (NOT_CONTROLLER everywhere)")


async def _auto_create(client: AIOKafkaClient, topics: list[str]) -> list[str]:
    """Ask for metadata with auto-creation on until every topic has leaders."""
    for _ in range(100):
        resp = await client.send(client.get_random_node(),
                                 MetadataRequest(topics, allow_auto_topic_creation=True))
        pending = [t for code, t, *_ in resp.topics if code == _LEADER_NOT_AVAILABLE]
        failed = {t: code for code, t, *_ in resp.topics
                  if code not in (_NO_ERROR, _LEADER_NOT_AVAILABLE)}
        if failed:
            topic, code = next(iter(failed.items()))
            raise for_code(code)(f"auto-creating topic {topic!r}")
        if not pending:
            return topics
        await asyncio.sleep(0.05)
    raise KafkaError(f"topics {topics} got no leaders")
