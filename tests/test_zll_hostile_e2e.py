"""ZLL's hostile data end to end: the simulator over real HTTP, `fill-publisher run` as a child and
a Kafka-protocol broker. Fills with a time in the wrong unit, `1e30`, control characters or bytes
that are not UTF-8 go to the DLQ with their reason while the rest of their page is published; a
fill garbled in one list page only is published from the single-fill endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from publisher.embedded_broker import EmbeddedBroker
from tests.harness.delivery import fill_id_header
from tests.harness.stack import Stack, wait_until

pytestmark = pytest.mark.integration

SETTINGS = {"poll_interval_s": 0.25, "lookback_s": 60, "page_limit": 20, "max_requests_per_s": 200, "timeout_s": 5}


async def test_bad_fills_are_dead_letters_and_their_pages_published(broker: EmbeddedBroker, topic_prefix: str,
                                                                   tmp_path: Path) -> None:
    stack = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    try:
        sim = await stack.zll("zll-hostile", **SETTINGS)
        fills = sim.add_fills(30, late_s=5)
        modes = {"time_ms": "not plausible nanoseconds", "time_huge": "Expected `int`, got `float`",
                 "control_chars": "control or non-printable", "invalid_utf8": "invalid UTF-8"}
        poisoned = dict(zip([f.fill_id for f in fills[:4]], modes, strict=True))
        sim.bad_fills.update(poisoned)  # sticky: the single-fill endpoint serves them bad as well
        sim.faults.inject("bad_fill", mode="invalid_utf8", sticky=False)  # one page only
        publisher = stack.publisher().start()
        await publisher.wait_ready()
        good = {f.fill_id for f in fills} - set(poisoned)
        records = await stack.wait_for_fills(good)
        published = [fill_id_header(r) for r in records]
        assert sorted(published) == sorted(good)  # each once, the once-garbled one included
        await wait_until(lambda: _letters(stack, len(poisoned)), "a dead letter per poisoned fill",
                         context=publisher.log_tail)
        letters = [json.loads(r.value) for r in await stack.records("dlq")]  # type: ignore[arg-type]
        by_id = {letter["raw"]["id"]: letter for letter in letters if isinstance(letter["raw"], dict)}
        assert set(by_id) == set(poisoned)
        for fill_id, mode in poisoned.items():
            assert modes[mode] in by_id[fill_id]["error"], by_id[fill_id]
            assert "by id:" in by_id[fill_id]["error"]
        # each bad fill was looked up once, the once-garbled good one included
        assert sim.faults.fired["bad_fill"] == 1
        assert len(sim.by_id_requests) == len(poisoned) + 1 and set(sim.by_id_requests.values()) == {1}
        assert await publisher.metric("fillpub_fills_invalid_total", source="zll-hostile") == len(poisoned)
        assert await publisher.metric("fillpub_poll_errors_total", source="zll-hostile") == 0  # never a dead source
        assert (await publisher.terminate())[0] == 0
    finally:
        await stack.close()


async def _letters(stack: Stack, n: int) -> bool:
    return len(await stack.records("dlq")) >= n
