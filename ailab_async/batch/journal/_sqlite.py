"""The journal's on-disk form: the SQLite schema, its migrations, opening, row mapping and
the guarded writes (state transitions, error notes, output reservations).

Everything here runs on the journal's worker thread (see :mod:`._store`). :func:`connect`
takes the lock (:mod:`._lock`), opens the database in WAL mode, creates or migrates the
schema and checks the account, in one transaction. :data:`SCHEMA_VERSION` is the version
written; a newer journal is refused, a schema-1 journal is migrated.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import Any

import attrs

from ...models import converter
from ._errors import IllegalTransitionError, JournalAccountError, JournalError
from ._identity import JournalAccount
from ._lock import lock_exclusively
from ._states import TRANSITION_SOURCES, ItemState, JournalEntry

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "connect",
    "note_error",
    "reserve_output",
    "select",
    "structure_entry",
    "transition",
]

#: Version of the on-disk schema this module writes; a newer journal is refused.
SCHEMA_VERSION = 2

structure_entry: Callable[[Any, Any], JournalEntry] = converter.get_structure_hook(JournalEntry)
_COLUMNS = ", ".join(f.name for f in attrs.fields(JournalEntry))


def select(where: str) -> str:
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


class Database:
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


def connect(
    path: str, *, power_safe: bool, account: JournalAccount | None, reassign_account: bool
) -> Database:
    """Lock, open and prepare the database. Runs on the journal's worker thread."""
    lock = None
    if _is_file(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        lock = lock_exclusively(path)
    try:
        # Autocommit (isolation_level=None): every statement outside BEGIN is its own
        # transaction.
        connection = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    database = Database(connection, lock)
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


# -- guarded writes: each runs on the journal's thread, in one statement's transaction ------


def _state_of(connection: sqlite3.Connection, item_id: int) -> ItemState:
    row = connection.execute("SELECT state FROM items WHERE item_id = ?", (item_id,)).fetchone()
    if row is None:
        raise JournalError(f"journal has no item {item_id}")
    return ItemState(row["state"])


def transition(
    connection: sqlite3.Connection,
    item_id: int,
    target: ItemState,
    now: str,
    assignments: str,
    values: Sequence[object],
) -> ItemState:
    """Move the item to ``target`` with ``assignments``, if the table allows it from where it
    is; the state it was in. :class:`IllegalTransitionError` otherwise."""
    sources = TRANSITION_SOURCES[target]
    # One UPDATE guarded by the allowed source states: atomic, and one commit per mark.
    sql = (
        f"UPDATE items SET state = ?, updated_at = ?, {assignments}"  # noqa: S608
        f" WHERE item_id = ? AND state IN ({', '.join('?' * len(sources))})"
    )
    # Only this connection writes (the lock keeps other runs out) and it runs on one thread,
    # so nothing changes the row between the read and the guarded update.
    current = _state_of(connection, item_id)
    if connection.execute(sql, (target.value, now, *values, item_id, *sources)).rowcount == 1:
        return current
    raise IllegalTransitionError(item_id, current, target)


def note_error(connection: sqlite3.Connection, item_id: int, values: Sequence[object]) -> None:
    """Record an error on a ``SUBMITTED``/``SUCCEEDED`` item, keeping its state. ``values``:
    code, message, retryable, request id, log id, the ``updated_at`` stamp."""
    cursor = connection.execute(
        "UPDATE items SET error_code = ?, error_message = ?, retryable = ?,"
        " request_id = COALESCE(?, request_id), log_id = COALESCE(?, log_id),"
        " updated_at = ? WHERE item_id = ? AND state IN ('submitted', 'succeeded')",
        (*values, item_id),
    )
    if cursor.rowcount == 1:
        return
    current = _state_of(connection, item_id)
    raise JournalError(
        f"journal item {item_id} is {current.value}: only a submitted or succeeded "
        "item keeps its state on an error; use mark_failed"
    )


def reserve_output(connection: sqlite3.Connection, item_id: int, path: str) -> str:
    """Give the item ``path``, or the first free ``stem~N.ext``; keep one it already holds
    with the same extension. The unique NOCASE index decides what is free."""
    wanted = PurePath(path)
    stem, suffix = wanted.stem, wanted.suffix
    row = connection.execute(
        "SELECT output_path FROM items WHERE item_id = ?", (item_id,)
    ).fetchone()
    if row is None:
        raise JournalError(f"journal has no item {item_id}")
    held = row["output_path"]
    if held is not None and PurePath(held).suffix == suffix:
        return str(held)
    for number in itertools.count(1):
        candidate = path if number == 1 else str(wanted.with_name(f"{stem}~{number}{suffix}"))
        try:
            connection.execute(
                "UPDATE items SET output_path = ? WHERE item_id = ?", (candidate, item_id)
            )
        except sqlite3.IntegrityError:
            continue  # another item holds it: the next one
        return candidate
    raise AssertionError("unreachable")  # pragma: no cover
