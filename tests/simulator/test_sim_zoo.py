"""The limiter zoo on the running simulator: counts of accepted and refused HTTP requests.

Time is a :class:`ManualClock`; requests awaited one after another without advancing it arrive
at one instant.  No timing assertions.
"""

from __future__ import annotations

import asyncio

import pytest

from ailab_async.testing.simulator import (
    Fixed,
    Latency,
    ManualClock,
    RateLimit,
    RateShape,
    SimulatorConfig,
)
from tests.simulator._helpers import Answer, SimApi, SimFactory


async def statuses(api: SimApi, count: int, *, key: str = "default") -> list[int]:
    return [(await api.credits(key=key)).status for _ in range(count)]


@pytest.mark.parametrize(
    ("limit", "accepted"),
    [
        (RateLimit(10), 10),
        (RateLimit(10, burst=1), 1),
        (RateLimit(10, burst=20), 20),
        (RateLimit(10, shape="sliding-window"), 10),
        (RateLimit(10, shape="fixed-window"), 10),
        (RateLimit(10, shape="leaky-bucket"), 1),
        (RateLimit(5, shape="sliding-window", window=3), 15),
    ],
)
async def test_a_burst_at_one_instant_gets_what_the_shape_allows(
    make_sim: SimFactory, clock: ManualClock, limit: RateLimit, accepted: int
) -> None:
    api = await make_sim(SimulatorConfig(rate_limit=limit), clock=clock)
    got = await statuses(api, 30)
    assert got == [200] * accepted + [429] * (30 - accepted)
    assert api.stats.rate_limited == 30 - accepted
    assert api.stats.count("query-credits", "EXCEEDING_LIMITS") == 30 - accepted
    assert api.stats.admitted_at == [clock.now()] * accepted
    assert api.stats.refused_at == [clock.now()] * (30 - accepted)


