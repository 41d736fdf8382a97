"""The adaptive limiter, on an injected clock: spacing, slow-down on 429, recovery."""

from __future__ import annotations

import pytest

from ailab_async._ratelimit import AdaptiveRateLimiter

from .conftest import FakeTime


def make(rate: float | None, t: FakeTime) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(rate, clock=t.clock, sleep=t.sleep)


async def test_sends_are_spaced_at_the_configured_rate(fake_time: FakeTime) -> None:
    limiter = make(10.0, fake_time)
    sent = [await limiter.acquire() for _ in range(21)]
    assert sent[-1] - sent[0] == pytest.approx(2.0)
    # No window of one second ever holds more than rate + 1 sends.
    assert max(sum(1 for s in sent if a <= s < a + 1.0) for a in sent) <= 10


async def test_unlimited_does_not_wait(fake_time: FakeTime) -> None:
    limiter = make(None, fake_time)
    for _ in range(100):
        await limiter.acquire()
    assert fake_time.sleeps == []
    assert limiter.current_rate() is None


async def test_429_drops_to_ninety_percent_of_the_succeeding_rate(fake_time: FakeTime) -> None:
    limiter = make(None, fake_time)
    for _ in range(40):  # 40 successes within the last second
        limiter.on_success()
        fake_time.now += 0.02
    sent_at = fake_time.now
    limiter.on_rate_limited(sent_at)
    assert limiter.current_rate() == pytest.approx(36.0)


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


async def test_rate_recovers_gradually_up_to_the_ceiling(fake_time: FakeTime) -> None:
    limiter = make(50.0, fake_time)
    limiter.on_rate_limited(fake_time.now)
    low = limiter.current_rate()
    assert low == pytest.approx(25.0)  # nothing succeeded yet: halve
    fake_time.now += 5
    mid = limiter.current_rate()
    assert mid is not None
    assert low is not None
    assert low < mid < 50
    fake_time.now += 1000
    assert limiter.current_rate() == 50.0


async def test_retry_after_pauses_every_sender(fake_time: FakeTime) -> None:
    limiter = make(None, fake_time)
    limiter.on_rate_limited(fake_time.now, retry_after=3.0)
    start = fake_time.now
    await limiter.acquire()
    assert fake_time.now - start >= 3.0


def test_rejects_nonpositive_rate(fake_time: FakeTime) -> None:
    with pytest.raises(ValueError, match="positive"):
        make(0, fake_time)
