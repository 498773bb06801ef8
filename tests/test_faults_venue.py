"""Venue faults, end to end: `fill-publisher run` as a child process, simulators over real HTTP, the
session's Kafka-protocol broker.

1. every fault kind on one source in turn while fills keep arriving everywhere: the other sources
   keep publishing, the faulty one backs off (exponentially, with jitter, honouring Retry-After),
   recovers and catches up; errors are counted by reason;
2. credentials rejected: a clear log line naming the source and no secret, `reason="auth"`, a slow
   retry, no crash; recovery once the venue accepts us again (in-process, with a short backoff);
8. malformed fills: each goes to the DLQ once with its reason and raw JSON, the rest of its page is
   published, and the poller neither stalls nor repeats the dead letter on later polls;
9. no checkpoint at start (topic missing, or empty): a warning per source, the fills of the last
   `lookback_s` published, nothing older.

Delivery is judged from the raw log, counting records of committed transactions only (the mock
broker does not filter read_committed; see tests/harness/delivery.py). No process crashes here,
so "exactly once among committed records" is what a read_committed consumer on real Kafka sees.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from publisher.config import KafkaConfig
from publisher.event import FillEvent
from publisher.metrics import Metrics
from publisher.poll import Backoff, Poller
from publisher.secret import Secret
from publisher.sim.base import BAD_FILL_MODES
from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.sink import TransactionalSink
from publisher.state import SourceState
from publisher.venues import kalshi as kalshi_venue
from publisher.venues.kalshi import KalshiSource
from tests.harness.delivery import LogRecord, assert_exactly_once, committed, fill_id_header, read_log
from tests.harness.stack import NS, PublisherProcess, Stack, secret_needles, wait_until

pytestmark = pytest.mark.integration

LOOKBACK_S = 30
FAST = {"poll_interval_s": 0.2, "lookback_s": LOOKBACK_S, "page_limit": 50, "max_requests_per_s": 200,
        "timeout_s": 5}
#: the ordinary backoff's base: max(0.5 s, poll_interval_s)
BASE_S = 0.5
_RETRY = re.compile(r"source (\S+): poll failed, (\w+) \(.*\); retrying in ([0-9.]+)s")


@pytest.fixture
async def stack(broker: Any, topic_prefix: str, tmp_path: Path) -> Any:
    s = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    yield s
    await s.close()


def make_topics(broker: Any, stack: Stack, *, checkpoint: bool = True) -> None:
    for name, topic in stack.topics.items():
        if name != "checkpoint":
            broker.create_topic(topic, partitions=4)
        elif checkpoint:
            broker.create_topic(topic, partitions=1)


def retry_delays(proc: PublisherProcess, source: str, reason: str) -> list[float]:
    """The backoff delays the publisher logged for `source`'s failed polls of `reason`, in order."""
    out = []
    for line in proc.logs().splitlines():
        match = _RETRY.search(line)
        if match and match.group(1) == source and match.group(2) == reason:
            out.append(float(match.group(3)))
    return out


def assert_exponential(delays: list[float], first: int = 1) -> None:
    """Delay n of a failure streak lies in [c/2, c], c = BASE_S * 2**(n-1) (logged to 0.1 s)."""
    for n, delay in enumerate(delays, start=first):
        ceiling = min(60.0, BASE_S * 2 ** (n - 1))
        assert ceiling / 2 - 0.051 <= delay <= ceiling + 0.051, (n, delays)


def check_fill(record: LogRecord, source: str, expected: dict[str, Any]) -> None:
    """A published fill against the simulator's truth. Schema drift may have removed legacy
    fields, so `venue_fields` must be a subset of what the undrifted fill would give."""
    event = msgspec.to_builtins(msgspec.json.decode(record.value, type=FillEvent))  # type: ignore[arg-type]
    assert event.pop("source") == source
    for key in ("schema_version", "observed_at_ns"):
        event.pop(key)
    want = dict(expected)
    want_extras = want.pop("venue_fields")
    got_extras = event.pop("venue_fields")
    assert event == want
    assert got_extras.items() <= want_extras.items()


