"""Typed results: frozen attrs classes, and the one cattrs converter that builds them.

What the SDK hands back (results, credits, a task's state, snapshots of a client's dispatcher
and task tracker) is defined here; nothing here does I/O. Result URLs are temporary
credentials (anyone holding one can fetch the image for 24 hours), so reprs show only their
host.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs

__all__ = [
    "RESULT_URL_TTL",
    "ClientStats",
    "CreditBalance",
    "Credits",
    "ImageResult",
    "RawResult",
    "Secret",
    "TaskStatus",
    "TrackerStats",
    "converter",
    "key_fingerprint",
    "redact_url",
]

#: How long the API keeps a result URL valid after it was produced.
RESULT_URL_TTL = dt.timedelta(hours=24)


def key_fingerprint(api_key: str) -> str:
    """A short fingerprint of an API key that tells two keys apart without revealing either:
    the first 8 bytes (hex) of HMAC-SHA256 keyed by the key over a fixed label.

    >>> len(key_fingerprint("k")), key_fingerprint("k") == key_fingerprint("k2")
    (16, False)
    """
    digest = hmac.new(api_key.encode("utf-8"), b"ailab-async journal", hashlib.sha256)
    return digest.hexdigest()[:16]


def redact_url(url: str | None) -> str:
    """Show where a URL points without the parts that grant access.

    >>> redact_url("https://cdn.example/r/abc.png?sig=secret")
    'https://cdn.example/…'
    """
    if not url:
        return repr(url)
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/…"


T = TypeVar("T")


class Secret(Generic[T]):
    """A credential held so that it never shows: its ``repr`` and ``str`` are ``'***'``.

    Holding the API key (or a Redis URL with a password) in one of these rather than in a
    plain variable keeps it out of tracebacks rendered with their frames' locals
    (``traceback.TracebackException(..., capture_locals=True)``, error trackers).

    >>> key = Secret("sk-123")
    >>> key, str(key), key.reveal()
    ('***', '***', 'sk-123')
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """The held value; keep it out of long-lived variables."""
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@attrs.frozen
class ImageResult:
    """A processed image: where to fetch it, and the ids to quote to support.

    ``image_url`` is valid for 24 hours from ``produced_at`` (see :attr:`expires_at`);
    download it promptly with :meth:`AILabClient.download`.
    """

    image_url: str = attrs.field(repr=redact_url)
    request_id: str | None = None
    log_id: str | None = None
    #: The smart-beauty task that produced it, if any.
    task_id: str | None = None
    #: When the result was produced (or, failing better evidence, received), UTC.
    produced_at: dt.datetime = attrs.field(factory=_utcnow)

    @property
    def expires_at(self) -> dt.datetime:
        """When ``image_url`` stops working."""
        return self.produced_at + RESULT_URL_TTL

    def expired(self, now: dt.datetime | None = None) -> bool:
        """Whether ``image_url`` has passed its 24-hour validity."""
        return (now or _utcnow()) >= self.expires_at


def _describe_data(data: Any) -> str:
    """A payload shown in a repr by its shape only: it may hold result URLs (secrets)."""
    if data is None:
        return "None"
    if isinstance(data, Mapping):
        keys = ", ".join(repr(key) for key in list(data)[:8])
        return f"<keys {keys}{', ...' if len(data) > 8 else ''}>"
    if isinstance(data, list):
        return f"<list of {len(data)}>"
    return f"<{type(data).__name__}>"


@attrs.frozen
class RawResult:
    """The answer of any endpoint called through :meth:`AILabClient.call` (or a task of
    :meth:`AILabClient.submit_task`): its ``data`` payload as parsed JSON, and the ids to
    quote to support.

    ``data`` is the envelope's ``data`` (``None`` if the answer had none); ``body`` is the
    whole envelope, for the few endpoints that answer beside ``data``. Both are what the
    server sent, unchecked. The repr shows only their shape: a payload may hold result URLs,
    which are credentials for 24 hours.

    >>> result = RawResult({"image_url": "https://cdn.example/r.png?sig=s"}, request_id="r1")
    >>> result
    RawResult(data=<keys 'image_url'>, request_id='r1', log_id=None, task_id=None)
    >>> result.image_url
    'https://cdn.example/r.png?sig=s'
    """

    data: Any = attrs.field(repr=_describe_data)
    request_id: str | None = None
    log_id: str | None = None
    #: The task that produced it (:meth:`AILabClient.submit_task`), if any.
    task_id: str | None = None
    body: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def image_url(self) -> str | None:
        """``data.image_url`` when the payload has an ``http(s)`` one (many image endpoints
        answer so): give it to :meth:`AILabClient.download`. Valid 24 hours."""
        url = self.data.get("image_url") if isinstance(self.data, Mapping) else None
        return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


