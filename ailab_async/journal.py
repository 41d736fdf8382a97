"""A durable SQLite journal of batch items, so that a crash never loses a paid result.

Every item a batch touches gets one row, keyed by what it is (:class:`ItemIdentity`), which
operation runs on it and with which parameters. Each remote step is written down as it happens::

    PENDING ─► SENDING ─► SUBMITTED ─► SUCCEEDED ─► DOWNLOADED
       │          │  ▲        │  │          │ │
       │          │  └────────┘  │          │ └─► SENDING   (URL expired: run again)
       └──────────┴──────────────┴──────────┴───► FAILED ─► SENDING (retry)

:data:`ALLOWED_TRANSITIONS` is the one place that says which moves are legal; an illegal one
raises :class:`IllegalTransitionError`. ``SENDING`` is written *before* a billed request leaves,
so a rerun knows the request may have been paid for; ``SUBMITTED`` keeps the smart-beauty
``task_id`` and ``SUCCEEDED`` the temporary result URL, each committed before the ``mark_*``
call returns. On a rerun :meth:`JournalEntry.resume_action` says, per row and without I/O,
what to do: skip it, track its task, download its result, run it again, or leave it failed.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. A committed ``mark_*``
survives the process being killed at any instant (SIGKILL, OOM): the commit is in the WAL file
before the call returns. Only an operating-system crash or power loss may lose the last few
commits; open with ``power_safe=True`` (``synchronous=FULL``, an fsync per commit) if that
matters more than write speed.

Concurrency: one SQLite connection lives on one dedicated worker thread and every operation is
queued to it, so any number of coroutines may share a journal. Once a ``mark_*`` call has
started, its write completes and commits even if the coroutine awaiting it is cancelled.

The journal never stores the API key. Result URLs are stored (they are needed to download
after a restart) but never shown in reprs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import enum
import functools
import hashlib
import json
import os
import sqlite3
import warnings
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

from .errors import AILabError
from .models import RESULT_URL_TTL, converter, redact_url

__all__ = [
    "ALLOWED_TRANSITIONS",
    "RESUME_SAFETY_MARGIN",
    "SCHEMA_VERSION",
    "TASK_RESULT_TTL",
    "IllegalTransitionError",
    "ItemIdentity",
    "ItemState",
    "Journal",
    "JournalEntry",
    "JournalError",
    "ResumeAction",
    "canonical_params",
]

_T = TypeVar("_T")

#: Version of the on-disk schema this module writes; a newer journal is refused.
SCHEMA_VERSION = 1

#: How long the API keeps a finished task's result. Measured from submission, which can only
#: be earlier than completion, so a task younger than this is certainly still fetchable.
TASK_RESULT_TTL = dt.timedelta(hours=24)

#: Head room before a URL or task is considered gone: a download or poll that starts just
#: before expiry would otherwise fail half-way.
RESUME_SAFETY_MARGIN = dt.timedelta(minutes=5)


class JournalError(AILabError):
    """The journal cannot do what was asked: closed, unknown item, or a newer schema."""


class IllegalTransitionError(JournalError, ValueError):
    """An item was asked to move between two states that :data:`ALLOWED_TRANSITIONS` forbids."""

    def __init__(self, item_id: int, current: ItemState, target: ItemState) -> None:
        order = list(ItemState)
        allowed = sorted(ALLOWED_TRANSITIONS[current], key=order.index)
        allowed_text = ", ".join(s.value for s in allowed) or "none (final)"
        super().__init__(
            f"journal item {item_id}: cannot go from {current.value} to {target.value} "
            f"(allowed from {current.value}: {allowed_text})"
        )
        self.item_id = item_id
        self.current = current
        self.target = target


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
    _S.SENDING: frozenset({_S.SENDING, _S.SUBMITTED, _S.SUCCEEDED, _S.FAILED}),
    # SUBMITTED -> SENDING: the task is too old to fetch; submit again.
    _S.SUBMITTED: frozenset({_S.SENDING, _S.SUCCEEDED, _S.FAILED}),
    # SUCCEEDED -> SENDING: the URL expired before it was downloaded; run again.
    _S.SUCCEEDED: frozenset({_S.SENDING, _S.DOWNLOADED, _S.FAILED}),
    _S.FAILED: frozenset({_S.SENDING}),
    _S.DOWNLOADED: frozenset(),
}


#: For each target state, the states it may be reached from (what the guarded UPDATE checks).
_SOURCES: Mapping[ItemState, tuple[str, ...]] = {
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


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@attrs.frozen
class ItemIdentity:
    """What an input *is*, as a stable string: the journal's notion of "the same photo".

    >>> ItemIdentity.for_bytes(b"abc").key[:13]
    'sha256:ba7816'
    """

    key: str

    @classmethod
    def for_path(
        cls, path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
    ) -> ItemIdentity:
        """Identify a file by its path, size and modification time (``mtime_ns``).

        Cheap (one ``stat``, no read), and an edited file counts as a new item. With ``root``
        the path is taken relative to it, so a whole input tree that is moved or mounted
        elsewhere keeps its identities; ``path`` must then lie under ``root``. This call does
        blocking file-system I/O.
        """
        resolved = Path(path).resolve()
        info = resolved.stat()
        shown = (
            resolved.relative_to(Path(root).resolve()).as_posix()
            if root is not None
            else str(resolved)
        )
        return cls(f"path:{info.st_size}:{info.st_mtime_ns}:{shown}")

    @classmethod
    def for_bytes(cls, data: bytes) -> ItemIdentity:
        """Identify an input by a SHA-256 of its content, wherever it lives."""
        return cls(f"sha256:{hashlib.sha256(data).hexdigest()}")


def canonical_params(params: Mapping[str, object]) -> str:
    """The parameters as canonical JSON: sorted keys, no spaces, so equal maps compare equal.

    Values go through the shared converter first (enums, datetimes, attrs classes). Numbers
    are kept as given: ``1`` and ``1.0`` are different parameters, so pass them normalised.

    >>> canonical_params({"retouch_degree": 0.5, "whitening_degree": 1.0})
    '{"retouch_degree":0.5,"whitening_degree":1.0}'
    """
    return json.dumps(
        converter.unstructure(dict(params)),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


@attrs.frozen(kw_only=True)
class JournalEntry:
    """One journaled item, as it stood when it was read. Timestamps are UTC.

    Which fields are set depends on ``state``: ``task_id``/``submitted_at`` once submitted,
    ``image_url``/``produced_at`` once succeeded, ``output_path`` once downloaded, and
    ``error_code``/``error_message``/``retryable`` once failed. ``request_id`` and ``log_id``
    are those of the latest API response, to quote to support.
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
    submitted_at: dt.datetime | None = None
    produced_at: dt.datetime | None = None

    def url_usable(self, now: dt.datetime | None = None) -> bool:
        """Whether ``image_url`` is set and will stay valid for at least the safety margin."""
        if self.image_url is None or self.produced_at is None:
            return False
        now = now or _utcnow()
        return now < self.produced_at + RESULT_URL_TTL - RESUME_SAFETY_MARGIN

    def task_trackable(self, now: dt.datetime | None = None) -> bool:
        """Whether ``task_id`` is set and young enough that its result can still be fetched."""
        if self.task_id is None or self.submitted_at is None:
            return False
        now = now or _utcnow()
        return now < self.submitted_at + TASK_RESULT_TTL - RESUME_SAFETY_MARGIN

    def resume_action(self, *, retry_failed: bool, now: dt.datetime | None = None) -> ResumeAction:
        """Decide what a rerun does with this item. Pure: reads only the row and ``now``.

        >>> entry.resume_action(retry_failed=False)  # doctest: +SKIP
        <ResumeAction.TRACK: 'track'>
        """
        now = now or _utcnow()
        match self.state:
            case ItemState.DOWNLOADED:
                return ResumeAction.SKIP
            case ItemState.SUBMITTED:
                return ResumeAction.TRACK if self.task_trackable(now) else ResumeAction.RUN
            case ItemState.SUCCEEDED:
                return ResumeAction.DOWNLOAD if self.url_usable(now) else ResumeAction.RUN
            case ItemState.FAILED:
                if self.retryable or retry_failed:
                    return ResumeAction.RUN
                return ResumeAction.KEEP_FAILED
            case ItemState.PENDING | ItemState.SENDING:
                # SENDING: a request may have been billed, but nothing came back that we kept.
                return ResumeAction.RUN


