"""Adapters skip normalising fills the poll loop already published (`VenueAdapter.known`).

Re-reading the overlap window returns mostly such fills; the result must be what the poll loop
would have made of the fully decoded ones: the same new fills and dead letters, and each skipped
fill counted once as a duplicate (`FetchResult.known`), a repeat within one poll not at all.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.test_kalshi_adapter import SINCE_NS, Venue, paged, private_key  # noqa: F401 - fixture
from tests.test_kalshi_adapter import adapter as kalshi_adapter
from tests.test_kalshi_adapter import fill as kalshi_fill
from tests.test_zll_adapter import FakeZll, T
from tests.test_zll_adapter import adapter as zll_adapter


def _now() -> int:
    return 1


async def test_kalshi_skips_known_fills_and_counts_them_once(private_key: rsa.RSAPrivateKey) -> None:
    garbled = {**kalshi_fill(3), "ticker": None, "market_ticker": None}
    first: dict[str, Any] = {"fills": [kalshi_fill(1), kalshi_fill(2), garbled], "cursor": "c1"}
    second: dict[str, Any] = {"fills": [kalshi_fill(2), kalshi_fill(4)], "cursor": ""}
    venue = Venue(paged({None: first, "c1": second}))
    plain = await kalshi_adapter(venue, private_key).fetch(SINCE_NS, None, _now)
    published = {plain.fills[0].fill_id, plain.invalid[0].key}  # fill 1 and the garbled fill 3
    skipping = kalshi_adapter(venue, private_key)
    skipping.known = published.__contains__
    result = await skipping.fetch(SINCE_NS, None, _now)
    assert result.known == 2
    assert [f.fill_id for f in result.fills] == [f.fill_id for f in plain.fills if f.fill_id not in published]
    assert result.invalid == []
    assert plain.known == 0


async def test_zll_skips_known_fills_but_keeps_their_times_for_paging() -> None:
    venue = FakeZll([T + i for i in range(12)], "desc")
    plain = await zll_adapter(venue).fetch(T + 3, None, _now)
    requests = len(venue.requests)
    published = {f.fill_id for f in plain.fills[:6]}
    skipping = zll_adapter(venue)
    skipping.known = published.__contains__
    result = await skipping.fetch(T + 3, None, _now)
    assert result.known == 6
    assert [f.fill_id for f in result.fills] == [f.fill_id for f in plain.fills[6:]]
    assert result.paging_state == plain.paging_state
    assert len(venue.requests) == 2 * requests  # the same walk: skipped fills still steer paging

