"""Connection settings for every aiokafka client the service builds, and topic creation.

One place turns the `kafka:` config section (security protocol, SASL, TLS files, CRC checks) into
aiokafka keyword arguments, so the producer, the checkpoint reader, topic creation and the
consumer helper can never disagree on how to reach the cluster. Topic creation
(:func:`create_topics`) works on real Kafka and on librdkafka's mock broker alike.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, SaslAuthenticationFailed, for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.admin import CreateTopicsRequest
from aiokafka.protocol.metadata import MetadataRequest

from publisher.config import KafkaConfig
from publisher.secret import Secret

log = logging.getLogger(__name__)

_NO_ERROR = 0
_LEADER_NOT_AVAILABLE = 5
_TOPIC_ALREADY_EXISTS = 36
_NOT_CONTROLLER = 41

#: real Kafka's default max.message.bytes (message.max.bytes on the broker)
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588


def client_options(kafka: KafkaConfig, sasl_password: Secret | None,
                   ssl_key_password: Secret | None = None) -> dict[str, Any]:
    """Keyword arguments shared by AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile,
            password=ssl_key_password.reveal() if ssl_key_password is not None else None,
        )
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = sasl_password.reveal() if sasl_password else None
    return options


def producer_options(kafka: KafkaConfig, sasl_password: Secret | None, ssl_key_password: Secret | None = None,
                     **service: Any) -> dict[str, Any]:
    """:func:`client_options`, the service's own producer settings (`service`), then the
    operator's `compression_type` and `producer_options` (which config validation limits to
    settings the service does not depend on)."""
    options = client_options(kafka, sasl_password, ssl_key_password)
    options.update(service)
    if kafka.compression_type != "none":
        options["compression_type"] = kafka.compression_type
    options.update(kafka.producer_options)
    return options


async def rejected_credentials(kafka: KafkaConfig, sasl_password: Secret | None,
                               ssl_key_password: Secret | None = None) -> str | None:
    """Whether the brokers reject our SASL credentials: a description naming the mechanism and the
    user (never the password), or None when they do not (or SASL is not used).

    aiokafka logs why a bootstrap failed and raises a bare KafkaConnectionError, which reads like
    an unreachable cluster; after such a failure this opens one connection itself to tell a login
    the brokers refused apart from a network problem.
    """
    if kafka.security_protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
        return None
    options = client_options(kafka, sasl_password, ssl_key_password)
    options.pop("bootstrap_servers")
    for server in kafka.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(host.strip("[]"), int(port), **options),
                                          kafka.request_timeout_s)
        except SaslAuthenticationFailed as exc:
            return (f"SASL {kafka.sasl_mechanism} login of user {kafka.sasl_username!r} refused: "
                    f"{exc.args[0] if exc.args else type(exc).__name__}")
        except Exception:  # noqa: BLE001 - not a login problem on this broker: try the next
            continue
        conn.close()
        return None
    return None


def consumer_options(kafka: KafkaConfig, sasl_password: Secret | None,
                     ssl_key_password: Secret | None = None) -> dict[str, Any]:
    """:func:`client_options` plus the consumer-only settings."""
    options = client_options(kafka, sasl_password, ssl_key_password)
    # librdkafka's mock broker writes transaction markers with CRC 0; real brokers never do
    options["check_crcs"] = kafka.check_crcs
    return options


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
    #: partition count of each topic that already existed or was created, where the broker said
    partitions: dict[str, int] = field(default_factory=dict)


async def create_topics(options: dict[str, Any], specs: list[TopicSpec]) -> EnsureResult:
    """Create `specs` on any Kafka-protocol broker (real Kafka or librdkafka's mock).

    `options` are :func:`client_options`. The recipe:

    1. CreateTopics is sent with aiokafka's own client to the controller when Metadata names one,
       else to any broker (KRaft brokers forward it; a ZooKeeper-era non-controller answers
       NOT_CONTROLLER and the next broker is tried). aiokafka's admin client is not used: it
       fails outright on a Metadata controller id that names no broker, and it returns
       per-topic errors (policy violations, bad replication factors) without raising;
    2. TOPIC_ALREADY_EXISTS is success (several instances start at once); any other per-topic
       error raises;
    0. topics that Metadata already shows are only listed in `existing`;
    3. a broker without CreateTopics (the mock) gets the topics auto-created through a Metadata
       request with `allow_auto_topic_creation`, listed in `auto_created`: their partition
       counts and configs (`cleanup.policy=compact`) were not applied.
    """
    timeout_ms = int(options.get("request_timeout_ms", 30000))
    client = AIOKafkaClient(**options)
    await client.bootstrap()
    try:
        return await _create(client, specs, timeout_ms)
    finally:
        await client.close()


