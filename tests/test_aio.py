"""Cancelling children without losing the caller's own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from ailab_async._aio import Slots, cancel_and_wait
from ailab_async._tasks import wait_or_sleep


async def _slow_to_cancel() -> None:
    """A child that takes a few steps to finish once cancelled (aiohttp's cleanup does)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        for _ in range(3):
            await asyncio.sleep(0)
        raise


async def test_a_caller_cancelled_while_it_waits_for_its_children_stays_cancelled() -> None:
    child = asyncio.create_task(_slow_to_cancel())
    await asyncio.sleep(0)
    carried_on: list[str] = []

    async def caller() -> None:
        await cancel_and_wait(child)
        carried_on.append("yes")  # the bug: a swallowed cancellation lets this run

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)  # the caller is now waiting for the child to finish
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert carried_on == []
    await asyncio.wait([child])
    assert child.cancelled()


async def test_children_end_cancelled_and_their_errors_stay_on_them() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    loud = asyncio.create_task(fails_on_cancel())
    quiet = asyncio.create_task(asyncio.Event().wait())
    done = asyncio.get_running_loop().create_future()
    done.set_result(1)
    await asyncio.sleep(0)
    await cancel_and_wait(loud, quiet, done, None)
    assert quiet.cancelled()
    assert isinstance(loud.exception(), RuntimeError)
    assert done.result() == 1


async def test_wait_or_sleep_keeps_a_cancellation_that_arrives_while_it_cleans_up() -> None:
    """The task tracker's idle wait: the client closed while the scheduler was tidying up
    its waker must stop the scheduler, not leave it idling (and aclose() waiting) forever."""
    cleaning_up = asyncio.Event()

    async def waker() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning_up.set()
            for _ in range(3):
                await asyncio.sleep(0)
            raise

    wake = asyncio.create_task(waker())
    woke: list[str] = []

    async def scheduler() -> None:
        await wait_or_sleep(wake, 0.0, asyncio.sleep)  # the timer wins at once
        woke.append("idle again")

    task = asyncio.create_task(scheduler())
    await cleaning_up.wait()  # the scheduler is now waiting for the waker to finish
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert woke == []


async def test_slots_serve_waiters_in_arrival_order_and_nobody_overtakes_them() -> None:
    slots = Slots(1)
    assert slots.try_take()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await slots.take()
        order.append(name)

    first = asyncio.create_task(waiter("first"))
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0)
    slots.give()  # goes to "first", not back to the pool
    assert not slots.try_take()  # a newcomer does not overtake "second"
    await asyncio.sleep(0)
    assert order == ["first"]
    slots.give()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    slots.give()
    assert slots.free == 1


async def test_a_cancelled_waiter_leaves_the_line_and_its_handed_slot_is_passed_on() -> None:
    slots = Slots(1)
    assert slots.try_take()
    gone = asyncio.create_task(slots.take())
    handed = asyncio.create_task(slots.take())
    last = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    gone.cancel()  # cancelled while waiting: leaves the line
    await asyncio.gather(gone, return_exceptions=True)
    slots.give()  # to "handed" (the next in line) ...
    handed.cancel()  # ... cancelled before it ran: the slot goes on to "last"
    await asyncio.gather(handed, return_exceptions=True)
    await asyncio.wait_for(last, 1)
    assert gone.cancelled()
    assert handed.cancelled()
    assert slots.free == 0  # "last" holds the one slot
    slots.give()
    assert slots.free == 1
