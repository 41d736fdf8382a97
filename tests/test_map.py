"""client.map: ordering, laziness, failure isolation, bounded memory, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from ailab_async import AILabClient, Outcome, ValidationError
from ailab_async._map import map_outcomes
from ailab_async._ratelimit import AdaptiveRateLimiter

from .conftest import BASE_URL, TEST_KEY


class Probe:
    """A work function that records how many items run at once and which were started."""

    def __init__(self, delays: dict[int, int] | None = None) -> None:
        self.active = 0
        self.peak = 0
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.delays = delays or {}

    async def __call__(self, item: int, *, scale: int = 1) -> int:
        self.started.append(item)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            for _ in range(self.delays.get(item, 1)):
                await asyncio.sleep(0)
            if item % 7 == 3:
                raise ValueError(f"bad item {item}")
            return item * scale
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        finally:
            self.active -= 1


async def collect(agen: AsyncIterator[Outcome[int, int]]) -> list[Outcome[int, int]]:
    return [outcome async for outcome in agen]


async def test_every_item_gets_one_outcome_and_failures_are_isolated() -> None:
    probe = Probe()
    outcomes = await collect(map_outcomes(probe, range(50), concurrency=4, kwargs={"scale": 10}))
    assert sorted(o.index for o in outcomes) == list(range(50))
    for outcome in outcomes:
        assert (outcome.result is None) != (outcome.error is None)
        if outcome.item % 7 == 3:
            assert isinstance(outcome.error, ValueError)
            assert not outcome.ok
        else:
            assert outcome.result == outcome.item * 10
    assert probe.peak == 4


async def test_unordered_yields_as_completed() -> None:
    probe = Probe(delays={0: 50})  # the first item is the slowest
    outcomes = await collect(map_outcomes(probe, range(6), concurrency=6))
    assert outcomes[-1].item == 0


async def test_ordered_keeps_input_order_with_a_bounded_buffer() -> None:
    probe = Probe(delays={0: 200})
    seen: list[int] = []
    async for outcome in map_outcomes(probe, range(100), concurrency=4, ordered=True):
        seen.append(outcome.item)
    assert seen == list(range(100))
    # While item 0 was stuck, no more than the reorder window (2 x concurrency) was started.
    assert probe.started.index(0) == 0
    assert max(probe.started[: probe.started.index(8) + 1]) <= 8


async def test_endless_sync_generator_is_consumed_lazily() -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for n in itertools.count():
            pulled += 1
            yield n

    probe = Probe()
    got = 0
    async with contextlib.aclosing(map_outcomes(probe, endless(), concurrency=3)) as outcomes:
        async for _ in outcomes:
            got += 1
            if got == 20:
                break
    assert pulled <= 20 + 3  # never more than what was consumed plus what was in flight
    assert probe.active == 0


async def test_async_iterable_input() -> None:
    async def numbers() -> AsyncIterator[int]:
        for n in range(10):
            await asyncio.sleep(0)
            yield n

    outcomes = await collect(map_outcomes(Probe(), numbers(), concurrency=2))
    assert sorted(o.item for o in outcomes) == list(range(10))


async def test_leaving_early_cancels_work_in_flight() -> None:
    probe = Probe(delays=dict.fromkeys(range(1, 100), 10000))
    async with contextlib.aclosing(map_outcomes(probe, range(100), concurrency=5)) as outcomes:
        async for outcome in outcomes:
            assert outcome.item == 0
            break
    assert probe.active == 0
    assert sorted(probe.cancelled) == [1, 2, 3, 4]  # the four still running at the break


async def test_cancelling_the_consumer_cancels_everything() -> None:
    probe = Probe(delays=dict.fromkeys(range(100), 10000))

    async def consume() -> None:
        async with contextlib.aclosing(map_outcomes(probe, range(100), concurrency=8)) as out:
            async for _ in out:
                pass

    consumer = asyncio.create_task(consume())
    for _ in range(5):
        await asyncio.sleep(0)
    assert probe.active == 8
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert probe.active == 0
    assert len(probe.cancelled) == 8


@pytest.mark.parametrize(
    ("concurrency", "rule"), [(0, "range"), (-2, "range"), (True, "type"), (2.0, "type")]
)
async def test_bad_concurrency_is_a_validation_error(concurrency: object, rule: str) -> None:
    with pytest.raises(ValidationError, match="concurrency") as info:
        await collect(map_outcomes(Probe(), range(3), concurrency=concurrency))  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    assert (info.value.input, info.value.rule) == ("concurrency", rule)


async def test_client_map_passes_keyword_arguments() -> None:
    async with AILabClient(api_key=TEST_KEY, base_url=BASE_URL, max_concurrency=3) as client:
        probe = Probe()
        results = {o.item: o.result async for o in client.map(probe, range(5), scale=2) if o.ok}
    assert results == {0: 0, 1: 2, 2: 4, 4: 8}
    assert probe.peak <= 6  # default concurrency: twice max_concurrency


async def test_map_tells_once_when_its_input_runs_out_with_the_items_still_in_progress() -> None:
    probe = Probe(delays={item: 1 + item % 3 for item in range(20)})
    told: list[tuple[int, int]] = []  # (in progress, outcomes yielded by then)
    outcomes: list[Outcome[int, int]] = []
    agen = map_outcomes(
        probe, range(20), concurrency=4, on_exhausted=lambda n: told.append((n, len(outcomes)))
    )
    async for outcome in agen:
        outcomes.append(outcome)
    assert len(told) == 1
    in_progress, yielded = told[0]
    assert 1 <= in_progress <= 4
    assert in_progress == 20 - yielded  # every item left to come was in progress


@pytest.mark.parametrize("ordered", [False, True])
async def test_an_input_shorter_than_the_concurrency_runs_out_before_any_item_is_over(
    ordered: bool,
) -> None:
    told: list[int] = []
    outcomes = await collect(
        map_outcomes(Probe(), range(3), concurrency=8, ordered=ordered, on_exhausted=told.append)
    )
    assert told == [3]
    assert len(outcomes) == 3


async def test_leaving_early_never_tells_of_an_input_that_ran_out() -> None:
    told: list[int] = []
    async with contextlib.aclosing(
        map_outcomes(Probe(), itertools.count(), concurrency=4, on_exhausted=told.append)
    ) as agen:
        async for _ in agen:
            break
    assert told == []


class PlainLimiter:
    """A custom RateLimiter without the optional ``wind_down``."""

    def __init__(self) -> None:
        self.rate_limited_count = 0

    @property
    def configured_rate(self) -> float | None:
        return None

    def current_rate(self) -> float | None:
        return None

    async def acquire(self) -> float:
        return 0.0

    def on_success(self, sent_at: float) -> None:
        del sent_at

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        del sent_at, retry_after


class WindingLimiter(PlainLimiter):
    """The same with ``wind_down``: its calls are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.winds: list[int] = []

    def wind_down(self, requests: int) -> None:
        self.winds.append(requests)


