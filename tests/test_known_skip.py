"""Adapters skip normalising fills the poll loop already published (`PublishedFills`, handed to
`VenueAdapter.fetch`).

Re-reading the overlap window returns mostly such fills; the result must be what the poll loop
would have made of the fully decoded ones: the same new fills and dead letters, and each skipped
fill counted once as a duplicate (`FetchResult.skipped_published`), a repeat within one poll not at
all. Every fill comes with the dedupe key it was looked up under (`FetchResult.keys`).
A page read whole while pages are mostly new (a backlog) skips nothing: the poll loop's dedupe
drops and counts its published fills, with the same outcome.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from publisher.dedupe import SeenWindow, fill_keys
from publisher.venues import pages, zll
from publisher.venues.pages import PageReader
from publisher.venues.results import FetchResult
from tests.test_kalshi_adapter import SINCE_NS, Venue, paged, private_key  # noqa: F401 - fixture
from tests.test_kalshi_adapter import adapter as kalshi_adapter
from tests.test_kalshi_adapter import fill as kalshi_fill
from tests.test_zll_adapter import FakeZll, T
from tests.test_zll_adapter import adapter as zll_adapter
from tests.test_zll_adapter import fill as zll_fill


def _now() -> int:
    # a fixed, plausible wall clock (2027-01-15): fills dated after it by more than a day are refused
    return 1_800_000_000 * 10**9


def _published(fill_ids: set[str]) -> SeenWindow:
    """A dedupe window holding `fill_ids`, as the poll loop's would after publishing them."""
    window = SeenWindow(0)
    window.admit_all(fill_keys(sorted(fill_ids)), [0] * len(fill_ids))
    return window


def _keys_match(result: FetchResult, published: SeenWindow | None) -> bool:
    """Whether the result carries each fill's dedupe key (None when it was given no window)."""
    return result.keys == (None if published is None else fill_keys([f.fill_id for f in result.fills]))


async def test_kalshi_skips_known_fills_and_counts_them_once(private_key: rsa.RSAPrivateKey) -> None:
    garbled = {**kalshi_fill(3), "ticker": None, "market_ticker": None}
    first: dict[str, Any] = {"fills": [kalshi_fill(1), kalshi_fill(2), garbled], "cursor": "c1"}
    second: dict[str, Any] = {"fills": [kalshi_fill(2), kalshi_fill(4)], "cursor": ""}
    venue = Venue(paged({None: first, "c1": second}))
    plain = await kalshi_adapter(venue, private_key).fetch(SINCE_NS, None, _now)
    published = {plain.fills[0].fill_id, plain.invalid[0].key}  # fill 1 and the garbled fill 3
    skipping = kalshi_adapter(venue, private_key)
    result = await skipping.fetch(SINCE_NS, None, _now, _published(published))
    assert result.skipped_published == 2
    assert [f.fill_id for f in result.fills] == [f.fill_id for f in plain.fills if f.fill_id not in published]
    assert result.invalid == []
    assert plain.skipped_published == 0
    assert _keys_match(result, _published(published)) and _keys_match(plain, None)


async def test_zll_skips_known_fills_but_keeps_their_times_for_paging() -> None:
    venue = FakeZll([T + i for i in range(12)], "desc")
    plain = await zll_adapter(venue).fetch(T + 3, None, _now)
    requests = len(venue.requests)
    published = {f.fill_id for f in plain.fills[:6]}
    skipping = zll_adapter(venue)
    result = await skipping.fetch(T + 3, None, _now, _published(published))
    assert result.skipped_published == 6
    assert [f.fill_id for f in result.fills] == [f.fill_id for f in plain.fills[6:]]
    assert result.paging_state == plain.paging_state
    assert len(venue.requests) == 2 * requests  # the same walk: skipped fills still steer paging



# --------------------------------------------------------------------------------------------------
# The decoding strategies agree
#
# A page is read keys-first (some fills known), typed in one go (mostly new) or fill by fill (a
# fill of the wrong shape). Which way is taken is a matter of cost only: after the poll loop's
# dedupe each must give exactly what the fill-by-fill reference reading gives, dead letters'
# bytes, keys and times included, and the same count of duplicates.

def _mixed_entries(rng: random.Random, make: Callable[[int], dict[str, Any]], bad: list[Callable[[int], Any]]) -> list[Any]:
    entries: list[Any] = []
    for n in range(rng.randint(0, 12)):
        roll = rng.random()
        if roll < 0.15 and entries:
            entries.append(rng.choice(entries))  # a repeat within the page
        elif roll < 0.3:
            entries.append(rng.choice(bad)(n))
        else:
            entries.append(make(n))
    return entries


def _outcome(result: FetchResult, known: set[str] | None) -> tuple[Any, ...]:
    """What the poll loop makes of a page's result: the fills and dead letters not published yet,
    and the duplicates (skipped unread, or returned and then dropped by its dedupe)."""
    published = known or set()
    fills = [f for f in result.fills if f.fill_id not in published]
    invalid = [i for i in result.invalid if i.key not in published]
    duplicates = result.skipped_published + len(result.fills) - len(fills) + len(result.invalid) - len(invalid)
    return fills, [(i.key, i.error, bytes(i.raw), i.executed_at_ns) for i in invalid], duplicates


