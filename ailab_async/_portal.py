"""The event loop behind the blocking facade: one background thread and its blocking portal.

:class:`LoopThread` runs an event loop in a daemon thread of its own, with an anyio
:class:`~anyio.from_thread.BlockingPortal` in it; it runs calls from any other thread in that
loop (:meth:`LoopThread.run`) and stops it (:meth:`LoopThread.close`). It owns what a blocking
caller expects of such a call:

* the waiting thread giving up (``KeyboardInterrupt``, any exception raised while it waits)
  cancels the work in the loop too: nothing runs on for a caller who has gone;
* a call after close is a :class:`~ailab_async.ClientClosedError`, never anyio's
  ``RuntimeError``; a call that could never be answered is a
  :class:`~ailab_async.ConfigurationError`: from the loop's own thread (it would wait for
  itself), or from a child process forked after the loop started (the thread did not come
  along);
* a loop nobody closed never holds up the interpreter's exit (its thread is a daemon), and
  is closed at exit (``atexit``: the daemon still runs then), so its connections are not
  reported as leaked while the interpreter tears down.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .errors import ClientClosedError, ConfigurationError

if TYPE_CHECKING:  # typing has them from 3.11 only; annotations are never evaluated here
    from typing_extensions import TypeVarTuple, Unpack

    Ts = TypeVarTuple("Ts")

__all__ = ["LoopThread"]

T = TypeVar("T")

_CLOSED = "this AILabClient is closed; create a new one"


class LoopThread:
    """An event loop running in a background thread until :meth:`close`.

    ``on_close`` is awaited in the loop when it is closed, before the loop stops (the
    facade closes its async client there).

    Not ``anyio.from_thread.start_blocking_portal``: its context manager, left open (a
    client never closed, a forked child), is finalised at interpreter exit and then waits
    forever for a loop thread that is no longer running. A portal held here has no
    finaliser, and the daemon thread does not keep the process alive.
    """

    def __init__(self, on_close: Callable[[], Awaitable[None]]) -> None:
        self._on_close = on_close
        self._close_lock = threading.Lock()
        self._stopped = False
        self._pid = os.getpid()
        started: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=_serve, args=(started,), name="ailab-sync-loop", daemon=True
        )
        self._thread.start()
        self._portal = started.result()
        self._thread_id = self._thread.ident
        with _open_lock:
            _open.add(self)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`close` has stopped (or is stopping) the loop."""
        return self._stopped

    def run(self, func: Callable[[Unpack[Ts]], Awaitable[T]], *args: Unpack[Ts]) -> T:
        """``await func(*args)`` in the loop; its result.

        Its exception propagates unchanged. If the waiting thread is interrupted, the call
        is cancelled in the loop before the interruption propagates.
        """
        self._refuse_unanswerable()
        call = _Cancellable()
        future: concurrent.futures.Future[T] | None = None
        try:
            try:
                future = self._portal.start_task_soon(call.run, func, *args)
            except RuntimeError:  # the portal has stopped
                raise ClientClosedError(_CLOSED) from None
            return future.result()
        except concurrent.futures.CancelledError:
            # Only close() cancels a call we did not cancel ourselves.
            error = ClientClosedError(
                "this AILabClient was closed while the call was in progress; a billed "
                "request may have been processed"
            )
            error.ambiguous = True
            raise error from None
        except BaseException:
            if future is None or not future.done():  # done: the call itself raised
                call.cancel()
            raise

    def call(self, func: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
        """``func(*args)`` in the loop; its result, never awaited (a task handle is
        awaitable: the caller wants the handle)."""
        return self.run(_returning, func, *args)

    def peek(self, read: Callable[[], T]) -> T:
        """``read()`` in the loop while it runs; directly once it has stopped (nothing
        changes any more then), or from the loop's own thread."""
        if self.in_own_thread():
            return read()
        try:
            return self.call(read)
        except ClientClosedError:
            return read()

    def close(self) -> None:
        """Await ``on_close`` in the loop, cancel what still runs there, stop the loop and
        join its thread. Idempotent and thread-safe: a second caller waits for the first.

        In a child process forked after the loop started, only marks it stopped: the loop
        is the parent's to close.
        """
        if self._forked():
            self._stopped = True
            return
        self._refuse_own_thread()
        with self._close_lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                self._portal.call(self._on_close)
            finally:
                # Calls still running in other threads end with ClientClosedError.
                self._portal.call(self._portal.stop, True)
                self._thread.join()
                with _open_lock:
                    _open.discard(self)

    def in_own_thread(self) -> bool:
        """Whether the current thread is the loop's."""
        return threading.get_ident() == self._thread_id

    def _forked(self) -> bool:
        return os.getpid() != self._pid

    def _refuse_own_thread(self) -> None:
        if self.in_own_thread():
            raise ConfigurationError(
                "a blocking AILabClient method was called from inside its own event loop "
                "(from a coroutine function given to map, say); a coroutine must await an "
                "async client instead"
            )

    def _refuse_unanswerable(self) -> None:
        if self._forked():
            raise ConfigurationError(
                "this AILabClient was created in a parent process before it forked, and its "
                "event loop thread did not come along: create the client in each process "
                "(in a web server's worker, after the fork)"
            )
        self._refuse_own_thread()


_open: set[LoopThread] = set()
_open_lock = threading.Lock()


@atexit.register
def _close_at_exit() -> None:
    """Close the loops nobody closed."""
    with _open_lock:
        loops = list(_open)
    for loop in loops:
        try:
            loop.close()
        except Exception:  # noqa: S112 - exiting anyway: close the others
            continue


def _forget_the_parents_loops() -> None:
    """In a forked child: the parent's loops are not ours to close (nor is its lock's state)."""
    global _open_lock  # noqa: PLW0603 - a fresh lock: the parent's may have been held
    _open_lock = threading.Lock()
    _open.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_the_parents_loops)