async def sample(proc: PublisherProcess, name: str, sources: Iterable[str], **labels: str) -> dict[str, float]:
    return {s: await proc.metric(name, source=s, **labels) for s in sources}


# -- scenario 1 ------------------------------------------------------------------------------------


async def test_faults_on_one_source_others_keep_publishing_faulty_one_recovers(broker: Any, stack: Stack) -> None:
    faulty_name, others = "kalshi-f", ["kalshi-b", "zll-a", "zll-b"]
    faulty = await stack.kalshi(faulty_name, **{**FAST, "timeout_s": 1.0})
    sims = [faulty, await stack.kalshi("kalshi-b", **FAST),
            await stack.zll("zll-a", order="newest", **FAST), await stack.zll("zll-b", order="oldest", **FAST)]
    make_topics(broker, stack)
    for sim in sims:
        sim.add_fills(20, late_s=5)
    start_ns = time.time_ns()
    proc = stack.publisher().start()
    await proc.wait_ready()
    for sim in sims:
        sim.start_generator(15, late_fraction=0.2, late_max_s=3)

    async def errors(reason: str) -> float:
        return await proc.metric("fillpub_poll_errors_total", source=faulty_name, reason=reason)

    async def last_success() -> float:
        return await proc.metric("fillpub_last_success_timestamp_seconds", source=faulty_name)

    async def wait_recovered() -> None:
        mark = await last_success()

        async def moved() -> bool:
            return await last_success() > mark

        await wait_until(moved, f"{faulty_name} to poll successfully again", context=proc.log_tail)

    async def fault_round(kind: str, reason: str, count: int, **options: Any) -> None:
        before = await errors(reason)
        faulty.faults.inject(kind, count, **options)  # type: ignore[arg-type]

        async def counted() -> bool:
            return await errors(reason) >= before + count

        await wait_until(counted, f"{count} {reason} errors after {kind}", context=proc.log_tail)
        await wait_recovered()

    # a venue outage (500 on every request): the others publish on while the faulty source backs off
    before = await errors("http_5xx")
    faulty.faults.set("http_500", 1.0)

    async def failing() -> bool:
        return await errors("http_5xx") >= before + 1

    await wait_until(failing, "the first http_5xx error", context=proc.log_tail)
    published = await sample(proc, "fillpub_fills_published_total", others)
    failed_since = await last_success()

    async def others_published_during_outage() -> bool:
        now = await sample(proc, "fillpub_fills_published_total", others)
        return await errors("http_5xx") >= before + 3 and all(now[s] > published[s] for s in others)

    await wait_until(others_published_during_outage, "3 http_5xx errors while the others publish",
                     context=proc.log_tail)
    assert await last_success() == failed_since  # no poll of the faulty source succeeded meanwhile
    faulty.faults.clear("http_500")
    await wait_recovered()
    assert_exponential(retry_delays(proc, faulty_name, "http_5xx"))

    # rate limited: without Retry-After (Kalshi sends none) the backoff applies, with it the floor
    await fault_round("http_429", "http_429", 2)
    await fault_round("http_429", "http_429", 1, retry_after=2)
    delays_429 = retry_delays(proc, faulty_name, "http_429")
    assert_exponential(delays_429[:2])
    assert delays_429[2] == 2.0  # Retry-After 2 s is above the first ceiling (0.5 s)

    await fault_round("slow", "timeout", 1, delay_s=3.0)  # beyond timeout_s = 1.0
    await fault_round("drop_connection", "connect", 1)
    await fault_round("reset", "connect", 1)
    await fault_round("malformed_json", "decode", 1)
    await fault_round("malformed_json", "decode", 1, mode="html")

    # schema drift: unknown fields appear, deprecated ones vanish; fills first seen drifted publish
    for sim in (faulty, sims[2]):
        sim.faults.set("schema_drift", 1.0)
    known = {f.fill_id for sim in (faulty, sims[2]) for f in sim.fills}
    await wait_until(lambda: sum(1 for sim in (faulty, sims[2]) for f in sim.fills if f.fill_id not in known) >= 10,
                     "fills arriving during the drift")
    drifted = [f.fill_id for sim in (faulty, sims[2]) for f in sim.fills if f.fill_id not in known]
    seen_drifted = {fill_id_header(r) for r in await stack.wait_for_fills(drifted)}
    assert set(drifted) <= seen_drifted  # published while every page the venues served was drifted
    for sim in (faulty, sims[2]):
        sim.faults.clear("schema_drift")

    for sim in sims:
        await sim.stop_generator()
    expected = stack.expected(start_ns - LOOKBACK_S * NS)
    records = await stack.wait_for_fills(expected)
    by_source = await sample(proc, "fillpub_poll_errors_total", [faulty_name, *others])
    reasons = {r: await errors(r) for r in ("timeout", "connect", "http_429", "http_4xx", "http_5xx", "auth", "decode")}
    code, _ = await proc.terminate()
    assert code == 0, proc.log_tail()

    report = assert_exactly_once(records, expected)
    assert report.expected > 500
    for record in records:
        spec, fill = expected[fill_id_header(record)]  # type: ignore[index]
        check_fill(record, spec.name, fill.expected_event())

    # each failure counted once, under its reason; the other sources never failed
    fired = faulty.faults.fired
    assert reasons == {
        "timeout": fired["slow"],
        "connect": fired["drop_connection"] + fired["reset"],
        "http_429": fired["http_429"],
        "http_4xx": 0,
        "http_5xx": fired["http_500"],
        "auth": 0,
        "decode": fired["malformed_json"],
    }, fired
    assert fired["http_500"] >= 3 and fired["http_429"] == 3 and fired["malformed_json"] == 2
    assert all(by_source[s] == 0 for s in others), by_source


