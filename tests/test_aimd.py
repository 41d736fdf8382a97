"""The rate policy, pure: tables of events with times, and what they must lead to.

No event loop and no clock: each case is data (sends, successes, 429s, releases, probes of the
rate or of the wait for a send slot, all at given times) replayed against
:class:`AimdPolicy`. ``CASES`` is the table both stores of the policy follow: it runs here
against the policy in memory and, in ``tests/test_redis_limiter.py``, against the shared
state in a real Redis (every step one transaction), with the same expectations.
How the policy fares against whole server limiters is in ``tests/test_rate_zoo.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ailab_async import ConfigurationError
from ailab_async._aimd import (
    BACKOFF,
    BUCKET,
    CATCH_UP,
    HEADROOM,
    HOLD,
    LEARNED_HEADROOM,
    MAX_CATCH_UP,
    MAX_CATCH_UP_TOLD,
    MIN_RATE,
    PROBE_AFTER,
    SLOW_START_DOUBLING,
    SLOW_START_RTTS,
    START_RATE,
    WIND_DOWN_ABOVE,
    AimdPolicy,
    AimdState,
    capped_retry_after,
    certain_retry_after,
)
from ailab_async._protocol import MAX_RETRY_AFTER

# -- the events a case is made of ------------------------------------------------------------


@attrs.frozen
class Wait:
    """A sender asking at ``at`` must wait ``expected`` seconds (``0``: it gets the slot)."""

    at: float
    expected: float


@attrs.frozen
class Ok:
    """The request sent at ``sent_at`` was answered without a 429 at ``at`` (and is over)."""

    sent_at: float
    at: float


@attrs.frozen
class Refused:
    """A 429 answered at ``at`` for a request sent at ``sent_at``; ``lowers``: whether it
    must cut the rate (``None``: not checked)."""

    sent_at: float
    at: float
    retry_after: float | None = None
    lowers: bool | None = None


@attrs.frozen
class Rate:
    """The rate allowed at ``at`` must be ``expected`` (requests per second)."""

    at: float
    expected: float


Event = Wait | Ok | Refused | Rate


@attrs.frozen
class Case:
    name: str
    #: The configured limit (``None``: none).
    rate: float | None
    events: tuple[Event, ...]


def sends(start: float, count: int, per_second: float) -> tuple[Wait, ...]:
    """``count`` sends from ``start``, ``per_second`` apart, each granted at once."""
    return tuple(Wait(start + i / per_second, 0.0) for i in range(count))


def answered(
    start: float, count: int, per_second: float, latency: float = 0.2
) -> tuple[Wait | Ok, ...]:
    """:func:`sends`, each answered without a 429 ``latency`` later, in time order."""
    events: list[Wait | Ok] = []
    for send in sends(start, count, per_second):
        events += [send, Ok(send.at, send.at + latency)]
    return tuple(sorted(events, key=lambda event: (event.at, isinstance(event, Ok))))


def replay_on_policy(case: Case) -> None:
    """Replay ``case`` on a fresh :class:`AimdPolicy`, asserting every probe."""
    policy = AimdPolicy(case.rate)
    for step, event in enumerate(case.events):
        where = f"event {step}: {event}"
        match event:
            case Wait(at=at, expected=expected):
                assert policy.claim(at) == pytest.approx(expected, abs=1e-9), where
            case Ok(sent_at=sent_at, at=at):
                policy.on_success(sent_at, at)
                policy.release(at)
            case Refused(sent_at=sent_at, at=at, retry_after=retry_after, lowers=lowers):
                policy.release(at)
                cut = policy.on_rate_limited(sent_at, at, retry_after)
                assert lowers is None or cut == lowers, where
            case Rate(at=at, expected=expected):
                assert policy.rate(at) == pytest.approx(expected), where


# -- the table both stores follow (the Redis run is in tests/test_redis_limiter.py) ---------

PACED = 50.0 * HEADROOM  # a configured 50/s, paced with headroom
#: 20 sends at 40/s from 100.01 (mid-bucket) answered after 0.2 s, then one refused: the
#: server accepted 20 in the 0.5 s of whole buckets since the first send.
FIRST_SECOND = (*answered(100.01, 20, 40.0), Wait(100.51, 0.0), Refused(100.51, 100.71))
CUT_IN_FIRST_SECOND = BACKOFF * 40.0
#: A configured 10/s, cut by a first 429 with no history to measure from.
CUT_ALONE = BACKOFF * 10.0 * HEADROOM
LATE_SEND = 101.2 + 1 / CUT_ALONE + 0.004
#: A configured 250/s, paced with headroom.
FAST = 250.0 * HEADROOM

CASES = [
    Case("a_configured_rate_is_paced_with_headroom", 50.0, (Rate(100.0, PACED),)),
    Case(
        "slots_are_spaced_at_the_pace",
        50.0,
        (Wait(100.0, 0.0), Wait(100.0, 1 / PACED), Wait(100.0 + 1 / PACED, 0.0)),
    ),
    Case(
        "idle_time_is_not_banked",
        50.0,
        (Wait(100.0, 0.0), Wait(200.0, 0.0), Wait(200.0, 1 / PACED)),
    ),
    Case(
        "a_send_that_left_a_little_late_is_followed_on_schedule",
        10.0,
        (
            Wait(100.0, 0.0),
            Wait(100.105, 0.0),  # 4 ms late for the slot at 100.102 ...
            Wait(100.105, 100.0 + 2 / (10 * HEADROOM) - 100.105),  # ... the next on time
            Wait(100.213, 0.0),  # 10 ms late: told the limit, caught up all the same ...
            Wait(100.213, 100.0 + 3 / (10 * HEADROOM) - 100.213),
            Wait(100.325, 0.0),  # 20 ms late for the slot at 100.305: a stall ...
            Wait(100.325, 1 / (10 * HEADROOM)),  # ... restarts the schedule
        ),
    ),
    Case(
        "catching_up_never_brings_two_sends_closer_than_catch_up_allows",
        250.0,
        (
            Wait(100.0, 0.0),
            Wait(100.003 + 1 / FAST, 0.0),  # 3 ms late: most of a 4 ms spacing ...
            Wait(100.003 + 1 / FAST, CATCH_UP / FAST),  # ... the next only so much closer
        ),
    ),
    Case(
        "after_a_refusal_at_the_limit_sends_never_come_closer_than_the_headroom",
        10.0,
        (
            # Refused at the configured pace: perhaps a send that caught up came too close
            # for a server that allows no burst. No catch-up from then on.
            Wait(100.0, 0.0),
            Refused(100.0, 100.2),
            Wait(101.2, 0.0),
            Ok(101.2, 101.25),  # (the cut left a window of one request in flight)
            Wait(LATE_SEND, 0.0),  # 4 ms late for its slot ...
            Ok(LATE_SEND, 101.33),
            Wait(101.33, LATE_SEND + HEADROOM / CUT_ALONE - 101.33),  # ... the next keeps away
        ),
    ),
    Case(
        "an_unknown_limit_starts_paced_at_the_start_rate",
        None,
        (Rate(100.0, START_RATE), Wait(100.0, 0.0), Wait(100.0, 1 / START_RATE)),
    ),
    Case(
        "slow_start_grows_on_answers_while_senders_wait_for_the_pace",
        None,
        (
            Wait(100.0, 0.0),
            Wait(100.0, 1 / START_RATE),  # a sender waits: the pace is what holds it back
            Ok(100.0, 100.2),
            # Doubling at most once per SLOW_START_RTTS round trips of 0.2 s.
            Rate(100.2, START_RATE + math.log(2) / (SLOW_START_RTTS * 0.2)),
        ),
    ),
    Case(
        "slow_start_grows_while_the_demand_is_above_half_the_pace",
        None,
        (
            # 15/s against a 20/s pace: nobody waits, yet the rate grows (it keeps about
            # twice the demand, so senders rarely wait), once the demand is over half of it.
            Wait(100.0, 0.0),
            Wait(100.07, 0.0),
            Wait(100.14, 0.0),
            Ok(100.0, 100.2),
            Ok(100.07, 100.27),
            Rate(100.27, START_RATE),
            Ok(100.14, 100.34),
            Rate(100.34, START_RATE + math.log(2) / (SLOW_START_RTTS * 0.2)),
        ),
    ),
    Case(
        "slow_start_doubles_at_most_every_few_milliseconds_on_a_fast_server",
        None,
        (
            Wait(100.0, 0.0),
            Wait(100.0, 1 / START_RATE),
            Ok(100.0, 100.001),
            Rate(100.001, START_RATE + math.log(2) / SLOW_START_DOUBLING),
        ),
    ),
    Case(
        "slow_start_banks_a_little_unused_pace_for_a_clump_of_senders",
        None,
        (
            Wait(100.0, 0.0),
            # Idle for a second: SLOW_START_BURST of the 20/s pace is banked (one send) ...
            Wait(101.0, 0.0),
            Wait(101.0, 0.0),
            # ... and no more.
            Wait(101.0, 1 / START_RATE),
        ),
    ),
    Case(
        "a_client_that_does_not_fill_the_pace_does_not_grow_it",
        None,
        (
            Wait(100.0, 0.0),
            Ok(100.0, 100.2),
            Wait(101.0, 0.0),
            Ok(101.0, 101.2),
            Rate(101.2, START_RATE),
        ),
    ),
    Case(
        "a_first_429_cuts_to_what_was_accepted_over_the_time_passed",
        50.0,
        # 20 accepted in 0.5 s: 40/s (not 20/s, as a full second would say), below the pace.
        (*FIRST_SECOND, Rate(100.71, CUT_IN_FIRST_SECOND)),
    ),
    Case(
        "a_cluster_of_429s_is_one_event_and_the_hold_off_freezes_growth",
        50.0,
        (
            *FIRST_SECOND,
            Refused(100.485, 100.72, lowers=False),  # sent before the cut
            *[Refused(101.5, 101.6, lowers=False)] * 10,  # sent in the 1 s hold-off
            Wait(101.6, 0.0),
            Wait(101.6, 1 / CUT_IN_FIRST_SECOND),
            Ok(101.6, 101.8),  # sent in the hold-off: no growth
            Rate(101.8, CUT_IN_FIRST_SECOND),
            Refused(101.8, 102.0, lowers=True),  # sent after it: a new event
        ),
    ),
    Case(
        "a_marginal_429_cuts_to_what_was_accepted_over_the_last_second",
        50.0,
        (
            *FIRST_SECOND,
            # After the cut, 55 sends at 37/s all accepted (nothing refused), then one
            # refused: a marginal refusal, the limit is what the last second accepted.
            *answered(100.72, 55, 37.0),
            Wait(100.72 + 55 / 37.0, 0.0),
            Refused(100.72 + 55 / 37.0, 102.4, lowers=True),
            Rate(102.4, BACKOFF * 37.0),
        ),
    ),
    Case(
        "retry_after_pauses_the_pace_for_the_part_that_is_certain",
        50.0,
        (
            Wait(100.0, 0.0),
            Refused(100.0, 100.1, retry_after=2.0),  # whole seconds: 1 s of it is certain
            Wait(100.5, 0.5),
            Wait(101.0, 0.0),
        ),
    ),
    Case(
        "a_fractional_retry_after_is_taken_as_exact",
        50.0,
        (Wait(100.0, 0.0), Refused(100.0, 100.1, retry_after=0.35), Wait(100.2, 0.15)),
    ),
    Case(
        "an_absurd_retry_after_pauses_at_most_the_cap",
        50.0,
        (
            Wait(100.0, 0.0),
            Refused(100.0, 100.1, retry_after=1e9),
            Wait(100.5, MAX_RETRY_AFTER - 1.0 - 0.5),
        ),
    ),
    Case(
        "a_cut_caps_the_requests_in_flight_at_what_the_server_held",
        50.0,
        (
            *sends(100.01, 3, 40.0),  # three in flight
            Refused(100.01, 100.2),  # one refused: the server held the other two
            Wait(100.3, math.inf),  # a third must wait for one to come back
            Ok(100.035, 100.35),
            Wait(100.4, 0.0),
        ),
    ),
    Case(
        "requests_in_flight_are_forgotten_after_a_long_silence",
        50.0,
        (
            *sends(100.01, 3, 40.0),
            Refused(100.01, 100.2),
            Wait(100.3, math.inf),
            Wait(110.3, 0.0),  # nothing released for 10 s: those requests are gone
        ),
    ),
    Case(
        "the_rate_never_drops_below_the_minimum",
        1.0,
        (
            *[Refused(100.0 + 2 * i, 100.0 + 2 * i, lowers=True) for i in range(40)],
            Rate(180.0, MIN_RATE),
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_policy(case: Case) -> None:
    replay_on_policy(case)


# -- the state a store keeps ---------------------------------------------------------------


def _accepted_while_paced(policy: AimdPolicy, start: float, end: float) -> float:
    """Senders always waiting from ``start`` to ``end``, every request accepted 0.2 s
    after it went but the last, still unanswered; returns when that one went."""
    now, sent_at = start, start
    answers: list[float] = []
    while now < end:
        while answers and answers[0] + 0.2 <= now:
            sent = answers.pop(0)
            policy.on_success(sent, sent + 0.2)
            policy.release(sent + 0.2)
        wait = policy.claim(now)
        if wait == 0:
            answers.append(now)
            sent_at = now
            wait = policy.claim(now)  # the next sender waits: the pace holds it back
        now += wait if 0 < wait < math.inf else 0.01
    for sent in answers[:-1]:
        policy.on_success(sent, sent + 0.2)
        policy.release(sent + 0.2)
    return sent_at


def test_not_told_the_limit_a_shorter_stall_restarts_the_schedule() -> None:
    # Probing for the limit, the pace may be at it: a send more than MAX_CATCH_UP late
    # (not MAX_CATCH_UP_TOLD) starts the schedule afresh instead of being caught up.
    policy = AimdPolicy(None)
    policy.claim(100.0)
    policy.release(100.2)
    assert policy.on_rate_limited(100.0, 100.2)  # slow start over: paced, on a schedule
    spacing = 1 / policy.rate(100.2)
    for late, caught_up in ((MAX_CATCH_UP - 0.001, True), (MAX_CATCH_UP + 0.001, False)):
        start = 200.0 if caught_up else 300.0
        assert policy.claim(start) == 0.0  # idle before: the schedule starts here
        policy.release(start)
        assert policy.claim(start + spacing + late) == 0.0
        policy.release(start + spacing + late)
        expected = spacing - late if caught_up else spacing  # on schedule, or afresh
        assert policy.claim(start + spacing + late) == pytest.approx(expected)
    assert MAX_CATCH_UP < 0.008 < MAX_CATCH_UP_TOLD  # (the told case above catches up 10 ms)


def test_told_the_limit_a_marginal_refusal_lowers_the_ceiling_until_acceptances_give_it_back() -> (
    None
):
    # Send times that jitter on their way to a server that allows no burst: a request sent
    # on a paced, fully accepted schedule under the configured limit is refused now and then.
    policy = AimdPolicy(50.0)
    sent_at = _accepted_while_paced(policy, 100.0, 103.0)
    assert policy.state.headroom == 1.0
    pace = policy.rate(sent_at)
    assert pace == pytest.approx(PACED)
    policy.release(sent_at + 0.2)
    assert policy.on_rate_limited(sent_at, sent_at + 0.2)
    assert policy.rate(sent_at + 0.2) == pytest.approx(LEARNED_HEADROOM * pace)
    # Paced and accepted for half a second (about 25 requests), it is still nearly that low:
    # a refusal's worth of headroom takes (1 - HEADROOM_REFUSED) / HEADROOM_REFUSED
    # acceptances to give back ...
    _accepted_while_paced(policy, 130.0, 130.5)
    given_back = (policy.rate(130.5) - LEARNED_HEADROOM * pace) / ((1 - LEARNED_HEADROOM) * pace)
    assert 0.0 < given_back < 0.5
    # ... and after ten seconds of them (about 490) the lower ceiling is gone: a ceiling
    # lowered for good by every rare refusal would drift down for as long as the batch runs.
    _accepted_while_paced(policy, 131.0, 141.0)
    assert policy.state.headroom == 1.0
    assert policy.rate(141.0) == pytest.approx(pace)


def _driven_run(
    policy: AimdPolicy,
    start: float,
    end: float,
    *,
    latency: float,
    refused: Callable[[int, int], bool],
) -> list[tuple[int, float, bool, float]]:
    """Senders always waiting from ``start`` to ``end``, each request answered ``latency``
    after it went: refused if ``refused(its number from 0, accepted requests in flight)``.
    Returns, per refused request: its number, when it went, whether its 429 cut the rate,
    and the window right after it."""
    answers: list[tuple[float, int, bool]] = []  # (sent at, number, accepted), in send order
    refusals: list[tuple[int, float, bool, float]] = []
    now, number = start, 0
    while now < end or answers:
        while answers and (answers[0][0] + latency <= now or now >= end):
            sent, which, accepted = answers.pop(0)
            policy.release(sent + latency)
            if accepted:
                policy.on_success(sent, sent + latency)
            else:
                cut = policy.on_rate_limited(sent, sent + latency)
                refusals.append((which, sent, cut, policy.state.window))
        if now >= end:
            break
        wait = policy.claim(now)
        if wait == 0:
            at_server = sum(accepted for _, _, accepted in answers)
            answers.append((now, number, not refused(number, at_server)))
            number += 1
            continue
        now = min(
            now + (wait if wait < math.inf else 0.001),
            answers[0][0] + latency if answers else math.inf,
        )
    return refusals


def _paced_run(
    policy: AimdPolicy, start: float, end: float, *, latency: float, refuse: set[int]
) -> dict[int, tuple[float, bool]]:
    """Requests refused by number (``refuse``, from 0); per refused request, when it went
    and whether its 429 cut the rate (see :func:`_driven_run`)."""
    refusals = _driven_run(
        policy, start, end, latency=latency, refused=lambda number, _: number in refuse
    )
    return {number: (sent, cut) for number, sent, cut, _ in refusals}


def test_told_the_limit_a_server_that_refused_at_the_ceiling_refuses_more_as_jitter() -> None:
    # A server that allows no burst refuses a send that arrives early at any pace: after a
    # lesson in headroom, more than a tenth of the sends since it refused (but at most a
    # fifth) are jitter too, and the next refusal at the ceiling is another lesson (2 %),
    # not a cut to 95 % of what the server took since the lesson.
    policy = AimdPolicy(50.0)
    first = _paced_run(policy, 100.0, 102.0, latency=0.2, refuse={90})
    assert first[90][1]
    lesson = policy.rate(102.0)
    assert lesson == pytest.approx(LEARNED_HEADROOM * PACED)
    # In the lesson's hold-off (to 103.03) 6 of about 50 refused (the same event); then one
    # more, at 103.14.
    refused = {8, 16, 24, 32, 40, 47, 55}
    hold_until = policy.state.hold_until
    cuts = _paced_run(policy, 102.0, 103.6, latency=0.2, refuse=refused)
    assert cuts[47][0] < hold_until < cuts[55][0]
    assert [cut for _, cut in cuts.values()] == [False] * 6 + [True]
    assert policy.rate(103.6) == pytest.approx(LEARNED_HEADROOM * lesson, rel=1e-3)


def _capped_run(
    policy: AimdPolicy, start: float, end: float, *, latency: float, cap: int
) -> list[tuple[float, bool, float]]:
    """At a server that refuses a request when ``cap`` requests it accepted are still in
    flight there; per refused request, when it went, whether its 429 cut the rate, and the
    window right after it (see :func:`_driven_run`)."""
    refusals = _driven_run(
        policy, start, end, latency=latency, refused=lambda _, in_flight: in_flight >= cap
    )
    return [(sent, cut, window) for _, sent, cut, window in refusals]


def _instant_run(
    policy: AimdPolicy,
    start: float,
    end: float,
    *,
    latency: float,
    refused: Callable[[int, int], bool],
) -> list[tuple[float, bool]]:
    """Senders always waiting from ``start`` to ``end``, at a server that answers a 429 at
    once (an accepted request ``latency`` after it went): to a request if ``refused(its
    number from 0, accepted requests in flight)``. Per refused request, when it went and
    whether its 429 cut the rate."""
    answers: list[float] = []  # send times of the accepted requests in flight, in order
    refusals: list[tuple[float, bool]] = []
    now, number = start, 0
    while now < end or answers:
        while answers and (answers[0] + latency <= now or now >= end):
            sent = answers.pop(0)
            policy.release(sent + latency)
            policy.on_success(sent, sent + latency)
        if now >= end:
            break
        wait = policy.claim(now)
        if wait == 0:
            if refused(number, len(answers)):
                policy.release(now)
                refusals.append((now, policy.on_rate_limited(now, now)))
            else:
                answers.append(now)
            number += 1
            continue
        now = min(
            now + (wait if wait < math.inf else 0.001),
            answers[0] + latency if answers else math.inf,
        )
    return refusals


def test_not_told_slow_start_ended_by_a_429_at_once_is_re_read_over_the_round_trip_after_it() -> (
    None
):
    # A cap of 10 in flight answering in 0.2 s (50/s) and refusing at once: slow start's
    # ramp is refused at about 51/s, before any answer to the sends around that request
    # came back, and the cut is the ramp's average (~33/s, ~6.5 in flight). The round trip
    # sent after the cut is all accepted: such a server refuses only what is over its
    # limit, and the cut is re-read from the top of the ramp, as when its 429s come after
    # the latency (left at the ramp's average, it climbed back over seconds).
    policy = AimdPolicy(None)
    ((_, cut),) = _instant_run(policy, 100.0, 101.6, latency=0.2, refused=_at_cap)
    assert cut
    assert policy.state.window == 10.0
    assert policy.rate(101.6) >= 0.9 * 50.0
    assert policy.state.found < math.inf


def _at_cap(_: int, in_flight: int) -> bool:
    """A cap of 10 requests in flight."""
    return in_flight >= 10


@pytest.mark.parametrize(("refuse", "latency"), [("early send", 0.2), ("cap", 0.24)])
def test_told_the_limit_a_429_at_once_before_any_answer_leaves_the_window_a_round_trip(
    refuse: str, latency: float
) -> None:
    # A server that allows no burst refuses the second send (it arrived early) at once,
    # with one request in flight, before any answer: the cut's window counted that one,
    # and none for the round trip not known yet. At the first answer the window is raised
    # to what the pace needs at the round trip (a window of one held the pace to 5/s, every
    # refusal at the ceiling after it taken for the window's). A cap of 10 in flight refuses
    # the 11th send, a round trip of the pace in flight: that window stays its 10.
    policy = AimdPolicy(50.0)
    sent: list[int] = []

    def refused(number: int, in_flight: int) -> bool:
        sent.append(number)
        return number == 1 if refuse == "early send" else _at_cap(number, in_flight)

    ((_, cut), *_) = _instant_run(policy, 100.0, 103.0, latency=latency, refused=refused)
    assert cut
    if refuse == "cap":
        assert policy.state.window_cut == 10.0
    else:
        needed = math.ceil(policy.state.cut_rate * latency)
        assert policy.state.window_cut >= needed
        assert policy.state.window >= needed
        assert len(sent) >= 0.9 * 3.0 * PACED * BACKOFF


@pytest.mark.parametrize(("refuse", "kept"), [("cap", True), ("early send", False)])
def test_told_the_limit_a_cap_s_429_at_once_before_any_answer_gives_the_pace_back(
    refuse: str, kept: bool
) -> None:
    # A cap of 10 in flight answering in 0.21 s refuses the 11th send at once, before any
    # answer. With no round trip to weigh the count against, that refusal cuts the pace (to
    # 0.95 of what the first buckets took) and marks a server that allows no burst. As the
    # answers come, the cut's window (the 10 it held) is about a round trip of the told
    # pace: a cap's, so the pace goes back to the told rate and late sends are caught up
    # again (left cut, the pace took 1.2 s to climb back, 3 s live, where the first sends'
    # buckets read 40/s). A server that allows no burst refusing the second send at once
    # held one: that cut stands.
    policy = AimdPolicy(50.0)

    def refused(number: int, in_flight: int) -> bool:
        return number == 1 if refuse == "early send" else _at_cap(number, in_flight)

    ((_, cut), *_) = _instant_run(policy, 100.0, 100.5, latency=0.21, refused=refused)
    assert cut
    assert (policy.rate(100.5) == pytest.approx(PACED)) is kept
    assert (policy.state.burstless == math.inf) is kept


def test_told_the_limit_a_cap_s_429_at_once_is_judged_on_the_shortest_round_trip_it_held() -> None:
    # A cap of 10 in flight answering in 0.205 s, but the first answers come late, in
    # order (each opened a connection; live 10-50 ms, the first the latest, more on a busy
    # machine): here 0.1 s, 0.08 s, ... Judged on the first answer's round trip alone
    # (0.305 s), the 10 it held were under what the cut pace needs at it, and the cut
    # stood; judged on the shortest round trip of the answers to what it held, the window
    # was a cap's: the pace goes back to the told rate.
    policy = AimdPolicy(50.0)
    due: list[tuple[float, float]] = []  # (answer at, sent at) of the accepted requests
    now, sends = 100.0, 0
    while now < 100.6:
        for answer, sent in sorted(due):
            if answer <= now:
                due.remove((answer, sent))
                policy.release(answer)
                policy.on_success(sent, answer)
        wait = policy.claim(now)
        if wait == 0:
            if len(due) >= 10:
                policy.release(now)
                policy.on_rate_limited(now, now)
            else:
                due.append((now + 0.205 + max(0.0, 0.1 - 0.02 * sends), now))
            sends += 1
            continue
        now = min(now + (wait if wait < math.inf else 0.001), min(due)[0] if due else math.inf)
    assert policy.rate(now) == pytest.approx(PACED)
    assert policy.state.window == 10.0


def test_not_told_a_429_at_once_with_the_window_full_at_the_limit_found_is_the_window_s() -> None:
    # The same cap, run on: the limit found at slow start's end (~54/s: the pace, 53/s,
    # keeps ~10.6 in flight), the window (10, all the server held at that cut) holds the
    # senders back, grows, and an 11th request in flight is refused at once. The count in
    # flight is then the server's: at least the cut's window, the window full. That is the
    # window's refusal (it goes back to 10), not the pace's: no cut (cut by a lesson in
    # headroom each time, 2 % and more, the pace sank to ~45/s, under what 10 in flight
    # take), and a pace probing above the limit found goes back to it (left to probe on,
    # the window alone bounding the sends, it climbed to hundreds a second).
    policy = AimdPolicy(None)
    (_, first), *later = _instant_run(policy, 100.0, 110.0, latency=0.2, refused=_at_cap)
    assert first
    assert later
    assert not any(cut for _, cut in later)
    assert policy.state.window == 10.0
    assert 0.95 * 50.0 <= policy.rate(110.0) <= policy.state.found


def test_not_told_a_429_at_once_with_fewer_in_flight_than_the_window_shows_no_cap() -> None:
    # The same cap, but one request refused with only 9 in flight (a server that refuses
    # under the window: a rate's, not a cap's). That refusal cuts, and so does any later
    # one at 10 in flight: it may be the rate's too.
    policy = AimdPolicy(None)
    refusals = _instant_run(
        policy,
        100.0,
        110.0,
        latency=0.2,
        refused=lambda number, in_flight: in_flight >= 10 or number == 200,
    )
    below = next(index for index, (sent, _) in enumerate(refusals) if 104.0 < sent < 104.5)
    assert refusals[below][1]
    assert any(cut for _, cut in refusals[below + 1 :])


def test_told_the_limit_a_refusal_above_the_window_a_cut_set_is_the_window_s_alone() -> None:
    # A server that caps requests in flight at 10, answering in 0.22 s: told 50/s, the pace
    # (49.25/s) keeps 10.8 in flight there. The first 429 cuts (the window to the 10 held);
    # the window holds senders back, grows, and an 11th request in flight is refused: that
    # is the window's, not the pace's. The window goes back to 10 (and grows again only
    # PROBE_AFTER seconds after a hold-off: one probe in about 3.5 s), the pace stays at the
    # told rate, with no lesson in headroom and late sends caught up again.
    policy = AimdPolicy(50.0)
    refusals = _capped_run(policy, 100.0, 110.0, latency=0.22, cap=10)
    (_, first_cut, first_window), *probes = refusals
    assert first_cut
    assert first_window == 10.0
    assert probes
    assert all(not cut and window == 10.0 for _, cut, window in probes)
    assert all(later - earlier > PROBE_AFTER for (earlier, _, _), (later, _, _) in pairwise(probes))
    assert policy.state.headroom == 1.0
    assert policy.state.burstless == math.inf
    assert policy.rate(110.0) == pytest.approx(PACED)


@pytest.mark.parametrize(("latency", "probes"), [(0.205, False), (0.25, True)])
def test_told_the_limit_a_cap_that_keeps_nearly_the_pace_s_round_trip_is_not_probed_above(
    latency: float, probes: bool
) -> None:
    # A cap of 10 in flight answering in 0.205 s, told 50/s: the pace (49.25/s) needs 10.1
    # in flight, and the cap's first refusal sets a window of the 10 it held. A window of
    # 11 could take at most 1 % more: it does not grow above 10, and nothing more is
    # refused (it grew every 3.5 s or so, and each probe cost a 429 and its retry's wait).
    # Answering in 0.25 s, the pace needs 12.3 in flight: the cap holds it back by a fifth,
    # and is probed above now and then, a cap that rose being found again.
    policy = AimdPolicy(50.0)
    (_, first_cut, _), *later = _capped_run(policy, 100.0, 115.0, latency=latency, cap=10)
    assert first_cut
    assert bool(later) is probes


@pytest.mark.parametrize(("refuse", "marked"), [("cap", False), ("early send", True)])
def test_told_the_limit_a_first_refusal_above_what_the_pace_keeps_in_flight_marks_no_burstless(
    refuse: str, marked: bool
) -> None:
    # The run's first 429, before any cut set a window. A cap of 10 in flight answering in
    # 0.21 s refuses the 11th request sent, the first ones not yet answered: it went with
    # more in flight than the pace needs at the round trip (49.25 * 0.21 = 10.3), and such
    # a cap refuses it however evenly the sends went, so it marks no server that allows no
    # burst (late sends are still caught up). A server that allows no burst refuses a send
    # that arrived early, here the fourth, with four in flight: that marks it.
    policy = AimdPolicy(50.0)
    if refuse == "cap":
        (_, cut, _), *_ = _capped_run(policy, 100.0, 100.3, latency=0.21, cap=10)
    else:
        ((_, cut),) = _paced_run(policy, 100.0, 100.3, latency=0.21, refuse={3}).values()
    assert cut
    assert (policy.state.burstless == PACED) is marked


def test_told_the_limit_a_cap_s_first_refusal_sets_the_window_to_all_it_held() -> None:
    # A cap of 10 in flight refuses the run's 11th request, none of the first ten answered
    # yet (the first answer, which opened the connection, came late): the window is the ten
    # it held, however many are in flight when the 429 comes back (none here: nothing was
    # sent since). Live, the count then read 9 now and then, and a window of 9 held the run
    # to 44/s. The pace stays at the told rate: the refusal was the cap's alone (cut to 0.95
    # of what the first buckets took, 38/s here, it took 2.5 s to climb back).
    policy = AimdPolicy(50.0)
    sent: list[float] = []
    now = 100.04
    while len(sent) < 11:
        wait = policy.claim(now)
        if wait == 0:
            sent.append(now)
        else:
            now += wait
    for at in sent[:10]:
        policy.release(at + 0.21)
        policy.on_success(at, at + 0.21)
    policy.release(sent[10] + 0.21)
    assert policy.on_rate_limited(sent[10], sent[10] + 0.21)
    assert policy.rate(sent[10] + 0.21) == pytest.approx(PACED)
    assert policy.state.headroom == 1.0
    assert policy.state.window == 10.0
    assert policy.state.burstless == math.inf


@pytest.mark.parametrize(("pace", "window_s"), [(PACED, True), (0.85 * PACED, False)])
def test_told_the_limit_only_a_refusal_at_the_ceiling_can_be_the_window_s(
    pace: float, window_s: bool
) -> None:
    # A request sent with 11 in flight, above the window of 10 the last cut set (the window
    # grew to 11 since, and this send filled it), is refused. At the ceiling, that is the
    # window's; well below it (a limit that dropped under the told one, found by a cut), the
    # pace is in question as for any refusal, whatever the window did.
    policy = AimdPolicy(50.0)
    _capped_run(policy, 100.0, 102.0, latency=0.21, cap=10)
    state = policy.state
    assert state.window_cut == 10.0
    state.rate, state.window, state.in_flight, state.headroom = pace, 11.0, 10, 1.0
    state.last_slot = state.last_sent = state.hold_until = -math.inf  # no event in force
    assert policy.claim(103.0) == 0.0
    assert policy.claim(103.001) == math.inf  # the window is full
    policy.release(103.21)
    assert policy.on_rate_limited(103.0, 103.21) is not window_s
    assert (policy.rate(103.21) == pace) is window_s


@pytest.mark.parametrize(
    ("window", "lesson", "at_once"),
    [(10.0, False, True), (11.0, False, False), (10.0, True, False)],
)
def test_told_the_limit_a_cap_s_window_paces_the_sends_alone(
    window: float, lesson: bool, at_once: bool
) -> None:
    # A cap of 10 in flight answering in 0.21 s, told 50/s: its first refusal set a window
    # of the 10 it held. A place the cap frees goes without waiting for the pace's next
    # slot (answers come back unevenly, and the pace held a freed place empty until its
    # slot: 10 in flight took 48.4/s of the 48.8/s they carry), half a spacing after the
    # last send (sent together, requests are answered later). Not when the window, each
    # of its requests out for the round trip, would carry more than the told limit (11 at
    # 0.21 s: 52/s), nor once a lesson of headroom lowered the pace below the told one.
    policy = AimdPolicy(50.0)
    _capped_run(policy, 100.0, 102.0, latency=0.21, cap=10)
    state = policy.state
    assert state.capped
    assert state.window == 10.0
    state.window, state.in_flight = window, int(window)
    if lesson:
        state.headroom = LEARNED_HEADROOM
        state.rate = state.cut_rate = PACED * LEARNED_HEADROOM
    state.last_slot = state.last_sent = 103.0  # a send just went, on its slot
    assert policy.claim(103.001) == math.inf  # the window is full
    policy.release(103.002)
    if at_once:
        assert policy.claim(103.002) == pytest.approx(CATCH_UP / PACED - 0.002)  # kept apart
    policy.release(103.012)
    wait = policy.claim(103.012)
    assert (wait == 0.0) is at_once
    if not at_once:
        assert wait > 0.005  # the pace's next slot


def test_told_the_limit_a_cut_that_was_not_enough_takes_back_the_burstless_mark() -> None:
    # Seconds at the told limit accepted, then everything refused for half a second (the
    # limit dropped): the first 429, at the ceiling, looks like a send that caught up too
    # close at a server that allows no burst (marked: no late send caught up any more) and
    # teaches headroom. The refusals after it show the lesson was not enough: the limit
    # dropped, and that first refusal was no send caught up, so the mark goes.
    policy = AimdPolicy(50.0)
    cuts = _paced_run(policy, 100.0, 104.0, latency=0.2, refuse=set(range(150, 175)))
    lesson, correction = (number for number, (_, cut) in sorted(cuts.items()) if cut)
    assert (lesson, correction) == (150, 161)
    assert policy.rate(104.0) < 0.5 * PACED  # the correction
    assert policy.state.burstless == math.inf


@pytest.mark.parametrize(
    ("mark", "refuse", "kept"),
    [(30.0, set(), False), (45.0, set(), True), (30.0, set(range(5, 200, 40)), True)],
)
def test_not_told_a_burstless_mark_the_server_took_well_above_is_taken_back(
    mark: float, refuse: set[int], kept: bool
) -> None:
    # Not told, a marginal refusal at 30/s marked a server that allows no burst (no late
    # send caught up): it was a probe refused while the limit was down. The limit is back,
    # and the server takes 47/s, spaced closer than a spacing at 30/s, refusing none over a
    # second: no such server, the mark goes. Not when what it takes is within a fifth of
    # the mark (45/s), nor when it refuses one in every second (a server that allows no
    # burst refuses a send caught up now and then).
    policy = AimdPolicy(None)
    state = policy.state
    state.rate, state.burstless = 47.0, mark
    state.cut, state.cut_sent, state.cut_at = True, 98.8, 99.0
    state.hold_until = 200.0  # (no growth meanwhile: the pace stays 47/s)
    _paced_run(policy, 100.0, 102.5, latency=0.2, refuse=refuse)
    assert policy.rate(102.5) == 47.0
    assert state.burstless == (mark if kept else math.inf)


def test_a_cut_s_own_429_is_not_counted_as_one_sent_since_it() -> None:
    # A server next door answers in 5 ms: the lesson's refused send is in the bucket the
    # count since the cut starts at. One of the five sends after it refused is not "most"
    # of them (more than 30 %): the same event, no cut.
    policy = AimdPolicy(50.0)
    spacing = 1 / (LEARNED_HEADROOM * PACED)
    # Refuse send 92 (at about 101.868, answered in the same 50 ms bucket), and then the
    # fifth after it.
    cuts = _paced_run(policy, 100.0, 102.5, latency=0.005, refuse={92, 97})
    (lesson_sent, lesson_cut), (jitter_sent, jitter_cut) = cuts[92], cuts[97]
    assert math.floor(lesson_sent / BUCKET) == math.floor((lesson_sent + 0.005) / BUCKET)
    assert jitter_sent - lesson_sent < 6 * spacing
    assert lesson_cut
    assert not jitter_cut
    assert policy.rate(102.5) == pytest.approx(LEARNED_HEADROOM * PACED, rel=1e-3)


def test_a_first_429_with_little_history_teaches_no_headroom() -> None:
    policy = AimdPolicy(50.0)
    policy.claim(100.0)
    policy.release(100.2)
    assert policy.on_rate_limited(100.0, 100.2)
    assert policy.state.headroom == 1.0
    _accepted_while_paced(policy, 130.0, 140.0)
    assert policy.rate(140.0) == pytest.approx(PACED)


def test_slots_booked_ahead_do_not_count_against_the_window() -> None:
    # The Redis store books slots up to 0.1 s ahead; a booked slot is in flight from the
    # booking, but not at the server until it is due. Refused with two slots booked and none
    # other at the server, the window holds one request, and the booked slots do not fill it.
    policy = AimdPolicy(40.0)
    booked = [policy.reserve(100.0, 0.1) for _ in range(3)]
    assert all(ok for _, ok in booked)
    policy.release(100.005)
    assert policy.on_rate_limited(100.0, 100.005)
    assert policy.state.window == 1.0
    wait, ok = policy.reserve(100.006, 0.1)
    assert ok
    assert wait < 0.1


def test_a_store_that_books_ahead_is_not_held_to_a_window_under_its_horizon_s_pace() -> None:
    # The Redis store hears of an answer with the process's next call: a request answered
    # but not yet reported still counts in flight. After a cut at a server that answers in
    # milliseconds, the window is one request; booking 0.1 s ahead, the window is at least
    # what the pace sends over that horizon (four at 37/s), or every process but the one
    # that just reported waits: live, 24/s went out at a 37/s pace. Not booking ahead (the
    # in-process limiter, which hears of answers at once), the window of one holds.
    policy = AimdPolicy(40.0)
    assert policy.reserve(100.0, 0.1)[1]
    policy.release(100.004)
    assert policy.on_rate_limited(100.0, 100.004)
    assert policy.state.window == 1.0
    for at in (100.03, 100.06, 100.09):  # sent and answered, but not reported yet
        wait, ok = policy.reserve(at, 0.1)
        assert ok
        assert wait < 0.1
    assert policy.state.in_flight == 3
    in_process = AimdPolicy(40.0)
    in_process.state = AimdState.from_fields(policy.state.to_fields())
    assert in_process.claim(100.2) == math.inf  # the window of one is full


def _first_second_filled(policy: AimdPolicy, *, began: float, until: float = 100.678) -> float:
    """Sends at the pace from ``began`` to ``until``, all accepted, then one refused with a
    ``Retry-After`` of one second (a window's count let through): the time it was sent."""
    t = began
    while t < until:
        assert policy.claim(t) == 0.0
        policy.release(t + 0.005)
        policy.on_success(t, t + 0.005)
        t += 1.0 / policy.rate(t)
    assert policy.claim(t) == 0.0
    policy.release(t + 0.005)
    assert policy.on_rate_limited(t, t + 0.005, 1.0)
    return t


def test_a_store_that_books_ahead_waits_for_a_window_its_first_sends_filled() -> None:
    # Told 60/s, a window of 40 a second took the first 0.68 s of sends, then refused with a
    # whole-second Retry-After (its last second uncertain: no pause for it). Booking ahead,
    # four processes' senders were all refused before the window had room again at 101.0,
    # each retry waiting out the whole second: a store that books ahead sends nothing more
    # before then. In process, or once sends began more than a second before: no wait.
    shared = AimdPolicy(60.0, books_ahead=True)
    refused = _first_second_filled(shared, began=100.0)
    wait, booked = shared.reserve(refused + 0.006, 0.1)
    assert not booked
    assert refused + 0.006 + wait == pytest.approx(101.0)
    in_process = AimdPolicy(60.0)
    refused = _first_second_filled(in_process, began=100.0)
    assert in_process.claim(refused + 0.006) < 0.05
    going_on = AimdPolicy(60.0, books_ahead=True)
    refused = _first_second_filled(going_on, began=99.5)
    assert going_on.reserve(refused + 0.006, 0.1)[1]


def test_a_store_that_books_ahead_does_not_wait_after_a_refusal_soon_after_the_first_send() -> None:
    # A leaky bucket refuses a jittered send a tenth of a second after the first: no window
    # was filled, and a pause to a second after the first send cost four processes told its
    # rate 1.21x -> 1.25x the ideal (clock-free, 40 seeds).
    policy = AimdPolicy(40.0, books_ahead=True)
    refused = _first_second_filled(policy, began=100.0, until=100.09)  # four sends
    assert refused == pytest.approx(100.1, abs=0.01)
    assert policy.reserve(refused + 0.006, 0.1)[1]


def _leaky_run(
    policy: AimdPolicy,
    start: float,
    end: float,
    *,
    rate: float = 40.0,
    refuse: frozenset[int] = frozenset(),
) -> list[tuple[int, float, bool]]:
    """Senders always waiting from ``start`` to ``end``, each request answered 5 ms after
    it went, by a queue-free leaky bucket of ``rate`` (it refuses a request sent less than
    ``1 / rate`` after the last one it took in this run) that also refuses the requests
    numbered in ``refuse`` (from 0). Returns, per refused request: its number, when it went,
    and whether its 429 cut the rate."""
    taken = -math.inf
    answers: list[tuple[float, int, bool]] = []
    refusals: list[tuple[int, float, bool]] = []
    now, number = start, 0
    while now < end or answers:
        while answers and (answers[0][0] + 0.005 <= now or now >= end):
            sent, which, accepted = answers.pop(0)
            policy.release(sent + 0.005)
            if accepted:
                policy.on_success(sent, sent + 0.005)
            else:
                refusals.append((which, sent, policy.on_rate_limited(sent, sent + 0.005)))
        if now >= end:
            break
        wait = policy.claim(now)
        if wait == 0:
            accepted = number not in refuse and now >= taken + 1.0 / rate - 1e-9
            taken = now if accepted else taken
            answers.append((now, number, accepted))
            number += 1
            continue
        now = min(
            now + (wait if wait < math.inf else 0.001),
            answers[0][0] + 0.005 if answers else math.inf,
        )
    return refusals


def _leaky_told_too_much() -> AimdPolicy:
    """A store that books ahead, told 60/s, 1.5 s at a 40/s leaky bucket: refused from the
    second send on, and its first cut (to 95 %) refused in half too, then corrected."""
    policy = AimdPolicy(60.0, books_ahead=True)
    cuts = [sent for _, sent, cut in _leaky_run(policy, 100.0, 101.5) if cut]
    assert cuts == [pytest.approx(100.017, abs=0.001), pytest.approx(100.231, abs=0.001)]
    return policy


def test_told_too_much_a_server_that_allows_no_burst_is_recovered_towards_above_what_it_took() -> (
    None
):
    # A leaky bucket refused the second send at the told 59/s, and half of the sends of the
    # cut to 56/s: overrun, it takes one request in two (28/s), so what it took is a lower
    # bound of its limit. The correction's recovery aims at the geometric mean of what it
    # took and the pace it refused (about 40/s), not at what it took (29/s: four processes
    # stayed about 31/s for seconds).
    policy = _leaky_told_too_much()
    assert policy.state.no_burst
    assert policy.state.refused_pace == pytest.approx(39.8, abs=0.5)
    assert policy.state.cut_rate < 30.0
    # Not a store that books ahead (the in-process limiter: its own rules), nor a server
    # that let the first sends through (a window of 40 a second told 60/s filled in 0.68 s,
    # then refused all: what it took is its limit).
    in_process = AimdPolicy(60.0)
    _leaky_run(in_process, 100.0, 101.5)
    assert not in_process.state.no_burst
    assert in_process.state.refused_pace < 30.0
    window = AimdPolicy(60.0, books_ahead=True)
    taken = iter(range(1, 10**6))
    _driven_run(window, 100.0, 101.5, latency=0.005, refused=lambda _, __: next(taken) > 40)
    assert window.state.cut
    assert not window.state.no_burst


def test_told_too_much_a_marginal_refusal_far_under_the_told_ceiling_finds_the_limit() -> None:
    # After that correction, paced and all accepted up to 40/s, then one refused: far under
    # the told ceiling (59/s), the told figure is wrong, and that pace is the limit, held as
    # if told: one lesson of headroom under it (2 %), not a cut to 95 % of what the server
    # took over the second before (the pace saw-toothed between 32/s and 38/s).
    policy = _leaky_told_too_much()
    _leaky_run(policy, 101.5, 103.0, rate=1000.0)
    pace = policy.rate(103.0)
    assert 39.0 < pace < 0.9 * 60.0 * HEADROOM
    (refusal,) = _leaky_run(policy, 103.0, 103.2, rate=1000.0, refuse=frozenset({0}))
    assert refusal[2]
    found = policy.state.found  # the pace it was refused at
    assert found == pytest.approx(pace, rel=0.01)
    assert policy.rate(103.2) == pytest.approx(LEARNED_HEADROOM * found)


def test_told_too_much_a_refusal_at_the_lowered_pace_in_a_lesson_s_hold_off_teaches_more() -> None:
    # Held under the limit found, a leaky bucket still refuses sends the jitter brings early:
    # each one sent at the lowered pace since the lesson, in its hold-off, is another lesson
    # (2 % more), at once. (Left to the hold-off's end, the refusals of a second of a pace
    # still too high were more than a fifth of the sends: no lesson, a cut to 95 % of what
    # the server took, 27-28/s of a 40/s bucket.)
    policy = _leaky_told_too_much()
    _leaky_run(policy, 101.5, 103.0, rate=1000.0)
    _leaky_run(policy, 103.0, 103.2, rate=1000.0, refuse=frozenset({5}))
    lesson = policy.rate(103.2)
    assert policy.state.hold_until > 104.0
    refusals = _leaky_run(policy, 103.2, 103.6, rate=1000.0, refuse=frozenset({3, 9}))
    assert [cut for _, _, cut in refusals] == [True, True]
    assert policy.rate(103.6) == pytest.approx(LEARNED_HEADROOM**2 * lesson, rel=1e-3)


def test_a_release_told_late_does_not_move_the_last_release_back() -> None:
    # Reports reach the shared state out of order (each process tells its answers with its
    # next call): a release answered at 100.0 told after one answered at 120.0 must not make
    # the in-flight count look stale at 125.0 (nothing released for ten seconds), which
    # would forget the requests still in flight and let a burst through a full window.
    policy = AimdPolicy(40.0, start_rate=40.0)
    policy.state = AimdState(rate=40.0, cut=True, window=1.0, in_flight=3)
    policy.release(120.0)
    policy.release(100.0)
    assert policy.state.released_at == 120.0
    assert policy.reserve(125.0, 0.0) == (math.inf, False)
    assert policy.state.in_flight == 1


def test_a_wait_for_the_window_is_news_at_most_every_half_round_trip() -> None:
    policy = AimdPolicy(40.0)
    policy.state = AimdState(rate=40.0, cut=True, window=1.0, in_flight=1, released_at=100.0)
    assert policy.window_wait_is_news(100.0)  # never noted
    assert policy.reserve(100.0, 0.0) == (math.inf, False)
    policy.state.rtt = 0.2
    assert not policy.window_wait_is_news(100.09)
    assert policy.window_wait_is_news(100.11)
    policy.state.rtt = 0.0  # none seen yet: taken as the shortest round trip, 0.05 s
    assert not policy.window_wait_is_news(100.02)
    assert policy.window_wait_is_news(100.03)


def test_the_state_survives_a_round_trip_through_strings_and_bytes() -> None:
    policy = AimdPolicy(None)
    for event in FIRST_SECOND:
        if isinstance(event, Wait):
            policy.claim(event.at)
    policy.on_success(100.01, 100.2)
    policy.on_rate_limited(100.51, 100.7, 0.4)
    fields = policy.state.to_fields()
    assert AimdState.from_fields(fields) == policy.state
    as_bytes = {key.encode(): value.encode() for key, value in fields.items()}
    assert AimdState.from_fields(as_bytes) == policy.state
    assert all(isinstance(value, str) for value in fields.values())


def test_a_state_written_by_another_version_starts_its_history_afresh() -> None:
    fields = AimdState(rate=12.0).to_fields()
    fields["sent"] = "1,2,3"  # a ring of another length
    state = AimdState.from_fields({**fields, "unknown_field": "x"})
    assert state.rate == 12.0
    assert state.sent == AimdState().sent


def test_a_state_written_before_the_recovery_s_aim_was_kept_recovers_to_the_refused_pace() -> None:
    # A shared store may hold a state an older version wrote (no ``aim``): its recovery
    # follows the cubic back to the refused pace, as the state written now does.
    written = AimdState(rate=39.0, cut=True, cut_rate=39.0, refused_pace=40.0, hold_until=5.0)
    older = {key: value for key, value in written.to_fields().items() if "aim" not in key}
    rates = []
    for fields in (written.to_fields(), older):
        policy = AimdPolicy(None)
        policy.state = AimdState.from_fields(fields)
        assert policy.claim(5.0) == 0.0
        assert policy.claim(5.0) > 0  # the pace holds the next sender back
        policy.on_success(sent_at=5.0, now=5.2)
        rates.append(policy.rate(5.2))
    assert 39.0 < rates[0] < 40.0  # on the cubic, flat near the refused pace
    assert rates[1] == rates[0]


@given(
    rate=st.floats(0.2, 1e4),
    in_flight=st.integers(0, 1000),
    hold_until=st.floats(-1e12, 1e12),
)
def test_any_state_survives_a_round_trip(rate: float, in_flight: int, hold_until: float) -> None:
    state = AimdState(rate=rate, in_flight=in_flight, hold_until=hold_until, cut=True)
    assert AimdState.from_fields(state.to_fields()) == state


# -- inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "capped", "certain"),
    [
        (None, None, 0.0),
        (0, 0.0, 0.0),
        (1, 1.0, 0.0),
        (3, 3.0, 2.0),
        (2.5, 2.5, 2.5),
        (0.35, 0.35, 0.35),
        (MAX_RETRY_AFTER, MAX_RETRY_AFTER, MAX_RETRY_AFTER - 1),
        (1_000_000_000, MAX_RETRY_AFTER, MAX_RETRY_AFTER - 1),  # "pause for 31 years"
        (math.inf, None, 0.0),
        (math.nan, None, 0.0),
        (-1.0, None, 0.0),
        (True, None, 0.0),
        ("5", None, 0.0),
    ],
)
def test_retry_after_is_capped_and_nonsense_ignored(
    retry_after: object, capped: float | None, certain: float
) -> None:
    assert capped_retry_after(retry_after) == capped
    assert certain_retry_after(retry_after) == certain


