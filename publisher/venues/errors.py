"""Why a poll of a venue failed: the errors an adapter (or its HTTP layer) raises.

Each carries the contract's coarse `reason` (the label of `fillpub_poll_errors_total`, a fixed
set) and, for the log line, what went wrong in words. A failure of reason `decode` also has a
finer `kind` (:data:`FailureKind`), the label of `fillpub_poll_failures_total`, which tells a
venue's unreadable answer from its endless paging and from a bug of ours. The poll loop retries a
failed poll whole, later, with backoff.
"""

from __future__ import annotations

from typing import ClassVar, Literal

#: Why a poll failed; the `reason` label of `fillpub_poll_errors_total`.
ErrorReason = Literal["timeout", "connect", "http_429", "http_4xx", "http_5xx", "auth", "decode"]

#: What failed behind a poll counted as reason `decode`; the `kind` label of
#: `fillpub_poll_failures_total`. The venue's doing: an answer that is no page of fills
#: (`unreadable_answer`), one larger than `max_response_bytes` (`answer_too_large`), paging that
#: does not end (`paging_loop`). Ours: an exception the adapter did not mean to raise
#: (`adapter_bug`), a poll's result the poll loop could not hand to the sink, e.g. a paging hint
#: the checkpoint cannot encode (`result_not_handed_over`), a failure of the poll loop itself
#: (`loop_failure`).
FailureKind = Literal[
    "unreadable_answer", "answer_too_large", "paging_loop", "adapter_bug", "result_not_handed_over", "loop_failure",
]


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
    summary: ClassVar[str | None] = None
    #: the `kind` label an error of reason `decode` is counted under
    kind: ClassVar[FailureKind] = "unreadable_answer"


class VenueDecodeError(VenueError):
    """The venue's answer is not a page we can read: not its JSON, nested too deeply, a corrupt or
    unsupported content encoding, an unexpected status such as a redirect. Counted as `decode`."""

    summary = "unreadable answer"
    kind: ClassVar[FailureKind] = "unreadable_answer"

    def __init__(self, message: str):
        super().__init__("decode", message)


class ResponseTooLarge(VenueDecodeError):
    """The venue's answer exceeds the source's `max_response_bytes`, raw or decompressed."""

    summary = "answer too large"
    kind: ClassVar[FailureKind] = "answer_too_large"


class PagingError(VenueError):
    """The venue's paging does not end: a cursor comes back, a page comes back again, or a poll
    needs more pages than the adapter's guard allows. Counted as `decode` (the contract has no
    finer reason)."""

    summary = "paging does not end"
    kind: ClassVar[FailureKind] = "paging_loop"

    def __init__(self, message: str):
        super().__init__("decode", message)


class ListOrderError(PagingError):
    """The list's ends contradict every order the venue may list its fills in, so the part of it
    a poll skipped cannot be trusted: the poll fails rather than guess. Counted as `decode`, kind
    `paging_loop` (the venue's paging cannot be followed)."""

    summary = "the list fits no order"
