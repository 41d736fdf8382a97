"""The journal's lock: one run at a time, held by the operating system.

An exclusive, non-blocking lock on ``<journal>.lock`` beside the database (``flock``;
``msvcrt.locking`` on Windows). A second holder, in this process or another, fails at once
with :class:`~ailab_async.batch.journal.JournalBusyError`; the lock dies with its holder,
however that ends.
"""

from __future__ import annotations

import errno
import os
import sys

from ._errors import JournalBusyError

__all__ = ["lock_exclusively"]


def lock_exclusively(path: str) -> int:
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
