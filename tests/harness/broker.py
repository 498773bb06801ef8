"""Topic creation for tests: the product's portable recipe, by bootstrap string.

The recipe (CreateTopics to the controller or any broker, TOPIC_ALREADY_EXISTS as success, and a
Metadata auto-create fallback for librdkafka's mock, which has no CreateTopics) lives in
:func:`publisher.kafkaclient.create_topics`; this wrapper only builds the client options.
"""

from __future__ import annotations

from publisher.kafkaclient import EnsureResult, TopicSpec, create_topics

__all__ = ["EnsureResult", "TopicSpec", "ensure_topics"]


async def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], *, timeout_ms: int = 30000
) -> EnsureResult:
    """Create `specs` on any Kafka-protocol broker; see :func:`publisher.kafkaclient.create_topics`."""
    return await create_topics(
        {"bootstrap_servers": bootstrap, "client_id": "topic-setup", "request_timeout_ms": timeout_ms}, specs)