def _serve(started: concurrent.futures.Future[BlockingPortal]) -> None:
    """The loop thread: run a portal until it is stopped; hand it over once it runs."""

    async def serve() -> None:
        async with BlockingPortal() as portal:
            started.set_result(portal)
            await portal.sleep_until_stopped()

    try:
        anyio.run(serve)
    except BaseException as exc:  # failed to start: the constructor raises it
        if not started.done():
            started.set_exception(exc)
        else:
            raise


class _Cancellable:
    """One call run in the loop, which the waiting thread can cancel from the moment it asks
    for it.

    anyio's future for a call exists only once ``start_task_soon`` returns, and that waits
    for the loop to start the call; an interruption during that wait (``KeyboardInterrupt``
    while the loop thread already sends the request) would leave the call running with no
    one to cancel it. This one is cancelled wherever it is: before it starts (it never
    runs), or while it runs (its cancel scope is cancelled in the loop, level-triggered).
    """

    __slots__ = ("_cancel", "_cancelled", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._cancel: Callable[[], object] | None = None

    async def run(self, func: Callable[[Unpack[Ts]], Awaitable[T]], *args: Unpack[Ts]) -> T:
        loop = asyncio.get_running_loop()
        with anyio.CancelScope() as scope:
            with self._lock:
                self._cancel = partial(loop.call_soon_threadsafe, scope.cancel)
                cancelled = self._cancelled
            if cancelled:
                scope.cancel()
            return await func(*args)
        # Cancelled by the waiting thread, which has gone: nobody reads this.
        raise anyio.get_cancelled_exc_class()

    def cancel(self) -> None:
        """From the waiting thread: the call ends as soon as the loop gets to it."""
        with self._lock:
            self._cancelled = True
            cancel = self._cancel
        if cancel is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing runs
                cancel()


async def _returning(func: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
    return func(*args)
