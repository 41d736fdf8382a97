"""The journal's states and decisions, pure: no I/O (the clock only when ``now`` is not given).

:class:`ItemState` and :data:`ALLOWED_TRANSITIONS` (the one place that says which moves are
legal), :class:`JournalEntry` (a row as read) and its :meth:`~JournalEntry.resume_action`, which
decides what a rerun does with an item from the row and ``now`` alone. The store
(:mod:`._store`) enforces the table; the batch runner acts on the decision.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping

import attrs

from ...models import RESULT_URL_TTL, redact_url

__all__ = [
    "ALLOWED_TRANSITIONS",
    "RESUME_SAFETY_MARGIN",
    "TASK_RESULT_TTL",
    "TRANSITION_SOURCES",
    "ItemState",
    "JournalEntry",
    "ResumeAction",
    "utcnow",
]

#: How long the API keeps a finished task's result. Measured from submission, which can only
#: be earlier than completion, so a task younger than this is certainly still fetchable.
TASK_RESULT_TTL = dt.timedelta(hours=24)

#: Head room before a URL or task is considered gone: a download or poll that starts just
#: before expiry would otherwise fail half-way.
RESUME_SAFETY_MARGIN = dt.timedelta(minutes=5)


class ItemState(enum.Enum):
    """Where an item is on its way from input file to downloaded result."""

    #: Known, nothing sent yet.
    PENDING = "pending"
    #: A billed request is (or was, before a crash) on its way; it may have been paid for.
    SENDING = "sending"
    #: A smart-beauty task was accepted; ``task_id`` says which.
    SUBMITTED = "submitted"
    #: A result exists; ``image_url`` is valid 24 h from ``produced_at``.
    SUCCEEDED = "succeeded"
    #: The result is on disk at ``output_path``. Final.
    DOWNLOADED = "downloaded"
    #: It failed with ``error_code``; ``retryable`` says whether trying again could help.
    FAILED = "failed"


_S = ItemState

#: The legal moves, the one place they are decided. ``DOWNLOADED`` only leaves by
#: :meth:`Journal.reset`.
ALLOWED_TRANSITIONS: Mapping[ItemState, frozenset[ItemState]] = {
    _S.PENDING: frozenset({_S.SENDING, _S.FAILED}),
    # SENDING -> SENDING: the process died with a request in flight; send again.
    # SENDING / SUBMITTED -> DOWNLOADED: a result with nothing to download (a generic
    # call's JSON), written to its output as it came.
    _S.SENDING: frozenset({_S.SENDING, _S.SUBMITTED, _S.SUCCEEDED, _S.DOWNLOADED, _S.FAILED}),
    # SUBMITTED -> SENDING: the task is too old to fetch; submit again.
    _S.SUBMITTED: frozenset({_S.SENDING, _S.SUCCEEDED, _S.DOWNLOADED, _S.FAILED}),
    # SUCCEEDED -> SENDING: the URL expired before it was downloaded; run again.
    _S.SUCCEEDED: frozenset({_S.SENDING, _S.DOWNLOADED, _S.FAILED}),
    # FAILED -> SUCCEEDED / DOWNLOADED: an older journal recorded a failure after the paid
    # step (a task timeout, a failed download); its task is tracked or its URL downloaded.
    # FAILED -> FAILED: such a retry failed again.
    _S.FAILED: frozenset({_S.SENDING, _S.SUCCEEDED, _S.DOWNLOADED, _S.FAILED}),
    _S.DOWNLOADED: frozenset(),
}


#: For each target state, the states it may be reached from (what the guarded UPDATE checks).
TRANSITION_SOURCES: Mapping[ItemState, tuple[str, ...]] = {
    target: tuple(s.value for s, targets in ALLOWED_TRANSITIONS.items() if target in targets)
    for target in ItemState
}


class ResumeAction(enum.Enum):
    """What a rerun should do with a journaled item (see :meth:`JournalEntry.resume_action`)."""

    #: Already downloaded: nothing to do.
    SKIP = "skip"
    #: A task was submitted recently enough that its result can still be fetched: poll it by
    #: ``task_id`` (``client.track(task_id, submitted_at=...)``), never resubmit.
    TRACK = "track"
    #: A result URL exists and is still valid: download it, without paying again.
    DOWNLOAD = "download"
    #: Send the (billed) request: never sent, interrupted, expired, or a failure worth retrying.
    RUN = "run"
    #: Failed for good (not retryable and ``retry_failed`` not asked): report, do not retry.
    KEEP_FAILED = "keep_failed"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@attrs.frozen(kw_only=True)
class JournalEntry:
    """One journaled item, as it stood when it was read. Timestamps are UTC.

    Which fields are set depends on ``state``: ``task_id``/``submitted_at`` once submitted,
    ``image_url``/``produced_at`` once succeeded, ``output_path`` once downloaded, and
    ``error_code``/``error_message``/``retryable`` once failed. A ``SUBMITTED`` or
    ``SUCCEEDED`` item may carry an error too: the last attempt to finish it failed after
    the paid step, and a rerun picks it up from there (see :meth:`Journal.note_error`).
    ``output_path`` may be set before ``DOWNLOADED``: it is reserved for the item
    (:meth:`Journal.reserve_output`). ``request_id`` and ``log_id`` are those of the latest
    API response, to quote to support.
    """

    item_id: int
    identity: str
    operation: str
    #: Canonical JSON (see :func:`canonical_params`); ``json.loads`` it to run the item again.
    params: str
    #: The input path as the batch was given it.
    source: str
    #: The input's path relative to its input root, to mirror into the output tree.
    relative: str
    state: ItemState
    created_at: dt.datetime
    updated_at: dt.datetime
    task_id: str | None = None
    image_url: str | None = attrs.field(default=None, repr=redact_url)
    output_path: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    request_id: str | None = None
    log_id: str | None = None
    #: Billed requests sent for this item so far (each ``mark_sending``).
    attempts: int = 0
    #: Of those, sends made while the item was still ``SENDING``: the request before was in
    #: flight when its process died, so it may have been billed too (an ambiguous resend).
    interrupted_sends: int = 0
    submitted_at: dt.datetime | None = None
    produced_at: dt.datetime | None = None

    def url_usable(self, now: dt.datetime | None = None) -> bool:
        """Whether ``image_url`` is set and will stay valid for at least the safety margin."""
        if self.image_url is None or self.produced_at is None:
            return False
        now = now or utcnow()
        return now < self.produced_at + RESULT_URL_TTL - RESUME_SAFETY_MARGIN

    def task_trackable(self, now: dt.datetime | None = None) -> bool:
        """Whether ``task_id`` is set and young enough that its result can still be fetched."""
        if self.task_id is None or self.submitted_at is None:
            return False
        now = now or utcnow()
        return now < self.submitted_at + TASK_RESULT_TTL - RESUME_SAFETY_MARGIN

    def resume_action(self, *, retry_failed: bool, now: dt.datetime | None = None) -> ResumeAction:
        """Decide what a rerun does with this item. Pure: reads only the row and ``now``.

        >>> entry.resume_action(retry_failed=False)  # doctest: +SKIP
        <ResumeAction.TRACK: 'track'>
        """
        now = now or utcnow()
        match self.state:
            case ItemState.DOWNLOADED:
                return ResumeAction.SKIP
            case ItemState.SUBMITTED:
                return ResumeAction.TRACK if self.task_trackable(now) else ResumeAction.RUN
            case ItemState.SUCCEEDED:
                return ResumeAction.DOWNLOAD if self.url_usable(now) else ResumeAction.RUN
            case ItemState.FAILED:
                if not (self.retryable or retry_failed):
                    return ResumeAction.KEEP_FAILED
                # Journals written before 0.2 failed items whose paid result still lived
                # (a task timeout, a failed download): fetch that rather than pay again.
                if self.url_usable(now):
                    return ResumeAction.DOWNLOAD
                if self.task_trackable(now):
                    return ResumeAction.TRACK
                return ResumeAction.RUN
            case ItemState.PENDING | ItemState.SENDING:
                # SENDING: a request may have been billed, but nothing came back that we kept.
                return ResumeAction.RUN
