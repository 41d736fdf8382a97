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

Where each part lives: states, legal moves and resume decisions (pure) in ``_states``; the
uniqueness key and the account in ``_identity``; the exceptions in ``_errors``; the lock in
``_lock``; the schema, its migrations and opening in ``_sqlite``; the :class:`Journal` store
and its worker thread in ``_store``. Import every name from here.
"""

from __future__ import annotations

from ._errors import IllegalTransitionError, JournalAccountError, JournalBusyError, JournalError
from ._identity import ItemIdentity, JournalAccount, canonical_params
from ._sqlite import SCHEMA_VERSION
from ._states import (
    ALLOWED_TRANSITIONS,
    RESUME_SAFETY_MARGIN,
    TASK_RESULT_TTL,
    ItemState,
    JournalEntry,
    ResumeAction,
)
from ._store import Journal

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
