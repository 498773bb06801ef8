"""Connection settings for every aiokafka client the service builds, and topic creation.

One place turns the `kafka:` config section (security protocol, SASL, TLS files, CRC checks) into
aiokafka keyword arguments, so the producer, the checkpoint reader and the consumer helper can
never disagree on how to reach the cluster.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from publisher.config import KafkaConfig
from publisher.secret import Secret

log = logging.getLogger(__name__)

#: checkpoints carry the dedupe window, which can reach megabytes for very busy sources
CHECKPOINT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def client_options(kafka: KafkaConfig, sasl_password: Secret | None) -> dict[str, Any]:
    """Keyword arguments shared by AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = sasl_password.reveal() if sasl_password else None
    return options


def consumer_options(kafka: KafkaConfig, sasl_password: Secret | None) -> dict[str, Any]:
    """:func:`client_options` plus the consumer-only settings."""
    options = client_options(kafka, sasl_password)
    # librdkafka's mock broker writes transaction markers with CRC 0; real brokers never do
    options["check_crcs"] = kafka.check_crcs
    return options


async def ensure_topics(kafka: KafkaConfig, sasl_password: Secret | None, fills_topics: list[str]) -> None:
    """Create the fills, DLQ and (compacted) checkpoint topics when they do not exist.

    Failure is logged, not fatal: clusters that forbid topic creation by clients are common, and
    the topics may have been created by an operator (the compose stack and the chart's docs do).
    """
    admin_options = client_options(kafka, sasl_password)
    admin_options.pop("client_id", None)
    admin = AIOKafkaAdminClient(client_id=f"{kafka.client_id}-admin", **admin_options)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [*fills_topics, kafka.dlq_topic, kafka.checkpoint_topic]
        if all(name in existing for name in wanted):
            return
        replication = kafka.replication_factor
        if replication is None:
            # aiokafka cannot ask for the broker default (-1); Kafka's usual default is 3
            brokers = (await admin.describe_cluster())["brokers"]
            replication = min(3, len(brokers))
        topics = [NewTopic(name, kafka.topic_partitions, replication) for name in [*fills_topics, kafka.dlq_topic]]
        topics.append(
            NewTopic(
                kafka.checkpoint_topic,
                1,
                replication,
                topic_configs={
                    "cleanup.policy": "compact",
                    "max.message.bytes": str(CHECKPOINT_MAX_MESSAGE_BYTES),
                },
            )
        )
        missing = [t for t in topics if t.name not in existing]
        if missing:
            await admin.create_topics(missing)
            log.info("created topics %s", ", ".join(t.name for t in missing))
    except TopicAlreadyExistsError:
        pass
    except Exception as exc:  # noqa: BLE001 - creation is best effort, see docstring
        log.warning("could not create topics (%s: %s); relying on existing or auto-created topics",
                    type(exc).__name__, exc)
    finally:
        await admin.close()
