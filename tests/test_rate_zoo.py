"""The rate policy against every server limiter of the simulator's zoo, on a simulated clock.

Each test plays a batch of requests through :class:`~ailab_async._aimd.AimdPolicy` in the
discrete-event world of ``tests/_rate_zoo.py`` (32 senders as ``client.map`` sends, 0.2 s
server latency, the dispatcher's retry delay for a 429), against one shape of
``ailab_async.testing.simulator``'s limits: token buckets of burst 1 to twice the rate,
sliding and fixed windows, a leaky bucket, a cap on requests in flight, 429s at once or after
the latency, with or without ``Retry-After``, and a limit that changes mid-run; some runs
play a busy machine (late timers, late arrivals, seeded) or senders that book their own slots
ahead as the Redis store's do. No event loop
and no real time: the outcomes are exact for a given seed, so the bands below are tight
enough to fail when the policy gets worse. The wall-time targets on the real client are
measured by ``benchmarks/bench_batch.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import attrs
import pytest

from ailab_async import _aimd
from ailab_async._aimd import SLOW_START_LEAD, AimdPolicy
from ailab_async.testing.simulator import RateLimit

from ._rate_zoo import (
    DROP_RETURN_FAMILY,
    LIMIT,
    LIVE,
    LIVE_MEASURED,
    SHARED_LIMIT,
    TABLE_ROWS,
    ZOO,
    FixedPace,
    ReactingOracle,
    ZooRun,
    at_rate,
    best_fixed_pace,
    breakdown_table,
    family_table,
    run_zoo,
    shared_budget,
    shared_setting,
    zoo_table,
)

#: Seeds of the runs per shape (the dispatcher's retry delays and a little latency jitter
#: differ between them): the targets hold on the average, so no one lucky path passes.
SEEDS = range(3)
JITTER = 0.02


@pytest.fixture(scope="module")
def runs() -> dict[str, ZooRun]:
    """One batch of 500 per shape, no rate configured (shared by the tests below)."""
    return {name: run_zoo(limit, latency_jitter=JITTER) for name, (limit, _, _) in ZOO.items()}


@pytest.mark.parametrize("shape", list(ZOO))
def test_an_unknown_limit_is_found_on_every_shape(shape: str) -> None:
    limit, ratio, refused_share = ZOO[shape]
    batches = [run_zoo(limit, seed=seed, latency_jitter=JITTER) for seed in SEEDS]
    mean_ratio = sum(run.ratio for run in batches) / len(batches)
    assert mean_ratio <= ratio, [f"{run.wall:.2f}s / {run.ideal:.2f}s" for run in batches]
    assert sum(run.refused_share for run in batches) / len(batches) <= refused_share
    for run in batches:
        # Not by luck: the server was kept busy near its limit.
        assert run.accepted_rate(3.0, 8.0) >= 0.75 * (LIMIT if "20" not in shape else 20.0)


@pytest.mark.parametrize("shape", [name for name in ZOO if "->" not in name])
def test_the_pace_settles_within_a_band_around_the_limit(
    runs: dict[str, ZooRun], shape: str
) -> None:
    run = runs[shape]
    settled = [run.pace_at(t / 10) for t in range(40, 90)]
    if "in flight" in shape:
        # The window caps requests in flight; the pace must not starve it.
        assert min(settled) >= 0.6 * LIMIT
    else:
        assert 0.75 * LIMIT <= sum(settled) / len(settled) <= 1.15 * LIMIT


def test_a_cluster_of_429s_at_the_end_of_slow_start_costs_one_cut() -> None:
    # The ramp overshoots a sliding window: a run of refusals, one cut, not one per 429.
    run = run_zoo(RateLimit(LIMIT, shape="sliding-window"), until=1.9)
    assert run.refused >= 10
    assert run.cuts == 1


@pytest.mark.parametrize(
    ("shape", "refused"), [("sliding window", 12), ("sliding window, instant 429", 4)]
)
def test_slow_start_keeps_within_reach_of_what_a_window_accepted(shape: str, refused: int) -> None:
    # A window refuses only once its count over the last second is over: a ramp doubling
    # every few round trips was far above the limit by then (~2.5x), with a round trip of
    # requests in flight to be refused. While the pace holds the senders back, slow start
    # stays within SLOW_START_LEAD of what the last second accepted: a smaller overshoot,
    # fewer 429s ending it (19 and 6 without).
    run = run_zoo(ZOO[shape][0], until=2.5)
    assert run.cuts == 1
    assert max(pace for _, pace in run.trace) <= SLOW_START_LEAD * LIMIT
    assert run.refused <= refused


#: A server that keeps up with anything (it never refuses).
UNLIMITED = RateLimit(1e6)


@pytest.mark.parametrize("senders", [16, 256])
def test_a_server_next_door_that_keeps_up_is_not_held_to_the_lead(senders: int) -> None:
    # Round trips of 2 ms: slow start doubles at its fastest, fills any window before the
    # lead has a second of history, and 429s would come back at once; held to the lead,
    # a client gathering batches would wait on the pace for 0.7 s (16) to 2.4 s (256).
    run = run_zoo(UNLIMITED, requests=60 * senders, senders=senders, latency=0.002, clumps=True)
    assert run.refused == 0
    assert run.last_wait is not None
    assert run.last_wait <= 0.3


@pytest.mark.parametrize("senders", [16, 64])
def test_a_client_a_server_keeps_up_with_sends_its_clumps_at_once_after_start_up(
    senders: int,
) -> None:
    # 0.2 s round trips, senders in batches: at the start the pace holds them back (and
    # the lead holds the pace), but then the server answers every clump and the client
    # sends about half its pace: the lead no longer binds, and the pace grows until a whole
    # clump goes at once on the bank (after 3 s of 13 and 5 s of 15). Held to the lead
    # (1.85x the demand), every clump would wait on the pace for as long as the client runs
    # (until 18 s and 20 s here).
    run = run_zoo(UNLIMITED, requests=60 * senders, senders=senders, latency=0.2, clumps=True)
    assert run.last_wait is not None
    assert run.last_wait <= run.wall / 2  # then no sender waits for the pace


@pytest.mark.parametrize("shape", ["leaky bucket", "token bucket, burst 1"])
def test_slow_start_ended_by_a_rate_limiter_is_cut_to_its_rate_not_the_ramps(shape: str) -> None:
    # Such a server refuses only what is over its rate (half of a pace just above it): the
    # cut is re-read from the top of the ramp, not left at the ramp's average (~30/s).
    run = run_zoo(ZOO[shape][0], until=2.0)
    assert run.cuts == 1
    assert 0.85 * LIMIT <= run.pace_at(1.5) <= LIMIT


@pytest.mark.parametrize("shape", ["10 in flight", "10 in flight, instant 429"])
def test_slow_start_ended_by_a_cap_in_flight_is_re_read_however_soon_its_429s_come(
    shape: str,
) -> None:
    # A cap of 10 in flight at 0.2 s refuses only the request above it: the cut (to the
    # ramp's average, ~31/s, which keeps ~6 in flight) is re-read from the top of the ramp.
    # A 429 that comes back at once comes before any answer to the sends around it: those
    # re-read are then the round trip sent after the cut (none refused), not none at all
    # (the pace sat at ~31/s for a second and a half and climbed back for seconds more).
    run = run_zoo(ZOO[shape][0], until=2.0)
    assert run.cuts == 1
    assert run.pace_at(1.5) >= 0.9 * LIMIT


def test_a_rate_limiter_answering_429s_at_once_is_not_taken_for_a_cap_in_flight() -> None:
    # A leaky bucket answering its 429s at once: its limit is found at slow start's end, as
    # a cap's is, and it refuses a send that arrives early with about as many in flight as
    # the first cut's window (8-9 at ~47/s) or more. Not the window full, that is no cap's
    # refusal: taken for one, the window went back to the cut's 8 for 3.5 s (40/s) and the
    # batch took 1.15x the ideal, where 1.10x.
    limit = RateLimit(LIMIT, shape="leaky-bucket", instant_429=True)
    batches = [run_zoo(limit, seed=seed, latency_jitter=JITTER) for seed in SEEDS]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.12


def test_not_told_a_cap_above_the_zoo_answering_at_once_is_told_from_a_window_later() -> None:
    # 20 in flight at 0.2 s (100/s), its 429s at once: slow start's end, re-read over the
    # round trip after the cut, took every send at the cut's pace (about half the limit),
    # and nothing at the first refusal tells a cap from a sliding window the ramp filled.
    # The pace goes back to what the server took in full before it, the window pinned at
    # the cut's: a cap refuses none of that, and its later refusals (the window grown above
    # the cut's) are the window's, no cut. Held at the cut's pace for the hold-off and cut
    # again at the cap's next refusal, 1.56x the ideal.
    limit = RateLimit.concurrency(20, instant_429=True)
    batches = [run_zoo(limit, seed=seed, **LIVE) for seed in range(3)]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.3
    assert [run.cuts for run in batches] == [1, 1, 1]


@pytest.mark.parametrize(("rate", "at_most"), [(70.0, 1.175), (100.0, 1.3)])
def test_not_told_a_sliding_window_above_the_zoo_answering_at_once_refuses_the_trial(
    rate: float, at_most: float
) -> None:
    # The same reading at a sliding window (70/s and 100/s, 429s at once): the window
    # refuses the pace taken back (up to 1.4 times its count, after a ramp that went that
    # far before its first refusal), and that refusal (a cap refuses none while the window
    # stays at what it held) ends the reading: cut to BACKOFF of what the server took over
    # the second before (the window's count), not of what it took since the first cut.
    # (40 seeds: held at the cut's pace for the hold-off, 1.20x and 1.34x; cut from what it
    # took since the first cut, 1.19x and 1.29x; now 1.16x and 1.27x.)
    limit = RateLimit(rate, shape="sliding-window", instant_429=True)
    batches = [run_zoo(limit, seed=seed, **LIVE) for seed in range(3)]
    assert sum(run.ratio for run in batches) / len(batches) <= at_most
    assert all(run.refused_share <= 0.1 for run in batches)


@pytest.mark.parametrize(
    ("shape", "at_most"), [("fixed window", 1.12), ("50 -> 20 -> 50 per second", 1.16)]
)
def test_not_told_a_cut_for_a_429_at_once_is_judged_a_round_trip_later(
    shape: str, at_most: float
) -> None:
    # A 429 that comes back at once cuts as the server starts refusing, a round trip before
    # one after the latency would. A fixed window the pace filled refuses everything until
    # its boundary: judged 0.2 s after such a cut, the cut was "not enough" and the pace was
    # halved, after slow start and after every probe (1.47x the ideal on these seeds, where
    # 1.07x with its 429s after the latency; the limit that drops and comes back, 1.17x).
    limit = attrs.evolve(ZOO[shape][0], instant_429=True)
    batches = [run_zoo(limit, seed=seed, **LIVE) for seed in range(10)]
    assert sum(run.ratio for run in batches) / len(batches) <= at_most
    assert all(run.refused_share <= 0.1 for run in batches)


@pytest.mark.parametrize("shape", ["fixed window", "token bucket, burst 2x rate"])
def test_slow_start_ended_by_a_full_window_or_an_empty_burst_is_not_re_read_upwards(
    shape: str,
) -> None:
    # These refuse nearly all for a while (or let a far faster ramp through): the cut
    # stays where what the server accepted set it, for the hold-off, or (a burst spent:
    # see below) comes down.
    run = run_zoo(ZOO[shape][0], until=3.0)
    cut_at, cut_rate = next(
        (at, pace) for (_, before), (at, pace) in itertools.pairwise(run.trace) if pace < before
    )
    assert run.pace_at(cut_at + 0.5) <= cut_rate
    if "token bucket" not in shape:
        assert run.pace_at(cut_at + 0.5) == cut_rate


@pytest.mark.parametrize("shape", ["sliding window", "50 -> 20 -> 50 per second"])
def test_not_told_a_sliding_window_filled_by_slow_start_is_cut_from_its_count(shape: str) -> None:
    # A sliding window the ramp filled refuses most of the sends after the first refused
    # one, and takes of them what it took of the sends a second before (its count rolls).
    # The cut, from what it took over the whole ramp (its slow first second included), sat
    # at 40-41/s for a second; re-read, it comes up to 95 % of the window's count (what it
    # took over the second before the first refusal), and stays under it.
    for seed in range(6):
        run = run_zoo(ZOO[shape][0], seed=seed, until=3.0, **LIVE)
        cut_at = next(
            at for (_, before), (at, pace) in itertools.pairwise(run.trace) if pace < before
        )
        assert 0.9 * LIMIT <= run.pace_at(cut_at + 0.5) <= LIMIT


def test_not_told_a_window_s_count_at_100_per_second_takes_in_the_refused_send_s_bucket() -> None:
    # The window's count is what it took over the second up to the first refused send, and
    # the sends of that send's bucket before it are part of what filled the window. Read
    # over the whole buckets before that one, the count missed the ramp's last and fastest
    # stretch (about 92/s of a 100/s window, where it is now about 96/s): the pace 0.5 s
    # after the cut averaged 88/s over these seeds, where it is now over 90/s.
    limit = at_rate(ZOO["sliding window"][0], 100.0)
    paces = []
    for seed in range(10):
        run = run_zoo(limit, seed=seed, until=4.0, **LIVE)
        cut_at = next(
            at for (_, before), (at, pace) in itertools.pairwise(run.trace) if pace < before
        )
        paces.append(run.pace_at(cut_at + 0.5))
    assert 90.0 <= sum(paces) / len(paces) <= 100.0
    assert max(paces) <= 100.0


def test_not_told_a_window_s_count_read_at_slow_start_s_end_is_held_as_if_told() -> None:
    # A sliding window the ramp filled, re-read: its count is the limit found, and the pace
    # holds 98 % of it (probing above it only PROBE_AFTER seconds after the hold-off), not
    # 95 % of it with the recovery's cubic beyond: at 100/s that cubic was refused about
    # 5.2 s in, and the retries of its 429s (a whole second's Retry-After) came back after
    # the batch's other answers (40 seeds: 1.384x the ideal, 0.62 s of it that wait; now
    # 1.263x, none).
    limit = at_rate(ZOO["sliding window"][0], 100.0)
    runs = [run_zoo(limit, seed=seed, **LIVE) for seed in range(10)]
    assert all(not [at for at in run.refused_at if at >= 3.0] for run in runs)
    assert sum(run.ratio for run in runs) / len(runs) <= 1.3


def test_not_told_a_window_that_refused_about_half_of_slow_start_s_end_is_a_window() -> None:
    # A sliding window at 100/s the ramp filled refused 17 of the 31 sends from the first
    # refused one to the cut on seeds 21 and 31 (under the 55 % that reads a window): read
    # as a server that refuses only over its rate, its limit was found at what it took of
    # them, about 70/s, and the pace held there (1.565x the ideal). What it took of them was
    # what it took of the sends a second before, as a window takes: its count is found. A
    # token bucket of burst 1 refusing half of them took 1.4 times as much as a second
    # before (its ramp then well under its rate), and is still found by its rate; answered
    # after 0.3 s at 50/s, one took about as much as a second before, but the pace it took
    # in full just before its first refusal (found by its rate) is above its count over
    # that second (as a window's, read too low: 1.27x -> 1.32x the ideal over 20 seeds).
    window = at_rate(ZOO["sliding window"][0], 100.0)
    for seed in (21, 31):
        policy = AimdPolicy(None)
        run_zoo(window, seed=seed, policy=policy, until=3.0, **LIVE)
        assert not policy.state.found_by_rate
        assert 90.0 <= policy.state.found <= 100.0
    bucket = at_rate(ZOO["token bucket, burst 1"][0], 70.0)
    policy = AimdPolicy(None)
    run_zoo(bucket, seed=8, policy=policy, until=3.0, **LIVE)
    assert policy.state.found_by_rate
    for seed in (2, 6, 14, 15, 17):
        policy = AimdPolicy(None)
        run_zoo(RateLimit(LIMIT, burst=1), seed=seed, policy=policy, latency=0.3, until=3.0, **LIVE)
        assert policy.state.found_by_rate


def test_not_told_a_window_s_count_read_at_slow_start_s_end_is_climbed_back_to() -> None:
    # The live benchmark's changing limit (50/s, 20/s from 3 s, 50/s again from 8 s): what
    # the server took over the second before the drop is what the climb after it aims at
    # quickly. Cut from the ramp's average, that was 41-43/s (40 seeds, 0-39 and 40-79:
    # 1.157x and 1.155x the ideal); cut from the window's count, 46-48/s (1.134x, 1.137x).
    runs = [run_zoo(DROPPED, seed=seed, **LIVE) for seed in range(40)]
    assert sum(run.ratio for run in runs) / len(runs) <= 1.145


def test_not_told_a_token_bucket_s_burst_spent_by_slow_start_is_read_from_the_answers() -> None:
    # A bucket of burst twice its rate lets slow start's ramp through at about twice the
    # rate, and the cut (from what it accepted over the ramp) is refused in half: judged
    # from the sends after it, the pace stayed there for 0.4 s. The answers to the sends
    # from the first refused one to the cut already show it: most refused, not all, and
    # what the server took of them half what it took a second before (a window takes as
    # much as then, or nothing). Down to what it takes a round trip sooner: 44.0 429s of
    # 500 on these seeds before, 35.8 now (the first round trip's, 20-30, are sent).
    runs = [run_zoo(ZOO["token bucket, burst 2x rate"][0], seed=seed, **LIVE) for seed in range(8)]
    assert sum(run.refused for run in runs) / len(runs) <= 39
    assert sum(run.ratio for run in runs) / len(runs) <= 0.87
    for run in runs:
        cut_at = next(
            at for (_, before), (at, pace) in itertools.pairwise(run.trace) if pace < before
        )
        assert run.pace_at(cut_at + 0.3) <= 1.1 * LIMIT


@pytest.mark.parametrize(
    ("limit", "latency"),
    [
        (RateLimit(30, shape="sliding-window"), 0.2),
        (RateLimit(100, shape="sliding-window"), 0.2),
        (RateLimit(LIMIT, shape="sliding-window"), 0.1),
        (RateLimit(LIMIT, shape="sliding-window"), 0.35),
        (RateLimit(LIMIT, shape="fixed-window"), 0.1),
        (RateLimit(30, shape="fixed-window"), 0.35),
    ],
    ids=[
        "sliding 30/s",
        "sliding 100/s",
        "sliding 0.1 s",
        "sliding 0.35 s",
        "fixed 0.1 s",
        "fixed 30/s",
    ],
)
def test_not_told_a_window_filled_by_slow_start_is_not_read_as_a_spent_burst(
    limit: RateLimit, latency: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows of other rates and round trips refuse most of the sends at slow start's end
    # too, and some take far less of them than the cut (a sliding window at 30/s a third
    # of it): taken for a spent burst, the pace came down to that (1.07x -> 1.14x). A window
    # takes as much as it took a second before, or nothing: the runs are as without the
    # rule.
    with_rule = [run_zoo(limit, seed=seed, latency=latency, **LIVE) for seed in range(4)]
    monkeypatch.setattr(_aimd, "_BURST_SPENT", 0.0)
    without = [run_zoo(limit, seed=seed, latency=latency, **LIVE) for seed in range(4)]
    assert [run.trace for run in with_rule] == [run.trace for run in without]
    # (And the rule is what moves the deep bucket: this comparison can tell.)
    bucket = ZOO["token bucket, burst 2x rate"][0]
    assert run_zoo(bucket, **LIVE).trace != with_rule[0].trace


def test_slow_start_s_end_is_re_read_from_the_answers_not_from_whole_buckets() -> None:
    # The share of the sends from the first refused one to the cut that the server refused
    # is counted from their answers. Over whole 50 ms buckets of send time it was off by up
    # to a tenth either way: a sliding window at 100/s (which refuses 0.56-0.59 of them)
    # was read as a server refusing only over its rate on 5 seeds of these 8 (a "limit" of
    # 142-146/s held as found), and a token bucket of burst 1 at 30/s was found on 5. (Read
    # as a sliding window the ramp filled, its count is found: at most its limit.)
    window = RateLimit(2 * LIMIT, shape="sliding-window")
    bucket = RateLimit(30, burst=1)
    found_window, found_bucket = [], []
    for seed in range(8):
        policy = AimdPolicy(None)
        run_zoo(window, seed=seed, policy=policy, until=3.0, **LIVE)
        assert not policy.state.found_by_rate
        found_window.append(policy.state.found)
        policy = AimdPolicy(None)
        run_zoo(bucket, seed=seed, policy=policy, until=3.0, **LIVE)
        found_bucket.append(policy.state.found)
    assert all(found <= 2 * LIMIT for found in found_window)
    assert sum(found <= 30 for found in found_bucket) >= 6


@pytest.mark.parametrize(("shape", "at_most"), [("sliding window", 1.1), ("fixed window", 1.45)])
def test_after_slow_start_the_recovery_aims_no_higher_than_the_last_second_accepted(
    shape: str, at_most: float
) -> None:
    # The ramp filled a window far above its rate; the recovery heads for what the server
    # accepted over the last second (a fixed window let up to two windows' worth through),
    # not for the geometric mean with the ramp's pace, which brought a second cluster.
    run = run_zoo(ZOO[shape][0], latency_jitter=JITTER)
    cut_at = next(at for (_, before), (at, pace) in itertools.pairwise(run.trace) if pace < before)
    assert max(pace for at, pace in run.trace if cut_at <= at <= cut_at + 2.5) <= at_most * LIMIT


def test_a_limit_that_drops_and_rises_is_followed_within_five_seconds(
    runs: dict[str, ZooRun],
) -> None:
    run = runs["50 -> 20 -> 50 per second"]
    # Down to 20/s at 4 s: the server keeps accepting 20/s from 6 s, and refuses little
    # (probes back up to the 50/s it took before cost a few 429s each: 5 to 8 in all).
    assert run.accepted_rate(6.0, 10.0) >= 0.9 * 20.0
    assert sum(1 for t in run.refused_at if 6.0 <= t < 10.0) <= 10
    # Up to 50/s at 10 s: what the server accepts is back within 10 % of it by 12 s (it
    # took until 14 s, one seed in three until 15 s, before the quick probes).
    assert run.accepted_rate(12.0, 13.0) >= 0.9 * LIMIT


@pytest.mark.parametrize("seed", [2, 22, 23, 24])
def test_not_told_a_limit_that_drops_a_little_is_back_within_five_seconds_when_it_returns(
    seed: int,
) -> None:
    # 50/s, 30/s from 3.5 s, 50/s again from 10 s. A correction in the low phase that aimed
    # at what the server took over the two seconds before it (the second before the drop
    # among them) spent the quick probes back up in the low phase, refused at 34-35/s; the
    # limit came back and was found at 31/s, probed above only along the slow curve: on
    # these seeds, not back within 10 % of 50/s before the batch's end.
    run = run_zoo(
        RateLimit(LIMIT, shape="sliding-window", schedule=[(3.5, 30), (10, LIMIT)]),
        seed=seed,
        **LIVE,
    )
    back = [t / 20 for t in range(200, 300) if run.accepted_rate(t / 20, t / 20 + 1.0) >= 45.0]
    assert back, "never back within 10 % of the limit"
    assert back[0] <= 15.0


@pytest.mark.parametrize("shape", [name for name in ZOO if "->" not in name])
def test_told_the_true_limit_it_holds_it_without_a_429(shape: str) -> None:
    limit, _, _ = ZOO[shape]
    run = run_zoo(limit, configured=LIMIT)
    if "in flight" in shape:
        # 50/s at 0.2 s is exactly 10 in flight: told the rate, it never needs an 11th.
        assert run.max_in_flight <= 10
    assert run.refused == 0
    # Paced 1.5 % under the limit; the last answer comes 0.2 s after the last send.
    assert run.ratio <= 1.04


@pytest.mark.parametrize("shape", ["10 in flight", "10 in flight, instant 429"])
def test_told_the_true_limit_a_cap_in_flight_refuses_the_window_not_the_pace(shape: str) -> None:
    # On the live machine a cap of 10 in flight refuses now and then at the told pace (its
    # round trip is a little over 0.2 s). Once a cut set the window, a refusal of a send
    # above it, the window full, is the window's: the pace stays at the told rate, late
    # sends are caught up (1.073x and 1.074x over these seeds when such refusals taught
    # headroom and no catch-up; now 1.046x and 1.044x).
    limit, _, _ = ZOO[shape]
    batches = [run_zoo(limit, configured=LIMIT, seed=seed, **LIVE) for seed in range(8)]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.055
    assert all(run.refused <= 5 for run in batches)


@pytest.mark.parametrize("shape", ["10 in flight", "10 in flight, instant 429"])
def test_told_the_true_limit_a_cap_in_flight_s_window_paces_the_sends(shape: str) -> None:
    # 10 in flight answering in 0.2-0.21 s carry 48.8/s, a little under the told pace
    # (49.25/s): once the cap refused a request above the window, a place it frees goes
    # without waiting for the pace's next slot (half a spacing after the last send). Held
    # to that slot (answers come back unevenly), the server took 48.4/s over 2-8 s, 1.028x
    # and 1.027x the ideal over these seeds; now 48.6/s, 1.023x and 1.020x, with no more
    # 429s.
    limit, _, _ = ZOO[shape]
    batches = [run_zoo(limit, configured=LIMIT, seed=seed, **LIVE) for seed in range(8)]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.025
    assert sum(run.accepted_rate(2.0, 8.0) for run in batches) / len(batches) >= 48.55
    assert all(run.refused <= 2 for run in batches)


def test_told_the_true_limit_a_cap_in_flight_s_first_429_leaves_late_sends_caught_up() -> None:
    # Live, the server holds each request for its 0.2 s (the answers' jitter is the client's
    # own), the first answer comes 25 ms late (it opens the connection), and a cap of 10 in
    # flight refuses the 11th request sent, before any answer. Taken for a send that caught
    # up at a server that allows no burst, that first 429 stopped late sends being caught
    # up: the pace lost 5 % to late timers, and the cap never refused again to take the
    # mark back (1.08x the ideal over these seeds, as live). It went with more in flight
    # than the pace needs: a cap's, no mark (1.04x).
    machine = {**LIVE, "latency_jitter": 0.003, "first_latency": 0.025}
    batches = [
        run_zoo(RateLimit.concurrency(10), configured=LIMIT, seed=seed, **machine)
        for seed in range(8)
    ]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.05
    assert all(run.refused <= 5 for run in batches)


def test_the_zoo_s_clock_starts_anywhere_in_a_send_time_bucket_as_a_live_one_does() -> None:
    # With start_phase, the batch starts at a seeded point of the policy's first bucket (a
    # live clock is anywhere in one), each seed its own; without, at zero.
    starts = []
    for seed in range(4):
        policy = AimdPolicy(LIMIT)
        run = run_zoo(ZOO["10 in flight"][0], policy=policy, seed=seed, start_phase=_aimd.BUCKET)
        starts.append(policy.state.first_sent)
        assert run.trace[0][0] == policy.state.first_sent
    assert all(0.0 < start < _aimd.BUCKET for start in starts)
    assert len(set(starts)) == len(starts)
    policy = AimdPolicy(LIMIT)
    run_zoo(ZOO["10 in flight"][0], policy=policy, seed=0)
    assert policy.state.first_sent == 0.0


def test_the_zoo_s_first_connections_answer_late() -> None:
    # With connections, the first that many requests each open a connection: their answers
    # come first_latency late; the rest after the latency alone.
    round_trips: dict[float, float] = {}

    class Recording(AimdPolicy):
        def on_success(self, sent_at: float, now: float) -> None:
            round_trips[sent_at] = now - sent_at
            super().on_success(sent_at, now)

    run_zoo(
        RateLimit(LIMIT, burst=100),
        policy=Recording(LIMIT),
        requests=20,
        first_latency=0.1,
        connections=3,
    )
    ordered = [round_trips[sent] for sent in sorted(round_trips)]
    assert ordered[:3] == pytest.approx([0.3] * 3)
    assert ordered[3:] == pytest.approx([0.2] * 17)


@pytest.mark.parametrize("shape", ["10 in flight", "10 in flight, instant 429"])
def test_told_the_true_limit_a_cap_in_flight_costs_one_429_wherever_the_clock_starts(
    shape: str,
) -> None:
    # Live, the clock starts anywhere in a send-time bucket, and a cap of 10 in flight that
    # answers at once refuses the 11th send before any answer: no round trip to weigh the
    # count against, so the pace was cut to 0.95 of what the first buckets took (38-43/s
    # live, 1.07x the ideal over these seeds) and climbed back over seconds. At the first
    # answer the window it held is a round trip of the pace: a cap's, and the pace is back.
    # Nor is such a cap probed above every few seconds (5 429s at most over these seeds,
    # each a retry's wait) while it keeps nearly what the pace needs in flight.
    limit, _, _ = ZOO[shape]
    batches = [
        run_zoo(limit, configured=LIMIT, seed=seed, start_phase=_aimd.BUCKET, **LIVE)
        for seed in range(8)
    ]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.035
    assert all(run.refused <= 2 for run in batches)


@pytest.mark.parametrize(
    "limit",
    [
        RateLimit(LIMIT, shape="leaky-bucket", instant_429=True),
        RateLimit(LIMIT, burst=1, instant_429=True),
    ],
    ids=["leaky bucket", "token bucket, burst 1"],
)
def test_told_the_true_limit_a_server_allowing_no_burst_that_refuses_at_once_keeps_the_pace(
    limit: RateLimit,
) -> None:
    # A server that allows no burst refuses a send that arrives a little early, and here
    # answers its 429 at once: often the second or third send, before any answer came back.
    # That cut's window held the one or two in flight and none for a round trip not known
    # yet, and every refusal at the ceiling after it was taken for the window's: a window of
    # one or two, 5-10/s where 50/s was told (5.5x the ideal over these seeds).
    # At the first answer the window is raised to what the pace needs at the round trip
    # (1.18x, as when the 429s come after the latency).
    batches = [run_zoo(limit, configured=LIMIT, seed=seed, **LIVE) for seed in range(10)]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.22
    assert all(run.ratio <= 1.3 for run in batches)


#: A busy machine: timers fire half a millisecond late on average (now and then much
#: more), and a request reaches the server up to a millisecond after it left.
BUSY = {"wake_jitter": 0.0005, "send_jitter": 0.001}


@pytest.mark.parametrize(
    "shape", [name for name in ZOO if "->" not in name and "in flight" not in name]
)
def test_told_the_true_limit_on_a_busy_machine_late_timers_do_not_slow_it_down(
    shape: str,
) -> None:
    # A send that left late is followed on schedule (as close as CATCH_UP of a spacing), so
    # late timers do not add up: the batch keeps the configured pace. A server that allows
    # no burst refuses a send that caught up; after that the policy keeps its distance.
    limit, _, _ = ZOO[shape]
    batches = [run_zoo(limit, configured=LIMIT, seed=seed, **BUSY) for seed in SEEDS]
    mean_ratio = sum(run.ratio for run in batches) / len(batches)
    if "burst 1" in shape or "leaky" in shape:
        assert mean_ratio <= 1.12
        assert all(run.refused_share <= 0.03 for run in batches)
    else:
        # 1.5 % under the limit, and the last answer 0.2 s after the last send: 1.035x.
        assert mean_ratio <= 1.04
        assert all(run.refused == 0 for run in batches)


#: A busier machine still: timers 2 ms late on average, arrivals up to 2 ms late, answers
#: after 0.2 to 0.25 s.
BUSIER = {"wake_jitter": 0.002, "send_jitter": 0.002, "latency_jitter": 0.05}


@pytest.mark.parametrize(
    "shape",
    ["token bucket, burst = rate", "token bucket, burst 2x rate", "sliding window", "fixed window"],
)
def test_told_the_true_limit_a_late_timer_is_caught_up_not_lost(shape: str) -> None:
    # Told the limit, the schedule is under it: a send up to MAX_CATCH_UP_TOLD (15 ms) late is
    # followed on schedule rather than restarting it (at 5 ms, 8 % of such wake-ups lost
    # their lateness: 1.06x). 1.5 % under the limit, the last answer 0.2-0.25 s after the last
    # send: 1.04x.
    limit, _, _ = ZOO[shape]
    batches = [run_zoo(limit, configured=LIMIT, seed=seed, **BUSIER) for seed in SEEDS]
    assert all(run.refused == 0 for run in batches)
    assert sum(run.ratio for run in batches) / len(batches) <= 1.045


@pytest.mark.parametrize("shape", ["token bucket, burst = rate", "sliding window", "fixed window"])
def test_booking_slots_ahead_as_the_redis_store_does_it_holds_the_told_limit(shape: str) -> None:
    # 16 senders (4 processes x 4) each book their own slot 0.1 s ahead and wake late to
    # it, against a server that answers in 5 ms: the shared pace holds without a 429.
    limit, _, _ = ZOO[shape]
    run = run_zoo(limit, configured=LIMIT, senders=16, latency=0.005, booking=0.1, seed=1, **BUSY)
    assert run.refused == 0
    assert run.ratio <= 1.02


def test_told_too_much_it_comes_down_to_the_limit() -> None:
    run = run_zoo(RateLimit(LIMIT, shape="sliding-window"), configured=1.5 * LIMIT)
    assert run.ratio <= 1.15
    # (Two clusters: the window's count taken in 0.7 s, then the first second rolling off.)
    assert run.refused_share <= 0.1
    # Probing above it now and then, but on average within 10 % of it.
    settled = [run.pace_at(t / 10) for t in range(60, 100)]
    assert sum(settled) / len(settled) <= 1.1 * LIMIT


def test_the_zoo_sends_as_client_map_does_a_request_waiting_to_retry_holds_no_slot() -> None:
    # client.map keeps twice max_concurrency items going, and a request waiting to retry
    # after a 429 holds no attempt slot: others go meanwhile. A zoo whose 32 senders slept
    # through their retries sent fewer requests into a refusing server than the live
    # benchmark does (against a deep bucket: 37 429s where the live run had 68).
    limit = RateLimit(LIMIT, burst=100)
    as_map = run_zoo(limit, latency_jitter=JITTER)
    sleeping = run_zoo(limit, latency_jitter=JITTER, items=32)
    assert as_map.max_in_flight <= 32  # still 32 attempts at most
    assert as_map.refused > sleeping.refused


#: The live benchmark's changing limit: 50/s, 20/s from 3 s, 50/s again from 8 s.
DROPPED = RateLimit(LIMIT, shape="sliding-window", schedule=[(3, 20), (8, LIMIT)])


@pytest.mark.parametrize("seed", SEEDS)
def test_told_the_limit_a_limit_that_drops_under_it_is_yielded_to_at_once(seed: int) -> None:
    # The first 429 comes at the told limit after seconds of it accepted: it looks like a
    # send that jitter brought too close, and only lowers the ceiling a little. It is judged
    # at once: the next sends refused too make it a cut, measured on what the server
    # accepted of them (none: down to half), not on the seconds before the drop.
    run = run_zoo(DROPPED, configured=LIMIT, seed=seed, latency_jitter=JITTER)
    down = next(t / 100 for t in range(300, 2000) if run.pace_at(t / 100) <= 25.0)
    assert down <= 3.6  # a round trip of refusals, then down (it used to take 1.3 s)
    assert sum(1 for t in run.refused_at if 3.0 <= t < 5.0) <= 35  # it used to be 48


@pytest.mark.parametrize("seed", SEEDS)
def test_told_the_limit_a_limit_that_comes_back_is_probed_back_up_quickly(seed: int) -> None:
    # The server took the told limit for seconds before it dropped: once it is found, the
    # pace probes back up to the told limit within QUICK_PROBE seconds of the refused pace
    # (a slow cubic took it 2 s longer), and it is back a second after the limit is.
    run = run_zoo(DROPPED, configured=LIMIT, seed=seed, latency_jitter=JITTER)
    assert run.accepted_rate(9.0, 10.0) >= 0.9 * LIMIT
    assert run.ratio <= 1.1


@pytest.mark.parametrize(
    "limit",
    [
        RateLimit(LIMIT, shape="sliding-window", schedule=[(4, 20), (10, LIMIT)], instant_429=True),
        RateLimit(LIMIT, shape="sliding-window", schedule=[(3, 20), (8, LIMIT)], instant_429=True),
    ],
    ids=["20/s from 4 s to 10 s", "20/s from 3 s to 8 s"],
)
def test_told_a_limit_that_drops_and_refuses_at_once_keeps_its_quick_probes(
    limit: RateLimit,
) -> None:
    # A 429 that comes back at once starts its cut's hold-off a round trip after its send,
    # where one after the latency would have: started at the send, the pace grew again
    # while the dropped limit still refused, and those refusals spent every quick probe
    # before the limit came back (1.22x and 1.17x the ideal over these seeds, where the
    # 429s after the latency take 1.09x and 1.08x; now 1.12x and 1.11x).
    batches = [run_zoo(limit, configured=LIMIT, seed=seed, **LIVE) for seed in range(8)]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.15


def test_told_a_probe_refused_just_before_a_dropped_limit_returns_holds_off_briefly() -> None:
    # In the low phase the pace probes back up to what the server took before the drop, and
    # each refused probe is a cut. When one was sent just before the limit came back, its
    # cut held off for a second, and the climb began 1.4 s after the limit was back: half
    # the runs took 1.145x, the others 1.07x. A cut on that climb (the pace under what the
    # server took before, quick probes left) is one probe's refusal, not a window's
    # cluster: it holds off half a second, and every run is back within 1.2 s.
    runs = [run_zoo(DROPPED, configured=LIMIT, seed=seed, **LIVE) for seed in range(8)]
    for run in runs:
        back = next(t / 100 for t in range(800, 2000) if run.pace_at(t / 100) >= 0.9 * LIMIT)
        assert back <= 9.2
        assert run.ratio <= 1.095


def test_told_a_dropped_limit_that_comes_back_is_taken_back_up_to_at_once() -> None:
    # Once the limit is back, the quick curve climbed from the last probe's pace to what
    # the server took before the drop one answer at a time, and the window of requests in
    # flight one per window of answers: 45/s was reached 0.85-1.11 s after the limit came
    # back (mean 0.98 s). Once the server takes more over a second than the dropped limit
    # allows, the pace and the window go straight back: 0.63-0.87 s (mean 0.73 s). (The
    # pace alone, the window climbing: 42-46/s taken from 8.75 s to 9.25 s, now 46-50/s.)
    backs = []
    for seed in range(8):
        run = run_zoo(DROPPED, configured=LIMIT, seed=seed, **LIVE)
        backs.append(
            next(t / 100 for t in range(800, 2000) if run.pace_at(t / 100) >= 0.9 * LIMIT) - 8.0
        )
        assert run.accepted_rate(8.75, 9.25) >= 0.9 * LIMIT
    assert max(backs) <= 0.95
    assert sum(backs) / len(backs) <= 0.85


def test_told_a_dropped_limit_is_known_back_by_its_count_and_probed_often_enough() -> None:
    # A sliding window takes at most its count over any second, and the last refused probe
    # found it full. Read over the one second of whole buckets before that probe's bucket,
    # the count came out one under now and then, so one more was asked for: with the limit
    # back at 10 s (20/s from 4 s), the pace was back at 45/s 0.90-1.04 s after it (mean
    # 1.01 s over these seeds; 1.14 s when a tenth more was asked for). Read as the most
    # over the seconds of whole buckets around that probe, the count needs no margin:
    # 0.79-1.00 s (mean 0.91 s). Then the probe of the lower limit refused just before it
    # comes back held the pace under it for its hold-off, and the climb after that is where
    # the return is seen: climbing back to what the server took before the drop within 0.6 s
    # of the refused pace (not 0.7 s), 0.74 s.
    limit = ZOO["50 -> 20 -> 50 per second"][0]
    backs = []
    for seed in range(8):
        run = run_zoo(limit, configured=LIMIT, seed=seed, **LIVE)
        backs.append(
            next(t / 100 for t in range(1000, 2000) if run.pace_at(t / 100) >= 0.9 * LIMIT) - 10.0
        )
    assert sum(backs) / len(backs) <= 0.8


def test_told_a_limit_that_drops_and_comes_back_is_followed_within_reach_of_its_floor() -> None:
    # The live benchmark's changing limit, told 50/s, against the floor of a client that
    # reacts (ReactingOracle: told the schedule, it paces at each phase's limit from the
    # first answer to a request sent after the change, a round trip late): that floor is
    # above the 1.05x the issue asked for (1.0552x over these seeds, 1.0552x and 1.0553x
    # over 40 seeds 0-39 and 40-79), and the policy within 0.012x of it (1.0639x: 0.0087x
    # above; with the quick probes spent as they came and climbing in 0.7 s, 1.0685x; with
    # the dropped limit's count read over the one second before the last refused probe,
    # 1.0677x; with a second's hold-off on the climb back, 1.1246x).
    seeds = range(8)
    floor = [
        run_zoo(DROPPED, configured=LIMIT, seed=seed, policy=ReactingOracle(DROPPED), **LIVE)
        for seed in seeds
    ]
    told = [run_zoo(DROPPED, configured=LIMIT, seed=seed, **LIVE) for seed in seeds]
    floor_ratio = sum(run.ratio for run in floor) / len(floor)
    told_ratio = sum(run.ratio for run in told) / len(told)
    assert floor_ratio > 1.05
    assert told_ratio - floor_ratio < 0.012


@pytest.mark.parametrize("drop", [2.0, 2.5])
def test_told_a_limit_low_for_six_seconds_is_still_probed_quickly_when_it_comes_back(
    drop: float,
) -> None:
    # The faster climb refuses more probes in a low phase, and three quick probes spent as
    # they came were gone before a limit low from 2-2.5 s to 8 s came back: 45/s 3.2-3.6 s
    # after it (mean over these seeds; 4.2-4.6 s at worst). Spent one a 1.5 s at most, they
    # last: within 1.3 s every time.
    limit = RateLimit(LIMIT, shape="sliding-window", schedule=[(drop, 15), (8, LIMIT)])
    for seed in range(8):
        run = run_zoo(limit, configured=LIMIT, seed=seed, **LIVE)
        back = next(t / 100 for t in range(800, 3000) if run.pace_at(t / 100) >= 0.9 * LIMIT)
        assert back - 8.0 <= 1.3


class _JumpsBack(AimdPolicy):
    """A policy that counts the times a dropped limit was taken to be back."""

    jumps = 0

    def _dropped_limit_back(self, sent_at: float, ceiling: float) -> None:
        rate = self.state.rate
        super()._dropped_limit_back(sent_at, ceiling)
        self.jumps += self.state.rate != rate


@pytest.mark.parametrize("low", [20, 30])
def test_told_a_sliding_window_lowered_for_good_is_not_taken_to_be_back(low: int) -> None:
    # Read over the one second before the last refused probe's bucket alone, with no margin,
    # the count of a window lowered for good came out one under it now and then, and the
    # pace jumped back to the told limit, refused in a burst (in 6 and 5 of these runs);
    # read as the most over the seconds around that probe, in none.
    limit = RateLimit(LIMIT, shape="sliding-window", schedule=[(3, low)])
    for seed in range(8):
        policy = _JumpsBack(LIMIT)
        run_zoo(limit, configured=LIMIT, requests=400, seed=seed, policy=policy, **LIVE)
        assert policy.jumps == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_told_the_limit_once_a_dropped_limit_is_back_late_sends_are_caught_up_again(
    seed: int,
) -> None:
    # The drop's first 429 (at the ceiling, after seconds accepted) and those of the pace
    # probing the lower limit are marginal refusals: each may be a send that caught up
    # after a late one at a server that allows no burst, and once marked, no late send is
    # caught up again. Back at 50/s on the live machine, late timers then cost the pace 5 %
    # (46-47/s taken). The correction that follows the drop's first 429 takes its mark back,
    # and a refusal well under the told ceiling makes none: the limit is what refused it.
    policy = AimdPolicy(LIMIT)
    run = run_zoo(
        ZOO["50 -> 20 -> 50 per second"][0], configured=LIMIT, seed=seed, policy=policy, **LIVE
    )
    assert policy.state.burstless == math.inf
    assert run.accepted_rate(12.0, 14.0) >= 48.0


@pytest.mark.parametrize("seed", SEEDS)
def test_told_once_a_dropped_limit_is_back_the_drops_lesson_in_headroom_is_taken_back(
    seed: int,
) -> None:
    # The drop's first 429 comes at the ceiling, the server having taken every send before
    # it, and teaches a lesson in headroom (2 %) before the cut proves not enough. The
    # limit back, the pace went to 98 % of the told one and gave that back one accepted
    # request at a time (48.6/s a second later); the server took 49/s before the drop.
    policy = AimdPolicy(LIMIT)
    run = run_zoo(
        TABLE_ROWS["50 -> 20 -> 50, at 3 s and 8 s"],
        configured=LIMIT,
        seed=seed,
        policy=policy,
        **LIVE,
    )
    assert run.pace_at(9.2) >= 0.995 * policy.ceiling


@pytest.mark.parametrize("seed", SEEDS)
def test_told_once_a_dropped_limit_is_back_its_windows_are_forgotten(seed: int) -> None:
    # Each cut in the low phase set the window of requests in flight a cut keeps (4-6 at
    # 20/s), and a refusal at the ceiling with more in flight than that, the window full,
    # is a cap's: once the limit was back at 50/s, a send refused at the ceiling (a late
    # one caught up) sent the window back to 5, and the pace was held to half the limit
    # for the rest of the batch (on the live benchmark's machine as measured, 1.10x the
    # ideal -> 1.33x on one seed of 40, once the pace went back to the told limit).
    policy = AimdPolicy(LIMIT)
    run_zoo(
        TABLE_ROWS["50 -> 20 -> 50, at 3 s and 8 s"],
        configured=LIMIT,
        seed=seed,
        policy=policy,
        start_phase=_aimd.BUCKET,
        **LIVE_MEASURED,
    )
    assert policy.state.window_cut >= policy.ceiling * policy.state.rtt


def test_not_told_once_a_dropped_limit_is_back_late_sends_are_caught_up_again() -> None:
    # Not told, the probes of the lower limit (20/s from 3 s) are refused at 30-45/s, and
    # each marginal refusal marks a server that allows no burst: no late send caught up.
    # Back at 50/s from 8 s, the pace climbs back to what the server took before the drop
    # (about 47/s) and holds it until it probes further; the server takes every send, more
    # than a fifth above the mark, and the mark goes. Kept, late timers on the live machine
    # cost that second 3 % (the server took 46.2/s on average over these seeds, now 47.5).
    limit = TABLE_ROWS["50 -> 20 -> 50, at 3 s and 8 s"]
    taken = [run_zoo(limit, seed=seed, **LIVE).accepted_rate(9.5, 11.0) for seed in range(10)]
    assert sum(taken) / len(taken) >= 47.0


def test_told_the_limit_a_lower_limit_for_good_is_not_probed_quickly_for_ever() -> None:
    # Quick probes back up to the told limit are QUICK_PROBES in a row at most: a fixed
    # window whose limit dropped for good would refuse a burst of each one.
    limit = RateLimit(LIMIT, shape="fixed-window", schedule=[(3, 30)])
    run = run_zoo(limit, configured=LIMIT, requests=1000, seed=0, latency_jitter=JITTER)
    assert run.refused_share <= 0.08
    assert run.accepted_rate(10.0, 30.0) >= 0.9 * 30


def test_not_told_a_lower_limit_for_good_is_not_probed_quickly_for_ever() -> None:
    # Not told, the same: what the server took before the drop is probed back up to
    # QUICK_PROBES times in a row at most, each refused in a burst by a fixed window (40
    # seeds, 0-39 and 40-79: with four, 11.9 % and 11.8 % of the requests were refused; with
    # three, 10.8 % and 11.0 %).
    limit = RateLimit(LIMIT, shape="fixed-window", schedule=[(3, 20)])
    shares = [run_zoo(limit, requests=1000, seed=seed, **LIVE).refused_share for seed in range(40)]
    assert sum(shares) / len(shares) <= 0.113


@pytest.mark.parametrize("latency", [0.005, 0.05])
def test_a_shared_budget_told_too_much_settles_under_a_fixed_window(latency: float) -> None:
    # A correction of a cut that was not enough is judged after 0.5 s, not 0.2 s (the window
    # stays full until its boundary: it was halved again, 1.37x at 5 ms); told the limit,
    # quick probes aim at what the server took over two seconds, not one (a fixed window
    # lets up to twice its count through in one second: 1.32x at 50 ms); and the recovery
    # after a correction aims at what the server took over the two seconds before it, not
    # from the halved rate along the cubic beyond it (1.19x and 1.27x, then 1.10x and 1.09x
    # on four seeds). Over 40 seeds that read 1.123x and 1.141x (a fifth of the runs over
    # 1.15x: a probe that fills the window, halved); waiting for the room the first window
    # has again a second after the first send (see test_aimd), 1.094x and 1.077x.
    batches = shared_budget("fixed-window", latency, seeds=range(40))
    assert all(len(run.accepted_at) == run.requests for run in batches)
    assert sum(run.ratio for run in batches) / len(batches) <= 1.105
    assert sum(run.refused_share for run in batches) / len(batches) <= 0.07


@pytest.mark.parametrize("shape", ["fixed-window", "sliding-window"])
def test_a_shared_budget_told_too_much_waits_for_the_first_window_to_have_room(shape: str) -> None:
    # Told 60/s, the pace fills the 40/s window in 0.68 s; the sends after it, up to the
    # window's room at 1.0 s, are refused with a whole-second Retry-After, each retry waiting
    # it out: the 16 senders were all refused, and the window from 1.0 s to 2.0 s took 9
    # (1.10x and 1.12x the ideal). Waiting for that room, it takes 29 (1.06x and 1.07x).
    batches = shared_budget(shape, 0.005, report_delay=0.06)
    for run in batches:
        assert sum(1 for t in run.accepted_at if 1.0 <= t < 2.0) >= 25
    assert sum(run.ratio for run in batches) / len(batches) <= 1.085


@pytest.mark.parametrize("shape", ["fixed-window", "sliding-window"])
@pytest.mark.parametrize("latency", [0.005, 0.05])
def test_told_too_much_a_correction_recovers_to_what_the_window_took_not_beyond(
    shape: str, latency: float
) -> None:
    # Told 60/s, the pace fills the 40/s window in 0.7 s and its cut (to 95 %) is refused
    # too: the correction halves the rate, and the recovery aims at what the server took
    # over the two seconds before it (44/s: the window's count in its first 0.9 s), instead
    # of climbing the cubic beyond the halved rate (27/s) back to the told 59/s within 3 s
    # and filling the window again: back within 10 % of the limit two seconds after the
    # first cluster, within 5 % of it on average over the seconds after, and never back
    # near the told pace. (The recovery probes above the limit now and then, and a fixed
    # window refuses such a probe only once a second's count is over: for a moment it is
    # up to 1.36x the limit, then cut. Once the first window's room is waited for, the
    # recovery levels off at 97 % of what the window took, not 8 % above it, and its
    # probes reach higher before the window refuses one; "at most 1.15x at any moment"
    # held for the code before on these four seeds only: at 50 ms, 16 of 80 seeds went
    # over, up to 1.44x.)
    for run in shared_budget(shape, latency):
        paces = [run.pace_at(t / 100) for t in range(250, 600)]
        assert run.pace_at(3.0) >= 0.9 * 40
        assert sum(paces) / len(paces) <= 1.05 * 40
        assert max(paces) <= 1.4 * 40


def test_told_too_much_a_window_that_refuses_at_once_is_recovered_to_what_it_took() -> None:
    # Told 75/s, a 50/s sliding window answering its 429s at once: the correction comes when
    # the server took 84 % of the pace over the two seconds before it (its count let
    # through, then all refused); the recovery aims at what it took, not from the halved
    # rate along the cubic beyond it (under 80 % only: 1.14-1.19x, as before the rule).
    limit = RateLimit(LIMIT, shape="sliding-window", instant_429=True)
    batches = [run_zoo(limit, configured=1.5 * LIMIT, seed=seed, **LIVE) for seed in range(6)]
    assert sum(run.ratio for run in batches) / len(batches) <= 1.12
    assert all(run.refused_share <= 0.05 for run in batches)


@pytest.mark.parametrize(
    ("shape", "told", "at_most"),
    [("leaky-bucket", 40, 1.3), ("leaky-bucket", 60, 1.3), ("fixed-window", 60, 1.13)],
)
def test_a_shared_budget_that_hears_of_answers_late_is_not_held_to_a_window_of_one(
    shape: str, told: float, at_most: float
) -> None:
    # The Redis store tells the shared state of an answer with the process's next call (or
    # within 0.1 s): live, the window of one request a cut leaves at a server that answers
    # in milliseconds let one request out per report, 24/s at a 37/s pace. Booking ahead,
    # the window is at least what the pace sends over the horizon (1.43x, 1.45x and 1.18x
    # with a window of one; told the true limit of a leaky bucket, 1.10x is out of reach
    # of any pace under the live machine's jitter).
    batches = shared_budget(shape, 0.005, told=told, report_delay=0.06)
    assert all(len(run.accepted_at) == run.requests for run in batches)
    assert sum(run.ratio for run in batches) / len(batches) <= at_most


def test_a_shared_budget_told_too_much_of_a_leaky_bucket_finds_its_limit() -> None:
    # Told 60/s, a 40/s leaky bucket refuses from the second send, and half of what the
    # first cut sends: the correction's recovery aims above what it took (a lower bound),
    # the first marginal refusal far under the told ceiling finds the limit, held as if told,
    # and a refusal at the lowered pace in a lesson's hold-off teaches more at once, before
    # the cut is judged (40 seeds: 1.260x the ideal before, 1.2245x now; 1.240x without the
    # aim, 1.237x without the hold-off's lessons, 1.251x with them after the cut is judged;
    # the best constant pace, FixedPace at 0.87 of it, 1.191x).
    batches = shared_budget("leaky-bucket", 0.005, report_delay=0.06, seeds=range(40))
    assert all(len(run.accepted_at) == run.requests for run in batches)
    assert sum(run.ratio for run in batches) / len(batches) <= 1.235
    assert sum(run.refused_share for run in batches) / len(batches) <= 0.05


def test_a_shared_budget_told_too_much_of_a_leaky_bucket_holds_off_briefly_after_correcting() -> (
    None
):
    # Told 50/s, a 40/s leaky bucket refuses half of what the first cut sends (47.5/s): the
    # correction (to 95 % of the 24/s it took) holds off 0.4 s, not a second (such a server
    # refuses at once: only the sends booked at the pace corrected are the event's), and
    # the first refusal after it is judged on the sends since (40 seeds: 1.259x the ideal
    # held for a second, now 1.242x; told 60/s, 1.227x -> 1.220x).
    batches = shared_budget("leaky-bucket", 0.005, told=50, report_delay=0.06, seeds=range(40))
    assert all(len(run.accepted_at) == run.requests for run in batches)
    assert sum(run.ratio for run in batches) / len(batches) <= 1.25


@pytest.mark.parametrize(("told", "at_most"), [(40, 1.178), (60, 1.202)])
def test_a_shared_budget_at_a_leaky_bucket_gives_back_slots_woken_too_late_for(
    told: float, at_most: float
) -> None:
    # Four processes' senders share one schedule at a server that allows no burst: one that
    # wakes late (a machine's stall) takes the room of the next process's send, on time,
    # and the server refuses that one, a lesson of headroom no pace under the limit needed.
    # Waking more than 5 ms late, it gives its slot back and books another (the measured
    # machine, with its stalls, 40 seeds: told 40/s 1.188x the ideal -> 1.173x, told 60/s
    # 1.211x -> 1.197x).
    batches = shared_budget(
        "leaky-bucket", 0.005, told=told, report_delay=0.06, seeds=range(40), machine=LIVE_MEASURED
    )
    assert all(len(run.accepted_at) == run.requests for run in batches)
    assert sum(run.ratio for run in batches) / len(batches) <= at_most


def test_a_shared_budget_judges_a_lesson_at_a_leaky_bucket_on_the_sends_booked_after_it() -> None:
    # A lesson in headroom is judged at once: more than 30 % of the sends since refused, and
    # it was no lesson but a limit that dropped, the pace halved. Sends booked up to 0.1 s
    # ahead, before the lesson, at the pace it lowered, are that pace's: once the server is
    # known to allow no burst, their refusals are no evidence (live, the pace went from 33/s
    # to 19/s for two seconds). Told 60/s, the live machine with 1 % of its stalls (80 seeds):
    # 1.144x the ideal, now 1.136x (the worst seed 1.37x, now 1.25x); no other shape moved.
    quiet = {**LIVE_MEASURED, "stall_share": 0.01}
    batches = shared_budget(
        "leaky-bucket", 0.005, told=60, report_delay=0.06, seeds=range(40, 120), machine=quiet
    )
    assert all(len(run.accepted_at) == run.requests for run in batches)
    assert sum(run.ratio for run in batches) / len(batches) <= 1.14
    assert max(run.ratio for run in batches) <= 1.3


@pytest.mark.parametrize("machine", [LIVE, LIVE_MEASURED])
def test_a_constant_pace_at_half_a_leaky_bucket_s_limit_is_never_refused(
    machine: Mapping[str, float],
) -> None:
    # The reference the told policy is judged against at a server that allows no burst is
    # what it claims: sends kept a spacing apart at a constant pace, nothing moving it (at
    # half the limit, no jitter of the machines brings two sends closer than the limit's
    # spacing), alone and booked ahead by four processes sharing it.
    leaky = RateLimit(SHARED_LIMIT, shape="leaky-bucket")
    alone = run_zoo(leaky, policy=FixedPace(0.5 * SHARED_LIMIT), **machine)
    shared = shared_budget(
        "leaky-bucket",
        0.005,
        report_delay=0.06,
        machine=machine,
        policy=lambda: FixedPace(0.5 * SHARED_LIMIT),
    )
    for run in (alone, *shared):
        assert run.refused == 0
        assert len(run.accepted_at) == run.requests
        assert {pace for _, pace in run.trace} == {0.5 * SHARED_LIMIT}
        # (twice the ideal at half the pace, a round trip and a few late timers more)
        assert 1.9 < run.ratio < 2.1


def test_told_the_limit_a_shared_leaky_bucket_is_held_near_the_best_constant_pace() -> None:
    # Told the true limit, four processes sharing a 40/s leaky bucket (a request refused
    # unless 1/40 s has passed since the last one accepted) read 1.09x-1.17x live, against
    # a target of 1.10x. No client that paces at a constant spacing reads that here: on the
    # measured machine (the quieter), over 40 seeds, the best such pace (picked after the
    # fact, 0.93-0.95 of the limit) read 1.140x-1.151x at each latency and report delay of
    # shared_budget, 1.144x-1.155x read again on seeds 40-79, and the policy told 40/s
    # 1.155x-1.173x, 0.014x-0.024x above it (on LIVE, the best pace 1.178x-1.199x at
    # 0.85-0.88, the policy 1.191x-1.210x: see ``python -m tests._rate_zoo --pace-floor``).
    # On these eight seeds: the best 1.143x at 0.96, the policy 1.176x.
    seeds = range(8)
    setting = shared_setting(0.005, 0.06)
    leaky = RateLimit(SHARED_LIMIT, shape="leaky-bucket")
    fractions = [fraction / 100 for fraction in range(85, 101)]
    _, best, _ = best_fixed_pace(leaky, fractions, seeds, **setting, **LIVE_MEASURED)
    assert best >= 1.12
    policy = shared_budget(
        "leaky-bucket",
        0.005,
        told=SHARED_LIMIT,
        report_delay=0.06,
        seeds=seeds,
        machine=LIVE_MEASURED,
    )
    assert sum(run.ratio for run in policy) / len(policy) <= best + 0.05


class RoundTripping(AimdPolicy):
    """A policy that round-trips its state through strings before every send, as the Redis
    store loads the state into a fresh policy for every operation."""

    def claim(self, now: float) -> float:
        self.state = type(self.state).from_fields(self.state.to_fields())
        return super().claim(now)


def test_a_shared_state_in_many_hands_gives_the_same_answers() -> None:
    # The Redis store loads the state into a fresh policy for every operation: a policy
    # that round-trips its state through strings at every step decides exactly the same.
    limit = RateLimit(LIMIT, shape="sliding-window", schedule=[(4, 20), (10, LIMIT)])
    plain = run_zoo(limit, requests=300)
    shared = run_zoo(limit, requests=300, policy=RoundTripping(None))
    assert (shared.wall, shared.refused, shared.cuts) == (plain.wall, plain.refused, plain.cuts)
    assert shared.trace == plain.trace


# -- not told: once the limit is found, it is held as if told ---------------------------------


def _not_told_runs(shape: str, seeds: Sequence[int]) -> tuple[list[float], list[float]]:
    """Not told, ``shape``'s first zoo row on the live machine, one run per seed: each run's
    wall time over the ideal, and the limit its policy found (infinite if none)."""
    ratios, found = [], []
    for seed in seeds:
        policy = AimdPolicy(None)
        ratios.append(run_zoo(ZOO[shape][0], seed=seed, policy=policy, **LIVE).ratio)
        found.append(policy.state.found)
    return ratios, found


def test_not_told_a_window_s_limit_refused_twice_at_one_pace_is_then_held_as_if_told() -> None:
    # Two marginal refusals at nearly one pace, the window having taken nearly that pace
    # for a second: the limit is found (what it took: the window's count), and from then on
    # a refusal near it lowers the pace by a lesson of headroom, not by a cut to 95 % and a
    # climb back over the cubic (1.134x on these seeds, with the found limit 1.113x).
    ratios, found = _not_told_runs("sliding window", range(6))
    assert sum(ratios) / len(ratios) <= 1.125
    # (One seed in six reads slow start's end as a server that refuses only over its rate.)
    assert sum(0.95 * LIMIT <= limit <= LIMIT for limit in found) >= 5


@pytest.mark.parametrize(
    ("shape", "at_least"),
    [("token bucket, burst 1", 0.85), ("leaky bucket", 0.85), ("10 in flight", 0.9)],
)
def test_not_told_a_limit_read_at_the_end_of_slow_start_is_held_as_if_told(
    shape: str, at_least: float
) -> None:
    # Such a server refuses only what goes over its rate, so slow start's end re-reads
    # the limit from what it accepted: found. Held as if told, the pace stays near it
    # (jitter teaches headroom) instead of being cut to 95 % of what the last second took
    # at every refusal: the lowest pace over 6-10 s, averaged over seeds, was 0.78 of the
    # limit (0.87 at 10 in flight); now 0.89 (0.94).
    runs = [run_zoo(ZOO[shape][0], seed=seed, **LIVE) for seed in range(4)]
    lowest = [min(run.pace_at(t / 20) for t in range(120, 200)) for run in runs]
    assert sum(lowest) / len(lowest) >= at_least * LIMIT


def test_not_told_a_rate_limiter_s_limit_found_low_is_found_again_by_a_refused_probe() -> None:
    # A leaky bucket refuses a send that arrives a little early: slow start's ramp met such
    # a refusal below the limit on about half of these seeds, and its end re-read found the
    # limit at 39-45/s. Probes above it were refused at the real limit, but what the server
    # took over the second before (the probe's ramp) was under a tenth above the limit
    # found: back to it, for the whole batch (1.250x the ideal over these seeds). A probe
    # refused more than a tenth above it, every send of the half second before taken, finds
    # it again at 92 % of the pace refused: 1.236x.
    ratios, found = _not_told_runs("leaky bucket", range(40))
    assert min(found) >= 0.88 * LIMIT
    assert sum(ratios) / len(ratios) <= 1.242


def test_not_told_a_first_answer_slowed_by_opening_the_connection_does_not_slow_slow_start() -> (
    None
):
    # Live, the first request also opens the connection: its answer comes 20-35 ms later
    # than the rest. The round trip estimate started from it and carried it for a dozen
    # answers, each growing slow start's pace by less: on a sliding window the first cut
    # landed at 40.0/s on these seeds where 40.7/s with a prompt first answer, and the
    # limit that drops and comes back took 1.172x the ideal where 1.161x. A second round
    # trip well under the first replaces it: 40.5/s, 1.166x.
    def first_cut(run: ZooRun) -> float:
        return next(p1 for (_, p0), (t1, p1) in itertools.pairwise(run.trace) if p1 < p0)

    answered = {**LIVE, "first_latency": 0.0}
    slowed = {**LIVE, "first_latency": 0.025}
    for shape in ("sliding window", "50 -> 20 -> 50 per second"):
        prompt = [first_cut(run_zoo(ZOO[shape][0], seed=seed, **answered)) for seed in range(6)]
        late = [first_cut(run_zoo(ZOO[shape][0], seed=seed, **slowed)) for seed in range(6)]
        assert sum(late) >= 0.99 * sum(prompt)


@pytest.mark.parametrize(
    ("shape", "near", "within"),
    [
        # Within 10 % of the new limit in 5 s (in 1.0-2.2 s before a limit found was
        # held, 3.5-5.0 s now: it is probed above only 2.5 s after each hold-off).
        ("sliding-window", 0.9, 5.0),
        # No burst at all: the jitter keeps the pace at about 0.9 of the limit, and the
        # limit is found again from a cut, as before it was found (within 15 % of it in
        # 3.6-7.7 s before, 5.1-9.9 s now).
        ("token-bucket", 0.85, 10.0),
    ],
)
def test_not_told_a_limit_that_rose_after_it_was_found_is_found_again(
    shape: str, near: float, within: float
) -> None:
    # 30/s, found within 12 s, then 50/s: the limit found is probed above now and then
    # (PROBE_AFTER), and once a probe shows the server took well above it, it is found
    # again. Without the probes the pace stayed at 30/s for good.
    limit = RateLimit(30, shape=shape, burst=1 if shape == "token-bucket" else None)
    risen = RateLimit(30, shape=shape, burst=limit.burst, schedule=[(12, LIMIT)])
    for seed in range(6):
        policy = AimdPolicy(None)
        run_zoo(limit, requests=900, seed=seed, policy=policy, until=12.0, **LIVE)
        assert policy.state.found <= 30
        run = run_zoo(risen, requests=900, seed=seed, **LIVE)
        back = next(
            (
                t / 20
                for t in range(240, 900)
                if run.accepted_rate(t / 20, t / 20 + 1) >= near * LIMIT
            ),
            math.inf,
        )
        assert back - 12.0 <= within


@pytest.mark.parametrize(
    "limit", [RateLimit(LIMIT, burst=1), RateLimit(LIMIT, shape="sliding-window")]
)
def test_a_shared_state_in_many_hands_finds_the_same_limit(limit: RateLimit) -> None:
    # As above, on servers where the limit is found (by slow start's end re-read, by two
    # refusals at one pace): the found limit survives the round trip through strings.
    plain_policy = AimdPolicy(None)
    plain = run_zoo(limit, requests=400, policy=plain_policy, **LIVE)
    shared = run_zoo(limit, requests=400, policy=RoundTripping(None), **LIVE)
    assert plain_policy.state.found < math.inf
    assert (shared.wall, shared.refused, shared.cuts) == (plain.wall, plain.refused, plain.cuts)
    assert shared.trace == plain.trace


def test_not_told_a_limit_found_too_high_is_forgotten_at_the_next_cut() -> None:
    # Slow start's end can read a sliding window as a server that refuses only over its
    # rate (answering after 0.3 s, the ramp grows less per second and the window draining
    # refuses under half of it: a "limit" of 65-68/s against 50). Held as found, it kept the
    # ceiling far above the window for the whole run; the first refusal that is no lesson
    # (most of the pace refused) forgets it, and the limit is found again from a cut. Live,
    # the limit that drops to 20/s and comes back took 1.224x (seven runs) with the wrong
    # limit kept, 1.208x with it forgotten (1.199x before limits were found at all).

    class Recording(AimdPolicy):
        def __init__(self) -> None:
            super().__init__(None)
            self.seen: list[float] = []

        def on_success(self, sent_at: float, now: float) -> None:
            super().on_success(sent_at, now)
            self.seen.append(self.state.found)

    shape = RateLimit(LIMIT, shape="sliding-window", schedule=[(3, 20), (8, LIMIT)])
    for seed in range(3):
        policy = Recording()
        run_zoo(shape, seed=seed, policy=policy, latency=0.3, **LIVE)
        wrong = [found for found in policy.seen if 1.2 * LIMIT < found < math.inf]
        assert wrong  # slow start's end was misread: the case this test is about
        assert policy.seen.index(wrong[-1]) < len(policy.seen) // 4  # forgotten early
        assert policy.state.found == math.inf or policy.state.found <= LIMIT


def test_not_told_after_a_window_s_cluster_of_429s_the_recovery_aims_at_what_it_took() -> None:
    # A ramp through a window is accepted until its count is full, then a round trip of
    # sends is refused (a cluster): the pace refused was far above the window's rate, and
    # a recovery aimed back at it was refused again within two seconds. Aimed just over what
    # the window accepted instead, the pace spent 10 % of 4-10 s above 1.2 times a fixed
    # window's limit (40 seeds, 0-39 and 40-79: 10.0 % and 10.2 %), now 6.6 % and 5.7 %.
    limit = RateLimit(LIMIT, shape="fixed-window")
    runs = [run_zoo(limit, seed=seed, **LIVE) for seed in range(40)]
    above = [sum(run.pace_at(t / 20) > 1.2 * LIMIT for t in range(80, 200)) / 120 for run in runs]
    assert sum(above) / len(above) <= 0.08


def test_not_told_a_limit_back_above_what_was_taken_before_it_dropped_is_probed_on_at_once() -> (
    None
):
    # 50/s, 20/s from 3 s to 8 s: before the drop the pace was still climbing back from slow
    # start's cut (41/s, not yet 50), so what the server took then is short of its limit.
    # The quick probe reaches it unrefused and probes on from there at once: the server
    # accepted 41/s over 9.5-11 s (held at 41 until the slow curve passed it), now 46/s.
    runs = [run_zoo(DROPPED, seed=seed, **LIVE) for seed in range(4)]
    accepted = [run.accepted_rate(9.5, 11.0) for run in runs]
    assert sum(accepted) / len(accepted) >= 0.9 * LIMIT


def test_not_told_a_pace_that_rose_over_the_second_before_a_drop_is_probed_on_from() -> None:
    # 50/s, 15/s from 3.5 s to 8 s: the pace was still climbing back to slow start's refused
    # pace when the limit dropped, so over the second before the drop the server took all
    # that was sent (about 43/s), less than the pace it refused (48/s). That is short of the
    # limit too: once the quick probe is back at it unrefused, the pace probes on at once
    # (held there, the server accepted 43/s over 9.5-11 s on these seeds, 1.221x; now
    # 48/s, 1.162x).
    limit = RateLimit(LIMIT, shape="sliding-window", schedule=[(3.5, 15), (8, LIMIT)])
    runs = [run_zoo(limit, seed=seed, **LIVE) for seed in range(6)]
    accepted = [run.accepted_rate(9.5, 11.0) for run in runs]
    assert sum(accepted) / len(accepted) >= 0.9 * LIMIT


def test_not_told_a_drop_while_probing_beyond_the_refused_pace_is_not_probed_on_from() -> None:
    # 50/s, 15/s from 5 s to 8 s: the pace was probing beyond the pace last refused when the
    # limit dropped, so what the server took over the second before is about its limit,
    # short of the pace refused only by the probe. Probing on from it at once cost a cluster
    # of 429s more after the limit came back: 40 seeds, 0-39 and 40-79, 1.170x and 1.173x,
    # held 1.144x and 1.147x. (Since slow start's cut at a sliding window is re-read from
    # its count, the pace probes beyond it sooner, and at this timing the drop falls in
    # that probe's hold-off on every seed: corrected from a cut set before the drop, the
    # pace comes down later. 1.234x and 1.226x probing on, 1.202x and 1.203x held.)
    limit = RateLimit(LIMIT, shape="sliding-window", schedule=[(5, 15), (8, LIMIT)])
    runs = [run_zoo(limit, seed=seed, **LIVE) for seed in range(40)]
    assert sum(run.ratio for run in runs) / len(runs) <= 1.215


def test_not_told_a_limit_that_dropped_in_slow_start_s_hold_off_is_probed_back_up_to_the_ramp() -> (
    None
):
    # 50/s, 20/s from 2 s to 10 s: the limit dropped in the hold-off of slow start's cut, so
    # the server never took a pace for a second at 50/s, and what it took before the later
    # refusals is 20/s. What slow start's ramp got through (43/s) is probed back up to
    # quickly instead: the server accepted 26/s over 14-15 s on these seeds (the limit found
    # at 20/s, probed 2.5 s after each hold-off along the slow cubic), now 45/s.
    limit = RateLimit(LIMIT, shape="sliding-window", schedule=[(2, 20), (10, LIMIT)])
    runs = [run_zoo(limit, seed=seed, **LIVE) for seed in range(6)]
    accepted = [run.accepted_rate(14.0, 15.0) for run in runs]
    assert sum(accepted) / len(accepted) >= 0.8 * LIMIT


def test_not_told_a_limit_found_after_it_dropped_in_slow_start_s_hold_off_is_probed_up_sooner() -> (
    None
):
    # 50/s, 30/s from 2 s to 8 s: the limit dropped while slow start's cut held, the pace
    # came back up past it and found it (30/s, held as if told), and when the limit came
    # back only the slow probe PROBE_AFTER seconds after each hold-off found it: the pace
    # sat near 30/s until 11-12 s (1.212x on these seeds). A limit found under what slow
    # start's ramp got through is probed back up to that sooner, once: 1.165x, with no
    # more 429s (a limit lowered for good pays one probe's). 40 seeds, 0-39 and 40-79, with
    # slow start's cut re-read from a sliding window's count (the drop at 2 s then meets a
    # higher pace: 35 429s of 500 where 30): 1.188x and 1.184x without the sooner probe,
    # 1.171x and 1.176x with it. With that count found (held as if told, at 98 % of it:
    # 39 429s of 500 where 36), 1.188x and 1.192x without it, 1.151x and 1.156x with it.
    limit = RateLimit(LIMIT, shape="sliding-window", schedule=[(2, 30), (8, LIMIT)])
    runs = [run_zoo(limit, seed=seed, **LIVE) for seed in range(40)]
    assert sum(run.ratio for run in runs) / len(runs) <= 1.165
    assert sum(run.refused for run in runs) / len(runs) <= 40


@pytest.mark.parametrize(("back", "mean_ratio"), [(10, 1.175), (12, 1.17)])
def test_not_told_a_limit_low_for_long_still_has_quick_probes_when_it_comes_back(
    back: int, mean_ratio: float
) -> None:
    # 50/s, 20/s from 4 s: the slow curve's climb just above the dropped limit, refused as
    # the limit, spent a quick probe too, and by the time the limit came back (10 s or
    # 12 s) all three were gone on most seeds: back within 10 % of 50/s 3.0-3.4 s after it
    # (1.190x and 1.214x on these seeds). Only a probe well above the refused pace spends
    # one: back within 1.0-1.9 s (1.160x and 1.137x).
    limit = RateLimit(LIMIT, shape="sliding-window", schedule=[(4, 20), (back, LIMIT)])
    runs = [run_zoo(limit, seed=seed, **LIVE) for seed in range(6)]
    for run in runs:
        steps = range(back * 20, 400)
        again = next(t / 20 for t in steps if run.accepted_rate(t / 20, t / 20 + 1) >= 45)
        assert again - back <= 2.0
    assert sum(run.ratio for run in runs) / len(runs) <= mean_ratio


@pytest.mark.parametrize("shape", ["token bucket, burst 2x rate", "leaky bucket"])
def test_at_the_batch_s_end_the_pace_no_longer_probes_into_429s(shape: str) -> None:
    # When the input runs out, the requests left are all there is to send: a probe then
    # finds nothing the batch could use, and a 429 costs its retry's wait at the end (6
    # seeds: 2x burst 0.942x -> 0.887x, leaky 1.226x -> 1.211x).
    limit = ZOO[shape][0]

    def mean_ratio(*, wind_down: bool) -> float:
        runs = [run_zoo(limit, seed=seed, wind_down=wind_down, **LIVE) for seed in range(6)]
        return sum(run.ratio for run in runs) / len(runs)

    assert mean_ratio(wind_down=True) <= mean_ratio(wind_down=False) - 0.01


def test_the_zoo_table_prints_every_row_asked_for_and_the_family() -> None:
    # ``python -m tests._rate_zoo``: the table that changes to the policy are judged on.
    table = zoo_table(range(1), ["sliding window", "fixed window"], told=True).splitlines()
    assert len(table) == 3
    assert table[1].startswith("sliding window ")
    family = family_table([range(1), range(1, 2)]).splitlines()
    assert [line.split()[0] for line in family[1:]] == ["0-0", "1-1"]
    assert all(line.split()[-1].endswith("/21") for line in family[1:])


def test_the_family_told_the_limit_is_the_mean_of_its_told_runs() -> None:
    # ``python -m tests._rate_zoo --family --told``: the told family that changes to the told
    # paths are judged on, beside the untold one (which it leaves as it was).
    plain = family_table([range(1)]).splitlines()
    both = family_table([range(1)], told=True).splitlines()
    assert both[1].startswith(plain[1])
    runs = [run_zoo(limit, configured=LIMIT, seed=0, **LIVE) for limit in DROP_RETURN_FAMILY]
    told = both[1][len(plain[1]) :].split()
    assert float(told[0]) == pytest.approx(sum(run.ratio for run in runs) / len(runs), abs=1e-4)
    assert told[2] == f"{sum(run.ratio > 1.2 for run in runs)}/21"


def test_the_breakdown_tells_the_start_the_steady_state_and_the_end_apart() -> None:
    # ``python -m tests._rate_zoo --breakdown``: where a row's seconds go. Told the limit, a
    # sliding window takes about its limit from the start and refuses nothing: no end wait.
    table = breakdown_table(range(2), ["sliding window"], told=True).splitlines()
    assert [line.split(",")[0].split()[:2] for line in table[1:]] == [["sliding", "window"]] * 2
    told = table[2].split()
    assert told[2] == "told"
    start, taken, pace, end = map(float, told[4:])
    assert start >= 0.95 * 2 * LIMIT
    assert 0.95 * LIMIT <= taken <= pace <= LIMIT
    assert end == 0.0


def test_the_end_wait_is_what_the_last_answer_owes_to_retries() -> None:
    # A token bucket of burst 1 at 30/s, told 50/s, refuses its first sends: their retries
    # wait a second, then queue behind the rest, and are the batch's last answers.
    run = run_zoo(RateLimit(30, burst=1), configured=LIMIT, seed=0, requests=100, **LIVE)
    assert max(run.refused_at) < 1.0
    assert run.end_wait == run.wall - run.fresh_done > 0.05
    clean = run_zoo(RateLimit(LIMIT, shape="sliding-window"), configured=LIMIT, requests=100)
    assert clean.refused == 0
    assert clean.end_wait == 0.0
    assert clean.fresh_done == clean.wall


def test_the_zoo_moves_every_row_to_another_rate_as_the_live_benchmark_does() -> None:
    # ``python -m tests._rate_zoo --rate 100``: the rows at twice the limit, as
    # ``bench_batch --rps 100`` builds them (a cap in flight holds 0.2 s of the rate, a
    # burst of more than one and a schedule scale with it), told that rate.
    assert at_rate(TABLE_ROWS["10 in flight"], 100.0).max_in_flight == 20
    assert at_rate(TABLE_ROWS["token bucket, burst 2x rate"], 100.0).burst == 200
    assert at_rate(TABLE_ROWS["token bucket, burst 1"], 100.0).burst == 1
    moved = at_rate(TABLE_ROWS["50 -> 20 -> 50, at 3 s and 8 s"], 100.0)
    assert (moved.requests_per_second, moved.schedule) == (100.0, ((3.0, 40.0), (8.0, 100.0)))
    assert at_rate(TABLE_ROWS["sliding window"], LIMIT) is TABLE_ROWS["sliding window"]
    table = zoo_table(range(1), ["sliding window"], told=True, rate=100.0).splitlines()
    told = run_zoo(RateLimit(100.0, shape="sliding-window"), configured=100.0, seed=0, **LIVE)
    assert float(table[1].split()[-2]) == pytest.approx(told.ratio, abs=1e-3)
    # ``--senders``: attempts at once (``max_concurrency``); 5 cannot fill a cap of 10.
    few = zoo_table(range(1), ["10 in flight"], senders=5).splitlines()
    five = run_zoo(RateLimit.concurrency(10), seed=0, senders=5, **LIVE)
    assert float(few[1].split()[3]) == pytest.approx(five.ratio, abs=1e-3)
    assert five.ratio > 1.9
