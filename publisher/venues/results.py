"""What an adapter's poll returns: the normalised fills, the fills it could not use, a paging hint.

These types cross the adapter boundary: the adapter fills them, the poll loop reads them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from publisher.event import FillEvent

#: the poll loop remembers a dead letter it sent under this prefix and the letter's key, apart
#: from a fill of the same venue id (which is remembered under the bare id); see :class:`InvalidFill`
DEAD_LETTER_PREFIX = "dlq:"


@dataclass(slots=True)
class InvalidFill:
    """A fill the adapter could not decode or normalise.

    `key` identifies it for dedupe so the DLQ receives it once, not on every overlapping poll: the
    venue's fill id when it could be read, else a digest of the raw bytes. The poll loop remembers
    a dead letter sent under :data:`DEAD_LETTER_PREFIX` + `key`, beside the fills' ids.
    """

    key: str
    error: str
    raw: msgspec.Raw
    #: the venue's execution time when the fill's own time field is readable and valid: the poll
    #: loop then treats the dead letter like a fill of that time (ignored below the overlap window,
    #: remembered while inside it), so it is sent once however long the venue keeps serving it
    executed_at_ns: int | None = None


@dataclass(slots=True)
class FetchResult:
    """Everything one poll returned, all pages together."""

    fills: list[FillEvent] = field(default_factory=list)
    invalid: list[InvalidFill] = field(default_factory=list)
    #: opaque paging hint stored in the checkpoint and handed back on the next poll (e.g. ZLL's
    #: resume offset); None when the venue needs none
    paging_state: Any = None
    #: fills skipped unread because the poll loop had published them already (see
    #: :class:`~publisher.venues.pages.PublishedFills`); the poll loop counts them as duplicates
    skipped_published: int = 0
    #: the dedupe key of each of `fills`, in order, as the poll loop's
    #: :class:`~publisher.venues.pages.PublishedFills` computed it while the adapter looked the
    #: fills up: the poll loop admits them under these. None when the adapter was given none to
    #: ask (the poll loop computes the keys then)
    keys: list[bytes] | None = None
    #: (first copy, later copy) of fill ids the venue served twice in this poll with different
    #: values; the first copy is the one kept
    conflicts: list[tuple[FillEvent, FillEvent]] = field(default_factory=list)
    #: venue ids of fills older than the poll's `since_ns` that the venue lists now and did not list
    #: at the previous poll (they sit beyond the end of the list that poll read, where the venue adds
    #: fills): never published, however old (see :mod:`publisher.floor`). None: the adapter cannot
    #: tell, e.g. Kalshi, whose `min_ts` pages have no end where new fills arrive
    arrived_below: set[str] | None = None


def repaired_utf8(raw: msgspec.Raw) -> msgspec.Raw | None:
    """`raw` with every byte sequence that is not UTF-8 replaced by U+FFFD, or None when it is
    UTF-8 already.

    A dead letter embeds its fill's JSON verbatim; a fill with invalid UTF-8 (which msgspec skips
    unchecked inside a raw page) would make the dead letter itself invalid JSON, so the DLQ gets
    the repaired copy and the error says so.
    """
    data = bytes(raw)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return msgspec.Raw(data.decode("utf-8", "replace").encode("utf-8"))
    return None


def raw_key(raw: bytes) -> str:
    """The dedupe key of an invalid fill whose venue id could not be read: a digest of its bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()
