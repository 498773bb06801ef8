"""The contract's record layout: which topic, key and headers each kind of record gets.

Fill records: key `<source>:<instrument>`, headers `fill_id`, `venue`, `source`, `schema_version`,
`content-type`. Dead letters: key `<source>`, headers `venue`, `source`, `content-type`.
Checkpoints: key `<source>`, no headers (see :mod:`publisher.checkpoint`).
"""

from __future__ import annotations

from publisher.event import SCHEMA_VERSION

Headers = list[tuple[str, bytes]]

_SCHEMA_VERSION_HEADER = str(SCHEMA_VERSION).encode()
_JSON = b"application/json"


def fill_key(source: str, instrument: str) -> bytes:
    """A fill record's key: every fill of one instrument of one source lands in one partition."""
    return f"{source}:{instrument}".encode()


def common_fill_headers(source: bytes, venue: bytes) -> tuple[tuple[str, bytes], ...]:
    """Every header of a fill record but its `fill_id` (which goes first): the same for a batch."""
    return (("venue", venue), ("source", source), ("schema_version", _SCHEMA_VERSION_HEADER), ("content-type", _JSON))


def dead_letter_headers(source: bytes, venue: bytes) -> Headers:
    """A dead letter's headers."""
    return [("venue", venue), ("source", source), ("content-type", _JSON)]
