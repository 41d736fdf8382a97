"""A durable SQLite journal of batch items, so that a crash never loses a paid result.

Every item a batch touches gets one row, keyed by what it is (:class:`ItemIdentity`), which
operation runs on it and with which parameters. Each remote step is written down as it happens::

    PENDING ─► SENDING ─► SUBMITTED ─► SUCCEEDED ─► DOWNLOADED
       │          │  ▲        │  │          │ │
       │          │  └────────┘  │          │ └─► SENDING   (URL expired: run again)
       └──────────┴──────────────┴──────────┴───► FAILED ─► SENDING (retry)
                                                     └────► SUCCEEDED / DOWNLOADED / FAILED
                                                            (an older journal's failure whose
                                                            task or URL still lives, retried)

:data:`ALLOWED_TRANSITIONS` is the one place that says which moves are legal; an illegal one
raises :class:`IllegalTransitionError`. ``SENDING`` is written *before* a billed request leaves,
so a rerun knows the request may have been paid for; ``SUBMITTED`` keeps the smart-beauty
``task_id`` and ``SUCCEEDED`` the temporary result URL, each committed before the ``mark_*``
call returns. On a rerun :meth:`JournalEntry.resume_action` says, per row and without I/O,
what to do: skip it, track its task, download its result, run it again, or leave it failed.

Paid work is never thrown away: a failure *after* the paid step (waiting for a task timed out,
a download hit a 5xx or a full disk) does not move the item to ``FAILED``. It stays
``SUBMITTED`` or ``SUCCEEDED`` with the error noted (:meth:`Journal.note_error`), so it still
counts as not done, and a rerun tracks the task or downloads the URL again instead of paying.
A ``SENDING`` row found by a rerun is a request that was in flight when a process died: it
may have been billed, and sending it again is counted in ``interrupted_sends``.

One run at a time: :meth:`Journal.open` takes an exclusive operating-system lock on
``<journal>.lock`` beside the file (``flock``; ``msvcrt.locking`` on Windows). A second open, in
this process or another, fails at once with :class:`JournalBusyError`. The lock is the
operating system's, so it is released however the holder ends, even by SIGKILL. (``:memory:``
journals and ``file:`` URIs take no lock.) Outputs are reserved in the journal
(:meth:`Journal.reserve_output`): two items never get one path. A journal can record whose it
is (:class:`JournalAccount`: the base URL and a fingerprint of the key, never the key) and
refuse another account's run, whose task ids and URLs it could not use.

Schema 2 (this version) adds ``interrupted_sends``, output reservations and the account; a
schema-1 journal is migrated when opened.

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
import errno
import functools
import hashlib
import itertools
import json
import os
import sqlite3
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path, PurePath
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ..errors import AILabError
from ..models import RESULT_URL_TTL, converter, key_fingerprint, redact_url

if TYPE_CHECKING:
    from ..client import AILabClient

__all__ = [
    "ALLOWED_TRANSITIONS",
    "RESUME_SAFETY_MARGIN",
    "SCHEMA_VERSION",
    "TASK_RESULT_TTL",
    "IllegalTransitionError",
    "ItemIdentity",
    "ItemState",
    "Journal",
    "JournalAccount",
    "JournalAccountError",
    "JournalBusyError",
    "JournalEntry",
    "JournalError",
    "ResumeAction",
    "canonical_params",
]

_T = TypeVar("_T")

#: Version of the on-disk schema this module writes; a newer journal is refused.
SCHEMA_VERSION = 2

#: How long the API keeps a finished task's result. Measured from submission, which can only
#: be earlier than completion, so a task younger than this is certainly still fetchable.
TASK_RESULT_TTL = dt.timedelta(hours=24)

#: Head room before a URL or task is considered gone: a download or poll that starts just
#: before expiry would otherwise fail half-way.
RESUME_SAFETY_MARGIN = dt.timedelta(minutes=5)


class JournalError(AILabError):
    """The journal cannot do what was asked: closed, unknown item, or a newer schema."""


class JournalBusyError(JournalError):
    """Another run (this process or another) has the journal open: two runs would pay twice."""


class JournalAccountError(JournalError):
    """The journal was written for another account or API base URL: its tasks are not ours."""


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
    # FAILED -> SUCCEEDED / DOWNLOADED: an older journal recorded a failure after the paid
    # step (a task timeout, a failed download); its task is tracked or its URL downloaded.
    # FAILED -> FAILED: such a retry failed again.
    _S.FAILED: frozenset({_S.SENDING, _S.SUCCEEDED, _S.DOWNLOADED, _S.FAILED}),
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


_ENTRY_STRUCTURE: Callable[[Any, Any], JournalEntry] = converter.get_structure_hook(JournalEntry)
_COLUMNS = ", ".join(f.name for f in attrs.fields(JournalEntry))


def _select(where: str) -> str:
    # SQL is only ever assembled from module constants and "?" placeholders; values are bound.
    return f"SELECT {_COLUMNS} FROM items WHERE {where}"  # noqa: S608


_STATE_CHECK = ", ".join(f"'{s.value}'" for s in ItemState)

#: Added in schema 2 (and by the migration from 1): one output path per item, whatever the
#: case (NOCASE: ``A.png`` and ``a.png`` are one file on macOS and Windows), and the
#: journal's account.
_SCHEMA_2 = (
    "CREATE UNIQUE INDEX items_by_output ON items (output_path COLLATE NOCASE)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

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
        interrupted_sends INTEGER NOT NULL DEFAULT 0,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        submitted_at  TEXT,
        produced_at   TEXT,
        UNIQUE (identity, operation, params)
    )
    """,
    "CREATE INDEX items_by_state ON items (state, item_id)",
    *_SCHEMA_2,
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
        database: _Database,
        path: str,
        clock: Callable[[], dt.datetime],
    ) -> None:
        # Use Journal.open(); the connection belongs to the executor's single thread.
        self._executor = executor
        self._database = database
        self._connection = database.connection
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
        account: JournalAccount | None = None,
        reassign_account: bool = False,
    ) -> Journal:
        """Open (creating directories and schema if needed) the journal at ``path``.

        Takes the journal's exclusive lock first: if another run holds it, this raises
        :class:`JournalBusyError` at once. ``power_safe=True`` fsyncs every commit
        (``synchronous=FULL``) so that commits also survive an OS crash or power loss; the
        default survives any process crash. ``clock`` supplies the
        ``created_at``/``updated_at`` stamps (aware datetimes).

        ``account`` (see :class:`JournalAccount`) is recorded on first use; a journal
        recorded for another account or base URL is refused with
        :class:`JournalAccountError` (its task ids and URLs belong to that account), unless
        ``reassign_account=True`` records the new one.
        """
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ailab-journal"
        )
        location = os.fspath(path)
        connecting = executor.submit(
            _connect,
            location,
            power_safe=power_safe,
            account=account,
            reassign_account=reassign_account,
        )
        try:
            database = await asyncio.shield(asyncio.wrap_future(connecting))
        except BaseException:
            # Cancelled (or failed): a connection that opens anyway is closed on its thread.
            executor.submit(_close_if_opened, connecting)
            executor.shutdown(wait=False)
            raise
        return cls(executor, database, location, clock)

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
            self._closing = self._executor.submit(self._database.close)
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
            self._executor.submit(self._database.close)
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

    async def mark_sending(self, item_id: int) -> bool:
        """Record that a billed request for the item is about to leave; counts an attempt.

        Call it *before* sending. Results of any earlier attempt (task, URL, error) are
        cleared: they no longer describe the item. Returns whether the item was still
        ``SENDING``: the previous request was in flight when its process died and may have
        been billed, so this send is an ambiguous resend (counted in ``interrupted_sends``).
        """
        previous = await self._transition(
            item_id,
            ItemState.SENDING,
            "attempts = attempts + 1, task_id = NULL, submitted_at = NULL, image_url = NULL,"
            " produced_at = NULL, error_code = NULL, error_message = NULL, retryable = NULL,"
            " request_id = NULL, log_id = NULL,"
            " interrupted_sends = interrupted_sends + (state = 'sending')",
            (),
        )
        return previous is ItemState.SENDING

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
        """Record a result URL (valid 24 h from ``produced_at``). ``None`` ids keep the old
        ones; an error noted earlier is cleared."""
        await self._transition(
            item_id,
            ItemState.SUCCEEDED,
            "image_url = ?, produced_at = ?, request_id = COALESCE(?, request_id),"
            " log_id = COALESCE(?, log_id), error_code = NULL, error_message = NULL,"
            " retryable = NULL",
            (image_url, self._stamp(produced_at), request_id, log_id),
        )

    async def mark_downloaded(self, item_id: int, *, output_path: str) -> None:
        """Record that the result is on disk at ``output_path``: the item is done.

        ``output_path`` must be free or reserved for this item (:meth:`reserve_output`);
        one held by another item raises :class:`JournalError`.
        """
        try:
            await self._transition(
                item_id,
                ItemState.DOWNLOADED,
                "output_path = ?, error_code = NULL, error_message = NULL, retryable = NULL",
                (output_path,),
            )
        except sqlite3.IntegrityError:
            raise JournalError(
                f"journal item {item_id}: output {output_path!r} belongs to another item"
            ) from None

    async def reserve_output(self, item_id: int, path: str) -> str:
        """Reserve an output path for the item, atomically; the path it got.

        ``path`` if no other item holds it (compared without case), else the first free of
        ``stem~2.ext``, ``stem~3.ext``, ... The reservation is kept across reruns: an item
        that already holds a path with the same extension gets that one back, so its output
        never moves. Paths are only ever compared as strings: pass them built the same way.

        >>> await journal.reserve_output(entry.item_id, "out/a.png")  # doctest: +SKIP
        'out/a~2.png'
        """
        connection = self._connection
        wanted = PurePath(path)
        stem, suffix = wanted.stem, wanted.suffix

        def reserve() -> str:
            row = connection.execute(
                "SELECT output_path FROM items WHERE item_id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise JournalError(f"journal has no item {item_id}")
            held = row["output_path"]
            if held is not None and PurePath(held).suffix == suffix:
                return str(held)
            for number in itertools.count(1):
                candidate = (
                    path if number == 1 else str(wanted.with_name(f"{stem}~{number}{suffix}"))
                )
                try:
                    connection.execute(
                        "UPDATE items SET output_path = ? WHERE item_id = ?", (candidate, item_id)
                    )
                except sqlite3.IntegrityError:
                    continue  # another item holds it: the next one
                return candidate
            raise AssertionError("unreachable")  # pragma: no cover

        return await self._run(reserve)

    async def note_error(
        self,
        item_id: int,
        *,
        code: str,
        message: str,
        retryable: bool,
        request_id: str | None = None,
        log_id: str | None = None,
    ) -> None:
        """Record that finishing a ``SUBMITTED`` or ``SUCCEEDED`` item failed, keeping its state.

        For failures after the paid step: waiting for the task timed out (it goes on), the
        download hit a transient error or a full disk. The item still counts as not done (the
        manifest shows the error), and a rerun tracks its task or downloads its URL again
        instead of paying for a new result.
        """
        connection = self._connection
        values = (code, message, retryable, request_id, log_id, self._stamp(self._clock()))

        def update() -> None:
            cursor = connection.execute(
                "UPDATE items SET error_code = ?, error_message = ?, retryable = ?,"
                " request_id = COALESCE(?, request_id), log_id = COALESCE(?, log_id),"
                " updated_at = ? WHERE item_id = ? AND state IN ('submitted', 'succeeded')",
                (*values, item_id),
            )
            if cursor.rowcount == 1:
                return
            row = connection.execute(
                "SELECT state FROM items WHERE item_id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise JournalError(f"journal has no item {item_id}")
            raise JournalError(
                f"journal item {item_id} is {row['state']}: only a submitted or succeeded "
                "item keeps its state on an error; use mark_failed"
            )

        await self._run(update)

    async def mark_failed(
        self,
        item_id: int,
        *,
        code: str,
        message: str,
        retryable: bool,
        request_id: str | None = None,
        log_id: str | None = None,
        result_gone: bool = False,
    ) -> None:
        """Record a failure. ``task_id`` and ``image_url`` are kept, to quote to support.

        A rerun prefers a kept task or URL that still lives to paying again; pass
        ``result_gone=True`` when they are known dead (the task failed, the URL answered
        404/410) so that a retry runs the item again. A failure *after* the paid step that
        may pass (a task timeout, a transient download error, a full disk) should not be a
        failure at all: use :meth:`note_error`, which keeps the item ``SUBMITTED`` or
        ``SUCCEEDED``.
        """
        gone = ", submitted_at = NULL, produced_at = NULL" if result_gone else ""
        await self._transition(
            item_id,
            ItemState.FAILED,
            "error_code = ?, error_message = ?, retryable = ?,"
            " request_id = COALESCE(?, request_id), log_id = COALESCE(?, log_id)" + gone,
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
    ) -> ItemState:
        """Move the item to ``target``; the state it was in."""
        sources = _SOURCES[target]
        now = self._stamp(self._clock())
        connection = self._connection
        # One UPDATE guarded by the allowed source states: atomic, and one commit per mark.
        sql = (
            f"UPDATE items SET state = ?, updated_at = ?, {assignments}"  # noqa: S608
            f" WHERE item_id = ? AND state IN ({', '.join('?' * len(sources))})"
        )
        parameters = (target.value, now, *values, item_id, *sources)

        def update() -> ItemState:
            # Only this connection writes (the lock keeps other runs out) and it runs on one
            # thread, so nothing changes the row between the read and the guarded update.
            row = connection.execute(
                "SELECT state FROM items WHERE item_id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise JournalError(f"journal has no item {item_id}")
            if connection.execute(sql, parameters).rowcount == 1:
                return ItemState(row["state"])
            raise IllegalTransitionError(item_id, ItemState(row["state"]), target)

        return await self._run(update)

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


def _close_if_opened(connecting: concurrent.futures.Future[_Database]) -> None:
    """Runs on the worker thread, after ``connecting`` (the executor is first-in first-out)."""
    if connecting.exception() is None:
        connecting.result().close()


@attrs.frozen
class JournalAccount:
    """Whose journal it is: the API base URL and a fingerprint of the key (never the key).

    The fingerprint is the first 8 bytes (hex) of HMAC-SHA256 keyed by the API key over a
    fixed label: it tells two keys apart without revealing either.

    >>> JournalAccount.for_key("https://www.ailabapi.com", "k").base_url
    'https://www.ailabapi.com'
    """

    base_url: str
    key_fingerprint: str

    @classmethod
    def for_key(cls, base_url: str, api_key: str) -> JournalAccount:
        return cls(base_url.rstrip("/"), key_fingerprint(api_key))

    @classmethod
    def for_client(cls, client: AILabClient) -> JournalAccount:
        """The account a client calls: its base URL and its key's fingerprint."""
        return cls(client.base_url.rstrip("/"), client.key_fingerprint)


class _Database:
    """The journal's SQLite connection and the OS lock that makes it this run's alone."""

    def __init__(self, connection: sqlite3.Connection, lock: int | None) -> None:
        self.connection = connection
        self._lock = lock

    def close(self) -> None:
        try:
            self.connection.close()
        finally:
            if self._lock is not None:
                lock, self._lock = self._lock, None
                os.close(lock)  # closing the descriptor releases the lock


def _is_file(path: str) -> bool:
    return path != ":memory:" and not path.startswith("file:")


def _lock_exclusively(path: str) -> int:
    """Take the exclusive lock on ``<path>.lock``; its descriptor, to close to release it.

    An operating-system lock rather than a pid file: it dies with its holder, however that
    ends (SIGKILL, OOM), so a crashed run never blocks the next. Written here rather than
    with ``filelock``, whose soft-lock fallback and per-thread re-entrancy would weaken
    exactly this guarantee.
    """
    lock_path = f"{path}.lock"
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt  # noqa: PLC0415

            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl  # noqa: PLC0415

            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            raise JournalBusyError(
                f"journal {path!r} is in use by another run; wait for it to finish or use "
                "another --out (or journal path)"
            ) from None
        raise
    return descriptor


def _connect(
    path: str, *, power_safe: bool, account: JournalAccount | None, reassign_account: bool
) -> _Database:
    """Lock, open and prepare the database. Runs on the journal's worker thread."""
    lock = None
    if _is_file(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        lock = _lock_exclusively(path)
    try:
        # Autocommit (isolation_level=None): every statement outside BEGIN is its own
        # transaction.
        connection = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    database = _Database(connection, lock)
    try:
        connection.row_factory = _row_as_dict
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {'FULL' if power_safe else 'NORMAL'}")
        connection.execute("BEGIN IMMEDIATE")
        try:
            _ensure_schema(connection, path)
            if account is not None:
                _check_account(connection, path, account, reassign=reassign_account)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    except BaseException:
        database.close()
        raise
    return database


def _check_account(
    connection: sqlite3.Connection, path: str, account: JournalAccount, *, reassign: bool
) -> None:
    recorded = {
        row["name"]: row["value"]
        for row in connection.execute(
            "SELECT name, value FROM meta WHERE name IN ('base_url', 'key_fingerprint')"
        )
    }
    wanted = {"base_url": account.base_url, "key_fingerprint": account.key_fingerprint}
    if recorded and recorded != wanted and not reassign:
        what = (
            "another API base URL"
            if recorded.get("base_url") != account.base_url
            else "another API key"
        )
        raise JournalAccountError(
            f"journal {path!r} was written for {what} (base URL "
            f"{recorded.get('base_url')!r}); its tasks and results are not this account's. "
            "Use another --out (or journal path), or reset the journal to start afresh"
        )
    connection.executemany(
        "INSERT INTO meta (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        list(wanted.items()),
    )


def _ensure_schema(connection: sqlite3.Connection, path: str) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT MAX(version) AS version FROM schema_version").fetchone()
    version = row["version"]
    if version is None:
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif version == 1:
        _migrate_from_1(connection)
    elif version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path!r} has schema version {version}, newer than this ailab-async "
            f"understands ({SCHEMA_VERSION}); upgrade ailab-async"
        )


def _migrate_from_1(connection: sqlite3.Connection) -> None:
    """Schema 1 to 2: count interrupted sends, reserve outputs uniquely, record the account.

    A schema-1 journal may hold two items with one output path (the later download
    overwrote the earlier). The item written last keeps the path; the others lose theirs
    and go back to ``SUCCEEDED`` (downloaded again while the URL lives) or ``PENDING``.
    """
    connection.execute("ALTER TABLE items ADD COLUMN interrupted_sends INTEGER NOT NULL DEFAULT 0")
    connection.execute(
        "UPDATE items SET output_path = NULL,"
        " state = CASE WHEN image_url IS NOT NULL THEN 'succeeded' ELSE 'pending' END"
        " WHERE output_path IS NOT NULL AND EXISTS (SELECT 1 FROM items AS later"
        " WHERE later.output_path = items.output_path COLLATE NOCASE"
        " AND (later.updated_at > items.updated_at"
        " OR (later.updated_at = items.updated_at AND later.item_id > items.item_id)))"
    )
    for statement in _SCHEMA_2:
        connection.execute(statement)
    connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