@pytest.mark.parametrize("rate", [0, -1.0, math.nan, math.inf, True, "10"])
def test_rejects_a_rate_that_is_not_positive_and_finite(rate: object) -> None:
    with pytest.raises(ConfigurationError, match="positive, finite"):
        AimdPolicy(rate)  # type: ignore[arg-type]


# -- the batch's end -----------------------------------------------------------------------


def test_at_the_batch_s_end_the_pace_stops_growing_until_the_requests_left_are_accepted() -> None:
    # Told 50/s, a marginal refusal lowered the ceiling, and acceptances give it back (a
    # server that allows a burst: see the next test) ...
    policy = AimdPolicy(50.0)
    sent_at = _accepted_while_paced(policy, 100.0, 103.0)
    policy.release(sent_at + 0.2)
    assert policy.on_rate_limited(sent_at, sent_at + 0.2)
    policy.state.burstless = math.inf
    _accepted_while_paced(policy, 103.2, 106.0)
    unwound = AimdPolicy(50.0)
    unwound.state = AimdState.from_fields(policy.state.to_fields())
    pace = policy.rate(106.0)
    policy.wind_down(106.0, 1000)
    assert policy.rate(106.0) == pace  # the server took the pace: it does not come down
    # ... but not once the batch's input ran out, until the requests left are accepted.
    _accepted_while_paced(policy, 106.0, 107.0)
    _accepted_while_paced(unwound, 106.0, 107.0)
    assert policy.rate(107.0) == pace
    assert unwound.rate(107.0) > pace
    policy.state.winding = 1  # one left: then it grows again (the next batch)
    _accepted_while_paced(policy, 107.0, 108.0)
    assert policy.rate(108.0) > pace