# -- scenario 8 ------------------------------------------------------------------------------------


def letter_fill_id(record: LogRecord) -> str:
    """The venue's fill id inside a dead letter's raw payload (Kalshi `fill_id`, ZLL `id`)."""
    raw = json.loads(record.value)["raw"]  # type: ignore[arg-type]
    return raw.get("fill_id") or raw["id"]

#: a word the dead letter's `error` must contain, per venue and corruption mode
_ERROR_NAMES = {
    ("kalshi", "non_numeric_price"): "price", ("kalshi", "missing_field"): "ticker", ("kalshi", "bad_enum"): "side",
    ("zll", "non_numeric_price"): "price", ("zll", "missing_field"): "market", ("zll", "bad_enum"): "side",
}


async def test_malformed_fills_dead_lettered_once_rest_of_page_published(broker: Any, stack: Stack) -> None:
    # a short overlap window, so that over the test's many polls the window forgets every fill: a
    # dead letter must not come back once it has
    settings = {**FAST, "lookback_s": 3, "page_limit": 10}
    sims = {"kalshi-m": await stack.kalshi("kalshi-m", **settings),
            "zll-new": await stack.zll("zll-new", order="newest", **settings),
            "zll-old": await stack.zll("zll-old", order="oldest", **settings)}
    make_topics(broker, stack)
    start_ns = time.time_ns()
    proc = stack.publisher().start()
    await proc.wait_ready()

    bad: dict[str, tuple[str, str]] = {}  # fill id -> (source, mode)

    def add_wave() -> None:
        # each bad fill sits between good ones; with 10 fills a page they spread over several pages
        for name, sim in sims.items():
            for mode in BAD_FILL_MODES:
                sim.add_fills(4)
                poisoned = sim.add_fill()
                sim.bad_fills[poisoned.fill_id] = mode
                bad[poisoned.fill_id] = (name, mode)
            sim.add_fills(3)

    async def dead_letters() -> list[LogRecord]:
        return await stack.records("dlq")

    async def letters_for_all_bad() -> bool:
        return len(await dead_letters()) >= len(bad)

    add_wave()
    await wait_until(letters_for_all_bad, "a dead letter for each malformed fill", context=proc.log_tail)
    add_wave()  # a second wave while the publisher has been running for a while
    await wait_until(letters_for_all_bad, "a dead letter for each malformed fill", context=proc.log_tail)
    polls = await sample(proc, "fillpub_poll_duration_seconds_count", sims)

    # the poller keeps polling: many more polls, well past the 3 s window, re-reading the bad fills
    async def many_more_polls() -> bool:
        now = await sample(proc, "fillpub_poll_duration_seconds_count", sims)
        return all(now[s] >= polls[s] + 30 for s in sims)

    await wait_until(many_more_polls, "30 more polls of every source", context=proc.log_tail)
    good = {fid: v for fid, v in stack.expected(start_ns - 3 * NS).items() if fid not in bad}
    records = await stack.wait_for_fills(good)
    invalid = await sample(proc, "fillpub_fills_invalid_total", sims)
    errors = await proc.metric("fillpub_poll_errors_total")
    code, _ = await proc.terminate()
    assert code == 0, proc.log_tail()

    assert_exactly_once(records, good)
    letters = await dead_letters()
    assert assert_exactly_once(letters, bad, id_of=letter_fill_id).expected == 18
    for record in letters:
        letter = json.loads(record.value)  # type: ignore[arg-type]
        assert set(letter) == {"source", "venue", "error", "raw"}
        fill_id = letter_fill_id(record)
        source, mode = bad[fill_id]
        sim = sims[source]
        assert (letter["source"], letter["venue"]) == (source, sim.venue)
        assert _ERROR_NAMES[(sim.venue, mode)] in letter["error"], letter["error"]
        # raw is the venue's JSON byte for byte, embedded as JSON (not a string)
        assert sim.wire_json(sim.get(fill_id)) in record.value  # type: ignore[arg-type, operator]
        assert record.key == source.encode()
        assert dict(record.headers) == {"venue": sim.venue.encode(), "source": source.encode(),
                                        "content-type": b"application/json"}
    assert invalid == {s: 6 for s in sims}
    assert errors == 0


