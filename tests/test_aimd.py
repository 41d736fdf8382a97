"""The AIMD rate policy, pure: tables of events with times, and the rates they must lead to.

No event loop and no clock: each case is data (successes, 429s, probes of the rate or of the
wait for a send slot, all at given times) replayed against :class:`AimdPolicy`.

``SHARED_CASES`` is the table both stores of the policy must follow: it runs here against
the pure policy and, in ``tests/test_redis_limiter.py``, against the real Redis script. Its
expected values are the local policy's; a row the script answers differently today carries
the reason (one of the differences listed in ``ailab_async/_aimd.py``) and is marked
``xfail(strict=True)`` there, so removing a difference shows up as an unexpected pass.
"""

from __future__ import annotations

import math

import attrs
import pytest

from ailab_async._aimd import (
    DECREASE_FACTOR,
    HEADROOM,
    MIN_RATE,
    RECOVERY_FRACTION,
    SLOW_START_DOUBLING,
    AimdPolicy,
    capped_retry_after,
)
from ailab_async._protocol import MAX_RETRY_AFTER

# -- the events a case is made of ------------------------------------------------------------


@attrs.frozen
class Ok:
    """``count`` requests answered without a 429 at ``at``."""

    at: float
    count: int = 1


@attrs.frozen
class Refused:
    """A 429 answered at ``at`` for a request sent at ``sent_at``; ``lowers``: whether it
    must lower the rate (``None``: not checked)."""

    sent_at: float
    at: float
    retry_after: float | None = None
    lowers: bool | None = None


@attrs.frozen
class Rate:
    """The rate allowed at ``at`` must be ``expected`` (requests per second)."""

    at: float
    expected: float | None


@attrs.frozen
class Wait:
    """A sender asking at ``at`` must wait ``expected`` seconds (``0``: it gets the slot)."""

    at: float
    expected: float


Event = Ok | Refused | Rate | Wait


@attrs.frozen
class Case:
    name: str
    #: The configured limit (``None``: none).
    rate: float | None
    events: tuple[Event, ...]
    #: Why the Redis script answers this case differently today (``None``: it agrees).
    redis_differs: str | None = None


def replay_on_policy(case: Case) -> None:
    """Replay ``case`` on a fresh :class:`AimdPolicy`, asserting every probe."""
    policy = AimdPolicy(case.rate)
    for step, event in enumerate(case.events):
        where = f"event {step}: {event}"
        match event:
            case Ok(at=at, count=count):
                for _ in range(count):
                    policy.on_success(at)
            case Refused(sent_at=sent_at, at=at, retry_after=retry_after, lowers=lowers):
                lowered = policy.on_rate_limited(sent_at, at, retry_after)
                assert lowers is None or lowered == lowers, where
            case Rate(at=at, expected=expected):
                assert policy.rate(at) == pytest.approx(expected), where
            case Wait(at=at, expected=expected):
                assert policy.claim(at) == pytest.approx(expected, abs=1e-9), where


# -- the local policy's own behaviours -------------------------------------------------------

PACED = 50.0 * HEADROOM  # a configured 50/s, paced with headroom
LOWERED = DECREASE_FACTOR * PACED  # one decrease from it, without evidence

POLICY_CASES = [
    Case(
        "test_429_drops_to_ninety_percent_of_the_succeeding_rate",
        None,
        (
            *(Ok(1000 + i * 0.02) for i in range(40)),  # 40 successes within the last second
            Refused(1000.8, 1000.8, lowers=True),
            Rate(1000.8, 36.0),
        ),
    ),
    Case(
        "test_one_decrease_per_congestion_event",
        50.0,
        (
            Refused(1000.01, 1000.01, lowers=True),
            # Twenty more 429s for requests that left before the slow-down change nothing.
            *[Refused(1000.0, 1000.01, lowers=False)] * 20,
            Rate(1000.01, LOWERED),
        ),
    ),
    Case(
        "test_rate_recovers_gradually_up_to_the_ceiling",
        50.0,
        (
            # Too little evidence: 90% of the rate in force (the configured one, with headroom).
            Refused(1000.0, 1000.0),
            Rate(1000.0, LOWERED),
            Rate(1001.0, LOWERED * (1 + RECOVERY_FRACTION)),  # 5% of the lowered rate per s
            Rate(2000.0, PACED),  # up to the ceiling, no further
        ),
    ),
    Case(
        "test_a_few_early_successes_do_not_collapse_the_rate",
        50.0,
        (
            Ok(1000.1),  # two answers in the first 0.3 s are not a rate of 2/s
            Ok(1000.2),
            Refused(1000.15, 1000.2),
            Rate(1000.2, LOWERED),
        ),
    ),
    Case(
        "test_refused_before_any_success_probes_upward_from_one_per_round_trip",
        None,
        (
            Refused(1000.0, 1000.2),  # the 429 came back after 0.2 s: 5/s
            Rate(1000.2, 5.0),
            Rate(1000.2 + 2 * SLOW_START_DOUBLING, 20.0),  # doubled twice
            # The next 429 ends the probing at 90% of the rate in force when it was sent...
            Refused(1000.2 + SLOW_START_DOUBLING, 1000.2 + 2 * SLOW_START_DOUBLING),
            Rate(1000.7, 9.0),
            Rate(1001.7, 9.0 * (1 + RECOVERY_FRACTION)),  # ... and growth is linear again
        ),
    ),
    Case(
        "evidence_is_capped_at_ninety_percent_of_the_rate_in_force",
        10.0,
        (Ok(1000.5, count=40), Refused(1000.9, 1001.0), Rate(1001.0, 0.9 * 10.0 * HEADROOM)),
    ),
    Case(
        "successes_within_a_round_trip_of_a_decrease_are_not_evidence",
        None,
        (
            Ok(1000.0, count=40),
            Refused(1000.3, 1000.5),  # 36/s; a 0.2 s round trip: evidence again from 1000.7
            Ok(1000.6, count=10),  # answers to requests sent at the old pace: not evidence
            Refused(1000.8, 1000.8),  # so 90% of the rate in force, not of 10 in 0.3 s
            Rate(1000.8, 0.9 * 36.0 * (1 + 0.3 * RECOVERY_FRACTION)),
        ),
    ),
    Case(
        "the_rate_never_drops_below_the_minimum",
        1.0,
        (*[Refused(1000.0, 1000.0, lowers=True)] * 30, Rate(1000.0, MIN_RATE)),
    ),
    Case(
        "sends_are_spaced_with_a_floor_against_catch_up_bursts",
        10.0,
        (
            Wait(1000.0, 0.0),
            Wait(1000.0, 1 / (10 * HEADROOM)),  # asks again at once: nothing booked
            Wait(1000.2, 0.0),  # a late wake-up: keeps to the schedule (slot 1000.103)...
            Wait(1000.2, HEADROOM / (10 * HEADROOM)),  # ... but never closer than headroom
        ),
    ),
    Case(
        "unlimited_never_waits",
        None,
        (*[Wait(1000.0, 0.0)] * 5, Rate(1000.0, None)),
    ),
]