def test_told_at_the_batch_s_end_a_server_that_allows_no_burst_is_sent_to_more_slowly() -> None:
    # Told 50/s, a refusal at the ceiling (a server that allows no burst refuses a send that
    # arrives a little early): the requests left go at 95 % of the pace, where a 429 would
    # cost its retry a whole second at the end.
    policy = AimdPolicy(50.0)
    sent_at = _accepted_while_paced(policy, 100.0, 103.0)
    policy.release(sent_at + 0.2)
    assert policy.on_rate_limited(sent_at, sent_at + 0.2)
    _accepted_while_paced(policy, 103.2, 106.0)
    assert policy.state.burstless < math.inf
    pace = policy.rate(106.0)
    policy.wind_down(106.0, 64)
    assert policy.rate(106.0) == pytest.approx(0.95 * pace)


@pytest.mark.parametrize("by_rate", [True, False])
def test_not_told_at_the_batch_s_end_a_limit_found_by_rate_is_sent_to_more_slowly(
    by_rate: bool,
) -> None:
    # Not told, a limit read at slow start's end (a server that refuses only what is over
    # its rate) that refused a send caught up: 95 % of the pace for the requests left. Not
    # a window's limit found by two marginal refusals (a window takes a burst).
    policy = AimdPolicy(None)
    policy.state = AimdState(
        rate=47.0, cut=True, found=48.0, found_by_rate=by_rate, burstless=48.0, headroom=0.98
    )
    policy.wind_down(100.0, 64)
    assert policy.rate(100.0) == pytest.approx(0.95 * 47.0 if by_rate else 47.0)


