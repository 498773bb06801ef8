"""Why a poll of a venue failed: the errors an adapter (or its HTTP layer) raises.

Each carries the contract's coarse `reason` (the label of `fillpub_poll_errors_total`) and, for the
log line, what went wrong in words. The poll loop retries a failed poll whole, later, with backoff.
"""

from __future__ import annotations

from typing import ClassVar, Literal

#: Why a poll failed; the `reason` label of `fillpub_poll_errors_total`.
ErrorReason = Literal["timeout", "connect", "http_429", "http_4xx", "http_5xx", "auth", "decode"]


class VenueError(Exception):
    """A poll failed; the whole poll is retried later with backoff.

    The message must never contain a secret (keys, signatures); adapters build it from the status
    and the venue's own error code/message only.
    """

    def __init__(self, reason: ErrorReason, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.reason: ErrorReason = reason
        self.retry_after_s = retry_after_s

    #: what went wrong, in words, for the log line (the contract's `reason` is coarser)
    kind: ClassVar[str | None] = None


class VenueDecodeError(VenueError):
    """The venue's answer is not a page we can read: not its JSON, nested too deeply, a corrupt or
    unsupported content encoding, an unexpected status such as a redirect. Counted as `decode`."""

    kind = "unreadable answer"

    def __init__(self, message: str):
        super().__init__("decode", message)


class ResponseTooLarge(VenueDecodeError):
    """The venue's answer exceeds the source's `max_response_bytes`, raw or decompressed."""

    kind = "answer too large"


class PagingError(VenueError):
    """The venue's paging does not end: a cursor comes back, or a poll needs more pages than the
    adapter's guard allows. Counted as `decode` (the contract has no finer reason)."""

    kind = "paging does not end"

    def __init__(self, message: str):
        super().__init__("decode", message)

