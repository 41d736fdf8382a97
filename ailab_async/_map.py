"""``client.map``: run a coroutine function over a (possibly endless) stream of items.

Items are pulled lazily, at most ``concurrency`` run at once, and outcomes are yielded as
they complete (or in input order through a bounded reorder buffer). Memory is
O(concurrency) however many items there are. One item's failure is its own outcome and
never stops the others. Leaving the loop early (or cancelling the consumer) cancels the
work in flight; use ``contextlib.aclosing`` to make that happen at the ``break`` itself
rather than when the iterator is collected.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
)
from typing import Any, Generic, TypeVar

import attrs

from .errors import ValidationError

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@attrs.frozen
class Outcome(Generic[ItemT, ResultT]):
    """What became of one item: exactly one of ``result`` and ``error`` is set."""

    item: ItemT
    result: ResultT | None = None
    error: Exception | None = None
    #: The item's position in the input (0-based).
    index: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


async def _as_async_iterator(
    items: Iterable[ItemT] | AsyncIterable[ItemT],
) -> AsyncGenerator[ItemT, None]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def _run_one(
    fn: Callable[..., Awaitable[ResultT]], item: ItemT, index: int, kwargs: dict[str, Any]
) -> Outcome[ItemT, ResultT]:
    try:
        result = await fn(item, **kwargs)
    except Exception as exc:  # one item's failure is that item's outcome
        return Outcome(item=item, error=exc, index=index)
    return Outcome(item=item, result=result, index=index)


async def map_outcomes(
    fn: Callable[..., Awaitable[ResultT]],
    items: Iterable[ItemT] | AsyncIterable[ItemT],
    *,
    concurrency: int,
    ordered: bool = False,
    reorder_window: int | None = None,
    kwargs: dict[str, Any] | None = None,
    on_exhausted: Callable[[int], None] | None = None,
) -> AsyncGenerator[Outcome[ItemT, ResultT], None]:
    """Yield an :class:`Outcome` for every item, running at most ``concurrency`` at once.

    ``on_exhausted(in_progress)`` is called once, when the input runs out, with the number
    of items still in progress then (``client.map`` tells its rate limiter: no request will
    come beyond those).
    """
    whole = isinstance(concurrency, int) and not isinstance(concurrency, bool)
    if not whole or concurrency < 1:
        # ValidationError is also a ValueError: callers catching ValueError keep working.
        raise ValidationError(
            "concurrency must be an integer >= 1",
            input="concurrency",
            rule="range" if whole else "type",
        )
    window = max(concurrency, reorder_window or 2 * concurrency)
    call_kwargs = kwargs or {}
    source = _as_async_iterator(items)
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[Outcome[ItemT, ResultT]]] = set()
    reorder: dict[int, Outcome[ItemT, ResultT]] = {}
    pulled = 0  # items taken from the input so far
    next_out = 0  # ordered mode: the index to yield next
    exhausted = False
    try:
        while True:
            while (
                not exhausted
                and len(running) < concurrency
                and (not ordered or pulled - next_out < window)
            ):
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    exhausted = True
                    if on_exhausted is not None:
                        on_exhausted(len(running))
                    break
                running.add(loop.create_task(_run_one(fn, item, pulled, call_kwargs)))
                pulled += 1
            if not running:
                break
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            finished = sorted((task.result() for task in done), key=lambda o: o.index)
            if not ordered:
                for outcome in finished:
                    yield outcome
                continue
            for outcome in finished:
                reorder[outcome.index] = outcome
            while next_out in reorder:
                yield reorder.pop(next_out)
                next_out += 1
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await source.aclose()