class GatedClock(ManualClock):
    """Latency lasts until the test opens the gate: requests stay in flight as long as needed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.all_waiting = asyncio.Event()
        self.expected = 0
        self.waiting = 0

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.waiting += 1
        if self.waiting >= self.expected:
            self.all_waiting.set()
        await self.gate.wait()
        self.waiting -= 1


async def all_at_once(api: SimApi, clock: GatedClock, keys: list[str]) -> list[Answer]:
    """One request per key in ``keys``, all in flight together before any is answered (every
    one of them waits out its latency at the gate, accepted or not)."""
    clock.gate.clear()
    clock.all_waiting.clear()
    clock.expected = len(keys)
    calls = [asyncio.ensure_future(api.credits(key=key)) for key in keys]
    await asyncio.wait_for(clock.all_waiting.wait(), 30)
    clock.gate.set()
    return list(await asyncio.gather(*calls))


def codes(answers: list[Answer]) -> list[int]:
    return [answer.status for answer in answers]


async def test_concurrency_shape_limits_requests_in_flight_per_key(make_sim: SimFactory) -> None:
    clock = GatedClock()
    config = SimulatorConfig(
        extra_api_keys=("sim-key-001",),
        rate_limit=RateLimit.concurrency(2),
        latency=Latency(query_credits=Fixed(1.0)),
    )
    api = await make_sim(config, clock=clock)
    mixed = codes(await all_at_once(api, clock, ["default"] * 5 + ["sim-key-001"] * 2))
    assert sorted(mixed[:5]) == [200, 200, 429, 429, 429]
    assert mixed[5:] == [200, 200]  # the other key has its own limit
    # The accepted requests were released when answered: room for two again.
    again = codes(await all_at_once(api, clock, ["default"] * 3))
    assert sorted(again) == [200, 200, 429]
    assert api.stats.rate_limited == 4


async def test_concurrency_limit_is_shared_by_every_key(make_sim: SimFactory) -> None:
    clock = GatedClock()
    config = SimulatorConfig(
        extra_api_keys=("sim-key-001",),
        concurrency_limit=2,
        latency=Latency(query_credits=Fixed(1.0)),
    )
    api = await make_sim(config, clock=clock)
    got = codes(await all_at_once(api, clock, ["default", "sim-key-001", "sim-key-001"]))
    assert sorted(got) == [200, 200, 429]
    assert api.stats.rate_limited == 1


async def test_concurrency_429_has_no_retry_after(make_sim: SimFactory) -> None:
    clock = GatedClock()
    config = SimulatorConfig(
        rate_limit=RateLimit.concurrency(1), latency=Latency(query_credits=Fixed(1.0))
    )
    api = await make_sim(config, clock=clock)
    refused = [a for a in await all_at_once(api, clock, ["default"] * 2) if a.status == 429]
    assert len(refused) == 1
    assert "Retry-After" not in refused[0].headers


@pytest.mark.parametrize(
    ("limit", "retry_after"),
    [
        (RateLimit(2, burst=1), "1"),  # 0.5 s, rounded up
        (RateLimit(0.25, shape="leaky-bucket"), "4"),
        (RateLimit(3, shape="sliding-window"), "1"),
        (RateLimit(1, shape="fixed-window", window=10), "10"),
    ],
)
async def test_retry_after_is_the_shapes_wait_rounded_up(
    make_sim: SimFactory, clock: ManualClock, limit: RateLimit, retry_after: str
) -> None:
    api = await make_sim(SimulatorConfig(rate_limit=limit), clock=clock)
    answers = [await api.credits() for _ in range(11)]
    refused = [a for a in answers if a.status == 429]
    assert refused
    assert {a.headers["Retry-After"] for a in refused} == {retry_after}


async def test_retry_after_can_be_left_out_for_any_shape(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    limit = RateLimit(1, shape="sliding-window", retry_after=False)
    api = await make_sim(SimulatorConfig(rate_limit=limit), clock=clock)
    refused = [await api.credits() for _ in range(2)][1]
    assert refused.status == 429
    assert "Retry-After" not in refused.headers


@pytest.mark.parametrize("instant", [True, False])
async def test_instant_429_skips_the_latency_of_refusals_only(
    make_sim: SimFactory, instant: bool
) -> None:
    clock = ManualClock()
    config = SimulatorConfig(
        rate_limit=RateLimit(1, burst=1, instant_429=instant),
        latency=Latency(query_credits=Fixed(0.2)),
    )
    api = await make_sim(config, clock=clock)
    answers = [await api.credits() for _ in range(3)]
    assert [a.status for a in answers] == [200, 429, 429]
    # The accepted request always takes its latency; the two refusals only without instant_429.
    assert clock.slept == ([0.2] if instant else [0.2, 0.2, 0.2])


@pytest.mark.parametrize("shape", ["token-bucket", "sliding-window", "fixed-window"])
async def test_a_scheduled_rate_change_is_served(
    make_sim: SimFactory, clock: ManualClock, shape: RateShape
) -> None:
    limit = RateLimit(6, shape=shape, schedule=((0, 6), (10, 2), (20, 6)))
    api = await make_sim(SimulatorConfig(rate_limit=limit), clock=clock)
    per_second = []
    for _ in range(30):
        per_second.append((await statuses(api, 10)).count(200))
        clock.advance(1.0)
    assert per_second[1:10] == [6] * 9
    assert per_second[11:20] == [2] * 9
    assert per_second[21:30] == [6] * 9
    assert len(api.stats.admitted_at) == sum(per_second)


async def test_each_key_has_its_own_limit_and_timeline(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    limit = RateLimit(4, shape="fixed-window", schedule=((5, 1),))
    config = SimulatorConfig(extra_api_keys=("sim-key-001",), rate_limit=limit)
    api = await make_sim(config, clock=clock)
    assert (await statuses(api, 6)).count(200) == 4
    clock.advance(5.0)  # 5 s into the first key's timeline: its rate is now 1/s ...
    assert (await statuses(api, 6)).count(200) == 1
    # ... but the second key's timeline starts at its own first request.
    assert (await statuses(api, 6, key="sim-key-001")).count(200) == 4


async def test_stats_reset_clears_the_limit_counters(
    make_sim: SimFactory, clock: ManualClock
) -> None:
    api = await make_sim(SimulatorConfig(rate_limit=RateLimit(1)), clock=clock)
    await statuses(api, 3)
    assert (api.stats.rate_limited, len(api.stats.admitted_at)) == (2, 1)
    api.stats.reset()
    assert (api.stats.rate_limited, api.stats.admitted_at, api.stats.refused_at) == (0, [], [])