async def _create(client: AIOKafkaClient, specs: list[TopicSpec], timeout_ms: int) -> EnsureResult:
    result = EnsureResult()
    # topics that exist already are left alone: no CreateTopics (which a cluster may forbid) at all
    resp = await client.send(client.get_random_node(),
                             MetadataRequest([s.name for s in specs], allow_auto_topic_creation=False))
    present = {t["topic"]: len(t["partitions"]) for t in resp.to_object()["topics"]
               if t["error_code"] in (_NO_ERROR, _LEADER_NOT_AVAILABLE)}
    result.existing = [s.name for s in specs if s.name in present]
    result.partitions = {name: present[name] for name in result.existing}
    specs = [s for s in specs if s.name not in present]
    if not specs:
        return result
    request = CreateTopicsRequest(
        [(s.name, s.partitions, s.replication_factor, [], list(s.configs.items())) for s in specs],
        timeout_ms, False,
    )
    controller = client.cluster.controller
    nodes = [b.nodeId for b in client.cluster.brokers()]
    if controller is not None and controller.nodeId in nodes:
        nodes.remove(controller.nodeId)
        nodes.insert(0, controller.nodeId)
    for node in nodes:
        try:
            resp = await client.send(node, request)
        except IncompatibleBrokerVersion:
            # no CreateTopics on this broker (librdkafka's mock): fall back to auto-creation
            counts = await _auto_create(client, [s.name for s in specs])
            result.auto_created = list(counts)
            result.partitions.update(counts)
            return result
        errors = {topic: code for topic, code, *_ in resp.topic_errors}
        if any(code == _NOT_CONTROLLER for code in errors.values()):
            continue
        for topic, code in errors.items():
            if code == _NO_ERROR:
                result.created.append(topic)
                result.partitions[topic] = next(s.partitions for s in specs if s.name == topic)
            elif code == _TOPIC_ALREADY_EXISTS:
                result.existing.append(topic)
            else:
                raise for_code(code)(f"creating topic {topic!r}")
        return result
    raise KafkaError("no broker accepted CreateTopics (NOT_CONTROLLER everywhere)")


async def _auto_create(client: AIOKafkaClient, topics: list[str]) -> dict[str, int]:
    """Ask for metadata with auto-creation on until every topic has leaders; their partition counts."""
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
            return {t["topic"]: len(t["partitions"]) for t in resp.to_object()["topics"]}
        await asyncio.sleep(0.05)
    raise KafkaError(f"topics {topics} got no leaders")


async def ensure_topics(kafka: KafkaConfig, sasl_password: Secret | None, fills_topics: list[str], *,
                        checkpoint_partitions: int = 1,
                        ssl_key_password: Secret | None = None) -> EnsureResult | None:
    """Create the fills, DLQ and (compacted) checkpoint topics when they do not exist; the
    checkpoint topic with `checkpoint_partitions` partitions (one per shard).

    Returns what was done, with the partition count of each topic that exists (an existing
    checkpoint topic keeps the count it has: compare it with the shards), or None when creation
    failed. Failure is logged, not fatal: clusters that forbid topic creation by clients are
    common, and the topics may have been created by an operator (the compose stack and the
    chart's docs do).
    """
    options = client_options(kafka, sasl_password, ssl_key_password)
    options["client_id"] = f"{kafka.client_id}-admin"
    try:
        replication = kafka.replication_factor
        if replication is None:
            # CreateTopics as aiokafka speaks it cannot ask for the broker default (-1); Kafka's
            # usual default is 3, and a smaller cluster cannot hold more replicas than brokers
            replication = min(3, await _broker_count(options))
        # records are at most max_record_bytes (checkpoints are split to fit): topics need say
        # more than the broker's default only when the setting does
        size = ({"max.message.bytes": str(kafka.max_record_bytes)}
                if kafka.max_record_bytes > KAFKA_DEFAULT_MAX_MESSAGE_BYTES else {})
        specs = [TopicSpec(name, kafka.topic_partitions, replication, dict(size))
                 for name in [*fills_topics, kafka.dlq_topic]]
        specs.append(TopicSpec(kafka.checkpoint_topic, checkpoint_partitions, replication,
                               {"cleanup.policy": "compact", **size}))
        result = await create_topics(options, specs)
    except Exception as exc:  # noqa: BLE001 - creation is best effort, see docstring
        log.warning("could not create topics (%s: %s); relying on existing or auto-created topics",
                    type(exc).__name__, exc)
        return None
    if result.created:
        log.info("created topics %s", ", ".join(result.created))
    if result.auto_created:
        log.warning("the broker does not support CreateTopics: topics %s were auto-created with the broker's "
                    "defaults (checkpoint topic NOT compacted); create them yourself on a real cluster",
                    ", ".join(result.auto_created))
    return result


async def _broker_count(options: dict[str, Any]) -> int:
    client = AIOKafkaClient(**options)
    await client.bootstrap()
    try:
        return max(1, len(client.cluster.brokers()))
    finally:
        await client.close()