def test_at_the_batch_s_end_a_pace_far_above_what_the_server_took_comes_down_to_it() -> None:
    # Not told: slow start, a cut, and the pace climbing back, faster than the server took
    # over the two seconds before (the sends of the last round trip not yet answered).
    policy = AimdPolicy(None)
    sent_at = _accepted_while_paced(policy, 100.0, 102.0)
    policy.release(sent_at + 0.2)
    assert policy.on_rate_limited(sent_at, sent_at + 0.2)
    _accepted_while_paced(policy, 102.2, 104.0)
    state = policy.state
    sent = sum(state.sent[-round(2.2 / BUCKET) : -round(0.2 / BUCKET)])
    took = (sent - sum(state.refused)) / 2.0
    pace = policy.rate(104.0)
    assert pace > WIND_DOWN_ABOVE * took
    policy.wind_down(104.0, 100)
    assert policy.rate(104.0) == pytest.approx(took)


@pytest.mark.parametrize(("pace", "lowered"), [(51.0, True), (49.0, False)])
def test_at_the_batch_s_end_a_pace_a_little_above_what_the_server_took_comes_down_near_it(
    pace: float, lowered: bool
) -> None:
    # Not told, after a cut: the server took 47/s, every send, and the pace has just
    # climbed back to 51/s, under WIND_DOWN_ABOVE times that. Sent on to the batch's end, a
    # window that takes 47-50/s refuses one in the last second, and its retry waits out a
    # whole Retry-After: at the end, the pace comes down to 1.06 times what the server took
    # (not at 49/s, within that).
    policy = AimdPolicy(None)
    state = policy.state
    state.rate = 47.0
    state.cut, state.cut_sent, state.cut_at = True, 98.8, 99.0
    state.hold_until = 200.0  # (no growth meanwhile: the pace stays 47/s)
    _paced_run(policy, 100.0, 102.5, latency=0.2, refuse=set())
    state.rate = pace
    assert pace < WIND_DOWN_ABOVE * 47.0
    policy.wind_down(102.5, 20)
    assert policy.rate(102.5) == (pytest.approx(1.06 * 47.0, rel=0.02) if lowered else pace)


