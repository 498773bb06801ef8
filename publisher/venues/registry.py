"""The typed venue registry: what the rest of the service may know about a venue.

A venue is one module that builds a :class:`VenueSpec` (its name, its source config struct, how to
build its adapter and how to check its secret offline) and one line that registers it
(:data:`publisher.venues.VENUES`). Everything that lists venues reads the registry: the config's
tagged union of source types, the topic checks, `unknown venue` messages, environment overrides,
check-config, the app, the probe and the audit.

The event's `venue` values and :class:`~publisher.event.VenueFields` are the published schema, so
they are declared in :mod:`publisher.event`; a spec names the `VenueFields` its adapter fills, which
:meth:`VenueRegistry.register` checks against that schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from publisher.event import VenueFields
from publisher.secret import Secret
from publisher.venues.base import SourceConfig, VenueAdapter

S = TypeVar("S", bound=SourceConfig)

#: `create_adapter(source, secret, transport, on_request)`: the adapter of one source over its
#: connection pool, calling `on_request` for every HTTP request it makes
AdapterFactory = Callable[[S, Secret, httpx.AsyncBaseTransport, Callable[[], None]], VenueAdapter]


@dataclass(frozen=True)
class VenueSpec(Generic[S]):
    """One venue, as the service sees it.

    `source_config` is the venue's :class:`SourceConfig` subclass, tagged with `name`.
    `check_secret` raises :class:`ValueError` with a message that never quotes the secret when the
    secret cannot be the venue's. `account_scope` says which part of which venue account a source
    reads, as `(account, part)` with part None for the whole account; two sources whose scopes
    overlap are refused (each fill would be published twice). `describe_secret` names the kind of
    secret for check-config, never its value.
    """

    name: str
    source_config: type[S]
    create_adapter: AdapterFactory[S]
    check_secret: Callable[[Secret], None]
    #: the :class:`~publisher.event.VenueFields` the venue's adapter may fill in
    venue_fields: frozenset[str] = frozenset()
    account_scope: Callable[[S], tuple[str, Any]] | None = None
    describe_secret: Callable[[Secret], str] | None = None

    def adapter(self, source: SourceConfig, secret: Secret, transport: httpx.AsyncBaseTransport,
                on_request: Callable[[], None]) -> VenueAdapter:
        """The adapter of `source` (one of this venue's sources)."""
        return self.create_adapter(self._own(source), secret, transport, on_request)

    def scope(self, source: SourceConfig) -> tuple[str, Any] | None:
        """`account_scope(source)`, or None when the venue does not say."""
        return None if self.account_scope is None else self.account_scope(self._own(source))

    def _own(self, source: SourceConfig) -> S:
        if not isinstance(source, self.source_config):
            raise TypeError(f"{type(source).__name__} is not a {self.name} source config")
        return source


class VenueRegistry(Mapping[str, VenueSpec[Any]]):
    """Venues by name, in registration order."""

    def __init__(self) -> None:
        self._venues: dict[str, VenueSpec[Any]] = {}

    def register(self, venue: VenueSpec[Any]) -> VenueSpec[Any]:
        """Add `venue`; :class:`ValueError` when it contradicts itself or the event schema, or its
        name is taken."""
        config = venue.source_config.__struct_config__
        if config.tag_field != "venue" or config.tag != venue.name:
            raise ValueError(f"venue {venue.name!r}: its source config must be a SourceConfig with tag={venue.name!r}")
        unknown = sorted(venue.venue_fields - set(VenueFields.__struct_fields__))
        if unknown:
            raise ValueError(f"venue {venue.name!r}: {', '.join(unknown)} not in the event's VenueFields")
        if venue.name in self._venues:
            raise ValueError(f"venue {venue.name!r} is registered already")
        self._venues[venue.name] = venue
        return venue

    def unregister(self, name: str) -> None:
        """Remove the venue `name` (tests that register one of their own)."""
        del self._venues[name]

    def of(self, source: SourceConfig) -> VenueSpec[Any]:
        """The venue of a decoded source config."""
        return self._venues[str(type(source).__struct_config__.tag)]

    def source_configs(self) -> tuple[type[SourceConfig], ...]:
        """Every venue's source config type, in registration order."""
        return tuple(venue.source_config for venue in self._venues.values())

    def __getitem__(self, name: str) -> VenueSpec[Any]:
        return self._venues[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._venues)

    def __len__(self) -> int:
        return len(self._venues)
