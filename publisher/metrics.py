"""The Prometheus metrics of the contract, in a registry of their own.

Each :class:`Metrics` owns a fresh :class:`prometheus_client.CollectorRegistry`, so several
publishers (tests, the demo) can live in one process without clashing. Label values are source
names and venue names from the config and error reasons from a fixed set; nothing from venue
payloads or secrets ever becomes a label.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from publisher import __version__
from publisher.venues.errors import ErrorReason, FailureKind

#: every `reason` label value of `fillpub_poll_errors_total`, in the order :data:`ErrorReason` lists them
POLL_ERROR_REASONS: tuple[ErrorReason, ...] = get_args(ErrorReason)
#: the kinds of failure behind `reason="decode"` (see :data:`~publisher.venues.errors.FailureKind`)
POLL_FAILURE_KINDS: tuple[FailureKind, ...] = get_args(FailureKind)

# Fill lag spans sub-second (normal) to minutes (outage, late fills): default buckets stop at 10 s.
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300, 600, float("inf"))
_POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))

CONTENT_TYPE = CONTENT_TYPE_LATEST


class BatchHistogram(Collector):
    """A labelled histogram observed a batch of values at a time.

    prometheus-client's :class:`~prometheus_client.Histogram` takes one value per call (a bucket
    walk and two locked increments), which is per fill for the lag histogram: the largest
    metrics cost of a backlog drain (bench/README.md). Here a batch costs one sort (linear for the
    already ordered lags of a batch) and one binary search per bucket. The exposition is a
    histogram's (`_bucket`, `_count`, `_sum`), written by the registry's own code.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry):
        bounds = tuple(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf or list(bounds) != sorted(bounds):
            raise ValueError("buckets must be ascending and end with +Inf")
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = bounds
        self._children: dict[tuple[str, ...], BatchHistogramChild] = {}
        registry.register(self)

    def remove(self, *labelvalues: str) -> None:
        """Drop the child of one label set (as prometheus-client's metrics' `remove`)."""
        self._children.pop(tuple(labelvalues), None)

    def labels(self, **labels: str) -> BatchHistogramChild:
        """The child of one label set, created (with zero counts) on first use."""
        key = tuple(labels[name] for name in self._labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = BatchHistogramChild(self._bounds)
        return child

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        les = [bucket_label(bound) for bound in self._bounds]
        for key, child in self._children.items():
            family.add_metric(list(key), list(zip(les, child.cumulative, strict=True)), child.sum)
        yield family


def bucket_label(bound: float) -> str:
    """A bucket bound as the `le` label value prometheus-client's own Histogram writes: Go's
    float formatting (`+Inf`, `0.25`, `1.0`, and an exponent from 1e7 on, as Go switches to one)."""
    if bound == math.inf:
        return "+Inf"
    if bound == -math.inf:
        return "-Inf"
    if math.isnan(bound):
        return "NaN"
    text = repr(float(bound))
    dot = text.find(".")
    if bound > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


class BatchHistogramChild:
    """One label set of a :class:`BatchHistogram`."""

    __slots__ = ("_bounds", "cumulative", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self._bounds = bounds
        #: per bucket, the values at or below its bound (Prometheus' cumulative `le` counts)
        self.cumulative = [0] * len(bounds)
        self.sum = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        """Count every value of `values`."""
        ordered = sorted(values)
        cumulative = self.cumulative
        for i, bound in enumerate(self._bounds):
            cumulative[i] += bisect.bisect_right(ordered, bound)
        self.sum += math.fsum(ordered)

    def observe(self, value: float) -> None:
        self.observe_many((value,))


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
        # beyond the contract's list: its `decode` reason covers the venue's unreadable answers and
        # endless paging as well as our own bugs; this tells them apart (each such failure counts
        # in both)
        self.poll_failures = Counter(
            "fillpub_poll_failures", 'Failed polls counted as reason="decode", by what failed', [*per_source, "kind"],
            registry=r)
        self.publish_errors = Counter(
            "fillpub_publish_errors", "Kafka errors", ["reason"], registry=r)
        self.last_success = Gauge(
            "fillpub_last_success_timestamp_seconds", "End of the last successful poll (Unix seconds)",
            per_source, registry=r)
        self.fill_lag = BatchHistogram(
            "fillpub_fill_lag_seconds", "Commit time minus venue execution time", per_source,
            buckets=_LAG_BUCKETS, registry=r)
        self.poll_duration = Histogram(
            "fillpub_poll_duration_seconds", "One whole poll, all pages", per_source,
            buckets=_POLL_BUCKETS, registry=r)
        self.commit_duration = Histogram(
            "fillpub_commit_duration_seconds", "One Kafka transaction", buckets=_COMMIT_BUCKETS, registry=r)
        self.pending_fills = Gauge(
            "fillpub_pending_fills", "Fills fetched and not yet committed", registry=r)
        self.build_info = Gauge(
            "fillpub_build_info", "Always 1; the version label says which build runs", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        # the standard process_* (CPU, memory, file descriptors, start time) and python_info
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # beyond the contract's list: what alerts need to say "N intervals" and "not ready"
        # without kube-state-metrics
        self.poll_interval = Gauge(
            "fillpub_poll_interval_seconds", "Configured poll interval of the source", per_source, registry=r)
        # a fill the venue served that was never published, and a venue serving one fill id
        # with two sets of values: neither is a duplicate, both need a human
        self.fills_below_floor = Counter(
            "fillpub_fills_below_floor", "Fills served below the overlap window's floor that were never published",
            per_source, registry=r)
        self.fills_conflicting = Counter(
            "fillpub_fills_conflicting", "Repeats of a fill id with values other than the copy published",
            per_source, registry=r)
        self.ready = Gauge(
            "fillpub_ready", "1 while /readyz answers 200, else 0", registry=r)
        # several instances sharing the sources (cluster.shards): the contract's two, and the
        # configured count, so an alert can compare what the release owns with what it should
        self.shards_owned = Gauge(
            "fillpub_shards_owned", "Shards this instance owns", registry=r)
        self.rebalances = Counter(
            "fillpub_rebalances", "Shard assignments this instance received from the consumer group", registry=r)
        self.shards_configured = Gauge(
            "fillpub_shards_configured", "cluster.shards: the shards the sources are split into", registry=r)
        self._per_source: list[Counter | Gauge | Histogram | BatchHistogram] = [
            self.fills_published, self.fills_duplicate, self.fills_invalid, self.poll_requests, self.last_success,
            self.fill_lag, self.poll_duration, self.poll_interval, self.fills_below_floor, self.fills_conflicting,
        ]

    def source(self, venue: str, source: str) -> SourceMetrics:
        """Bound children for one source; creating them makes every series exist from zero, so
        rate() and absent() based alerts see the source before its first event."""
        return SourceMetrics(self, venue, source)

    def forget_source(self, venue: str, source: str) -> None:
        """Drop a source's series: it moved to another instance (its shard did), whose series
        now describe it; a stale copy here would look like a source that stopped polling."""
        for metric in self._per_source:
            metric.remove(venue, source)
        for reason in POLL_ERROR_REASONS:
            self.poll_errors.remove(venue, source, reason)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class SourceMetrics:
    """A source's labelled children, resolved once instead of on every observation."""

    __slots__ = (
        "below_floor",
        "conflicting",
        "duplicate",
        "errors",
        "failures",
        "invalid",
        "lag",
        "last_success",
        "poll_duration",
        "poll_interval",
        "published",
        "requests",
    )

    def __init__(self, metrics: Metrics, venue: str, source: str):
        labels = {"venue": venue, "source": source}
        self.published = metrics.fills_published.labels(**labels)
        self.duplicate = metrics.fills_duplicate.labels(**labels)
        self.invalid = metrics.fills_invalid.labels(**labels)
        self.requests = metrics.poll_requests.labels(**labels)
        self.errors = {reason: metrics.poll_errors.labels(**labels, reason=reason) for reason in POLL_ERROR_REASONS}
        self.failures = {kind: metrics.poll_failures.labels(**labels, kind=kind) for kind in POLL_FAILURE_KINDS}
        self.last_success = metrics.last_success.labels(**labels)
        self.lag = metrics.fill_lag.labels(**labels)
        self.poll_duration = metrics.poll_duration.labels(**labels)
        self.poll_interval = metrics.poll_interval.labels(**labels)
        self.below_floor = metrics.fills_below_floor.labels(**labels)
        self.conflicting = metrics.fills_conflicting.labels(**labels)
