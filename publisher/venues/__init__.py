"""Venue adapters. Adding a venue means adding one module here and one `VENUES.register` line below.

Each venue module defines its source config struct (a tagged :class:`SourceConfig` subclass), an
adapter class, and a :class:`~publisher.venues.registry.VenueSpec` named `VENUE` that says how to
build the adapter and check the secret offline. :data:`VENUES` is the registry everything else reads.
"""

from __future__ import annotations

from publisher.venues import kalshi, zll
from publisher.venues.registry import VenueRegistry, VenueSpec

__all__ = ["VENUES", "VenueRegistry", "VenueSpec"]

#: every venue the service knows, by name
VENUES = VenueRegistry()
VENUES.register(kalshi.VENUE)
VENUES.register(zll.VENUE)