def _known_sets(rng: random.Random, keys: list[str]) -> list[set[str] | None]:
    return [None, set(), set(keys), {k for k in keys if rng.random() < 0.5}]


KALSHI_BAD: list[Callable[[int], Any]] = [
    lambda n: {**kalshi_fill(100 + n), "yes_price_dollars": "1.5"},  # decodes, fails normalising
    lambda n: {**kalshi_fill(200 + n), "count": "many"},  # wrong type: fails the typed page
    lambda n: {"fill_id": f"f-{300 + n}", "created_time": "2025-11-01T12:26:40Z"},  # no order id
    lambda n: {"count": 1},  # no id at all: keyed by digest
    lambda n: 7,  # not an object
]


@pytest.mark.parametrize("seed", range(40))
async def test_kalshi_page_strategies_agree(seed: int, private_key: rsa.RSAPrivateKey,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "SLICE", 1 + seed % 4)  # pages are handled in slices: cut them small
    rng = random.Random(seed)
    entries = _mixed_entries(rng, kalshi_fill, KALSHI_BAD)
    body = msgspec.json.encode({"fills": entries, "cursor": "next"})
    keys = [e["fill_id"] for e in entries if isinstance(e, dict) and e.get("fill_id")]
    for known, mostly_new in itertools.product(_known_sets(rng, keys), (False, True)):
        published = None if known is None else _published(known)
        results = []
        for fast_way in (True, False):
            reader = PageReader(kalshi_adapter(Venue(paged({})), private_key).pages, published)
            reader.mostly_new = mostly_new  # keys first, or typed first
            if fast_way:
                assert (await reader.read(body, _now())).cursor == "next"
            else:
                assert (await reader.read_fill_by_fill(body, _now())).cursor == "next"
            assert _keys_match(reader.result, published)
            results.append(_outcome(reader.result, known))
        assert results[0] == results[1]


ZLL_BAD: list[Callable[[int], Any]] = [
    lambda n: {**zll_fill(100 + n, T + n), "price": "-1"},  # decodes, fails normalising
    lambda n: {**zll_fill(200 + n, T + n), "side": "UP"},  # wrong literal: fails the typed page
    lambda n: {"id": f"z-{300 + n}", "time": T + n},  # missing fields
    lambda n: {"time": True},  # no id, a time that is not one
    lambda n: "x",  # not an object
]


@pytest.mark.parametrize("seed", range(40))
async def test_zll_page_strategies_agree(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "SLICE", 1 + seed % 4)  # pages are handled in slices: cut them small
    rng = random.Random(seed)
    entries = _mixed_entries(rng, lambda n: zll_fill(n, T + rng.randint(0, 5)), ZLL_BAD)
    body = msgspec.json.encode(entries)
    keys = [e["id"] for e in entries if isinstance(e, dict) and e.get("id")]
    for known, mostly_new in itertools.product(_known_sets(rng, keys), (False, True)):
        results = []
        published = None if known is None else _published(known)
        for fast in (True, False):
            adapter = zll_adapter(FakeZll([], "desc"))
            poll = zll._Poll(adapter, T, _now, published)
            poll.pages.mostly_new = mostly_new  # keys first, or typed first
            page = await (poll.pages.read if fast else poll.pages.read_fill_by_fill)(body, _now())
            items = zll._Listing.of(page, _now())
            assert _keys_match(poll.pages.result, published)
            results.append((list(zip(items.times, items.repeats, strict=True)), _outcome(poll.pages.result, known)))
        assert results[0] == results[1]


@pytest.mark.parametrize(("published", "looked_up"), [
    (set(), False), ({"f-1"}, False), ({"f-0"}, True), ({"f-3"}, True), ({"f-0", "f-1", "f-2", "f-3"}, True)])
async def test_kalshi_backlog_page_is_read_whole_while_its_ends_are_new(
        published: set[str], looked_up: bool, private_key: rsa.RSAPrivateKey) -> None:
    body = msgspec.json.encode({"fills": [kalshi_fill(n) for n in range(4)], "cursor": ""})
    reader = PageReader(kalshi_adapter(Venue(paged({})), private_key).pages, _published(published))
    reader.mostly_new = True
    await reader.read(body, _now())
    # read whole, the poll loop drops the published fills; else they are skipped and counted
    assert reader.result.skipped_published == (len(published) if looked_up else 0)
    assert len(reader.result.fills) == 4 - reader.result.skipped_published
    assert reader.mostly_new is (2 * (4 - reader.result.skipped_published) > 4)


@pytest.mark.parametrize(("published", "looked_up"), [(set(), False), ({1}, False), ({0}, True), ({3}, True)])
async def test_zll_backlog_page_is_read_whole_while_its_ends_are_new(published: set[int], looked_up: bool) -> None:
    body = msgspec.json.encode([zll_fill(n, T + n) for n in range(4)])
    adapter = zll_adapter(FakeZll([], "desc"))
    poll = zll._Poll(adapter, T, _now, _published({zll_fill(n, T)["id"] for n in published}))
    poll.pages.mostly_new = True
    await poll.pages.read(body, _now())
    result = poll.pages.result
    assert result.skipped_published == (len(published) if looked_up else 0)
    assert len(result.fills) == 4 - result.skipped_published
