"""The Prometheus metrics of the contract, in a registry of their own.

Each :class:`Metrics` owns a fresh :class:`prometheus_client.CollectorRegistry`, so several
publishers (tests, the demo) can live in one process without clashing. Label values are source
names and venue names from the config and error reasons from a fixed set; nothing from venue
payloads or secrets ever becomes a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from publisher.venues.base import ErrorReason

POLL_ERROR_REASONS: tuple[ErrorReason, ...] = (
    "timeout", "connect", "http_429", "http_4xx", "http_5xx", "auth", "decode",
)

# Fill lag spans sub-second (normal) to minutes (outage, late fills): default buckets stop at 10 s.
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300, 600, float("inf"))
_POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric the contract names, plus :meth:`source` to pre-create a source's series."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        per_source = ["venue", "source"]
        self.fills_published = Counter(
            "fillpub_fills_published", "Fills committed to the fills topics (DLQ records not counted)",
            per_source, registry=r)
        self.fills_duplicate = Counter(
            "fillpub_fills_duplicate", "Fills dropped as already published", per_source, registry=r)
        self.fills_invalid = Counter(
            "fillpub_fills_invalid", "Fills sent to the DLQ", per_source, registry=r)
        self.poll_requests = Counter(
            "fillpub_poll_requests", "HTTP requests made to the venue", per_source, registry=r)
        self.poll_errors = Counter(
            "fillpub_poll_errors", "Failed polls by reason", [*per_source, "reason"], registry=r)
        self.publish_errors = Counter(
            "fillpub_publish_errors", "Kafka errors", ["reason"], registry=r)
        self.last_success = Gauge(
            "fillpub_last_success_timestamp_seconds", "End of the last successful poll (Unix seconds)",
            per_source, registry=r)
        self.fill_lag = Histogram(
            "fillpub_fill_lag_seconds", "Commit time minus venue execution time", per_source,
            buckets=_LAG_BUCKETS, registry=r)
        self.poll_duration = Histogram(
            "fillpub_poll_duration_seconds", "One whole poll, all pages", per_source,
            buckets=_POLL_BUCKETS, registry=r)
        self.commit_duration = Histogram(
            "fillpub_commit_duration_seconds", "One Kafka transaction", buckets=_COMMIT_BUCKETS, registry=r)
        self.pending_fills = Gauge(
            "fillpub_pending_fills", "Fills fetched and not yet committed", registry=r)
        # beyond the contract's list: what alerts need to say "N intervals" and "not ready"
        # without kube-state-metrics
        self.poll_interval = Gauge(
            "fillpub_poll_interval_seconds", "Configured poll interval of the source", per_source, registry=r)
        self.ready = Gauge(
            "fillpub_ready", "1 while /readyz answers 200, else 0", registry=r)

    def source(self, venue: str, source: str) -> SourceMetrics:
        """Bound children for one source; creating them makes every series exist from zero, so
        rate() and absent() based alerts see the source before its first event."""
        return SourceMetrics(self, venue, source)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class SourceMetrics:
    """A source's labelled children, resolved once instead of on every observation."""

    __slots__ = ("published", "duplicate", "invalid", "requests", "errors", "last_success", "lag", "poll_duration",
                 "poll_interval")

    def __init__(self, metrics: Metrics, venue: str, source: str):
        labels = {"venue": venue, "source": source}
        self.published = metrics.fills_published.labels(**labels)
        self.duplicate = metrics.fills_duplicate.labels(**labels)
        self.invalid = metrics.fills_invalid.labels(**labels)
        self.requests = metrics.poll_requests.labels(**labels)
        self.errors = {reason: metrics.poll_errors.labels(**labels, reason=reason) for reason in POLL_ERROR_REASONS}
        self.last_success = metrics.last_success.labels(**labels)
        self.lag = metrics.fill_lag.labels(**labels)
        self.poll_duration = metrics.poll_duration.labels(**labels)
        self.poll_interval = metrics.poll_interval.labels(**labels)
