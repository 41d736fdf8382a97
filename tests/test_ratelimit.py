"""The in-process limiter as a store and waiting room, on an injected clock: senders queue,
sleep and speed up as the policy says; 429s are counted. The policy's own decisions
(decreases, slow start, recovery) are table-tested in ``tests/test_aimd.py``."""

from __future__ import annotations

import math

import pytest

from ailab_async import ConfigurationError
from ailab_async._aimd import HEADROOM
from ailab_async._ratelimit import AdaptiveRateLimiter, RateLimiter

from .conftest import FakeTime


def make(rate: float | None, t: FakeTime) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(rate, clock=t.clock, sleep=t.sleep)


async def test_sends_are_spaced_at_the_configured_rate(fake_time: FakeTime) -> None:
    limiter = make(10.0, fake_time)
    sent = [await limiter.acquire() for _ in range(21)]
    # Paced a little under the configured rate (headroom for jitter), never over it.
    assert sent[-1] - sent[0] == pytest.approx(2.0 / HEADROOM)
    # No window of one second ever holds more than rate + 1 sends.
    assert max(sum(1 for s in sent if a <= s < a + 1.0) for a in sent) <= 10


async def test_unlimited_does_not_wait(fake_time: FakeTime) -> None:
    limiter = make(None, fake_time)
    for _ in range(100):
        await limiter.acquire()
    assert fake_time.sleeps == []
    assert limiter.current_rate() is None


async def test_one_decrease_per_congestion_event(fake_time: FakeTime) -> None:
    limiter = make(50.0, fake_time)
    early_send = fake_time.now
    fake_time.now += 0.01
    limiter.on_rate_limited(fake_time.now)
    after_first = limiter.current_rate()
    # Twenty more 429s for requests that left before the slow-down change nothing.
    for _ in range(20):
        limiter.on_rate_limited(early_send)
    assert limiter.current_rate() == after_first
    assert limiter.rate_limited_count == 21


async def test_a_rising_rate_speeds_up_senders_already_waiting(fake_time: FakeTime) -> None:
    limiter = make(None, fake_time)
    sent = fake_time.now
    fake_time.now += 1.0
    limiter.on_rate_limited(sent)  # 1/s, then doubling every 0.5 s
    start = fake_time.now
    times = [await limiter.acquire() for _ in range(12)]
    # At a fixed 1/s twelve sends would take 11 s; the queue follows the rising rate.
    assert times[-1] - start < 5.0


async def test_retry_after_does_not_stall_other_senders(fake_time: FakeTime) -> None:
    limiter = make(None, fake_time)
    for _ in range(20):
        limiter.on_success()
    fake_time.now += 0.5
    limiter.on_rate_limited(fake_time.now - 0.1, retry_after=3.0)
    start = fake_time.now
    await limiter.acquire()
    assert fake_time.now - start < 1.0


async def test_an_absurd_retry_after_does_not_stall_anyone(fake_time: FakeTime) -> None:
    limiter = make(10.0, fake_time)
    for retry_after in (1e9, math.inf, math.nan, -5.0):
        limiter.on_rate_limited(await limiter.acquire(), retry_after=retry_after)
    start = fake_time.now
    await limiter.acquire()
    assert fake_time.now - start < 1.0


@pytest.mark.parametrize("rate", [0, -1.0, math.nan, math.inf, True, "10"])
def test_rejects_a_rate_that_is_not_positive_and_finite(fake_time: FakeTime, rate: object) -> None:
    with pytest.raises(ConfigurationError, match="positive, finite"):
        make(rate, fake_time)  # type: ignore[arg-type]


async def test_needs_no_clock_or_sleeper_to_be_built() -> None:
    # What a user passes as rate_limit=: the monotonic clock and asyncio's sleep by default.
    limiter = AdaptiveRateLimiter(1000.0)
    assert isinstance(limiter, RateLimiter)
    first = await limiter.acquire()
    second = await limiter.acquire()
    assert second - first >= HEADROOM / (1000.0 * HEADROOM) - 1e-9
    assert limiter.configured_rate == 1000.0
