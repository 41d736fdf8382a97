"""The one way the SDK runs blocking code off the event loop: :func:`to_thread`.

Everything blocking (file system calls, image decoding, SQLite) goes through here, so a
reader finds in one place which thread pool runs it and what a cancellation does to it.
It is anyio's ``to_thread.run_sync`` (anyio's default thread limiter, and anyio's cancel
scopes and task groups are honoured), never ``asyncio.to_thread`` beside it. One
exception, :func:`to_executor`, is for the short blocking step on every call's path
(checking an image file's header), where an anyio thread hop costs about twice asyncio's
default executor (60 to 110 µs against 30 to 50 µs of CPU per call, measured by
``benchmarks/bench_overhead.py``); aiohttp itself reads file bodies in that executor.

Which cancellation behaviour to ask for:

* ``abandon_on_cancel=False`` (the default): a cancelled caller waits for the call to
  finish. Use it for bounded work whose effect must be complete and known before the
  caller moves on: writing, syncing or renaming a file, a journal write, ``mkdir``.
  Abandoning those would let cleanup (unlinking a ``.part`` file) race the write.
* ``abandon_on_cancel=True``: a cancelled caller returns at once and the thread runs on,
  its result thrown away. Use it only where the call may never return (reading a FIFO or
  a hung network mount, a blocked device) and nothing depends on its side effects.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import anyio.to_thread

if TYPE_CHECKING:  # typing has them from 3.11 only; annotations are never evaluated here
    from typing_extensions import TypeVarTuple, Unpack

    Ts = TypeVarTuple("Ts")

T = TypeVar("T")


async def to_thread(
    func: Callable[[Unpack[Ts]], T], *args: Unpack[Ts], abandon_on_cancel: bool = False
) -> T:
    """Run ``func(*args)`` in a worker thread and return its result.

    >>> import asyncio, os
    >>> asyncio.run(to_thread(os.path.join, "out", "a.png"))
    'out/a.png'
    """
    return await anyio.to_thread.run_sync(func, *args, abandon_on_cancel=abandon_on_cancel)


async def to_executor(func: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
    """Run a short blocking ``func(*args)`` in asyncio's default executor; return its result.

    For the per-call path only (an image header read): cheaper than :func:`to_thread`. A
    cancelled caller returns at once and the call runs on, its result thrown away (as
    ``abandon_on_cancel=True``); like anyio's workers, an executor thread still blocked at
    interpreter exit delays the exit.

    >>> import asyncio, os
    >>> asyncio.run(to_executor(os.path.join, "out", "a.png"))
    'out/a.png'
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(func, *args))