@pytest.mark.parametrize("case", POLICY_CASES, ids=lambda case: case.name)
def test_policy(case: Case) -> None:
    replay_on_policy(case)


# -- the table both stores follow (the Redis run is in tests/test_redis_limiter.py) ---------

SHARED_CASES = [
    Case(
        "configured_rate_before_any_429",
        50.0,
        (Rate(100.0, PACED),),
        redis_differs="1. no headroom: the script paces at exactly the configured rate",
    ),
    Case(
        "slots_are_spaced_at_the_rate",
        50.0,
        (Wait(100.0, 0.0), Wait(100.0, 1 / PACED)),
        redis_differs="1. no headroom: the script spaces slots 1/rate apart",
    ),
    Case(
        "idle_time_is_not_banked",
        50.0,
        (Wait(100.0, 0.0), Wait(200.0, 0.0)),
    ),
    Case(
        "429_drops_to_ninety_percent_of_the_succeeding_rate",
        50.0,
        (Ok(100.2, count=15), Ok(100.6, count=25), Refused(100.8, 100.9), Rate(100.9, 36.0)),
    ),
    Case(
        "one_decrease_per_congestion_event",
        50.0,
        (
            Refused(100.0, 100.0, lowers=True),
            *[Refused(99.99, 100.1, lowers=False)] * 10,
            Refused(100.2, 100.3, lowers=True),  # sent after the decrease: a new event
        ),
    ),
    Case(
        "429_with_nothing_succeeding_takes_ninety_percent_of_the_rate_in_force",
        50.0,
        (Refused(100.0, 100.0), Rate(100.0, LOWERED)),
        redis_differs="3. unknown limit: the script halves the rate in force",
    ),
    Case(
        "a_few_successes_are_not_evidence",
        50.0,
        (Ok(100.1), Ok(100.2), Refused(100.15, 100.2), Rate(100.2, LOWERED)),
        redis_differs="4. any success is evidence: the script drops to 90% of 2/s",
    ),
    Case(
        "recovery_is_five_percent_of_the_lowered_rate_per_second",
        50.0,
        (
            Ok(100.5, count=40),
            Refused(100.9, 100.9),
            Rate(102.9, 36.0 * (1 + 2 * RECOVERY_FRACTION)),
        ),
        redis_differs="8. slower recovery: the script recovers at 2% per second",
    ),
    Case(
        "a_decrease_leaves_the_schedule_alone",
        50.0,
        (Ok(100.5, count=40), Refused(100.9, 100.9), Wait(100.9, 0.0)),
        redis_differs="6. the script moves the next slot one new spacing after the 429",
    ),
    Case(
        "retry_after_does_not_pause_the_other_senders",
        50.0,
        (Ok(100.0, count=40), Refused(100.5, 100.5, retry_after=2.0), Wait(100.6, 0.0)),
        redis_differs="7. Retry-After pauses everyone: the script pushes the schedule back",
    ),
    Case(
        "the_rate_never_drops_below_the_minimum",
        1.0,
        (*[Refused(100.0, 100.0, lowers=True)] * 30, Rate(100.0, MIN_RATE)),
    ),
]


def redis_params() -> list[object]:
    """``SHARED_CASES`` as parameters for the Redis run, the differing rows ``xfail``."""
    return [
        pytest.param(
            case,
            id=case.name,
            marks=(
                [pytest.mark.xfail(strict=True, reason=case.redis_differs)]
                if case.redis_differs
                else []
            ),
        )
        for case in SHARED_CASES
    ]


@pytest.mark.parametrize("case", SHARED_CASES, ids=lambda case: case.name)
def test_shared_table_on_the_pure_policy(case: Case) -> None:
    replay_on_policy(case)


# -- inputs ----------------------------------------------------------------------------------


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