# -- scenario 9 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("checkpoint_topic", "create_topics"), [
    ("missing", False),  # deleted, or never created, and the publisher may not create topics
    ("missing", True),  # the publisher creates it (empty) before reading it
    ("empty", True),
])
async def test_no_checkpoint_at_start_publishes_the_lookback_window_only(
    broker: Any, stack: Stack, checkpoint_topic: str, create_topics: bool
) -> None:
    lookback = 20
    settings = {**FAST, "lookback_s": lookback}
    sims = [await stack.kalshi("kalshi-s", **settings), await stack.zll("zll-s", order="oldest", **settings)]
    make_topics(broker, stack, checkpoint=checkpoint_topic == "empty")
    stack.kafka_extra["create_topics"] = create_topics
    old, recent = [], []
    for sim in sims:
        old += sim.add_fills(3, late_s=lookback + 40) + sim.add_fills(3, late_s=lookback + 15)
        recent += sim.add_fills(10, late_s=lookback - 12) + sim.add_fills(10, late_s=1)
    proc = stack.publisher().start()
    await proc.wait_ready()
    live = [f for sim in sims for f in sim.add_fills(5)]
    wanted = {f.fill_id for f in recent + live}
    await stack.wait_for_fills(wanted)
    polls = await sample(proc, "fillpub_poll_duration_seconds_count", ["kalshi-s", "zll-s"])

    async def more_polls() -> bool:
        now = await sample(proc, "fillpub_poll_duration_seconds_count", ["kalshi-s", "zll-s"])
        return all(now[s] >= polls[s] + 10 for s in now)

    await wait_until(more_polls, "10 more polls of each source", context=proc.log_tail)
    records = await stack.records("kalshi", "zll")
    code, _ = await proc.terminate()
    assert code == 0, proc.log_tail()

    assert_exactly_once(records, wanted)  # nothing older than lookback_s: it would be unexpected
    assert not {f.fill_id for f in old} & {fill_id_header(r) for r in records}
    topic = stack.topics["checkpoint"]
    for name in ("kalshi-s", "zll-s"):
        warning = proc.log_lines("WARNING", f"source {name}: no checkpoint in {topic}")
        assert len(warning) == 1 and f"last {lookback}s" in warning[0], proc.log_tail()
    assert bool(proc.log_lines("WARNING", f"checkpoint topic {topic} does not exist")) == (
        checkpoint_topic == "missing" and not create_topics), proc.logs()
    assert not proc.log_lines(" ERROR publisher."), proc.log_tail()

    # the first commits wrote checkpoints: a restart resumes from them, without the warning
    restarted = stack.publisher().start()
    await restarted.wait_ready()
    code, _ = await restarted.terminate()
    assert code == 0
    assert len(restarted.log_lines("no checkpoint in")) == 2  # the same log file: only the first start's


