"""The limiter zoo, driven with given arrival times: exact accept/refuse sequences, no clock."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from ailab_async.testing.simulator import RateLimit
from ailab_async.testing.simulator._limits import ServerLimit, server_limit

T0 = 1000.0  # the limits read time on any monotonic scale


def make(limit: RateLimit) -> ServerLimit:
    return server_limit(limit, random.Random(0))


def answers(limit: ServerLimit, times: Sequence[float]) -> list[float | None]:
    """What the limit says to requests arriving at ``T0 + t`` for each ``t``."""
    return [limit.admit(T0 + t) for t in times]


def accepted(limit: ServerLimit, times: Sequence[float]) -> list[bool]:
    return [wait is None for wait in answers(limit, times)]


# --------------------------------------------------------------------------- token bucket


def test_token_bucket_default_burst_is_ceil_of_the_rate() -> None:
    bucket = make(RateLimit(2.5))
    assert accepted(bucket, [0, 0, 0, 0]) == [True, True, True, False]


@pytest.mark.parametrize("burst", [1, 5, 10])
def test_token_bucket_accepts_exactly_its_burst_at_one_instant(burst: int) -> None:
    bucket = make(RateLimit(5, burst=burst))
    assert accepted(bucket, [0.0] * 12).count(True) == burst


def test_token_bucket_refills_at_the_rate_and_says_when() -> None:
    bucket = make(RateLimit(2, burst=2))
    assert answers(bucket, [0, 0, 0]) == [None, None, 0.5]
    assert answers(bucket, [0.25]) == [0.25]  # half a token back, refusal takes none
    assert answers(bucket, [0.5, 0.5]) == [None, 0.5]
    assert accepted(bucket, [1.5, 1.5, 1.5]) == [True, True, False]  # capped at the burst


def test_token_bucket_of_burst_one_paces_one_per_interval() -> None:
    bucket = make(RateLimit(10, burst=1))
    times = [i * 0.05 for i in range(10)]  # 20/s offered
    assert accepted(bucket, times) == [True, False] * 5


def test_zero_rate_never_says_when() -> None:
    bucket = make(RateLimit(0))
    assert answers(bucket, [0, 5]) == [None, math.inf]


# --------------------------------------------------------------------------- leaky bucket


def test_leaky_bucket_has_no_burst() -> None:
    leaky = make(RateLimit(4, shape="leaky-bucket"))
    assert answers(leaky, [0, 0, 0.1, 0.25, 0.3, 0.5]) == [
        None,
        0.25,
        pytest.approx(0.15),
        None,
        pytest.approx(0.2),
        None,
    ]


def test_leaky_bucket_does_not_save_up_while_idle() -> None:
    leaky = make(RateLimit(4, shape="leaky-bucket"))
    assert accepted(leaky, [0, 10, 10, 10.25]) == [True, True, False, True]


# --------------------------------------------------------------------------- sliding window


def test_sliding_window_counts_any_one_second() -> None:
    window = make(RateLimit(3, shape="sliding-window"))
    assert answers(window, [0, 0.2, 0.4, 0.6]) == [None, None, None, pytest.approx(0.4)]
    assert accepted(window, [0.99, 1.0, 1.1, 1.2]) == [False, True, False, True]


def test_sliding_window_refusals_do_not_count() -> None:
    window = make(RateLimit(2, shape="sliding-window"))
    assert accepted(window, [0, 0, *[0.1 * i for i in range(1, 10)]]).count(True) == 2
    # Had the nine refusals counted, the window would still be full at 1.0.
    assert accepted(window, [1.0, 1.0, 1.0]) == [True, True, False]


def test_sliding_window_burst_at_one_instant_gets_the_window_count() -> None:
    window = make(RateLimit(50, shape="sliding-window"))
    results = answers(window, [0.0] * 80)
    assert results.count(None) == 50
    assert set(results[50:]) == {1.0}


def test_sliding_window_of_a_longer_window() -> None:
    window = make(RateLimit(0.5, shape="sliding-window", window=4))
    assert answers(window, [0, 1, 2, 4]) == [None, None, 2.0, None]  # 2 per 4 s


# --------------------------------------------------------------------------- fixed window


def test_fixed_window_resets_each_whole_second_since_the_first_request() -> None:
    window = make(RateLimit(2, shape="fixed-window"))
    # The windows start at the first request (0.5): the next one opens at 1.5.
    assert answers(window, [0.5, 0.9, 0.95]) == [None, None, pytest.approx(0.55)]
    assert accepted(window, [1.4, 1.5, 1.6, 1.7]) == [False, True, True, False]


def test_fixed_window_allows_twice_the_rate_across_a_boundary() -> None:
    window = make(RateLimit(3, shape="fixed-window"))
    times = [0.0, 0.97, 0.98, 0.99, 1.0, 1.0, 1.0, 1.01]
    assert accepted(window, times) == [True, True, True, False, True, True, True, False]


# --------------------------------------------------------------------------- concurrency


def test_concurrency_counts_accepted_requests_until_done() -> None:
    limit = make(RateLimit.concurrency(2))
    assert answers(limit, [0, 0, 0]) == [None, None, math.inf]
    limit.done(T0 + 1)
    assert answers(limit, [1, 1]) == [None, math.inf]
    limit.done(T0 + 2)
    limit.done(T0 + 2)
    assert accepted(limit, [2, 2, 2]) == [True, True, False]


def test_done_is_a_no_op_for_rate_shapes() -> None:
    bucket = make(RateLimit(1, burst=1))
    assert accepted(bucket, [0]) == [True]
    bucket.done(T0)
    assert accepted(bucket, [0]) == [False]


# --------------------------------------------------------------------------- schedules

SCHEDULE = ((0.0, 50.0), (10.0, 20.0), (20.0, 50.0))


def _accepted_in_each_second(limit: ServerLimit, seconds: int, offered: int) -> list[int]:
    """Offer ``offered`` requests spread evenly over each second; count the accepted."""
    counts = []
    for second in range(seconds):
        times = [second + i / offered for i in range(offered)]
        counts.append(accepted(limit, times).count(True))
    return counts


@pytest.mark.parametrize("shape", ["sliding-window", "fixed-window", "leaky-bucket"])
def test_a_schedule_changes_the_rate_mid_run(shape: str) -> None:
    limit = make(RateLimit(50, shape=shape, schedule=SCHEDULE))  # type: ignore[arg-type]
    counts = _accepted_in_each_second(limit, 30, 100)
    assert counts[1:10] == [50] * 9
    assert counts[11:20] == [20] * 9
    assert counts[21:30] == [50] * 9


def test_token_bucket_schedule_refills_piecewise_and_resizes() -> None:
    bucket = make(RateLimit(4, schedule=[(1.0, 2.0)]))
    assert accepted(bucket, [0.0] * 5).count(True) == 4
    # 0.5 s at 4/s then 1 s at 2/s: 4 tokens, but the bucket now holds only ceil(2) = 2.
    assert accepted(bucket, [2.0] * 3) == [True, True, False]


def test_retry_after_looks_ahead_through_the_schedule() -> None:
    bucket = make(RateLimit(1, burst=1, schedule=[(0.5, 0.0), (2.0, 4.0)]))
    # At 0.1: 0.4 more token by 0.5, none until 2.0, then the last 0.5 at 4/s.
    assert answers(bucket, [0.0, 0.1]) == [None, pytest.approx(2.025)]


def test_a_zero_rate_step_refuses_until_the_rate_returns() -> None:
    window = make(RateLimit(5, shape="sliding-window", schedule=[(1.0, 0.0), (3.0, 5.0)]))
    assert answers(window, [0.0, 1.5]) == [None, 1.5]
    fixed = make(RateLimit(5, shape="fixed-window", schedule=[(1.0, 0.0), (3.0, 5.0)]))
    assert answers(fixed, [0.0, 1.5]) == [None, 1.5]


def test_rate_at_reads_the_schedule() -> None:
    limit = RateLimit(7, schedule=SCHEDULE[1:])
    assert [limit.rate_at(t) for t in (0, 9.99, 10, 15, 20, 100)] == [7, 7, 20, 20, 50, 50]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"requests_per_second": -1}, ">= 0"),
        ({"requests_per_second": 5, "shape": "bucket"}, "shape must be one of"),
        ({"requests_per_second": 5, "burst": 0}, "burst must be >= 1"),
        ({"requests_per_second": 5, "burst": 2, "shape": "fixed-window"}, "token-bucket"),
        ({"requests_per_second": 5, "window": 0}, "window"),
        ({"requests_per_second": 5, "shape": "concurrency"}, "max_in_flight >= 1"),
        ({"requests_per_second": 5, "max_in_flight": 3}, "concurrency shape"),
        ({"requests_per_second": 5, "schedule": [(2, 5), (1, 5)]}, "increasing"),
        ({"requests_per_second": 5, "schedule": [(-1, 5)]}, "increasing"),
        ({"requests_per_second": 5, "schedule": [(1, -5)]}, "rates must be"),
        ({"requests_per_second": 5, "schedule": [(1, math.inf)]}, "rates must be"),
    ],
)
def test_rate_limit_validates_its_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimit(**options)  # type: ignore[arg-type]


def test_concurrency_takes_no_schedule() -> None:
    with pytest.raises(ValueError, match="schedule"):
        RateLimit(0, shape="concurrency", max_in_flight=2, schedule=[(1, 2)])


def test_schedule_accepts_lists() -> None:
    assert RateLimit(5, schedule=[[1, 2]]).schedule == ((1.0, 2.0),)
