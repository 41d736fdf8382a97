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
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


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
