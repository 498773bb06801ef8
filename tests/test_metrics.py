"""The batch-observed lag histogram exposes what prometheus-client's own Histogram would."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from publisher.metrics import BatchHistogram, Metrics, bucket_label

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 10, 60, math.inf)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of family `name` in the registry's text exposition, parsed back."""
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_same_exposition_as_prometheus_histogram() -> None:
    rng = random.Random(5)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("lag_seconds", "lag", ["venue", "source"], BUCKETS, ours)
    single = Histogram("lag_seconds", "lag", ["venue", "source"], buckets=BUCKETS, registry=theirs)
    for source in ("a", "b"):
        batch.labels(venue="kalshi", source=source)  # created before any observation: zeros
        single.labels(venue="kalshi", source=source)
    for _ in range(50):
        source = rng.choice("ab")
        # descending like a committed batch's lags, bucket bounds themselves included
        values = sorted((rng.choice([rng.uniform(0, 100), rng.choice(BUCKETS[:-1])]) for _ in range(rng.randint(0, 40))),
                        reverse=True)
        batch.labels(venue="kalshi", source=source).observe_many(values)
        for value in values:
            single.labels(venue="kalshi", source=source).observe(value)
    batch.labels(venue="kalshi", source="a").observe(0.25)
    single.labels(venue="kalshi", source="a").observe(0.25)
    got, want = _samples(ours, "lag_seconds"), _samples(theirs, "lag_seconds")
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_unobserved_source_exports_zero_series() -> None:
    metrics = Metrics()
    metrics.source("zll", "quiet")
    samples = _samples(metrics.registry, "fillpub_fill_lag_seconds")
    labels = (("source", "quiet"), ("venue", "zll"))
    assert samples[("fillpub_fill_lag_seconds_count", labels)] == 0
    assert samples[("fillpub_fill_lag_seconds_sum", labels)] == 0
    assert samples[("fillpub_fill_lag_seconds_bucket", (("le", "+Inf"), *labels))] == 0


@pytest.mark.parametrize("buckets", [(), (1.0, 2.0), (2.0, 1.0, math.inf)])
def test_buckets_must_ascend_to_infinity(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="ascending"):
        BatchHistogram("x_seconds", "x", [], buckets, CollectorRegistry())


def test_bucket_labels_are_the_ones_prometheus_histogram_writes() -> None:
    # Go's formatting switches to an exponent from 1e7 on; ours must too, or `le` series differ
    buckets = (1e-9, 0.005, 0.25, 1, 2.5, 600, 123456.0, 1234567.0, 1e7, 12345678.9, 1.5e9, math.inf)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    BatchHistogram("x_seconds", "x", [], buckets, ours).labels().observe(3)
    Histogram("x_seconds", "x", buckets=buckets, registry=theirs).observe(3)
    assert _samples(ours, "x_seconds") == _samples(theirs, "x_seconds")
    assert bucket_label(1e7) == "1e+07" and bucket_label(math.inf) == "+Inf" and bucket_label(1) == "1.0"