def test_at_the_batch_s_end_a_pace_the_client_did_not_use_stays() -> None:
    # Told 50/s, sending 10/s (the server keeps up): the pace is not what held it back, and
    # the tracker plans its polls from it.
    policy = AimdPolicy(50.0)
    for tenth in range(20):
        sent_at = 100.0 + tenth / 10
        assert policy.claim(sent_at) == 0.0
        policy.release(sent_at + 0.2)
        policy.on_success(sent_at, sent_at + 0.2)
    policy.wind_down(102.2, 5)
    assert policy.rate(102.2) == pytest.approx(PACED)


def test_told_the_limit_a_batch_that_runs_out_before_its_first_send_keeps_its_pace() -> None:
    policy = AimdPolicy(50.0)
    policy.wind_down(100.0, 3)
    assert policy.rate(100.0) == pytest.approx(PACED)
    assert policy.claim(100.0) == 0.0


def test_in_slow_start_the_batch_s_end_changes_nothing() -> None:
    # A batch no larger than its concurrency runs out at its first send: its pace is no
    # measure of the server yet, and held at the start rate it would crawl.
    policy, unwound = AimdPolicy(None), AimdPolicy(None)
    policy.wind_down(100.0, 64)
    _accepted_while_paced(policy, 100.0, 101.0)
    _accepted_while_paced(unwound, 100.0, 101.0)
    assert policy.rate(101.0) == unwound.rate(101.0) > START_RATE


