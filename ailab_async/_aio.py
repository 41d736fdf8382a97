"""asyncio helpers the standard library lacks, written once.

:func:`cancel_and_wait` cancels tasks or futures and waits until they have finished, without
swallowing the *caller's* own cancellation. The usual spelling::

    child.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await child

cannot tell the child's ``CancelledError`` from one aimed at the caller: a caller cancelled
while it waits there (a client closed at that moment, a request handler timing out) carries
on as if nothing happened, and whoever cancelled it waits for it forever. ``asyncio.wait``
never raises a child's error, so the only ``CancelledError`` that can come out of it is the
caller's own.

:class:`Slots` is a first-come-first-served semaphore whose free slot is taken without
awaiting anything: the dispatcher takes one for every request. ``asyncio.Semaphore``'s
``acquire`` is a coroutine even when a slot is free, and its ``locked()`` scans the waiters
at every call; anyio's can only be made inside a running event loop, and its ``acquire``
yields to the loop.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

__all__ = ["Slots", "cancel_and_wait"]


async def cancel_and_wait(*futures: asyncio.Future[Any] | None) -> None:
    """Cancel each not-yet-done future or task, then wait until all of them are done.

    Their outcomes (results, errors, cancellations) are left on them; a cancellation of
    the caller while it waits propagates as usual.
    """
    pending = [future for future in futures if future is not None and not future.done()]
    for future in pending:
        future.cancel()
    if pending:
        await asyncio.wait(pending)


class Slots:
    """A semaphore of ``size`` slots, served in arrival order.

    :meth:`try_take` takes a free slot at once (``False``: none free, or someone is already
    waiting for one); :meth:`take` waits for one. A slot given back goes straight to the
    longest waiter, so nobody overtakes a waiter.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def free(self) -> int:
        """Slots nobody holds."""
        return self._free

    def try_take(self) -> bool:
        if self._free:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot, then cancelled before taking it: pass it on
            elif waiter in self._waiters:  # (a give() may have passed over it already)
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the longest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