_ENTRY_STRUCTURE: Callable[[Any, Any], JournalEntry] = converter.get_structure_hook(JournalEntry)
_COLUMNS = ", ".join(f.name for f in attrs.fields(JournalEntry))


def _select(where: str) -> str:
    # SQL is only ever assembled from module constants and "?" placeholders; values are bound.
    return f"SELECT {_COLUMNS} FROM items WHERE {where}"  # noqa: S608


_STATE_CHECK = ", ".join(f"'{s.value}'" for s in ItemState)

_SCHEMA = (
    f"""
    CREATE TABLE items (
        item_id       INTEGER PRIMARY KEY,
        identity      TEXT NOT NULL,
        operation     TEXT NOT NULL,
        params        TEXT NOT NULL,
        source        TEXT NOT NULL,
        relative      TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ({_STATE_CHECK})),
        task_id       TEXT,
        image_url     TEXT,
        output_path   TEXT,
        error_code    TEXT,
        error_message TEXT,
        retryable     INTEGER CHECK (retryable IN (0, 1)),
        request_id    TEXT,
        log_id        TEXT,
        attempts      INTEGER NOT NULL DEFAULT 0,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        submitted_at  TEXT,
        produced_at   TEXT,
        UNIQUE (identity, operation, params)
    )
    """,
    "CREATE INDEX items_by_state ON items (state, item_id)",
)


