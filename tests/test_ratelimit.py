"""The in-process limiter as a store and waiting room, on an injected clock: senders queue,
sleep, wait for a release when the window is full; 429s are counted; limiters written for the
earlier protocol still work. The policy's own decisions are table-tested in
``tests/test_aimd.py`` and run against server limiters in ``tests/test_rate_zoo.py``."""

from __future__ import annotations

import asyncio
import math

import pytest

from ailab_async import ConfigurationError
from ailab_async._aimd import HEADROOM, START_RATE
from ailab_async._protocol import MAX_RETRY_AFTER
from ailab_async._ratelimit import AdaptiveRateLimiter, RateLimiter, limiter_reports

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


async def test_an_unknown_limit_is_paced_from_the_start_and_reported_unknown(
    fake_time: FakeTime,
) -> None:
    limiter = make(None, fake_time)
    sent = [await limiter.acquire() for _ in range(21)]
    # No unpaced start: the probing rate spaces the very first requests.
    assert sent[-1] - sent[0] == pytest.approx(20 / START_RATE)
    assert limiter.current_rate() is None  # no limit known yet (polls are not held back)
    assert limiter.pace() == START_RATE


async def test_one_cut_per_cluster_of_429s(fake_time: FakeTime) -> None:
    limiter = make(50.0, fake_time)
    first = await limiter.acquire()
    limiter.release(first)
    fake_time.now += 0.2
    limiter.on_rate_limited(first)
    after_first = limiter.current_rate()
    assert after_first is not None
    assert after_first < 50.0 * HEADROOM
    # Twenty more 429s for requests sent before the cut or in its hold-off change nothing.
    for _ in range(20):
        limiter.on_rate_limited(first)
        limiter.on_rate_limited(fake_time.now + 0.5)
    assert limiter.current_rate() == after_first
    assert limiter.rate_limited_count == 41


async def test_a_full_window_waits_for_a_release(fake_time: FakeTime) -> None:
    limiter = make(50.0, fake_time)
    sent = [await limiter.acquire() for _ in range(3)]
    limiter.release(sent[0])
    limiter.on_rate_limited(sent[0])  # the server held two: the window is two
    waiter = asyncio.ensure_future(limiter.acquire())
    await fake_time.sleep(1.0)
    assert not waiter.done()  # still two in flight
    limiter.release(sent[1])
    limiter.on_success(sent[1])
    await fake_time.sleep(0.001)
    assert waiter.done()


async def test_retry_after_pauses_the_pace_for_its_certain_part(fake_time: FakeTime) -> None:
    limiter = make(10.0, fake_time)
    sent = await limiter.acquire()
    limiter.release(sent)
    limiter.on_rate_limited(sent, retry_after=3.0)  # whole seconds: 2 s of it are certain
    start = fake_time.now
    await limiter.acquire()
    assert fake_time.now - start == pytest.approx(2.0)


async def test_an_absurd_retry_after_pauses_at_most_the_cap(fake_time: FakeTime) -> None:
    limiter = make(10.0, fake_time)
    for retry_after in (1e9, math.inf, math.nan, -5.0):
        sent = await limiter.acquire()
        limiter.release(sent)
        limiter.on_rate_limited(sent, retry_after=retry_after)
    start = fake_time.now
    await limiter.acquire()
    # A billion seconds pauses at most the cap (less the uncertain second), never for years.
    assert fake_time.now - start <= MAX_RETRY_AFTER


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


class _OlderLimiter:
    """A custom limiter written for the earlier protocol: ``on_success()``, no release."""

    def __init__(self) -> None:
        self.successes = 0

    def on_success(self) -> None:
        self.successes += 1


def test_limiters_of_the_earlier_protocol_keep_working() -> None:
    older = _OlderLimiter()
    on_success, release = limiter_reports(older)  # type: ignore[arg-type]
    on_success(1.0)
    release(1.0)  # nothing to call: no error
    assert older.successes == 1


def test_reports_reach_a_limiter_of_the_current_protocol(fake_time: FakeTime) -> None:
    limiter = make(50.0, fake_time)
    on_success, release = limiter_reports(limiter)
    assert limiter.policy.claim(fake_time.now) == 0.0
    assert limiter.policy.state.in_flight == 1
    release(fake_time.now)
    on_success(fake_time.now - 0.2)
    assert limiter.policy.state.in_flight == 0
    assert limiter.policy.state.rtt == pytest.approx(0.2)
