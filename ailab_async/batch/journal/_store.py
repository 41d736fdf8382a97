"""The journal store: :class:`Journal`, the async face of one SQLite connection on one thread.

Every operation is a function queued to the journal's single worker thread, which owns the
connection (:mod:`._sqlite` holds the SQL of the guarded writes); writes follow the transition
table (:mod:`._states`) and commit before the awaiting call returns, even if it is cancelled.
One cohesive class, the journal's whole read/write API, which is why this module runs to
about 500 lines (most of them docstrings for the callers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import os
import sqlite3
import warnings
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

from ...errors import ValidationError
from ...models import converter
from . import _sqlite
from ._errors import JournalError
from ._identity import ItemIdentity, JournalAccount, canonical_params
from ._sqlite import Database, connect, select, structure_entry
from ._states import ItemState, JournalEntry, utcnow

__all__ = ["Journal"]

_T = TypeVar("_T")

#: A row by the journal's uniqueness key (identity, operation, canonical parameters).
_BY_KEY = select("identity = ? AND operation = ? AND params = ?")


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
        database: Database,
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
        clock: Callable[[], dt.datetime] = utcnow,
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
            connect,
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

    # The async-context protocol, as every closable of this package spells it (client,
    # limiter, simulator): two lines a class, not worth a shared base class.
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
                _BY_KEY,
                (identity.key, operation, canonical),
            ).fetchone()
            return structure_entry(row, JournalEntry)

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
        return await self._run(
            functools.partial(_sqlite.reserve_output, self._connection, item_id, path)
        )

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
        values = (code, message, retryable, request_id, log_id, self._stamp(self._clock()))
        await self._run(functools.partial(_sqlite.note_error, self._connection, item_id, values))

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
        now = self._stamp(self._clock())
        return await self._run(
            functools.partial(
                _sqlite.transition, self._connection, item_id, target, now, assignments, values
            )
        )

    @staticmethod
    def _stamp(moment: dt.datetime) -> str:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValidationError(
                f"journal timestamps must be timezone-aware, got {moment!r}",
                input="timestamp",
                rule="timezone",
            )
        return str(converter.unstructure(moment.astimezone(dt.timezone.utc)))

    # -- reads -------------------------------------------------------------------------------

    async def get(self, item_id: int) -> JournalEntry:
        """The row of one item; :class:`JournalError` if there is none."""
        connection = self._connection

        def fetch() -> JournalEntry:
            row = connection.execute(select("item_id = ?"), (item_id,)).fetchone()
            if row is None:
                raise JournalError(f"journal has no item {item_id}")
            return structure_entry(row, JournalEntry)

        return await self._run(fetch)

    async def lookup(
        self, identity: ItemIdentity, operation: str, params: Mapping[str, object]
    ) -> JournalEntry | None:
        """The row :meth:`claim` would return for this item, or ``None``; claims nothing.

        Read-only, for asking what a rerun would do (and pay for) before running:
        ``entry.resume_action(...)`` if there is a row, a fresh run if there is none.

        >>> entry = await journal.lookup(identity, "smart-skin", params)  # doctest: +SKIP
        """
        (entry,) = await self.lookup_many([identity], operation, params)
        return entry

    async def lookup_many(
        self,
        identities: Sequence[ItemIdentity | None],
        operation: str,
        params: Mapping[str, object],
    ) -> list[JournalEntry | None]:
        """:meth:`lookup` for many items at once (one trip to the journal's thread); a
        ``None`` identity (an input that could not be identified) finds ``None``."""
        canonical = canonical_params(params)
        connection = self._connection

        def fetch() -> list[JournalEntry | None]:
            found: list[JournalEntry | None] = []
            for identity in identities:
                row = (
                    None
                    if identity is None
                    else connection.execute(
                        _BY_KEY, (identity.key, operation, canonical)
                    ).fetchone()
                )
                found.append(None if row is None else structure_entry(row, JournalEntry))
            return found

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
        sql = select(
            f"item_id > ? AND state IN ({', '.join('?' * len(wanted))}) ORDER BY item_id"
            + (" LIMIT ?" if page_size > 0 else "")
        )

        def fetch_page(after: int) -> list[JournalEntry]:
            limit = (page_size,) if page_size > 0 else ()
            rows = connection.execute(sql, (after, *wanted, *limit)).fetchall()
            return [structure_entry(row, JournalEntry) for row in rows]

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


def _close_if_opened(connecting: concurrent.futures.Future[Database]) -> None:
    """Runs on the worker thread, after ``connecting`` (the executor is first-in first-out)."""
    if connecting.exception() is None:
        connecting.result().close()