async def test_client_map_winds_down_a_limiter_that_can_when_its_input_runs_out() -> None:
    limiter = WindingLimiter()
    async with AILabClient(
        api_key=TEST_KEY, base_url=BASE_URL, max_concurrency=3, rate_limit=limiter
    ) as client:
        outcomes = [o async for o in client.map(Probe(), range(4))]
    assert len(outcomes) == 4
    assert limiter.winds == [4]  # default concurrency 6: all four in progress at once


async def test_client_map_works_with_a_limiter_without_wind_down() -> None:
    limiter = PlainLimiter()
    async with AILabClient(api_key=TEST_KEY, base_url=BASE_URL, rate_limit=limiter) as client:
        results = {o.item: o.result async for o in client.map(Probe(), range(5)) if o.ok}
    assert results == {0: 0, 1: 1, 2: 2, 4: 4}


async def test_client_map_winds_down_the_in_process_limiter() -> None:
    async with AILabClient(api_key=TEST_KEY, base_url=BASE_URL, rate_limit=10) as client:
        assert [o.item async for o in client.map(Probe(), range(3), ordered=True)] == [0, 1, 2]
        limiter = client._limiter
        assert isinstance(limiter, AdaptiveRateLimiter)
        assert limiter.policy.state.winding == 3  # told: nothing sent yet, all three left


async def test_two_maps_on_one_client_wind_down_only_when_the_last_input_runs_out() -> None:
    limiter = WindingLimiter()
    long_started, short_done = asyncio.Event(), asyncio.Event()
    winds_when_short_was_done: list[list[int]] = []

    async def long_input() -> AsyncIterator[int]:
        for item in range(10):
            long_started.set()
            if item == 5:
                await short_done.wait()  # still taking input after the short map ran out
                winds_when_short_was_done.append(list(limiter.winds))
            yield item

    async with AILabClient(
        api_key=TEST_KEY, base_url=BASE_URL, max_concurrency=2, rate_limit=limiter
    ) as client:

        async def short() -> list[Outcome[int, int]]:
            await long_started.wait()
            outcomes = await collect(client.map(Probe(), range(3)))
            short_done.set()
            return outcomes

        short_outcomes, long_outcomes = await asyncio.gather(
            short(), collect(client.map(Probe(), long_input()))
        )
        assert len(short_outcomes) == 3
        assert len(long_outcomes) == 10
        assert winds_when_short_was_done == [[]]  # the other map's requests were still to come
        assert len(limiter.winds) == 1  # told once, when the last input ran out
        assert 1 <= limiter.winds[0] <= 4

        # A map left early no longer counts as taking input: the next one winds down.
        async with contextlib.aclosing(client.map(Probe(), itertools.count())) as endless:
            async for _ in endless:
                break
        assert [o.item async for o in client.map(Probe(), range(2), ordered=True)] == [0, 1]
        assert limiter.winds[1:] == [2]
