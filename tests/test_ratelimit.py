"""The adaptive limiter, on an injected clock: spacing, slow-down on 429, recovery."""

from __future__ import annotations

import math

import pytest

from ailab_async import ConfigurationError
from ailab_async._protocol import MAX_RETRY_AFTER
from ailab_async._ratelimit import (
    _HEADROOM,
    _SLOW_START_DOUBLING,
    AdaptiveRateLimiter,
    capped_retry_after,
)

from .conftest import FakeTime


def make(rate: float | None, t: FakeTime) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(rate, clock=t.clock, sleep=t.sleep)


async def test_sends_are_spaced_at_the_configured_rate(fake_time: FakeTime) -> None:
    limiter = make(10.0, fake_time)
    sent = [await limiter.acquire() for _ in range(21)]
    # Paced a little under the configured rate (headroom for jitter), never over it.
    assert sent[-1] - sent[0] == pytest.approx(2.0 / _HEADROOM)
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
    # Too little evidence: 90% of the rate in force (the configured one, paced with headroom).
    assert low == pytest.approx(0.9 * 50.0 * _HEADROOM)
    fake_time.now += 1  # recovery: 5% of the lowered rate per second
    mid = limiter.current_rate()
    assert mid is not None
    assert low is not None
    assert mid == pytest.approx(low * 1.05)
    fake_time.now += 1000
    assert limiter.current_rate() == pytest.approx(50.0 * _HEADROOM)


async def test_a_few_early_successes_do_not_collapse_the_rate(fake_time: FakeTime) -> None:
    limiter = make(50.0, fake_time)
    for _ in range(2):  # two answers in the first 0.3 s are not a rate of 2/s
        fake_time.now += 0.1
        limiter.on_success()
    limiter.on_rate_limited(fake_time.now - 0.05)
    assert limiter.current_rate() == pytest.approx(0.9 * 50.0 * _HEADROOM)


async def test_refused_before_any_success_probes_upward_from_one_per_round_trip(
    fake_time: FakeTime,
) -> None:
    limiter = make(None, fake_time)
    sent = fake_time.now
    fake_time.now += 0.2  # the 429 came back after 0.2 s
    limiter.on_rate_limited(sent)
    assert limiter.current_rate() == pytest.approx(5.0)
    fake_time.now += 2 * _SLOW_START_DOUBLING
    assert limiter.current_rate() == pytest.approx(20.0)  # doubled twice
    # The next 429 ends the probing at 90% of the rate in force when it was sent.
    sent = fake_time.now - _SLOW_START_DOUBLING
    limiter.on_rate_limited(sent)
    settled = limiter.current_rate()
    assert settled is not None
    assert settled == pytest.approx(0.9 * 10.0)
    fake_time.now += 1.0
    grown = limiter.current_rate()
    assert grown is not None
    assert settled < grown < settled * 1.1  # linear now, not doubling


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


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, None),
        (0, 0.0),
        (3, 3.0),
        (2.5, 2.5),
        (MAX_RETRY_AFTER, MAX_RETRY_AFTER),
        (1_000_000_000, MAX_RETRY_AFTER),  # "pause for 31 years"
        (math.inf, None),
        (math.nan, None),
        (-1.0, None),
        (True, None),
        ("5", None),
    ],
)
def test_retry_after_is_capped_and_nonsense_ignored(
    retry_after: object, expected: float | None
) -> None:
    assert capped_retry_after(retry_after) == expected


@pytest.mark.parametrize("rate", [0, -1.0, math.nan, math.inf, True, "10"])
def test_rejects_a_rate_that_is_not_positive_and_finite(fake_time: FakeTime, rate: object) -> None:
    with pytest.raises(ConfigurationError, match="positive, finite"):
        make(rate, fake_time)  # type: ignore[arg-type]