# -- scenario 2 ------------------------------------------------------------------------------------


async def test_rejected_credentials_logged_counted_retried_slowly(broker: Any, stack: Stack) -> None:
    kalshi = await stack.kalshi("kalshi-x", **FAST)
    kalshi.faults.set("auth", 1.0)  # the venue answers 401 to a correctly signed request
    await stack.zll("zll-x", **FAST)
    Path(stack.sources[-1].settings["api_key_file"]).write_text("d3Jvbmcta2V5LW5vdC10aGUtb25lLWdpdmVu\n")
    await stack.zll("zll-ok", **FAST)
    make_topics(broker, stack)
    proc = stack.publisher().start()
    await proc.wait_ready()
    rejected = ["kalshi-x", "zll-x"]

    async def both_rejected() -> bool:
        counts = await sample(proc, "fillpub_poll_errors_total", rejected, reason="auth")
        return all(v >= 1 for v in counts.values())

    await wait_until(both_rejected, "an auth error on both sources", context=proc.log_tail)
    requests = await sample(proc, "fillpub_poll_requests_total", [*rejected, "zll-ok"])

    # the next attempt is not immediate: several poll intervals pass without one
    async def healthy_source_polled_on() -> bool:
        return await proc.metric("fillpub_poll_requests_total", source="zll-ok") >= requests["zll-ok"] + 8

    await wait_until(healthy_source_polled_on, "8 more polls of the healthy source", context=proc.log_tail)
    assert await sample(proc, "fillpub_poll_requests_total", rejected) == {s: requests[s] for s in rejected}
    assert proc.alive
    health = await proc.get("/healthz")
    assert health is not None and health.status_code == 200
    errors = {s: {r: await proc.metric("fillpub_poll_errors_total", source=s, reason=r) for r in ("auth", "http_4xx")}
              for s in rejected}
    code, took = await proc.terminate()
    assert code == 0, proc.log_tail()
    assert took < 10  # a source waiting out its long auth backoff does not hold up shutdown

    assert errors == {s: {"auth": 1, "http_4xx": 0} for s in rejected}
    for name in rejected:
        [line] = proc.log_lines(f"source {name}: venue rejected our credentials")
        assert " ERROR " in line and "HTTP 401" in line, line
        delay = float(re.search(r"retrying in ([0-9]+)s", line).group(1))  # type: ignore[union-attr]
        assert 7 <= delay <= 15
    logs = proc.logs()
    for needle in secret_needles(stack.secrets()):
        assert needle not in logs
    assert "***" not in logs  # nothing even tried to log a secret (the redactor never had to act)