def test_told_too_much_a_no_burst_correction_holds_off_briefly_and_judges_the_sends_after_it() -> (
    None
):
    # The correction that shows a leaky bucket told too much (at 100.24) holds off 0.4 s,
    # not a second: such a server refuses at once, and only the sends booked at the pace
    # corrected (here two, refused just after it) are still the event's. The first refusal
    # after the hold-off is judged on the sends since it ended: all accepted, so it is
    # marginal, far under the told ceiling, and finds the limit (held for a second, the pace
    # sat at 28/s; judged on the sends since the cut, those two made it a cut to 95 % of
    # what the server took).
    policy = AimdPolicy(60.0, books_ahead=True)
    cuts = [sent for _, sent, cut in _leaky_run(policy, 100.0, 100.3) if cut]
    assert cuts == [pytest.approx(100.017, abs=0.001), pytest.approx(100.231, abs=0.001)]
    assert policy.state.no_burst
    assert policy.state.hold_until == pytest.approx(policy.state.cut_at + 0.4)
    stale = _leaky_run(policy, 100.3, 101.0, rate=1000.0, refuse=frozenset({0, 1}))
    assert [cut for _, _, cut in stale] == [False, False]
    pace = policy.rate(101.0)
    (refusal,) = _leaky_run(policy, 101.0, 101.1, rate=1000.0, refuse=frozenset({0}))
    assert refusal[2]
    assert policy.state.found == pytest.approx(pace, rel=0.01)
    assert policy.rate(101.1) == pytest.approx(LEARNED_HEADROOM * pace, rel=0.01)
    # Told the limit, the same refusals after the first cut: no correction, a second's
    # hold-off (the sends of the run so far, a fifth refused, are no news).
    told = AimdPolicy(40.0, books_ahead=True)
    _leaky_run(told, 100.0, 100.3, rate=1000.0, refuse=frozenset({3}))
    assert told.state.hold_until == pytest.approx(told.state.cut_at + HOLD)


