"""The venue registry: what it accepts, and that the published event schema keeps up with it."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from publisher.event import Venue, VenueFields
from publisher.venues import VENUES, VenueRegistry, kalshi, zll


def test_the_event_schema_names_exactly_the_registered_venues() -> None:
    # the event's `venue` enum is published (schemas/fill.v1.json): a new venue changes it on purpose
    assert tuple(VENUES) == get_args(Venue)


def test_every_venue_field_belongs_to_a_venue() -> None:
    owned = [name for venue in VENUES.values() for name in venue.venue_fields]
    assert sorted(owned) == sorted(VenueFields.__struct_fields__)  # each field owned by exactly one venue


def test_lookup_by_name_and_by_source() -> None:
    assert VENUES["kalshi"] is kalshi.VENUE and VENUES.get("nasdaq") is None
    assert VENUES.source_configs() == (kalshi.KalshiSource, zll.ZllSource)
    source = zll.ZllSource(name="z", base_url="https://z.invalid", subaccount_index=0)
    assert VENUES.of(source) is zll.VENUE
    assert VENUES.of(source).scope(source) is None  # ZLL says nothing about overlapping accounts
    with pytest.raises(TypeError, match="not a kalshi source config"):
        kalshi.VENUE.scope(source)


def test_register_refuses_a_spec_that_contradicts_itself_or_the_schema() -> None:
    registry = VenueRegistry()
    with pytest.raises(ValueError, match="tag='zll2'"):
        registry.register(dataclasses.replace(zll.VENUE, name="zll2"))
    with pytest.raises(ValueError, match="venue_id not in the event's VenueFields"):
        registry.register(dataclasses.replace(zll.VENUE, venue_fields=frozenset({"venue_id"})))
    registry.register(zll.VENUE)
    with pytest.raises(ValueError, match="registered already"):
        registry.register(zll.VENUE)
    registry.unregister("zll")
    assert len(registry) == 0