async def test_auth_failure_recovers_when_the_venue_accepts_us_again(
    broker: Any, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Unit-level (in-process Poller, short auth backoff), over real HTTP and the real broker."""
    private_pem, public_pem = generate_key_pair()
    key_id = str(uuid.uuid4())
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_template=topic_prefix + "fills.{venue}",
                        dlq_topic=topic_prefix + "dlq", checkpoint_topic=topic_prefix + "checkpoints",
                        transactional_id_prefix=topic_prefix + "publisher", check_crcs=False, create_topics=False)
    metrics = Metrics()
    sink = TransactionalSink(kafka, None, metrics)
    await sink.start()
    sink_task = asyncio.create_task(sink.run())
    async with KalshiSimulator(public_key=public_pem, key_id=key_id, shape="mixed", seed=9) as sim, \
            httpx.AsyncHTTPTransport() as http:
        sim.faults.set("auth", 1.0)
        fills = sim.add_fills(30, late_s=2)
        source = KalshiSource(name="kalshi-r", base_url=sim.url, api_key_id=key_id, private_key_env="UNUSED",
                              poll_interval_s=0.1, lookback_s=30, timeout_s=5)
        source_metrics = metrics.source("kalshi", "kalshi-r")
        adapter = kalshi_venue.create_adapter(source, Secret(private_pem.decode()), http, source_metrics.requests.inc)
        poller = Poller(source, adapter, SourceState(source, None, time.time_ns()), sink, source_metrics,
                        auth_backoff=Backoff(base_s=0.05, cap_s=0.4))
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))

        def value(name: str, **labels: str) -> float:
            sample_value = metrics.registry.get_sample_value(name, {"venue": "kalshi", "source": "kalshi-r", **labels})
            return sample_value or 0.0

        await wait_until(lambda: value("fillpub_poll_errors_total", reason="auth") >= 4, "4 auth errors")
        assert value("fillpub_fills_published_total") == 0
        sim.faults.clear("auth")  # e.g. the operator fixed the key's permissions
        await wait_until(lambda: value("fillpub_fills_published_total") == len(fills), "the backlog published")
        stop.set()
        await task
    assert await sink.close(sink_task, 5)

    records = committed(await read_log(broker.bootstrap_servers, [topic_prefix + "fills.kalshi"]))
    assert_exactly_once(records, [f.fill_id for f in fills])
    lines = [r.getMessage() for r in caplog.records if r.name == "publisher.poll"]
    assert len([m for m in lines if m.startswith("source kalshi-r: venue rejected our credentials")]) >= 4
    for needle in secret_needles([private_pem.decode()]):
        assert needle not in caplog.text


# --------------------------------------------------------------------------------------------------
# A Kalshi that refuses reused signatures


async def test_sources_sharing_a_key_keep_polling_when_kalshi_refuses_reused_signatures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Subaccount sources of one key share signatures (see KalshiSigner). Should Kalshi treat a
    second use as a replay, the refused request is retried with a fresh signature, reuse stops
    for the key, and no poll fails: every fill of every subaccount arrives, over real HTTP."""
    private_pem, public_pem = generate_key_pair()
    key_id = str(uuid.uuid4())
    async with KalshiSimulator(public_key=public_pem, key_id=key_id, reject_reused_signatures=True, seed=4) as sim, \
            httpx.AsyncHTTPTransport() as transport:
        fills = [*sim.add_fills(5, subaccount=1), *sim.add_fills(5, subaccount=2)]
        adapters = [
            kalshi_venue.create_adapter(
                KalshiSource(name=f"kalshi-s{n}", base_url=sim.url, api_key_id=key_id, private_key_env="UNUSED",
                             subaccount=n),
                Secret(private_pem.decode()), transport, lambda: None)
            for n in (1, 2)
        ]
        since = time.time_ns() - 60 * NS
        seen: set[str] = set()
        for _ in range(3):
            results = await asyncio.gather(*(a.fetch(since, None, time.time_ns) for a in adapters))
            seen |= {f.fill_id for r in results for f in r.fills}
        assert seen == {f.fill_id for f in fills}
    warnings = [r.getMessage() for r in caplog.records if "reused request signature" in r.getMessage()]
    assert warnings == [f"Kalshi refused a reused request signature for key {key_id}; signing every request from now on"]
