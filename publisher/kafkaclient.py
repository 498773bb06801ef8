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

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, SaslAuthenticationFailed, for_code
from aiokafka.helpers import create_ssl_context

from publisher.config import KafkaConfig
from publisher.secret import Secret

log = logging.getLogger(__name__)

_NO_ERROR = 0
_LEADER_NOT_AVAILABLE = 5
_TOPIC_ALREADY_EXISTS = 36

#: real Kafka's default max.message.bytes (message.max.bytes on the broker)
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588
#: the checkpoint topic's segments (see checkpoint_topic_configs)
CHECKPOINT_SEGMENT_BYTES = 32 * 1024 * 1024
CHECKPOINT_SEGMENT_MS = 10 * 60 * 1000


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


def admin_options(options: dict[str, Any]) -> dict[str, Any]:
    """:func:`client_options` (or :func:`consumer_options`) without what only a consumer takes,
    for AIOKafkaAdminClient."""
    return {key: value for key, value in options.items() if key != "check_crcs"}


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
    """Create `specs` on any Kafka-protocol broker (real Kafka or librdkafka's mock), with
    aiokafka's admin client. `options` are :func:`client_options`. The recipe:

    1. topics the cluster already lists are left alone (no CreateTopics, which a cluster may
       forbid) and listed in `existing`, with their partition counts;
    2. CreateTopics for the rest (the admin client sends it to the controller);
       TOPIC_ALREADY_EXISTS is success (several instances start at once); any other per-topic
       error raises;
    3. a broker without CreateTopics (librdkafka's mock) gets them auto-created instead
       (:func:`_auto_create_on_the_mock`), listed in `auto_created`.
    """
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        return await _create(admin, specs, int(options.get("request_timeout_ms", 30000)))
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, specs: list[TopicSpec], timeout_ms: int) -> EnsureResult:
    result = EnsureResult()
    listed = set(await admin.list_topics())
    result.existing = [s.name for s in specs if s.name in listed]
    if result.existing:
        result.partitions = await _partition_counts(admin, result.existing)
    specs = [s for s in specs if s.name not in listed]
    if not specs:
        return result
    cluster = await admin.describe_cluster()
    if cluster["controller_id"] not in {broker["node_id"] for broker in cluster["brokers"]}:
        # only librdkafka's mock (started through its test.mock.num.brokers shortcut) names a
        # controller that is no broker; it has no CreateTopics either
        return await _auto_create_on_the_mock(admin, specs, result)
    new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs)) for s in specs]
    try:
        response = await admin.create_topics(new, timeout_ms=timeout_ms)
    except IncompatibleBrokerVersion:
        return await _auto_create_on_the_mock(admin, specs, result)
    for entry in response.to_object()["topic_errors"]:
        topic, code = entry["topic"], entry["error_code"]
        if code == _NO_ERROR:
            result.created.append(topic)
            result.partitions[topic] = next(s.partitions for s in specs if s.name == topic)
        elif code == _TOPIC_ALREADY_EXISTS:
            result.existing.append(topic)
            result.partitions.update(await _partition_counts(admin, [topic]))
        else:
            raise for_code(code)(f"creating topic {topic!r}: {entry.get('error_message') or ''}".rstrip(": "))
    return result


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partition counts of topics that exist (describing a missing topic may auto-create it)."""
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)
            if t["error_code"] in (_NO_ERROR, _LEADER_NOT_AVAILABLE)}


async def _auto_create_on_the_mock(admin: AIOKafkaAdminClient, specs: list[TopicSpec],
                                   result: EnsureResult) -> EnsureResult:
    """The fallback for a broker without CreateTopics (librdkafka's mock, which the demo and the
    fast tests run on): a Metadata request (the admin client's describe_topics, which lets the
    broker auto-create) until every topic has leaders. Partition counts and configs
    (`cleanup.policy=compact`) are the broker's defaults, not the specs'."""
    topics = [s.name for s in specs]
    for _ in range(100):
        described = await admin.describe_topics(topics)
        failed = [(t["topic"], t["error_code"]) for t in described
                  if t["error_code"] not in (_NO_ERROR, _LEADER_NOT_AVAILABLE)]
        if failed:
            topic, code = failed[0]
            raise for_code(code)(f"auto-creating topic {topic!r}")
        if all(t["error_code"] == _NO_ERROR and t["partitions"] for t in described):
            result.auto_created = topics
            result.partitions.update({t["topic"]: len(t["partitions"]) for t in described})
            return result
        await asyncio.sleep(0.05)
    raise KafkaError(f"topics {topics} got no leaders")


async def topic_partitions(options: dict[str, Any], topic: str) -> set[int] | None:
    """The partitions of `topic`, None when the cluster has no such topic (never creates it).
    `options`: :func:`client_options` or :func:`consumer_options`."""
    admin = AIOKafkaAdminClient(**admin_options(options))
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return None
        (described,) = await admin.describe_topics([topic])
        return {p["partition"] for p in described["partitions"]}
    finally:
        await admin.close()


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
                               {**checkpoint_topic_configs(kafka), **size}))
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


def checkpoint_topic_configs(kafka: KafkaConfig) -> dict[str, str]:
    """How the checkpoint topic is created: compacted, and compacted soon.

    Every commit writes each committing source's whole checkpoint again, and a start (or a shard
    taken over) reads its partition from the beginning. The log cleaner never touches the
    active segment, which by Kafka's defaults rolls only after 1 GiB or 7 days: the read would
    grow with days of checkpoints. Small segments that roll every 10 minutes, and a cleaner that
    runs once a tenth of the log is superseded, keep it to one segment plus each source's newest
    checkpoint. A segment must hold the largest record.
    """
    return {
        "cleanup.policy": "compact",
        "segment.bytes": str(max(CHECKPOINT_SEGMENT_BYTES, 2 * kafka.max_record_bytes)),
        "segment.ms": str(CHECKPOINT_SEGMENT_MS),
        "min.cleanable.dirty.ratio": "0.1",
    }


async def _broker_count(options: dict[str, Any]) -> int:
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        return max(1, len((await admin.describe_cluster())["brokers"]))
    finally:
        await admin.close()
