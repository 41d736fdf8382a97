"""Several processes on one account's rate limit: the Redis-shared budget vs the ideal, on a zoo.

One simulator (in a process of its own) limits the API key to ``--rate`` requests/s, in one of
several shapes (``--shapes``: a token bucket of ``ceil(rate)``, a sliding window, a fixed
window, a leaky bucket). ``--processes`` OS processes, each with its own ``AILabClient``
calling ``query-credits`` from ``--concurrency`` loops, make ``--calls`` calls each, from one
agreed start, in each phase:

* ``shared, told the limit``: every client uses ``RedisRateLimiter(redis, name=..., rate=RATE)``
  on one ``redis-server`` (started here on a free port of 127.0.0.1 unless ``--redis-url``);
  target: done within 1.10x the ideal;
* ``shared, told 1.5x``: the same, every process told ``rate=1.5 * RATE`` (a wrong figure
  the shared policy must correct from the server's 429s); target: within 1.20x;
* ``per-process limit``: every client has ``rate_limit=RATE`` of its own, what a deployment
  gets without sharing: together they ask for ``processes * RATE`` (no target: the contrast);
* ``fixed pace P/s`` (``--phases pace``, one row per pace of ``--paces``): no Redis and no
  adaptation, the processes keep to one fixed schedule of P requests/s in total, slots dealt
  in turn, by the wall clock they share (``FixedPace`` in ``benchmarks/_common.py``): what the
  best constant pace any shared client could keep does on this machine, the oracle to read
  the shared rows against (a server with no burst refuses sends a millisecond early, and
  the processes' send times jitter by about that; no target).

The ideal is ``processes * calls / RATE`` seconds. The wall time runs from the agreed start to
the last call's answer (start-up, which each process does before the start, excluded). For
each phase: the ratio to the ideal, the 429s the simulator answered, the errors callers saw
(target: none), and each process's share; with ``--seconds``, where the seconds went: the
requests the simulator accepted and refused in each second, and the shared pace the first
process saw every half second. Completion times are recorded in each worker (one
machine, one wall clock) and merged here.

    python -m benchmarks.bench_shared_limit [--processes 4] [--rate 40] [--calls 100]
                                            [--concurrency 4] [--shapes bucket,sliding,...]
                                            [--phases shared,wrong,per-process,pace]
                                            [--paces 38,37,36] [--seconds]
                                            [--redis-url URL] [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ._common import (
    FIXED_PACE,
    OWN_LIMIT,
    SHARED_BUDGET,
    CreditWorkload,
    Progress,
    RedisServer,
    SimulatorProcess,
    add_output_options,
    environment,
    package_version,
    progress_printer,
    redis_server_version,
    run_credit_workers,
    run_record,
    write_json,
)

if TYPE_CHECKING:
    from ailab_async.testing.simulator import RateShape


@dataclass(frozen=True)
class Phase:
    """How the processes limit themselves: ``mode`` of :class:`CreditWorkload`, the rate
    each is told as a multiple of the true one, and the target (``None``: none)."""

    key: str
    label: str
    mode: str
    told: float
    target: float | None
    #: A fixed phase's pace in requests/s (``told`` is then unused).
    pace: float | None = None


PHASES = {
    phase.key: phase
    for phase in (
        Phase("shared", "shared, told the limit", SHARED_BUDGET, 1.0, 1.10),
        Phase("wrong", "shared, told 1.5x", SHARED_BUDGET, 1.5, 1.20),
        Phase("per-process", "per-process limit", OWN_LIMIT, 1.0, None),
        Phase("pace", "fixed pace", FIXED_PACE, 1.0, None),
    )
}
#: The phases run unless ``--phases`` says otherwise (the fixed paces only when asked for).
DEFAULT_PHASES = ("shared", "wrong", "per-process")
#: The fixed paces of ``--phases pace``, in requests/s at the default rate of 40/s
#: (``--paces``; scaled with ``--rate``).
DEFAULT_PACES = (38.0, 37.0, 36.0)


def fixed_phases(paces: Sequence[float]) -> list[Phase]:
    """One fixed-pace phase per pace (requests/s, all processes together)."""
    return [Phase("pace", f"fixed pace {pace:g}/s", FIXED_PACE, 1.0, None, pace) for pace in paces]


#: The simulator's limiter shapes this benchmark runs (``--shapes``).
SHAPES: dict[str, RateShape] = {
    "bucket": "token-bucket",
    "sliding": "sliding-window",
    "fixed": "fixed-window",
    "leaky": "leaky-bucket",
}


# --- one phase ----------------------------------------------------------------------------


@dataclass
class PhaseResult:
    shape: str
    phase: str
    processes: int
    rate: float
    told_rate: float
    calls: int
    wall_seconds: float
    rejected_429: int
    caller_errors: dict[str, int]
    target: float | None
    per_process: list[int] = field(default_factory=list)
    #: Requests the simulator accepted and refused in each second from the first arrival.
    accepted_per_second: list[int] = field(default_factory=list)
    refused_per_second: list[int] = field(default_factory=list)
    #: The shared pace the first process saw, ``(seconds from the start, req/s)`` every
    #: half second (shared phases only).
    paces: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ideal_seconds(self) -> float:
        return self.calls / self.rate

    @property
    def ratio(self) -> float:
        return self.wall_seconds / self.ideal_seconds

    @property
    def meets_target(self) -> bool | None:
        if self.target is None:
            return None
        completed = sum(self.per_process)
        return not self.caller_errors and completed == self.calls and self.ratio <= self.target


def run_phase(
    shape: str,
    phase: Phase,
    *,
    processes: int,
    rate: float,
    calls: int,
    concurrency: int,
    redis_url: str,
) -> PhaseResult:
    from ailab_async.testing.simulator import (  # noqa: PLC0415 - Pillow: only when benchmarking
        RateLimit,
        SimulatorConfig,
    )

    config = SimulatorConfig(rate_limit=RateLimit(rate, shape=SHAPES[shape]))
    ideal = processes * calls / rate
    told_rate = phase.pace if phase.pace is not None else phase.told * rate
    with SimulatorProcess(config) as sim:
        workload = CreditWorkload(
            mode=phase.mode,
            redis_url=redis_url,
            base_url=sim.url,
            api_key=sim.api_key,
            budget_name=f"bench-{uuid.uuid4().hex[:12]}",
            rate=told_rate,
            seconds=4 * ideal + 10,  # a time limit only: each process stops after its calls
            concurrency=concurrency,
            calls=calls,
        )
        results, start_at = asyncio.run(run_credit_workers(workload, processes))
        stats = sim.stats()
        rejected = stats.count(outcome="EXCEEDING_LIMITS")
    done = [t for result in results for t in result["done"]]
    errors: collections.Counter[str] = collections.Counter()
    for result in results:
        errors.update(result["errors"])
    return PhaseResult(
        shape=shape,
        phase=phase.label,
        processes=processes,
        rate=rate,
        told_rate=told_rate,
        calls=processes * calls,
        wall_seconds=max(done, default=start_at) - start_at,
        rejected_429=rejected,
        caller_errors=dict(errors),
        target=phase.target,
        per_process=[len(result["done"]) for result in results],
        accepted_per_second=per_second(stats.admitted_at, stats.refused_at),
        refused_per_second=per_second(stats.refused_at, stats.admitted_at),
        paces=[(t, rate) for t, rate in results[0].get("paces", [])] if results else [],
    )


def per_second(times: Sequence[float], others: Sequence[float]) -> list[int]:
    """How many of ``times`` fall in each second from the first of ``times`` and ``others``
    (the simulator's clock: arrival times, accepted and refused)."""
    if not times:
        return []
    first = min(times[0], others[0]) if others else times[0]
    counts = [0] * (int(times[-1] - first) + 1)
    for t in times:
        counts[int(t - first)] += 1
    return counts


def run_benchmark(
    *,
    processes: int,
    rate: float,
    calls: int,
    concurrency: int,
    shapes: Sequence[str],
    phases: Sequence[str],
    redis_url: str | None,
    progress: Progress | None = None,
    paces: Sequence[float] = DEFAULT_PACES,
) -> list[PhaseResult]:
    chosen = [
        phase
        for key in phases
        for phase in (fixed_phases(paces) if key == "pace" else [PHASES[key]])
    ]

    def run_all(url: str) -> list[PhaseResult]:
        results = []
        for shape in shapes:
            for phase in chosen:
                if progress:
                    progress(f"{shape} / {phase.label}: {processes} processes x {calls} calls ...")
                result = run_phase(
                    shape,
                    phase,
                    processes=processes,
                    rate=rate,
                    calls=calls,
                    concurrency=concurrency,
                    redis_url=url,
                )
                results.append(result)
                if progress:
                    progress(f"  {result.ratio:.2f}x ideal, {result.rejected_429} x 429")
        return results

    needs_redis = any(PHASES[key].mode == SHARED_BUDGET for key in phases)
    if redis_url is not None or not needs_redis:
        return run_all(redis_url or "")
    with RedisServer() as server:
        return run_all(server.url)


def format_table(results: Sequence[PhaseResult]) -> str:
    lines = [
        f"{'shape':<9} {'phase':<24} {'procs':>5} {'told/s':>7} {'ideal s':>8} {'wall s':>7} "
        f"{'x ideal':>8} {'target':>7} {'429s':>6} {'caller errors':<14} per process",
    ]
    for r in results:
        errors = ", ".join(f"{k} {v}" for k, v in r.caller_errors.items()) or "none"
        target = "-" if r.target is None else f"{r.target:.2f}x"
        verdict = " MISSED" if r.meets_target is False else ""
        lines.append(
            f"{r.shape:<9} {r.phase:<24} {r.processes:>5} {r.told_rate:>7.1f} "
            f"{r.ideal_seconds:>8.1f} {r.wall_seconds:>7.2f} {r.ratio:>7.2f}x {target:>7} "
            f"{r.rejected_429:>6} {errors:<14} {r.per_process}{verdict}"
        )
    lines.append(
        "wall = from the agreed start (start-up excluded) to the last answer; ideal = all calls "
        "at the true rate; 429s = EXCEEDING_LIMITS answers at the simulator (retried by clients)"
    )
    missed = [f"{r.shape} / {r.phase}" for r in results if r.meets_target is False]
    lines.append("all targets met" if not missed else f"targets MISSED: {', '.join(missed)}")
    return "\n".join(lines)


def format_seconds(results: Sequence[PhaseResult]) -> str:
    """Where each phase's seconds went: accepted and refused per second at the simulator,
    and the shared pace the first process saw every half second."""
    lines = []
    for r in results:
        lines.append(f"{r.shape} / {r.phase}: {r.ratio:.2f}x, {r.rejected_429} x 429")
        lines.append(f"  accepted per second: {r.accepted_per_second}")
        lines.append(f"  refused per second:  {r.refused_per_second}")
        if r.paces:
            lines.append(f"  shared pace every 0.5 s: {[round(rate, 1) for _, rate in r.paces]}")
    return "\n".join(lines)


def _environment() -> dict[str, str]:
    return {
        **environment(),
        "redis-py": package_version("redis"),
        "redis-server": redis_server_version(),
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=4, help="OS processes (default 4)")
    parser.add_argument("--rate", type=float, default=40.0, help="account limit, req/s (40)")
    parser.add_argument("--calls", type=int, default=100, help="calls per process (100)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight per process")
    parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    parser.add_argument(
        "--paces",
        help="comma-separated total paces in req/s for --phases pace "
        "(default 38,37,36 at 40/s, scaled with --rate)",
    )
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help=f"comma-separated subset of {', '.join(SHAPES)} (default all)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(DEFAULT_PHASES),
        help=f"comma-separated subset of {', '.join(PHASES)} (default {','.join(DEFAULT_PHASES)})",
    )
    parser.add_argument(
        "--seconds",
        action="store_true",
        help="also print where each phase's seconds went (per second, and the shared pace)",
    )
    add_output_options(parser, check="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    for option, known in (("phases", PHASES), ("shapes", SHAPES)):
        chosen = [p.strip() for p in getattr(args, option).split(",") if p.strip()]
        unknown = [p for p in chosen if p not in known]
        if unknown:
            parser.error(f"unknown {option}: {', '.join(unknown)}")
        setattr(args, option, chosen)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    try:
        args.paces = (
            [float(p) for p in args.paces.split(",") if p.strip()]
            if args.paces
            else [pace * args.rate / 40.0 for pace in DEFAULT_PACES]
        )
    except ValueError:
        parser.error(f"--paces must be numbers, got {args.paces!r}")
    if not args.paces or any(not 0 < p < float("inf") for p in args.paces):
        parser.error("--paces must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.time()
    results = run_benchmark(
        processes=args.processes,
        rate=args.rate,
        calls=args.calls,
        concurrency=args.concurrency,
        shapes=args.shapes,
        phases=args.phases,
        redis_url=args.redis_url,
        progress=progress_printer(args.quiet),
        paces=args.paces,
    )
    print(format_table(results))
    if args.seconds:
        print(format_seconds(results))
    if args.json:
        payload = {
            "benchmark": "shared-limit",
            "run": run_record(started),
            "settings": {
                "processes": args.processes,
                "rate": args.rate,
                "calls": args.calls,
                "concurrency": args.concurrency,
            },
            "environment": _environment(),
            "phases": [
                {
                    **asdict(r),
                    "ideal_seconds": r.ideal_seconds,
                    "ratio": r.ratio,
                    "meets_target": r.meets_target,
                }
                for r in results
            ],
        }
        write_json(args.json, payload)
    missed = any(r.meets_target is False for r in results)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
