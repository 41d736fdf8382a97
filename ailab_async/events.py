"""What a client reports as it works: the event classes its ``on_event`` hooks receive.

Pass one function (or several) as ``AILabClient(on_event=...)``; the client calls it with
one of the frozen event objects below at each step of its work, in the event loop's thread::

    from ailab_async import AILabClient
    from ailab_async.events import Event, RetryScheduled

    def log_retries(event: Event) -> None:
        if isinstance(event, RetryScheduled):
            print(f"{event.endpoint}: retry in {event.delay:.1f}s after {event.reason}")

    async with AILabClient(on_event=log_retries) as client: ...

For one call, the events come in this order: :class:`CallStarted`; for each attempt
:class:`RequestSent` then :class:`ResponseReceived` (and, when it is answered ``429``,
:class:`RateLimited`; when the limiter's pace moved, :class:`RateChanged`; when another
attempt follows, :class:`RetryScheduled`); :class:`CallEnded` last, whatever the outcome
(cancellation included). A smart-beauty task adds :class:`TaskTracked`, a
:class:`TaskPolled` for each poll (a poll is a call of its own, to
``query-async-task-result``, with the events above) and one :class:`TaskFinished`. A
download is a call named ``download`` followed by :class:`DownloadDone`. ``call_id`` ties
the events of one call together.

What events never carry: the API key, result URLs (a download names its host only), image
bytes, or an error's message (which may quote what a server sent). A hook that raises is
logged (its exception type, never its message) and ignored: it never changes a call's
outcome. Hooks run synchronously on the event loop, so keep them quick: hand slow work
(a network exporter, a file) to a queue. With no hook installed no event is built.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

__all__ = [
    "CallEnded",
    "CallStarted",
    "DownloadDone",
    "Event",
    "EventHook",
    "RateChanged",
    "RateLimited",
    "RequestSent",
    "ResponseReceived",
    "RetryScheduled",
    "TaskFinished",
    "TaskPolled",
    "TaskTracked",
]


@attrs.frozen
class Event:
    """The base class of every event (``isinstance(event, Event)`` is always true)."""


#: What ``on_event`` takes: a function of one :class:`Event` (its return value is ignored).
EventHook = Callable[[Event], object]


# --- one call ------------------------------------------------------------------------------


@attrs.frozen
class CallStarted(Event):
    """A call began (before it waits for a concurrency slot or the rate limiter)."""

    #: Unique per call within one client; every event of this call carries it.
    call_id: int
    #: The endpoint's name (``smart-skin``, ``query-async-task-result``, ``download``, ...).
    endpoint: str
    method: str
    #: The host the call goes to (for a download: the result host, never its URL).
    server_address: str
    server_port: int | None
    #: For a task's poll (``query-async-task-result``): the task polled.
    task_id: str | None = None


@attrs.frozen
class RequestSent(Event):
    """An attempt is going out: it holds a concurrency slot and the limiter's permission."""

    call_id: int
    endpoint: str
    #: 1 for the first attempt, 2 for the first retry, ...
    attempt: int


@attrs.frozen
class ResponseReceived(Event):
    """An attempt ended: answered (``status``), or failed on the wire (``status=None``)."""

    call_id: int
    endpoint: str
    attempt: int
    #: The HTTP status; ``None`` when no answer came (a timeout, a reset connection).
    status: int | None
    #: The API's error code (``EXCEEDING_LIMITS``, ...); empty when there is none.
    code: str
    #: Seconds from sending to the answer (or the failure).
    duration: float
    #: The exception type's name of a failed attempt (``ServerError``, ...); ``None`` if ok.
    error_type: str | None = None
    #: Whether a failed billed attempt may have been processed (and billed) anyway.
    ambiguous: bool = False
    request_id: str | None = None
    log_id: str | None = None


@attrs.frozen
class RateLimited(Event):
    """The API answered ``429`` (too many requests); the limiter was told."""

    call_id: int
    endpoint: str
    attempt: int
    #: The server's ``Retry-After`` (capped), in seconds, if it sent one.
    retry_after: float | None


@attrs.frozen
class RateChanged(Event):
    """The rate limiter's rate moved: any cut (after a 429), or growth of 5 % or more since
    it was last reported. In requests per second; ``None``: no limit known yet."""

    old: float | None
    new: float | None


@attrs.frozen
class RetryScheduled(Event):
    """A failed attempt will be retried after ``delay`` seconds."""

    call_id: int
    endpoint: str
    #: The attempt that failed.
    attempt: int
    #: Why: the failure's exception type, and the API's code if any (``ServerError 503``).
    reason: str
    delay: float
    #: The failed attempt may have been processed (and billed): the retry may cost twice.
    ambiguous: bool


@attrs.frozen
class CallEnded(Event):
    """A call is over: ``error_type`` is ``None`` on success, else the exception's type
    name (``DeadlineExceededError``, ``CancelledError``, ...)."""

    call_id: int
    endpoint: str
    #: Seconds since :class:`CallStarted`, queueing, retries and backoff included.
    duration: float
    error_type: str | None
    #: The status and the API's code of the last answer (``None`` / empty if none came).
    status: int | None = None
    code: str = ""
    request_id: str | None = None
    log_id: str | None = None


# --- smart-beauty tasks ----------------------------------------------------------------------


@attrs.frozen
class TaskTracked(Event):
    """The tracker took on a task: one this client just submitted (``fresh``), or one
    picked up again with ``client.track(task_id)``."""

    task_id: str
    fresh: bool


@attrs.frozen
class TaskPolled(Event):
    """A poll of a task was answered (or failed): ``state`` is ``queued``, ``processing``,
    ``succeeded``, or ``error`` (then ``error_type`` says which)."""

    task_id: str
    #: The task's polls so far, this one included.
    poll: int
    state: str
    error_type: str | None = None


@attrs.frozen
class TaskFinished(Event):
    """The tracker stopped tracking a task. ``outcome`` is ``succeeded``, ``failed`` (the
    server's word about the task), ``gave_up`` (still unfinished at the give-up time),
    ``stopped`` (a reason that is not the task's: a bad key, a bug), ``closed`` (the client
    closed) or ``abandoned`` (nobody holds its handle any more)."""

    task_id: str
    outcome: str
    polls: int
    #: Seconds since it was submitted (or taken on, if its submit time is unknown).
    duration: float
    #: An upper bound on the seconds between the task finishing and this client seeing
    #: it: the time since the last poll that saw it unfinished. ``None`` when not known (a
    #: task picked up again, or one that did not succeed).
    detection_lag: float | None = None
    error_type: str | None = None


# --- downloads ---------------------------------------------------------------------------------


@attrs.frozen
class DownloadDone(Event):
    """A result image was fetched (after the ``download`` call's :class:`CallEnded`)."""

    #: The result host (never the URL: it grants access to the image).
    server_address: str
    content_type: str
    size: int
    #: Whether it was written to a file (``False``: returned as bytes).
    to_file: bool
