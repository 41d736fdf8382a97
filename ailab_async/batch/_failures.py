"""How a failed item is journaled, pure: no I/O; the clock only when ``now`` is not given.

A failure never throws paid work away. Before the paid step it is ``FAILED``. After it, while
the task or URL may still serve, the item keeps its state (``SUBMITTED``/``SUCCEEDED``) with
the error noted, so the next run tracks or downloads it instead of paying. A result known to
be gone (the task failed, the URL answered 403/404/410 or expired) is ``FAILED`` with the
result forgotten, so a retry runs it again. :func:`record_failure` decides; the runner
(:mod:`._runner`) writes what it decided.
"""

from __future__ import annotations

import datetime as dt

import attrs

from ..errors import AILabError, APIError, DownloadError, TaskFailedError, ValidationError
from ..models import ImageResult
from .journal import ItemState

__all__ = ["FailureRecord", "failure_fields", "record_failure", "result_gone"]

#: Download statuses that mean the result URL is dead for good.
_DEAD_URL_STATUSES = frozenset({403, 404, 410})


def failure_fields(error: BaseException) -> tuple[str, str, bool]:
    """How ``error`` is recorded for an item: its code, message and whether retrying could
    help.

    >>> failure_fields(ValueError("bad name"))
    ('ValueError', 'bad name', False)
    """
    if isinstance(error, APIError):
        return error.code or type(error).__name__, error.message, error.retryable
    if isinstance(error, ValidationError):
        return f"VALIDATION_{error.rule.upper()}", str(error), False
    if isinstance(error, AILabError):
        # A named cause beats the class name: DISK_FULL says what to fix.
        code = getattr(error, "code", "") or type(error).__name__
        return code, str(error), error.retryable
    return type(error).__name__, str(error), False


@attrs.frozen(kw_only=True)
class FailureRecord:
    """What to write to the journal for one failed attempt at an item."""

    code: str
    message: str
    retryable: bool
    request_id: str | None = None
    log_id: str | None = None
    #: Keep the paid state and note the error (``Journal.note_error``) instead of ``FAILED``.
    keep_state: bool = False
    #: The task or URL is known dead: forget it, so that a retry runs the item again.
    result_gone: bool = False


def result_gone(
    error: BaseException,
    state: ItemState,
    result: ImageResult | None,
    now: dt.datetime | None = None,
) -> bool:
    """Whether the paid result can no longer be had, so only running again can help.

    ``state`` is where the journal has the item; ``result`` the result this run got (being
    downloaded), if any.
    """
    if state is ItemState.SUBMITTED or (state is ItemState.FAILED and result is None):
        # Waiting for the task: it failed, or the API refused to tell (unknown task).
        return isinstance(error, TaskFailedError) or (
            isinstance(error, APIError) and not error.retryable
        )
    if result is not None:  # downloading
        dead = isinstance(error, DownloadError) and error.status in _DEAD_URL_STATUSES
        return result.expired(now) or dead
    return False


def record_failure(
    error: BaseException,
    *,
    state: ItemState,
    result: ImageResult | None,
    now: dt.datetime | None = None,
) -> FailureRecord:
    """Decide how a failure of an item in ``state`` (with ``result`` if this run got one)
    is journaled.

    >>> record_failure(ValueError("x"), state=ItemState.SENDING, result=None).keep_state
    False
    """
    code, message, retryable = failure_fields(error)
    gone = result_gone(error, state, result, now)
    if gone:
        # Running again is the only way to a result; a dead URL is worth that.
        retryable = retryable or not isinstance(error, TaskFailedError)
    elif state is ItemState.FAILED:
        # An older journal's failed item whose task or URL still lives: trying again costs
        # nothing, so it stays worth retrying.
        retryable = True
    return FailureRecord(
        code=code,
        message=message,
        retryable=retryable,
        request_id=getattr(error, "request_id", None),
        log_id=getattr(error, "log_id", None),
        keep_state=state in (ItemState.SUBMITTED, ItemState.SUCCEEDED) and not gone,
        result_gone=gone,
    )