def test_told_the_limit_a_server_refusing_from_the_first_sends_refuses_more_as_jitter() -> None:
    # A store that books ahead, told a leaky bucket's rate: the fourth send refused (the
    # first cut), then a fifth of the sends in its hold-off (the same event), then one after
    # it. Refused from the very first sends and in no more than about half since the cut,
    # the server allows no burst: up to half of the sends since a cut refused are jitter
    # (not a fifth), and that refusal is a lesson of headroom (2 %), not a cut to 95 % of
    # what the server took (four processes fell to 28.5/s, and took seconds to climb back).
    refuse = frozenset({3, 8, 12, 16, 20, 24, 28, 32, 36, 42})
    policy = AimdPolicy(40.0, books_ahead=True)
    refusals = _leaky_run(policy, 100.0, 101.3, rate=1000.0, refuse=refuse)
    assert [cut for _, _, cut in refusals] == [True] + [False] * 8 + [True]
    assert policy.state.no_burst
    pace = BACKOFF * 40.0 * HEADROOM  # the first cut's
    assert policy.rate(101.3) == pytest.approx(LEARNED_HEADROOM * pace, rel=0.01)
    # In process (its own rules), the same refusals: a cut to 95 % of what was taken.
    in_process = AimdPolicy(40.0)
    _leaky_run(in_process, 100.0, 101.3, rate=1000.0, refuse=refuse)
    assert not in_process.state.no_burst
    assert in_process.rate(101.3) < 0.8 * pace


def test_a_late_sender_gives_its_slot_back_only_at_a_server_known_to_allow_no_burst() -> None:
    # A store that books ahead, told the limit: a sender woken late takes the room of the
    # next process's send only at a server that allows no burst (once the shared state
    # knows it: AimdState.no_burst); elsewhere a late send costs nothing, and giving its
    # slot back would waste it.
    policy = AimdPolicy(40.0, books_ahead=True)
    assert policy.late_limit() == math.inf
    policy.state.no_burst = True
    assert 0 < policy.late_limit() < 1 / 40