def _row_as_dict(cursor: sqlite3.Cursor, row: Sequence[object]) -> dict[str, object]:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class Journal:
    """The durable record of a batch: one row per (input, operation, parameters).

    Open it with :meth:`open`; close it with :meth:`aclose` or ``async with``::

        async with await Journal.open("run/journal.sqlite") as journal:
            entry = await journal.claim(
                ItemIdentity.for_path("in/a.jpg", root="in"), "smart-skin",
                {"retouch_degree": 0.8}, source="in/a.jpg", relative="a.jpg",
            )
            match entry.resume_action(retry_failed=False):
                case ResumeAction.RUN:
                    await journal.mark_sending(entry.item_id)
                    result = await client.smart_skin("in/a.jpg", retouch_degree=0.8)
                    await journal.mark_succeeded(
                        entry.item_id, image_url=result.image_url, request_id=result.request_id,
                        log_id=result.log_id, produced_at=result.produced_at,
                    )
                ...

    Every ``mark_*`` is its own committed transaction before it returns, and refuses a move
    that :data:`ALLOWED_TRANSITIONS` forbids with :class:`IllegalTransitionError`.
    """

    def __init__(
        self,
        executor: concurrent.futures.ThreadPoolExecutor,
        connection: sqlite3.Connection,
        path: str,
        clock: Callable[[], dt.datetime],
    ) -> None:
        # Use Journal.open(); the connection belongs to the executor's single thread.
        self._executor = executor
        self._connection = connection
        self._path = path
        self._clock = clock
        self._closed = False
        self._closing: concurrent.futures.Future[None] | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        power_safe: bool = False,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> Journal:
        """Open (creating directories and schema if needed) the journal at ``path``.

        ``power_safe=True`` fsyncs every commit (``synchronous=FULL``) so that commits also
        survive an OS crash or power loss; the default survives any process crash. ``clock``
        supplies the ``created_at``/``updated_at`` stamps (aware datetimes).
        """
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ailab-journal"
        )
        location = os.fspath(path)
        connecting = executor.submit(_connect, location, power_safe=power_safe)
        try:
            connection = await asyncio.shield(asyncio.wrap_future(connecting))
        except BaseException:
            # Cancelled (or failed): a connection that opens anyway is closed on its thread.
            executor.submit(_close_if_opened, connecting)
            executor.shutdown(wait=False)
            raise
        return cls(executor, connection, location, clock)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """Where the journal lives."""
        return self._path

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    async def aclose(self) -> None:
        """Finish every queued operation, then close the database. Idempotent."""
        if self._closing is None:
            self._closed = True
            # Queued behind every operation already submitted, so those still commit.
            self._closing = self._executor.submit(self._connection.close)
            self._executor.shutdown(wait=False)
        await asyncio.shield(asyncio.wrap_future(self._closing))

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Journal {self._path!r}{' closed' if self._closed else ''}>"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        # Close first: the warning may be turned into an exception.
        with contextlib.suppress(RuntimeError):  # interpreter shutting down
            self._executor.submit(self._connection.close)
            self._executor.shutdown(wait=False)
        _warn(f"unclosed {self!r}; use 'async with' or aclose()", ResourceWarning, source=self)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if self._closed:
            raise JournalError(f"{self!r} is closed")
        # Shielded: cancelling the caller must not drop a queued write (run_in_executor would
        # cancel a job that has not started yet). The job runs and commits regardless.
        return await asyncio.shield(asyncio.wrap_future(self._executor.submit(fn)))

    # -- writes ------------------------------------------------------------------------------

    async def claim(
        self,
        identity: ItemIdentity,
        operation: str,
        params: Mapping[str, object],
        *,
        source: str,
        relative: str,
    ) -> JournalEntry:
        """Return the row for (identity, operation, params), inserting it as ``PENDING``.

        Idempotent: claiming the same item again returns the existing row unchanged
        (including its original ``source``/``relative``); other ``params`` make a new row.
        """
        canonical = canonical_params(params)
        now = self._stamp(self._clock())
        connection = self._connection

        def insert_or_fetch() -> JournalEntry:
            connection.execute(
                "INSERT INTO items (identity, operation, params, source, relative, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (identity, operation, params) DO NOTHING",
                (
                    identity.key,
                    operation,
                    canonical,
                    source,
                    relative,
                    ItemState.PENDING.value,
                    now,
                    now,
                ),
            )
            row = connection.execute(
                _select("identity = ? AND operation = ? AND params = ?"),
                (identity.key, operation, canonical),
            ).fetchone()
            return _ENTRY_STRUCTURE(row, JournalEntry)

        return await self._run(insert_or_fetch)

    async def mark_sending(self, item_id: int) -> None:
        """Record that a billed request for the item is about to leave; counts an attempt.

        Call it *before* sending. Results of any earlier attempt (task, URL, error) are
        cleared: they no longer describe the item.
        """
        await self._transition(
            item_id,
            ItemState.SENDING,
            "attempts = attempts + 1, task_id = NULL, submitted_at = NULL, image_url = NULL,"
            " produced_at = NULL, error_code = NULL, error_message = NULL, retryable = NULL,"
            " request_id = NULL, log_id = NULL",
            (),
        )

    async def mark_submitted(
        self,
        item_id: int,
        *,
        task_id: str,
        request_id: str | None,
        log_id: str | None,
        submitted_at: dt.datetime,
    ) -> None:
        """Record an accepted smart-beauty task: a rerun tracks ``task_id`` instead of paying."""
        await self._transition(
            item_id,
            ItemState.SUBMITTED,
            "task_id = ?, request_id = ?, log_id = ?, submitted_at = ?",
            (task_id, request_id, log_id, self._stamp(submitted_at)),
        )

    async def mark_succeeded(
        self,
        item_id: int,
        *,
        image_url: str,
        request_id: str | None,
        log_id: str | None,
        produced_at: dt.datetime,
    ) -> None:
        """Record a result URL (valid 24 h from ``produced_at``). ``None`` ids keep the old ones."""
        await self._transition(
            item_id,
            ItemState.SUCCEEDED,
            "image_url = ?, produced_at = ?, request_id = COALESCE(?, request_id),"
            " log_id = COALESCE(?, log_id)",
            (image_url, self._stamp(produced_at), request_id, log_id),
        )

    async def mark_downloaded(self, item_id: int, *, output_path: str) -> None:
        """Record that the result is on disk at ``output_path``: the item is done."""
        await self._transition(item_id, ItemState.DOWNLOADED, "output_path = ?", (output_path,))

    async def mark_failed(
        self,
        item_id: int,
        *,
        code: str,
        message: str,
        retryable: bool,
        request_id: str | None = None,
        log_id: str | None = None,
    ) -> None:
        """Record a failure. ``task_id`` and ``image_url`` are kept, to quote to support.

        A download that failed *transiently* should leave the item ``SUCCEEDED`` instead, so
        that a rerun downloads it again rather than paying for a new result.
        """
        await self._transition(
            item_id,
            ItemState.FAILED,
            "error_code = ?, error_message = ?, retryable = ?,"
            " request_id = COALESCE(?, request_id), log_id = COALESCE(?, log_id)",
            (code, message, retryable, request_id, log_id),
        )

    async def reset(self, item_id: int) -> None:
        """Put an item, whatever its state, back to ``PENDING``, forgetting its results.

        The only way out of ``DOWNLOADED`` (for example after its output was deleted). A reset
        item will be paid for again; ``attempts`` keeps counting.
        """
        now = self._stamp(self._clock())
        connection = self._connection

        def update() -> None:
            cursor = connection.execute(
                "UPDATE items SET state = ?, updated_at = ?, task_id = NULL, image_url = NULL,"
                " output_path = NULL, error_code = NULL, error_message = NULL, retryable = NULL,"
                " request_id = NULL, log_id = NULL, submitted_at = NULL, produced_at = NULL"
                " WHERE item_id = ?",
                (ItemState.PENDING.value, now, item_id),
            )
            if cursor.rowcount == 0:
                raise JournalError(f"journal has no item {item_id}")

        await self._run(update)

    async def _transition(
        self, item_id: int, target: ItemState, assignments: str, values: Sequence[object]
    ) -> None:
        sources = _SOURCES[target]
        now = self._stamp(self._clock())
        connection = self._connection
        # One UPDATE guarded by the allowed source states: atomic, and one commit per mark.
        sql = (
            f"UPDATE items SET state = ?, updated_at = ?, {assignments}"  # noqa: S608
            f" WHERE item_id = ? AND state IN ({', '.join('?' * len(sources))})"
        )
        parameters = (target.value, now, *values, item_id, *sources)

        def update() -> None:
            if connection.execute(sql, parameters).rowcount == 1:
                return
            row = connection.execute(
                "SELECT state FROM items WHERE item_id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise JournalError(f"journal has no item {item_id}")
            raise IllegalTransitionError(item_id, ItemState(row["state"]), target)

        await self._run(update)

    @staticmethod
    def _stamp(moment: dt.datetime) -> str:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"journal timestamps must be timezone-aware, got {moment!r}")
        return str(converter.unstructure(moment.astimezone(dt.timezone.utc)))

    # -- reads -------------------------------------------------------------------------------

    async def get(self, item_id: int) -> JournalEntry:
        """The row of one item; :class:`JournalError` if there is none."""
        connection = self._connection

        def fetch() -> JournalEntry:
            row = connection.execute(_select("item_id = ?"), (item_id,)).fetchone()
            if row is None:
                raise JournalError(f"journal has no item {item_id}")
            return _ENTRY_STRUCTURE(row, JournalEntry)

        return await self._run(fetch)

    async def entries(self, *, states: Collection[ItemState] | None = None) -> list[JournalEntry]:
        """Every row (or those in ``states``), by ``item_id``. See :meth:`iter_entries` for
        large journals."""
        return [entry async for entry in self.iter_entries(states=states, page_size=0)]

    async def iter_entries(
        self, *, states: Collection[ItemState] | None = None, page_size: int = 1000
    ) -> AsyncIterator[JournalEntry]:
        """Yield rows (or those in ``states``) by ``item_id``, ``page_size`` at a time.

        Memory stays bounded by the page; rows changed while iterating are seen as they are
        when their page is read. ``page_size=0`` reads everything in one go.

        >>> async for entry in journal.iter_entries(states={ItemState.SUBMITTED}):  # doctest: +SKIP
        ...     handle = client.track(entry.task_id, submitted_at=entry.submitted_at)
        """
        wanted = tuple(s.value for s in (ItemState if states is None else states))
        if not wanted:
            return
        connection = self._connection
        sql = _select(
            f"item_id > ? AND state IN ({', '.join('?' * len(wanted))}) ORDER BY item_id"
            + (" LIMIT ?" if page_size > 0 else "")
        )

        def fetch_page(after: int) -> list[JournalEntry]:
            limit = (page_size,) if page_size > 0 else ()
            rows = connection.execute(sql, (after, *wanted, *limit)).fetchall()
            return [_ENTRY_STRUCTURE(row, JournalEntry) for row in rows]

        after = 0
        while True:
            page = await self._run(functools.partial(fetch_page, after))
            for entry in page:
                yield entry
            if page_size <= 0 or len(page) < page_size:
                return
            after = page[-1].item_id

    async def counts(self) -> dict[ItemState, int]:
        """How many items are in each state (every state present, zeros included)."""
        connection = self._connection

        def count() -> dict[ItemState, int]:
            found = dict.fromkeys(ItemState, 0)
            for row in connection.execute("SELECT state, COUNT(*) AS n FROM items GROUP BY state"):
                found[ItemState(row["state"])] = row["n"]
            return found

        return await self._run(count)


def _close_if_opened(connecting: concurrent.futures.Future[sqlite3.Connection]) -> None:
    """Runs on the worker thread, after ``connecting`` (the executor is first-in first-out)."""
    if connecting.exception() is None:
        connecting.result().close()


def _connect(path: str, *, power_safe: bool) -> sqlite3.Connection:
    """Open and prepare the database. Runs on the journal's worker thread."""
    if path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Autocommit (isolation_level=None): every statement outside BEGIN is its own transaction.
    connection = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        connection.row_factory = _row_as_dict
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {'FULL' if power_safe else 'NORMAL'}")
        connection.execute("BEGIN IMMEDIATE")
        try:
            _ensure_schema(connection, path)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    except BaseException:
        connection.close()
        raise
    return connection


def _ensure_schema(connection: sqlite3.Connection, path: str) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT MAX(version) AS version FROM schema_version").fetchone()
    version = row["version"]
    if version is None:
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path!r} has schema version {version}, newer than this ailab-async "
            f"understands ({SCHEMA_VERSION}); upgrade ailab-async"
        )
