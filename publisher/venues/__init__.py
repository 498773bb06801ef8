"""Venue adapters. Adding a venue means adding one module here and one line to `VENUES`.

Each venue module defines its source config struct (a tagged :class:`SourceConfig` subclass), an
adapter class and a `create_adapter` factory, and `check_secret` to validate the secret offline.
"""

from __future__ import annotations

from types import ModuleType

from publisher.venues import kalshi, zll

#: venue name -> module with SOURCE_CONFIG, create_adapter, check_secret
VENUES: dict[str, ModuleType] = {"kalshi": kalshi, "zll": zll}

#: every venue's source config type, for decoding the `sources:` list as a tagged union
SOURCE_CONFIG_TYPES = tuple(module.SOURCE_CONFIG for module in VENUES.values())
