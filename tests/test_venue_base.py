"""What every venue provides (`publisher.venues.base`): the settings common to its sources and the
adapter's interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from publisher.venues.base import RESPONSE_BYTES_PER_FILL, RESPONSE_ENVELOPE_BYTES, VenueAdapter
from publisher.venues.pages import PublishedFills
from publisher.venues.results import FetchResult
from publisher.venues.zll import ZllSource


def test_a_source_knows_its_venue_and_answer_limit() -> None:
    source = ZllSource(name="z", base_url="http://127.0.0.1:9", subaccount_index=0, api_key_env="K", page_limit=10)
    assert source.venue_name == "zll"
    assert source.response_limit == 10 * RESPONSE_BYTES_PER_FILL + RESPONSE_ENVELOPE_BYTES
    assert msgspec.structs.replace(source, max_response_bytes=5000).response_limit == 5000


def test_source_names_are_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="name"):
        msgspec.convert({"venue": "zll", "name": "Has Spaces", "base_url": "http://x", "subaccount_index": 0,
                         "api_key_env": "K"}, ZllSource)


async def test_fetch_takes_what_was_published_as_an_argument() -> None:
    class _Adapter(VenueAdapter):
        venue = "zll"

        async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Callable[[], int],
                        published: PublishedFills | None = None) -> FetchResult:
            return FetchResult(skipped_published=0 if published is None else 1)

    adapter = _Adapter()
    assert (await adapter.fetch(0, None, lambda: 0)).skipped_published == 0  # audit and probe ask without
    await adapter.aclose()
