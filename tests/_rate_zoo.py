"""A discrete-event world for the rate policy: senders, a server limit of the zoo, a clock.

No event loop and no real time: :func:`run_zoo` plays a batch of requests through
:class:`~ailab_async._aimd.AimdPolicy` against one of the simulator's server limits
(:func:`ailab_async.testing.simulator._limits.server_limit`), the way the client sends them:
``items`` requests at a time (``client.map``'s concurrency, by default twice ``senders`` as
``client.map``'s is twice ``max_concurrency``) share ``senders`` attempt slots (the
dispatcher's ``max_concurrency``: a request waiting to retry holds none), and those holding
one queue in arrival order for a send slot from the policy; the server admits or refuses
each request at its send time, answers after ``latency`` (a 429 at once when the limit
says ``instant_429``), and a refused request is retried after the dispatcher's delay for a
429 (uniform in ``[0, 1)`` s, at least the ``Retry-After``). With ``clumps``, the senders
come in clumps, as a client gathering batches does: a batch of ``senders`` requests starts
once the last one's requests are all answered. A busy machine is played too, seeded: a
sender woken by a timer runs ``wake_jitter`` seconds late on average (exponentially
distributed: an event loop's timers fire after their time, now and then much after; plus
``wake_floor`` and up to ``wake_round`` more, evenly: a loop rounds its timeouts up to the
millisecond), and a request reaches the server up to ``send_jitter`` seconds after it left
(plus, with ``send_tail``, an exponentially distributed delay of that mean: now and then
much later); with ``stall_share``, that share of the wake-ups and of the sends is held up
by a stall of ``stall`` seconds on average (exponentially distributed); and the first
request's answer comes ``first_latency`` later (it opens the connection; with
``connections``, so do that many first requests: each opens one of its own). With
``start_phase``, the clock reads a seeded draw in ``[0, start_phase)`` at the batch's start,
not zero: a live clock is at any point of the policy's send-time buckets (``BUCKET``) when
a batch starts, and what the first buckets took is measured over whole buckets. :data:`LIVE` is
the live benchmark's machine, :data:`LIVE_MEASURED` the same measured at the server. With
``booking``, senders do as the Redis store's do: each books its own slot up to ``booking``
seconds ahead (no queue), sleeps until it and reports the booked time as the send time (the
policy knows it books ahead, as the store's does); with ``report_delay``, the shared state
hears of an accepted request's answer up to that long after it (the store reports answers
with the process's next call), and counts it in flight meanwhile; a booking sender that
wakes later after its slot than the policy's ``late_limit`` gives it back and books again,
as the store's does. When the input runs out (a
sender asks for an item after the last one), the policy is told to wind down, as
``client.map`` tells the limiter (``wind_down=False``: not). It records what the tests
assert on: the wall time against the ideal, the 429s, the cuts, and the pace over time.

Two references are played in it, bounds rather than policies: :class:`ReactingOracle`, a
told client that learns of each change of a limit as early as one that reacts can, and
:class:`FixedPace`, a client that sends at a constant pace and never reacts, whose best pace
(:func:`best_fixed_pace`) bounds a client that keeps a constant spacing at a server that
allows no burst.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import attrs

from ailab_async._aimd import BUCKET, HEADROOM, MIN_RATE, AimdPolicy
from ailab_async.testing.simulator import RateLimit
from ailab_async.testing.simulator._limits import server_limit

#: The machine the live benchmark (``benchmarks/bench_batch.py``) runs on, as measured there:
#: timers about 1 ms late (p99 5 ms), a request at the server 0.4 to 2 ms after it left
#: (now and then 5 ms), answers 0.2 to 0.21 s after it, and the first answer 20-35 ms later
#: than that (it opens the connection). With it the zoo predicts the live batch within its
#: run-to-run spread (a few hundredths).
LIVE: dict[str, float] = {
    "wake_jitter": 0.001,
    "send_jitter": 0.001,
    "send_tail": 0.0005,
    "latency_jitter": 0.01,
    "first_latency": 0.025,
}

#: The live benchmark's machine as measured from the simulator's own arrival times (ten runs
#: of the shapes that allow no burst, 2026-12-03): a timer fires 0.1 ms late and up to a
#: millisecond more, evenly (an event loop rounds its timeouts up to the millisecond), then
#: a little more; a request reaches the server 0.4-0.6 ms after it left, give or take 0.2 ms;
#: and now and then (3 % of the wake-ups and of the sends) the machine stalls for a few
#: milliseconds. :data:`LIVE` draws both from wider spreads: the share of sends that reach
#: the server sooner after the previous one than their schedule spaced them (what a server
#: that allows no burst refuses) is 20 % there, 4 % live and 4 % here, so :data:`LIVE`
#: teaches those shapes more headroom than the live benchmark learns (told the limit, it
#: settles near 45/s of 50, where the live benchmark holds 47-49/s).
LIVE_MEASURED: dict[str, float] = {
    "wake_floor": 0.0001,
    "wake_round": 0.001,
    "wake_jitter": 0.0002,
    "send_jitter": 0.0004,
    "send_tail": 0.0001,
    "stall_share": 0.03,
    "stall": 0.003,
    "latency_jitter": 0.01,
    "first_latency": 0.025,
}

#: The limit every row of :data:`ZOO` is at (requests per second).
LIMIT = 50.0

#: The zoo's rows, shared by ``tests/test_rate_zoo.py`` and the table below (``python -m
#: tests._rate_zoo``): name -> (limit, wall/ideal at most, share of requests refused at most
#: over ``test_rate_zoo``'s seeds).
ZOO: dict[str, tuple[RateLimit, float, float]] = {
    "token bucket, burst 1": (RateLimit(LIMIT, burst=1), 1.23, 0.08),
    "token bucket, burst = rate": (RateLimit(LIMIT), 1.05, 0.10),
    "token bucket, burst 2x rate": (RateLimit(LIMIT, burst=100), 1.00, 0.10),
    "sliding window": (RateLimit(LIMIT, shape="sliding-window"), 1.15, 0.08),
    "sliding window, instant 429": (
        RateLimit(LIMIT, shape="sliding-window", instant_429=True),
        1.15,
        0.05,
    ),
    "sliding window, no Retry-After": (
        RateLimit(LIMIT, shape="sliding-window", retry_after=False),
        1.15,
        0.08,
    ),
    "fixed window": (RateLimit(LIMIT, shape="fixed-window"), 1.25, 0.13),
    "leaky bucket": (RateLimit(LIMIT, shape="leaky-bucket"), 1.23, 0.08),
    "10 in flight": (RateLimit.concurrency(10), 1.22, 0.03),
    "10 in flight, instant 429": (RateLimit.concurrency(10, instant_429=True), 1.12, 0.03),
    "50 -> 20 -> 50 per second": (
        RateLimit(LIMIT, shape="sliding-window", schedule=[(4, 20), (10, LIMIT)]),
        1.2,  # (1.22 and 14 % before the quick climb back to what the server took)
        0.1,
    ),
}

#: The table's rows (``python -m tests._rate_zoo``): the zoo's, and the live benchmark's
#: changing limit (50/s, 20/s from 3 s, 50/s again from 8 s).
TABLE_ROWS: dict[str, RateLimit] = {
    **{name: limit for name, (limit, _, _) in ZOO.items()},
    "50 -> 20 -> 50, at 3 s and 8 s": RateLimit(
        LIMIT, shape="sliding-window", schedule=[(3, 20), (8, LIMIT)]
    ),
}

#: The drop/return family: a sliding window at 50/s drops at 2 to 5 s (every half second) to
#: 15, 20 or 30/s and is back at 50/s at 8 s (21 timings). Any one timing moves by a few
#: hundredths with where the last probe falls; a change to the policy's handling of a limit
#: that changes is judged on the family's mean over 40 seeds (0-39, and again on 40-79).
DROP_RETURN_FAMILY: list[RateLimit] = [
    RateLimit(50.0, shape="sliding-window", schedule=[(drop / 2, low), (8.0, 50.0)])
    for drop in range(4, 11)
    for low in (15.0, 20.0, 30.0)
]

#: The round trip the zoo's rows are played at (``run_zoo``'s ``latency``): a cap on requests
#: in flight at :func:`at_rate` ``rate`` holds ``rate`` times this many.
ZOO_LATENCY = 0.2


def at_rate(limit: RateLimit, rate: float) -> RateLimit:
    """``limit`` (a row at :data:`LIMIT`) moved to ``rate`` requests per second, as the live
    benchmark's ``--rps`` moves its shapes: a rate limit's rate, schedule and burst (a burst
    of more than one) scaled by ``rate / LIMIT``, a cap on requests in flight to ``rate``
    times :data:`ZOO_LATENCY` (at least one).

    >>> at_rate(RateLimit.concurrency(10), 100.0).max_in_flight
    20
    >>> at_rate(RateLimit(50.0, shape="sliding-window", schedule=[(3, 20)]), 100.0).schedule
    ((3.0, 40.0),)
    """
    if rate == LIMIT:
        return limit
    if limit.shape == "concurrency":
        return attrs.evolve(limit, max_in_flight=max(1, round(rate * ZOO_LATENCY)))
    scale = rate / LIMIT
    burst = limit.burst
    if burst is not None and burst > 1:
        burst = max(1, round(burst * scale))
    schedule = [(at, scheduled * scale) for at, scheduled in limit.schedule]
    return attrs.evolve(limit, requests_per_second=rate, burst=burst, schedule=schedule)


# A sender waiting for the pace looks again at least this often (as the limiter does) ...
_RECHECK = 0.05
# ... or, booking its own slot (as the Redis store does), at least this long after asking.
_RECHECK_BOOKING = 0.01


@attrs.define
class ZooRun:
    """What became of one batch."""

    requests: int
    #: Seconds from the first send to the last answer.
    wall: float = 0.0
    #: Seconds the batch takes at exactly the server's limit.
    ideal: float = 0.0
    sent: int = 0
    refused: int = 0
    #: 429s that cut the rate (the rest were the same event).
    cuts: int = 0
    #: ``(time, pace)`` after every change of the pace.
    trace: list[tuple[float, float]] = attrs.Factory(list)
    #: ``(time, requests accepted)`` per accepted request.
    accepted_at: list[float] = attrs.Factory(list)
    #: Send times of refused requests.
    refused_at: list[float] = attrs.Factory(list)
    #: The most requests in flight at once (accepted by the server, not yet answered).
    max_in_flight: int = 0
    #: When a sender last had to wait for the pace (``None``: never), from time zero.
    last_wait: float | None = None
    #: When the last request accepted at its first attempt was answered, from the first
    #: send (the rest of the wall time is retries waiting out their ``Retry-After``).
    fresh_done: float = 0.0

    @property
    def ratio(self) -> float:
        return self.wall / self.ideal

    @property
    def refused_share(self) -> float:
        return self.refused / self.sent

    def pace_at(self, t: float) -> float:
        """The pace in force at ``t``."""
        pace = self.trace[0][1]
        for at, value in self.trace:
            if at > t:
                break
            pace = value
        return pace

    def accepted_rate(self, start: float, end: float) -> float:
        """Accepted requests per second sent in ``[start, end)``."""
        return sum(1 for t in self.accepted_at if start <= t < end) / (end - start)

    @property
    def end_wait(self) -> float:
        """Seconds from the last answer to a request accepted at its first attempt to the
        batch's last answer: retries of requests refused near the end, waiting out their
        ``Retry-After``."""
        return max(0.0, self.wall - self.fresh_done)


def run_zoo(
    limit: RateLimit,
    *,
    requests: int = 500,
    senders: int = 32,
    items: int | None = None,
    latency: float = 0.2,
    latency_jitter: float = 0.0,
    first_latency: float = 0.0,
    connections: int = 1,
    send_jitter: float = 0.0,
    send_tail: float = 0.0,
    wake_jitter: float = 0.0,
    wake_floor: float = 0.0,
    wake_round: float = 0.0,
    stall_share: float = 0.0,
    stall: float = 0.0,
    start_phase: float = 0.0,
    booking: float = 0.0,
    report_delay: float = 0.0,
    configured: float | None = None,
    seed: int = 0,
    policy: AimdPolicy | None = None,
    until: float = 600.0,
    clumps: bool = False,
    wind_down: bool = True,
) -> ZooRun:
    """Send ``requests`` through the policy to ``limit``; see the module docstring."""
    rng = random.Random(seed)
    server = server_limit(limit, random.Random(seed))
    policy = policy or AimdPolicy(configured, books_ahead=booking > 0)
    run = ZooRun(requests, ideal=limit.seconds_for(requests, latency + latency_jitter / 2))
    events: list[tuple[float, int, Callable[[float], None]]] = []
    order = itertools.count()
    queue: deque[int] = deque()  # workers waiting for a slot, in arrival order
    waiting_release = False
    pacer_due = math.inf
    # The clock at the batch's start (its own draw: the machine's other draws stay as they are).
    start = random.Random(f"{seed}:phase").uniform(0, start_phase) if start_phase else 0.0
    remaining = requests
    in_flight = 0
    first_send: float | None = None
    retrying: set[int] = set()  # workers whose request is a retry

    def at(t: float, action: Callable[[float], None]) -> None:
        heapq.heappush(events, (t, next(order), action))

    def note_pace(t: float) -> None:
        pace = policy.rate(t)
        if not run.trace or run.trace[-1][1] != pace:
            run.trace.append((t, pace))

    def wake_pacer(t: float) -> None:
        nonlocal pacer_due
        if t < pacer_due:
            pacer_due = t
            at(t, pace_senders)

    def pace_senders(t: float) -> None:
        nonlocal pacer_due, waiting_release
        if t != pacer_due:
            return  # superseded by an earlier wake-up
        pacer_due = math.inf
        while queue:
            wait = policy.claim(t)
            if wait > 0:
                run.last_wait = t
                if math.isinf(wait):
                    waiting_release = True
                    wake_pacer(t + _RECHECK + late())
                else:
                    wake_pacer(t + min(wait, _RECHECK) + late())
                return
            send(t, queue.popleft())

    free_attempts = senders
    waiting_attempt: deque[int] = deque()  # workers waiting for an attempt slot

    def want_attempt(t: float, worker: int) -> None:
        # The dispatcher's semaphore: an attempt holds a slot from before the pace until the
        # answer; a request waiting to retry holds none.
        nonlocal free_attempts
        if free_attempts:
            free_attempts -= 1
            want_slot(t, worker)
        else:
            waiting_attempt.append(worker)

    def attempt_over(t: float) -> None:
        nonlocal free_attempts
        if waiting_attempt:
            want_slot(t, waiting_attempt.popleft())
        else:
            free_attempts += 1

    def want_slot(t: float, worker: int) -> None:
        if booking:
            book(t, worker)
            return
        queue.append(worker)
        wake_pacer(t)

    def late() -> float:
        # A timer fires late on a busy event loop (its timeout rounded up, then more).
        lateness = wake_floor + (rng.uniform(0, wake_round) if wake_round else 0.0)
        if wake_jitter:
            lateness += rng.expovariate(1 / wake_jitter)
        return lateness + stalled()

    def stalled() -> float:
        # Now and then the machine stalls for a few milliseconds.
        return rng.expovariate(1 / stall) if stall_share and rng.random() < stall_share else 0.0

    def book(t: float, worker: int) -> None:
        # The Redis store: every sender books its own slot up to ``booking`` ahead, sleeps
        # until it (waking late) and reports the booked time as its send time. A full
        # window's wait is written only when it is news (the store's look writes nothing).
        news, noted = policy.window_wait_is_news(t), policy.state.window_bound_at
        wait, booked = policy.reserve(t, booking)
        if math.isinf(wait) and not news:
            policy.state.window_bound_at = noted
        if booked:
            slot = t + wait
            at(slot + late(), lambda now: send_booked(now, worker, slot))
        else:
            again = _RECHECK_BOOKING if math.isinf(wait) else wait - booking / 2
            at(t + max(_RECHECK_BOOKING, again) + late(), lambda now: book(now, worker))

    gave_back: set[int] = set()  # workers whose request gave a slot back already

    def send_booked(t: float, worker: int, slot: float) -> None:
        # The store's sender, woken later than the policy's limit after its slot, gives the
        # slot back (not in flight: released now) and books another, once per request.
        if worker not in gave_back and t - slot > policy.late_limit():
            gave_back.add(worker)
            policy.release(t)
            book(t, worker)
            return
        gave_back.discard(worker)
        send(t, worker, slot)

    def send(t: float, worker: int, slot: float | None = None) -> None:
        nonlocal first_send, in_flight
        # The first request also opens the client's connection: its answer comes later (so do
        # the first ``connections``: sent before any answer, each opens one).
        setup = first_latency if run.sent < connections else 0.0
        first_send = t if first_send is None else first_send
        run.sent += 1
        sent_at = t if slot is None else slot  # the send time the policy hears of
        # The request reaches the server a little after it left (a busy event loop).
        arrival = t + (rng.uniform(0, send_jitter) if send_jitter else 0.0)
        if send_tail:
            arrival += rng.expovariate(1 / send_tail)  # now and then much later
        arrival += stalled()
        wait = server.admit(arrival)
        answer = t + setup + latency + (rng.uniform(0, latency_jitter) if latency_jitter else 0.0)
        if wait is None:
            in_flight += 1
            run.max_in_flight = max(run.max_in_flight, in_flight)
            at(answer, lambda now: accepted(now, sent_at, worker))
        else:
            header = None
            if limit.retry_after and math.isfinite(wait):
                header = float(max(1, math.ceil(wait)))
            when = t if limit.instant_429 else answer
            at(when, lambda now: refused(now, sent_at, worker, header))

    def accepted(now: float, sent_at: float, worker: int) -> None:
        nonlocal remaining, in_flight, waiting_release
        in_flight -= 1
        server.done(now)
        if report_delay:
            # The Redis store tells the shared state of an answer with the process's next
            # call (or within 0.1 s): meanwhile the request still counts in flight there.
            def report(later: float, answered: float = now) -> None:
                policy.on_success(sent_at, answered)
                policy.release(answered)
                note_pace(later)

            at(now + rng.uniform(0, report_delay), report)
        else:
            policy.on_success(sent_at, now)
            policy.release(now)
            note_pace(now)
        run.accepted_at.append(sent_at)
        if worker in retrying:
            retrying.discard(worker)
        else:
            run.fresh_done = now - (first_send or 0.0)
        attempt_over(now)
        remaining -= 1
        run.wall = now - (first_send or 0.0)
        if waiting_release:
            waiting_release = False
            wake_pacer(now)
        if not clumps:
            next_item(now, worker)
        elif started == requests - remaining:  # the whole batch is answered
            for idle in range(senders):
                next_item(now, idle)

    def refused(now: float, sent_at: float, worker: int, header: float | None) -> None:
        nonlocal waiting_release
        run.refused += 1
        run.refused_at.append(sent_at)
        retrying.add(worker)
        policy.release(now)
        attempt_over(now)
        if policy.on_rate_limited(sent_at, now, header):
            run.cuts += 1
        note_pace(now)
        if waiting_release:
            waiting_release = False
            wake_pacer(now)
        delay = max(rng.random(), header or 0.0)
        at(now + delay, lambda later: want_attempt(later, worker))

    started = 0
    exhausted = False

    def next_item(t: float, worker: int) -> None:
        nonlocal started, exhausted
        if started < requests:
            started += 1
            want_attempt(t, worker)
        elif not exhausted:
            # ``client.map`` finds its input exhausted when it asks for one more item than
            # there are, and tells the limiter (the requests still in progress are all left).
            exhausted = True
            if wind_down:
                policy.wind_down(t, remaining)
                note_pace(t)

    note_pace(start)
    # A clump is ``senders`` requests; otherwise ``items`` are in progress at once.
    at_once = senders if clumps else 2 * senders if items is None else items
    for worker in range(min(at_once, requests + 1)):
        next_item(start, worker)
    while events and remaining > 0:
        t, _, action = heapq.heappop(events)
        if t - start > until:
            break
        action(t)
    return run


def _row_figures(
    limit: RateLimit,
    seeds: Sequence[int],
    *,
    configured: float | None = None,
    machine: Mapping[str, float] = LIVE,
    senders: int = 32,
) -> tuple[float, float, int, ZooRun]:
    """Over ``seeds`` on the ``machine`` (:data:`LIVE`): the mean wall/ideal, the mean 429s
    per 500 requests, the worst seed and its run (the largest wall/ideal)."""
    runs = {
        seed: run_zoo(limit, configured=configured, seed=seed, senders=senders, **machine)
        for seed in seeds
    }
    worst = max(runs, key=lambda seed: runs[seed].ratio)
    ratio = statistics.fmean(run.ratio for run in runs.values())
    refused = statistics.fmean(500 * run.refused / run.requests for run in runs.values())
    return ratio, refused, worst, runs[worst]


def zoo_table(
    seeds: Sequence[int],
    rows: Sequence[str] | None = None,
    *,
    told: bool = False,
    machine: Mapping[str, float] = LIVE,
    instant: bool = False,
    rate: float = LIMIT,
    senders: int = 32,
) -> str:
    """The zoo on the ``machine`` (:data:`LIVE`), one line per row of :data:`TABLE_ROWS`: the
    mean wall/ideal over ``seeds``, the mean 429s per 500 requests, and the worst seed; with
    ``told``, the same told the true limit (and for a limit that drops and comes back, the
    floor: the same for the :class:`ReactingOracle`, see :func:`floor_figures`); with
    ``instant``, every row's server answers
    its 429s at once; every row moved to ``rate`` (:func:`at_rate`), played with
    ``senders`` attempts at once (``max_concurrency``: a cap of more in flight is out of
    the client's reach)."""
    header = f"{'row':32} {'wall/ideal':>10} {'429s/500':>8}  {'worst seed':>19}"
    if told:
        header += f"  {'told: wall':>10} {'429s':>6}  {'floor':>6} {'429s':>5}"
    lines = [header]
    for name in rows or list(TABLE_ROWS):
        limit = at_rate(TABLE_ROWS[name], rate)
        if instant:
            limit = attrs.evolve(limit, instant_429=True)
        ratio, refused, worst, run = _row_figures(limit, seeds, machine=machine, senders=senders)
        line = (
            f"{name:32} {ratio:10.3f} {refused:8.1f}  "
            f"{f'{worst}: {run.ratio:.3f}x, {run.refused}':>19}"
        )
        if told:
            told_ratio, told_refused, _, _ = _row_figures(
                limit, seeds, configured=rate, machine=machine, senders=senders
            )
            line += f"  {told_ratio:10.3f} {told_refused:6.1f}"
            if _changes_back(limit):
                floor, floor_refused = floor_figures(
                    limit, seeds, configured=rate, machine=machine, senders=senders
                )
                line += f"  {floor:6.3f} {floor_refused:5.1f}"
        lines.append(line)
    return "\n".join(lines)


#: Where the seconds of a batch go (:func:`breakdown_table`): its start, and the span over
#: which the accepted rate and the pace are averaged (seconds from the first send).
BREAKDOWN_START = 2.0
BREAKDOWN_SPAN = (2.0, 8.0)


def breakdown_table(
    seeds: Sequence[int],
    rows: Sequence[str] | None = None,
    *,
    told: bool = False,
    machine: Mapping[str, float] = LIVE,
    instant: bool = False,
    rate: float = LIMIT,
    senders: int = 32,
) -> str:
    """Where the seconds go, one line per row of :data:`TABLE_ROWS` (and with ``told``, one
    more told the true limit), means over ``seeds`` on the ``machine``: the wall time over
    the ideal; the requests accepted of those sent in the first :data:`BREAKDOWN_START`
    seconds (the start: slow start, the first cut); the requests accepted per second, and
    the pace, over :data:`BREAKDOWN_SPAN` (by send time: the steady state); and the seconds
    the batch's last answer came after the last answer to a request accepted at its first
    attempt (the end: retries waiting out their ``Retry-After``). ``rate`` and ``senders``
    as for :func:`zoo_table`."""
    low, high = BREAKDOWN_SPAN
    header = (
        f"{'row':40} {'wall/ideal':>10} {f'start {BREAKDOWN_START:g} s':>11} "
        f"{f'taken {low:g}-{high:g} s':>12} {'pace':>6} {'end wait':>8}"
    )
    lines = [header]
    for name in rows or list(TABLE_ROWS):
        limit = at_rate(TABLE_ROWS[name], rate)
        if instant:
            limit = attrs.evolve(limit, instant_429=True)
        for configured in (None, rate) if told else (None,):
            runs = [
                run_zoo(limit, configured=configured, seed=seed, senders=senders, **machine)
                for seed in seeds
            ]
            steps = [low + (high - low) * step / 100 for step in range(100)]
            label = name if configured is None else f"{name}, told"
            ratio = statistics.fmean(run.ratio for run in runs)
            start = statistics.fmean(
                BREAKDOWN_START * run.accepted_rate(0.0, BREAKDOWN_START) for run in runs
            )
            taken = statistics.fmean(run.accepted_rate(low, high) for run in runs)
            pace = statistics.fmean(run.pace_at(t) for run in runs for t in steps)
            end = statistics.fmean(run.end_wait for run in runs)
            lines.append(
                f"{label:40} {ratio:10.3f} {start:11.1f} {taken:12.2f} {pace:6.2f} {end:8.3f}"
            )
    return "\n".join(lines)


def family_table(
    seed_sets: Sequence[Sequence[int]],
    *,
    slow: float = 1.2,
    machine: Mapping[str, float] = LIVE,
    told: bool = False,
) -> str:
    """The drop/return family (:data:`DROP_RETURN_FAMILY`) on the ``machine`` (:data:`LIVE`): per
    set of seeds, the mean wall/ideal and 429s per 500 over its 21 timings, and how many
    runs took more than ``slow`` times the ideal; with ``told``, the same again told the
    limit the family starts at (:data:`LIMIT`), and the floor: the mean wall/ideal and
    429s per 500 of the :class:`ReactingOracle` told it (see :func:`floor_figures`)."""
    header = f"{'family seeds':14} {'wall/ideal':>10} {'429s/500':>8} {f'runs > {slow}x':>12}"
    if told:
        header += f"  {'told: wall':>10} {'429s':>6} {f'> {slow}x':>8}  {'floor':>6} {'429s':>5}"
    lines = [header]
    for seeds in seed_sets:
        name = f"{seeds[0]}-{seeds[-1]}"
        line = f"{name:14} "
        for configured in (None, LIMIT) if told else (None,):
            runs = [
                run_zoo(limit, configured=configured, seed=seed, **machine)
                for limit in DROP_RETURN_FAMILY
                for seed in seeds
            ]
            ratio = statistics.fmean(run.ratio for run in runs)
            refused = statistics.fmean(500 * run.refused / run.requests for run in runs)
            over = f"{sum(run.ratio > slow for run in runs)}/{len(runs)}"
            if configured is None:
                line += f"{ratio:10.4f} {refused:8.1f} {over:>12}"
            else:
                line += f"  {ratio:10.4f} {refused:6.1f} {over:>8}"
        if told:
            floors = [floor_figures(limit, seeds, machine=machine) for limit in DROP_RETURN_FAMILY]
            floor = statistics.fmean(ratio for ratio, _ in floors)
            floor_refused = statistics.fmean(refused for _, refused in floors)
            line += f"  {floor:6.4f} {floor_refused:5.1f}"
        lines.append(line)
    return "\n".join(lines)


class ReactingOracle(AimdPolicy):
    """A bound, not a policy: a client told ``limit``'s schedule (every change of its rate, and
    when), that learns of each change as early as a client that only reacts can, and then
    does the best such a client can, for the drop/return rows (:data:`TABLE_ROWS`' changing
    limits, :data:`DROP_RETURN_FAMILY`).

    It paces as a told client does (:meth:`AimdPolicy.claim`'s schedule, ``HEADROOM`` under
    the limit, no cap on requests in flight): at the told limit ``configured`` from the
    start, and from the first answer (accepted or refused) to a request sent after a change
    of the schedule, a round trip after it at the earliest, at that change's rate (never
    above ``configured``), nothing else moving it: no cut, no probe, no ``Retry-After``
    pause, no coming down at the batch's end. The schedule is read on the server's timeline
    (see :mod:`ailab_async.testing.simulator._limits`), which starts at the first arrival:
    taken here to start at the first send (a millisecond sooner at most).

    At the return it jumps back to the told pace at that first answer: no client that
    reacts knows sooner. At the drop, the first answer after it is a refusal (the window was
    full): it paces at the dropped limit from then on, less ``HEADROOM`` as for a told one,
    through the window's draining too. Kept at the told pace until the draining window took
    a send (as many sends in it as it frees room for), it was no faster and refused twice as
    many (told 50/s, 50 -> 20 -> 50/s at 3 s and 8 s, 40 seeds 0-39 and 40-79: 1.0552x and
    1.0553x the ideal, 18 429s of 500, that way 1.0553x and 1.0554x, 36); with the policy's
    own reaction to the drop and this jump at the return, 1.0547x and 1.0541x, 34 429s; the
    drop/return family 1.0558x and 1.0561x here, 1.0619x and 1.0620x that way. So the row's
    1.0625x (and the target of 1.05x) is measured against about 1.055x, not 1.0x:
    the told headroom, the last answer's round trip, a round trip at the dropped pace after
    the return, and a window that drains at the drop cost a client that reacts and paces
    that much. (A client sending by a sliding window's count, bursting into its free room at
    the return, is not bounded by it; the policy is not told the shape.)

    >>> limit = TABLE_ROWS["50 -> 20 -> 50, at 3 s and 8 s"]
    >>> 1.05 < run_zoo(limit, policy=ReactingOracle(limit), **LIVE).ratio < 1.06
    True
    """

    def __init__(self, limit: RateLimit, configured: float = LIMIT) -> None:
        super().__init__(configured)
        self.told = configured
        self._schedule = list(limit.schedule)
        self._learned = -1  # the last change of the schedule learned of (-1: none)
        self._pace_at(limit.requests_per_second)

    def _pace_at(self, scheduled: float) -> None:
        self.state.rate = max(MIN_RATE, HEADROOM * min(self.told, scheduled))

    def _answered(self, sent_at: float) -> bool:
        """An answer to a request sent at ``sent_at``: whether it is the first after a change
        (the pace goes to that change's rate)."""
        origin = self.state.first_sent
        changes = [index for index, (at, _) in enumerate(self._schedule) if sent_at >= origin + at]
        if not changes or changes[-1] <= self._learned:
            return False
        self._learned = changes[-1]
        self._pace_at(self._schedule[self._learned][1])
        return True

    def on_success(self, sent_at: float, now: float) -> None:
        self._answered(sent_at)

    def on_rate_limited(self, sent_at: float, now: float, retry_after: float | None = None) -> bool:
        return self._answered(sent_at)

    def wind_down(self, now: float, requests: int) -> None:
        pass


def floor_figures(
    limit: RateLimit,
    seeds: Sequence[int],
    *,
    configured: float = LIMIT,
    machine: Mapping[str, float] = LIVE,
    senders: int = 32,
) -> tuple[float, float]:
    """Over ``seeds`` on the ``machine``: the mean wall/ideal and 429s per 500 of the
    :class:`ReactingOracle` told ``configured``, the bound a told client that reacts to
    ``limit``'s changes is judged against."""
    runs = [
        run_zoo(
            limit,
            configured=configured,
            seed=seed,
            senders=senders,
            policy=ReactingOracle(limit, configured),
            **machine,
        )
        for seed in seeds
    ]
    ratio = statistics.fmean(run.ratio for run in runs)
    return ratio, statistics.fmean(500 * run.refused / run.requests for run in runs)


def _changes_back(limit: RateLimit) -> bool:
    """Whether ``limit`` drops and comes back (a row :class:`ReactingOracle` bounds)."""
    rates = [rate for _, rate in limit.schedule]
    return bool(rates) and min(rates) < limit.requests_per_second <= rates[-1]


#: The shared budget the Redis store's tests play (:func:`shared_budget`): four processes of
#: four senders against a server limit of 40/s.
SHARED_LIMIT = 40.0


def shared_budget(
    shape: str,
    latency: float,
    *,
    told: float = 60,
    report_delay: float = 0.0,
    seeds: Sequence[int] = range(4),
    machine: Mapping[str, float] = LIVE,
    policy: Callable[[], AimdPolicy] | None = None,
) -> list[ZooRun]:
    """Four processes of four senders sharing one budget, as the Redis store runs them (one
    state, every sender booking its own slot ahead), told ``told`` against a limit of
    40/s (:data:`SHARED_LIMIT`); answers reach the shared state up to ``report_delay``
    late. Four seeds unless ``seeds``, on the ``machine`` (:data:`LIVE`); ``policy`` makes
    each run's policy (the store's, told ``told``, unless given). Never told to wind down:
    the store has no ``wind_down`` (one process's end is not the batch's)."""
    return [
        run_zoo(
            RateLimit(SHARED_LIMIT, shape=shape),
            policy=None if policy is None else policy(),
            configured=told,
            seed=seed,
            **shared_setting(latency, report_delay),
            **machine,
        )
        for seed in seeds
    ]


def shared_setting(latency: float, report_delay: float) -> dict[str, float | bool]:
    """:func:`run_zoo`'s arguments for :func:`shared_budget`'s batch (no limit, no policy)."""
    return {
        "requests": 400,
        "senders": 16,
        "items": 16,
        "booking": 0.1,
        "report_delay": report_delay,
        "latency": latency,
        "wind_down": False,
    }


class FixedPace(AimdPolicy):
    """A reference, not a policy: a client that sends at the constant ``pace`` it is given
    (requests per second) and never reacts, the bound a client that paces at a constant
    spacing is judged against at a server that allows no burst (a leaky bucket, a token
    bucket of burst 1), with the pace chosen after the fact as the best one
    (:func:`best_fixed_pace`).

    Its sends are spaced ``1 / pace`` on the policy's schedule, as a told client's claims
    are (:meth:`AimdPolicy.reserve`, booking ahead included), the way the told policy
    keeps them once the server has shown it allows no burst: a send never closer than the
    spacing after the last one (a late send is not caught up: with ``catch_up``, it is, as
    close as ``CATCH_UP`` of a spacing, as before any lesson). Nothing else moves it: no
    cut, no probe, no ``Retry-After`` pause, no coming down at the batch's end, no slot
    given back by a sender woken late; a refused request is retried as the zoo retries it
    (after the dispatcher's delay, at least its ``Retry-After``).

    It is no bound for a client that varies its spacing, and none a client could reach
    but by luck: the best pace is picked knowing the machine's jitter over the seeds, and
    the jitter of each send (a timer that fires late, a request that reaches the server
    late) cannot be seen coming. At a queue-free leaky bucket every send that reaches the
    server sooner than ``1 / limit`` after the last one accepted is refused, and its retry
    waits out a whole second: a pace near the limit loses to the jitter, one further under
    it to its own spacing.

    Told the true limit (40 seeds, 0.80-1.00 of the limit by 0.01; ``python -m
    tests._rate_zoo --pace-floor``): four processes sharing a 40/s leaky bucket
    (:func:`shared_budget`, at 5 or 50 ms and reports 0 or 60 ms late), the best constant
    pace reads 1.178x-1.199x the ideal on :data:`LIVE` (at 0.85-0.88 of the limit, 0.8-2.2 %
    refused; the same pace on seeds 40-79 1.188x-1.217x) and 1.140x-1.151x on
    :data:`LIVE_MEASURED` (at 0.93-0.95, 3.0-4.5 %; 1.144x-1.155x), against the policy's
    1.191x-1.210x and 1.155x-1.173x told 40/s, 1.209x-1.220x and 1.186x-1.203x told 60/s:
    the 1.10x the live runs aim at is out of reach of a constant pace on both machines. A
    single process at the zoo's leaky bucket (the same as its token bucket of burst 1),
    1.177x at 0.91 on :data:`LIVE` (the told policy, which does not keep a constant
    spacing, 1.173x) and 1.149x at 0.98 on :data:`LIVE_MEASURED` (the policy 1.185x). With
    ``catch_up`` the best is no better: alone 1.263x and 1.192x, shared (5 ms, reports 60
    ms late) the same 1.191x and 1.149x (each sender books its own slot: none is late for
    the schedule).

    >>> limit = RateLimit(SHARED_LIMIT, shape="leaky-bucket")
    >>> run_zoo(limit, policy=FixedPace(0.5 * SHARED_LIMIT), **LIVE_MEASURED).refused
    0
    """

    def __init__(self, pace: float, *, catch_up: bool = False) -> None:
        super().__init__(pace)  # told: no slow start
        self.state.rate = pace
        if not catch_up:
            # A server known to allow no burst at this pace: a send at least a spacing after
            # the last one (see AimdPolicy.reserve).
            self.state.burstless = pace

    def on_success(self, sent_at: float, now: float) -> None:
        pass

    def on_rate_limited(self, sent_at: float, now: float, retry_after: float | None = None) -> bool:
        return False

    def wind_down(self, now: float, requests: int) -> None:
        pass


#: The paces :func:`best_fixed_pace` tries by default: 0.80 to 1.00 of the limit, by 0.01.
PACE_FRACTIONS = tuple(round(0.80 + step / 100, 2) for step in range(21))


def best_fixed_pace(
    limit: RateLimit,
    fractions: Sequence[float] = PACE_FRACTIONS,
    seeds: Sequence[int] = range(40),
    *,
    catch_up: bool = False,
    **run_kwargs: float | bool,
) -> tuple[float, float, float]:
    """The best constant pace at ``limit`` (:class:`FixedPace`, with ``catch_up`` as there):
    for each of ``fractions`` of its rate, the mean wall/ideal over ``seeds`` of
    :func:`run_zoo` (given ``run_kwargs``: the batch and the machine); returns the fraction
    whose mean is the lowest, that mean, and its mean share of requests refused."""
    rate = limit.requests_per_second
    figures = []
    for fraction in fractions:
        runs = [
            run_zoo(
                limit,
                policy=FixedPace(fraction * rate, catch_up=catch_up),
                seed=seed,
                **run_kwargs,
            )
            for seed in seeds
        ]
        ratio = statistics.fmean(run.ratio for run in runs)
        figures.append((ratio, fraction, statistics.fmean(run.refused_share for run in runs)))
    ratio, fraction, refused = min(figures)
    return fraction, ratio, refused


#: The single-process rows :func:`pace_floor_table` sets against the best constant pace: the
#: zoo's leaky bucket only, which the simulator builds as a token bucket of burst 1 (its
#: "token bucket, burst 1" row is the same server and reads the same).
PACE_FLOOR_ROWS = ("leaky bucket",)


def pace_floor_table(
    seeds: Sequence[int] = range(40),
    *,
    machine: Mapping[str, float] = LIVE,
    fractions: Sequence[float] = PACE_FRACTIONS,
) -> str:
    """Told the true limit at a server that allows no burst, the policy against the best
    constant pace (:func:`best_fixed_pace`), on the ``machine`` (:data:`LIVE`), means over
    ``seeds``: per line, the policy's wall/ideal and share of requests refused, the best
    constant pace's, the fraction of the limit it paces at, and the same pace read again on
    as many seeds after those (the best of ``fractions`` is picked on ``seeds``: read on
    them alone it is a little lucky, by about a hundredth). The lines: the shared budget
    (:func:`shared_budget`: four processes booking slots ahead, a 40/s leaky bucket) at
    each latency and report delay the Redis store's tests play, the policy told 40/s and
    60/s (the same server, so the same reference), and the zoo's rows of
    :data:`PACE_FLOOR_ROWS` as ``--told`` plays them."""
    again = range(max(seeds) + 1, max(seeds) + 1 + len(seeds))
    header = (
        f"{'setting':38} {'policy':>7} {'429s':>6}  {'best pace':>9} {'429s':>6}"
        f" {'fraction':>8}  {'again':>6}"
    )
    lines = [header]

    def reference(limit: RateLimit, **run_kwargs: float | bool) -> str:
        fraction, ratio, refused = best_fixed_pace(limit, fractions, seeds, **run_kwargs)
        runs = [
            run_zoo(
                limit,
                policy=FixedPace(fraction * limit.requests_per_second),
                seed=seed,
                **run_kwargs,
            )
            for seed in again
        ]
        ratio_again = statistics.fmean(run.ratio for run in runs)
        return f"{ratio:9.3f} {refused:6.1%} {fraction:8.2f}  {ratio_again:6.3f}"

    leaky = RateLimit(SHARED_LIMIT, shape="leaky-bucket")
    for latency in (0.005, 0.05):
        for report_delay in (0.0, 0.06):
            setting = f"shared, {latency * 1000:g} ms, reports {report_delay * 1000:g} ms"
            floor = reference(leaky, **shared_setting(latency, report_delay), **machine)
            for told in (SHARED_LIMIT, 60.0):
                runs = shared_budget(
                    "leaky-bucket",
                    latency,
                    told=told,
                    report_delay=report_delay,
                    seeds=seeds,
                    machine=machine,
                )
                ratio = statistics.fmean(run.ratio for run in runs)
                refused = statistics.fmean(run.refused_share for run in runs)
                label = f"{setting}, told {told:g}"
                lines.append(f"{label:38} {ratio:7.3f} {refused:6.1%}  {floor}")
    floors: dict[RateLimit, str] = {}
    for name in PACE_FLOOR_ROWS:
        limit = ZOO[name][0]
        if limit not in floors:
            floors[limit] = reference(limit, **machine)
        runs = [run_zoo(limit, configured=LIMIT, seed=seed, **machine) for seed in seeds]
        ratio = statistics.fmean(run.ratio for run in runs)
        refused = statistics.fmean(run.refused_share for run in runs)
        lines.append(f"{name + ', told':38} {ratio:7.3f} {refused:6.1%}  {floors[limit]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests._rate_zoo [--seeds N] [--first-seed K] [--rows NAME ...] [--told]
    [--family] [--family-seeds N] [--measured] [--instant] [--phase] [--breakdown] [--rate R]
    [--senders N] [--pace-floor]``: the zoo table on the live benchmark's machine (:data:`LIVE`;
    with ``--measured``, :data:`LIVE_MEASURED`; with ``--phase``, its clock starting at any point of
    a send-time bucket, as live; with ``--rate``, every row moved to that many requests per second,
    a cap in flight to what that rate holds at 0.2 s, as the live benchmark's ``--rps``: see
    :func:`at_rate`; with ``--senders``, that many attempts at once), and with ``--family`` the
    drop/return family's mean on two sets of seeds (0 to N-1 and N to 2N-1, with ``--told`` told the
    limit too, beside the floor of a told client that reacts: :class:`ReactingOracle`, as for the
    changing rows of the table); with ``--breakdown``, where each row's seconds go
    (:func:`breakdown_table`) instead of the table; with ``--pace-floor``, told the limit of a
    server that allows no burst, the policy against the best constant pace on both machines
    (:func:`pace_floor_table`, a minute or two) instead of the table. Clock-free: the whole table
    takes seconds."""
    parser = argparse.ArgumentParser(prog="python -m tests._rate_zoo")
    parser.add_argument("--seeds", type=int, default=40, help="runs per row (default 40)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first run's seed")
    parser.add_argument(
        "--rows", nargs="+", choices=list(TABLE_ROWS), metavar="NAME", help="rows of the zoo (all)"
    )
    parser.add_argument(
        "--told",
        action="store_true",
        help="also told the true limit (and the floor of the changing rows)",
    )
    parser.add_argument(
        "--instant", action="store_true", help="every row's server answers its 429s at once"
    )
    parser.add_argument("--family", action="store_true", help="also the drop/return family")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="where the seconds go (start, steady state, end), not the table",
    )
    parser.add_argument(
        "--family-seeds", type=int, default=40, help="seeds per family set (default 40)"
    )
    parser.add_argument(
        "--family-only", action="store_true", help="the drop/return family only, no rows"
    )
    parser.add_argument(
        "--measured", action="store_true", help="on LIVE_MEASURED, not LIVE (the machine)"
    )
    parser.add_argument(
        "--pace-floor",
        action="store_true",
        help="told the limit of a leaky bucket, the policy against the best constant pace, "
        "on both machines (LIVE and LIVE_MEASURED), not the table",
    )
    parser.add_argument(
        "--phase", action="store_true", help="the clock starts anywhere in a bucket (as live)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=LIMIT,
        help=f"every row at this many requests per second (default {LIMIT:g}; a cap in flight"
        f" holds {ZOO_LATENCY:g} s of it)",
    )
    parser.add_argument(
        "--senders", type=int, default=32, help="attempts at once (max_concurrency, default 32)"
    )
    args = parser.parse_args(argv)
    machine = LIVE_MEASURED if args.measured else LIVE
    if args.phase:
        machine = {**machine, "start_phase": BUCKET}
    if args.seeds < 1 or args.family_seeds < 1 or args.senders < 1:
        parser.error("--seeds, --family-seeds and --senders must be at least 1")
    if not (args.rate > 0 and math.isfinite(args.rate)):
        parser.error("--rate must be a positive number")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.pace_floor:
        for name, measured in (("LIVE", LIVE), ("LIVE_MEASURED", LIVE_MEASURED)):
            print(f"{name}:")
            print(pace_floor_table(seeds, machine=measured))
        return
    table = breakdown_table if args.breakdown else zoo_table
    if not args.family_only:
        print(
            table(
                seeds,
                args.rows,
                told=args.told,
                machine=machine,
                instant=args.instant,
                rate=args.rate,
                senders=args.senders,
            )
        )
    if args.family or args.family_only:
        count = args.family_seeds
        print(
            family_table([range(count), range(count, 2 * count)], machine=machine, told=args.told)
        )


if __name__ == "__main__":
    main()