@attrs.frozen
class CreditBalance:
    """One credit bucket of the account, as ``query-credits`` reports it."""

    unique_sign: str
    name: str
    balance: float
    total: float


@attrs.frozen
class Credits:
    """The account's credit buckets. Iterable; ``balance`` sums them."""

    balances: tuple[CreditBalance, ...]
    request_id: str | None = None
    log_id: str | None = None

    @property
    def balance(self) -> float:
        """Credits left across all buckets."""
        return sum(b.balance for b in self.balances)

    def __iter__(self) -> Iterator[CreditBalance]:
        return iter(self.balances)

    def __len__(self) -> int:
        return len(self.balances)


class TaskStatus(enum.IntEnum):
    """A smart-beauty task's state, as its :class:`~ailab_async.TaskHandle` reports it.

    ``QUEUED``, ``PROCESSING`` and ``SUCCEEDED`` are the API's ``task_status`` values 0, 1
    and 2 (:meth:`from_wire` reads them). ``FAILED`` is the handle's own: the task ended
    without a result (the server's failure, or tracking stopped: a timeout, a closed
    client, ...); awaiting the handle raises the reason. The API never sends it.

    >>> TaskStatus.from_wire(1), TaskStatus.from_wire(3)
    (<TaskStatus.PROCESSING: 1>, None)
    """

    QUEUED = 0
    PROCESSING = 1
    SUCCEEDED = 2
    #: Ended without a result. Not an API value (the API reports a failed task by a
    #: ``task_status`` outside 0-2, or an error).
    FAILED = -1

    @classmethod
    def from_wire(cls, value: int) -> TaskStatus | None:
        """The state an API ``task_status`` reports; ``None`` for a value the API does not
        define (outside 0-2: the task failed)."""
        return _WIRE_STATUSES.get(value)


#: The states the API reports, by their ``task_status`` value.
_WIRE_STATUSES = {
    status.value: status
    for status in (TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.SUCCEEDED)
}


@attrs.frozen
class ClientStats:
    """A snapshot of what a client's dispatcher has done so far."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    #: Retries after a failure where the server may already have processed (and billed) the
    #: request: each may have cost twice.
    ambiguous_retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    #: Requests per second the adaptive limiter currently allows (``None``: unlimited).
    current_rate: float | None = None


@attrs.frozen
class TrackerStats:
    """A snapshot of a client's task tracker (``client.tracker``)."""

    #: Smart-beauty tasks being polled now.
    pending: int = 0
    #: Polls sent so far (they are free; the tasks behind them were paid for).
    polls_sent: int = 0
    #: The learned poll schedule: offsets in seconds after submit; empty while the tracker
    #: still polls at the fallback spacing (every 5 s).
    plan: tuple[float, ...] = ()
    #: Finished tasks the schedule is learned from (the most recent ones).
    observations: int = 0


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()

    def _structure_number(value: Any, _: type) -> float:
        # The API has sent balances both as numbers and as numeric strings.
        return float(value) if value not in (None, "") else 0.0

    def _structure_str(value: Any, _: type) -> str:
        return "" if value is None else str(value)

    conv.register_structure_hook(float, _structure_number)
    conv.register_structure_hook(str, _structure_str)
    conv.register_unstructure_hook(dt.datetime, dt.datetime.isoformat)
    conv.register_structure_hook(
        dt.datetime, lambda value, _: dt.datetime.fromisoformat(str(value))
    )
    return conv


#: The one converter: API payloads → models, and models ↔ JSON-ready dicts (journal, manifest).
converter = _make_converter()
