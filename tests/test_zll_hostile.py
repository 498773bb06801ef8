"""ZLL adapter against hostile or broken answers, over httpx.MockTransport: implausible times,
invalid UTF-8, control characters, huge fields, the single-fill endpoint as a second look, a venue
that ignores `offset`, and one fill id served twice with different values."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest

from publisher.dedupe import SeenWindow, fill_key
from publisher.event import FillEvent
from publisher.venues import zll
from publisher.venues.errors import VenueError
from tests.test_zll_adapter import NOW, FakeZll, T, adapter, fill, times


def page_of(*fills: bytes) -> bytes:
    return b"[" + b",".join(fills) + b"]"


class RawZll(FakeZll):
    """Serves a fixed list body (bytes, possibly not UTF-8), and fills by id from `by_id`."""

    def __init__(self, body: bytes):
        super().__init__([], "stored")
        self.body = body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.startswith("/api/v1/fills/"):
            found = self.by_id.get(request.url.path.rsplit("/", 1)[1])
            if found is None:
                return httpx.Response(404, json={"code": "not_found", "detail": "fill not found"})
            return httpx.Response(200, content=found if isinstance(found, bytes) else json.dumps(found).encode())
        offset = int(request.url.params["offset"])
        return httpx.Response(200, content=self.body if offset == 0 else b"[]")


def enc(item: dict) -> bytes:  # type: ignore[type-arg]
    return json.dumps(item).encode()


@pytest.mark.parametrize("time", [T // 1_000_000, T // 1000, 10**30, 1e30, -1, T * 1000])
async def test_implausible_time_is_a_dead_letter_and_the_rest_published(time: float) -> None:
    bad = fill(9, T) | {"time": time}
    venue = RawZll(page_of(enc(fill(1, T)), enc(bad), enc(fill(2, T))))
    result = await adapter(venue).fetch(0, None, lambda: NOW)
    assert sorted(f.fill_id for f in result.fills) == [fill(1, T)["id"], fill(2, T)["id"]]
    [letter] = result.invalid
    assert letter.key == bad["id"] and letter.executed_at_ns is None  # never dated 1970
    assert "by id" in letter.error  # looked up once, not found


async def test_millisecond_time_names_the_reason() -> None:
    bad = fill(9, T // 1_000_000)
    venue = RawZll(page_of(enc(bad)))
    [letter] = (await adapter(venue).fetch(0, None, lambda: NOW)).invalid
    assert "before 2000-01-01 (not plausible nanoseconds)" in letter.error


async def test_invalid_utf8_in_one_fill_fails_only_that_fill() -> None:
    broken = enc(fill(9, T)).replace(b'"BTC-PERP"', b'"BTC-\xff\xfePERP"')
    venue = RawZll(page_of(enc(fill(1, T)), broken, enc(fill(2, T))))
    result = await adapter(venue).fetch(0, None, lambda: NOW)
    assert len(result.fills) == 2
    [letter] = result.invalid
    assert letter.key == fill(9, T)["id"]  # the id is intact: the bad bytes are in the market
    assert "invalid UTF-8" in letter.error
    bytes(letter.raw).decode()  # a DLQ record is valid UTF-8 JSON
    msgspec.json.decode(bytes(letter.raw))


async def test_garbled_list_copy_is_published_from_the_single_fill_endpoint() -> None:
    good = fill(9, T)
    broken = enc(good).replace(b'"BTC-PERP"', b'"BTC-\xffPERP"')
    venue = RawZll(page_of(enc(fill(1, T)), broken, enc(good | {"id": fill(3, T)["id"], "price": "n/a"})))
    venue.by_id[good["id"]] = good
    venue.by_id[fill(3, T)["id"]] = fill(3, T) | {"side": "SIDEWAYS"}
    result = await adapter(venue).fetch(0, None, lambda: NOW)
    assert sorted(f.fill_id for f in result.fills) == [fill(1, T)["id"], good["id"]]
    assert next(f for f in result.fills if f.fill_id == good["id"]).instrument == "BTC-PERP"
    [letter] = result.invalid
    assert letter.key == fill(3, T)["id"]
    assert "price is not a decimal" in letter.error and "single-fill endpoint's copy is malformed too" in letter.error
    by_id = [r.url.path for r in venue.requests if r.url.path != "/api/v1/fills"]
    assert sorted(by_id) == sorted(f"/api/v1/fills/{i}" for i in (good["id"], fill(3, T)["id"]))


async def test_second_look_skips_fills_already_handled() -> None:
    broken = enc(fill(9, T) | {"price": "n/a"})
    venue = RawZll(page_of(broken))
    made = adapter(venue)
    published = SeenWindow(0)
    published.admit(fill_key("dlq:" + fill(9, T)["id"]), T)  # dead-lettered by an earlier poll
    result = await made.fetch(0, None, lambda: NOW, published)
    assert len(result.invalid) == 1 and [r.url.path for r in venue.requests] == ["/api/v1/fills"]


async def test_second_look_answered_by_another_subaccount_is_not_published() -> None:
    venue = RawZll(page_of(enc(fill(9, T) | {"price": "n/a"})))
    venue.by_id[fill(9, T)["id"]] = fill(9, T) | {"subaccount_index": 3}
    [letter] = (await adapter(venue).fetch(0, None, lambda: NOW)).invalid
    assert "another subaccount" in letter.error


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("market", "BTC\x1b[31m-PERP", "control or non-printable"),
    ("id", "abc\x00def", "control or non-printable"),
    ("market", "BTC\x7f-PERP", "control or non-printable"),  # DEL needs no escape in JSON
    ("request_id", "r\u2028r", "control or non-printable"),  # a line separator, not ASCII
    ("market", "M" * 100_000, "longer than 256"),
    ("request_id", "R" * 100_000, "longer than 256"),
])
async def test_control_characters_and_huge_identifiers_are_dead_letters(field: str, value: str, reason: str) -> None:
    venue = RawZll(page_of(enc(fill(1, T)), enc(fill(9, T) | {field: value})))
    result = await adapter(venue).fetch(0, None, lambda: NOW)
    assert [f.fill_id for f in result.fills] == [fill(1, T)["id"]]
    [letter] = result.invalid
    assert reason in letter.error
    if field == "id":
        assert letter.key.startswith("sha256:")  # a bad id is not a key, nor a URL path


async def test_negative_fee_is_a_rebate() -> None:
    venue = RawZll(page_of(enc(fill(1, T) | {"fee": "-0.0150", "liquidity": "MAKER"})))
    [event] = (await adapter(venue).fetch(0, None, lambda: NOW)).fills
    assert (event.fee, event.liquidity) == ("-0.015", "maker")


async def test_a_venue_ignoring_offset_trips_the_loop_guard_at_once() -> None:
    venue = FakeZll(times(5), "desc")
    venue.respond_with = httpx.Response(200, json=venue.served())  # the same full page for every offset
    with pytest.raises(VenueError) as caught:
        await adapter(venue).fetch(0, None, lambda: NOW)
    assert caught.value.reason == "decode" and "ignores `offset`" in str(caught.value)
    assert len(venue.requests) == zll.MAX_SAME_PAGES + 1


async def test_two_copies_with_different_values_in_one_page_are_a_conflict() -> None:
    first = fill(1, T)
    venue = RawZll(page_of(enc(first), enc(fill(2, T)), enc(first | {"price": "1.5"}), enc(fill(2, T))))
    result = await adapter(venue).fetch(0, None, lambda: NOW)
    assert sorted(f.fill_id for f in result.fills) == sorted([first["id"], fill(2, T)["id"]])
    [(kept, dropped)] = result.conflicts  # the identical copy of fill 2 is a plain repeat
    assert isinstance(kept, FillEvent) and (kept.price, dropped.price) == ("64998.5", "1.5")
