"""The contract's record layout: which topic, key and headers each kind of record gets.

Fill records: key `<source>:<instrument>`, headers `fill_id`, `venue`, `source`, `schema_version`,
`content-type`. Dead letters: key `<source>`, headers `venue`, `source`, `content-type`.
Checkpoints: key `<source>` (and `<source>#part<i>` for a split one), no headers, all of a
source's in one partition (see :mod:`publisher.checkpoint`). Every record is sized against the
`kafka.max_record_bytes` setting before it joins a transaction (below).
"""

from __future__ import annotations

import hashlib

import msgspec

from publisher.event import SCHEMA_VERSION, DeadLetter, FillEvent, encode

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


# -- record sizes ---------------------------------------------------------------------------------
# A record the broker refuses (larger than the topic's max.message.bytes) fails its whole
# transaction on every retry, and with it every source sharing the transaction. So records are
# sized before they join one: dead letters are truncated, a fill too large becomes a (truncated)
# dead letter, checkpoints are split (publisher.checkpoint.checkpoint_records).

#: bytes of a one-record batch beyond the record's key, value and headers (batch header, framing)
BATCH_OVERHEAD = 512
#: a dead letter's error text at most, when it is truncated
_ERROR_CHARS = 2000


class TruncatedDeadLetter(msgspec.Struct, kw_only=True, gc=False, frozen=True):
    """A dead letter whose raw fill did not fit a record: the start of it, its size and digest."""

    source: str
    venue: str
    error: str
    #: the start of the raw fill, as text (its JSON would be cut mid-value)
    raw: str
    raw_truncated: bool = True
    #: the raw fill's full size and BLAKE2b-256 digest (hex), to match it with the venue's copy
    raw_bytes: int
    raw_blake2b: str


_json = msgspec.json.Encoder()


def record_budget(max_record_bytes: int) -> int:
    """The largest key + value + headers a record may have under the `max_record_bytes` setting."""
    return max_record_bytes - BATCH_OVERHEAD


def record_bytes(key: bytes, value: bytes, headers: Headers) -> int:
    """What :func:`record_budget` bounds: a record's key, value and headers (names and values)."""
    return len(key) + len(value) + sum(len(name) + len(data) for name, data in headers)


def dead_letter_value(letter: DeadLetter, budget: int) -> bytes:
    """`letter`'s record value, truncated (:class:`TruncatedDeadLetter`) when its record (key
    `<source>`, :func:`dead_letter_headers` and this value) would exceed `budget`."""
    source = letter.source.encode()
    # the budget is the whole record's: what its key and headers take is not the value's
    fits = budget - record_bytes(source, b"", dead_letter_headers(source, letter.venue.encode()))
    value = encode(letter)
    if len(value) <= fits:
        return value
    raw = bytes(letter.raw)
    digest = hashlib.blake2b(raw, digest_size=32).hexdigest()
    error = letter.error[:_ERROR_CHARS]
    room = max(0, fits - len(error) - 1024)
    while True:
        head = raw[:room].decode("utf-8", "ignore")
        note = (f"{error}; raw fill of {len(raw)} bytes truncated to its first {len(head.encode())} "
                f"(record limit {budget} bytes), blake2b-256 {digest}")
        value = _json.encode(TruncatedDeadLetter(source=letter.source, venue=letter.venue, error=note, raw=head,
                                                 raw_bytes=len(raw), raw_blake2b=digest))
        if len(value) <= fits or not head:
            return value
        room = len(head.encode()) // 2  # escaping made it larger than its bytes: try a shorter start


def oversized_fill(fill: FillEvent, value: bytes) -> DeadLetter:
    """A dead letter for a fill whose record would exceed the limit (its event JSON as raw)."""
    error = f"fill {fill.fill_id[:300]!r}: its record ({len(value)} bytes) exceeds the record size limit"
    return DeadLetter(source=fill.source, venue=fill.venue, raw=msgspec.Raw(value), error=error)
