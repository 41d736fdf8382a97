"""Several processes on one account's rate limit: the Redis-shared budget vs the ideal.

One simulator (in this process) limits the API key to ``--rate`` requests/s (a token bucket
of ``ceil(rate)``). ``--processes`` OS processes, each with its own ``AILabClient`` calling
``query-credits`` from ``--concurrency`` loops flat out, run for ``--seconds`` in each phase:

* ``shared Redis budget``: every client uses ``RedisRateLimiter(redis, name=..., rate=RATE)``
  on one ``redis-server`` (started here on a free port of 127.0.0.1 unless ``--redis-url``);
* ``per-process limit``: every client has ``rate_limit=RATE`` of its own, what a deployment
  gets without sharing: together they ask for ``processes * RATE``.

The ideal is ``RATE`` requests/s with no 429 at all. For each phase: the combined rate of
successful calls over the steady window (after the first second, before the last half
second), its ratio to the ideal, the 429s the simulator answered, the errors callers saw, and
each process's share. Completion times are recorded in each worker (one machine, one wall
clock) and merged here.

    python -m benchmarks.bench_shared_limit [--processes 4] [--rate 40] [--seconds 10]
                                            [--concurrency 4] [--redis-url URL]
                                            [--phases shared,per-process] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ._common import (
    OWN_LIMIT,
    SHARED_BUDGET,
    CreditWorkload,
    Progress,
    RedisServer,
    add_output_options,
    environment,
    package_version,
    progress_printer,
    redis_server_version,
    run_credit_workers,
    write_json,
)

SHARED = "shared Redis budget"
PER_PROCESS = "per-process limit"
PHASES = {SHARED_BUDGET: SHARED, OWN_LIMIT: PER_PROCESS}
_RAMP_UP = 1.0
_DRAIN = 0.5


# --- one phase ----------------------------------------------------------------------------


@dataclass
class PhaseResult:
    phase: str
    processes: int
    ideal_rate: float
    seconds: float
    steady_rate: float
    overall_rate: float
    rejected_429: int
    caller_errors: dict[str, int]
    per_process: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.steady_rate / self.ideal_rate


async def run_phase(
    mode: str, *, processes: int, rate: float, seconds: float, concurrency: int, redis_url: str
) -> PhaseResult:
    from ailab_async.testing.simulator import (  # noqa: PLC0415 - Pillow: only when benchmarking
        RateLimit,
        Simulator,
        SimulatorConfig,
    )

    async with Simulator(SimulatorConfig(rate_limit=RateLimit(rate))) as sim:
        workload = CreditWorkload(
            mode=mode,
            redis_url=redis_url,
            base_url=sim.url,
            api_key=sim.api_key,
            budget_name=f"bench-{uuid.uuid4().hex[:12]}",
            rate=rate,
            seconds=seconds,
            concurrency=concurrency,
        )
        results, start_at = await run_credit_workers(workload, processes)
        rejected = sim.stats.count(outcome="EXCEEDING_LIMITS")
    done = [t for result in results for t in result["done"]]
    window_start, window_end = start_at + _RAMP_UP, start_at + seconds - _DRAIN
    steady = sum(1 for t in done if window_start <= t < window_end) / (window_end - window_start)
    errors: collections.Counter[str] = collections.Counter()
    for result in results:
        errors.update(result["errors"])
    return PhaseResult(
        phase=PHASES[mode],
        processes=processes,
        ideal_rate=rate,
        seconds=seconds,
        steady_rate=steady,
        overall_rate=len(done) / max(seconds, max(done, default=start_at) - start_at),
        rejected_429=rejected,
        caller_errors=dict(errors),
        per_process=[len(result["done"]) for result in results],
    )


def run_benchmark(
    *,
    processes: int,
    rate: float,
    seconds: float,
    concurrency: int,
    phases: Sequence[str],
    redis_url: str | None,
    progress: Progress | None = None,
) -> list[PhaseResult]:
    async def run_all(url: str) -> list[PhaseResult]:
        results = []
        for mode in phases:
            if progress:
                progress(f"phase {PHASES[mode]}: {processes} processes, {seconds:g} s ...")
            results.append(
                await run_phase(
                    mode,
                    processes=processes,
                    rate=rate,
                    seconds=seconds,
                    concurrency=concurrency,
                    redis_url=url,
                )
            )
        return results

    if redis_url is not None or SHARED_BUDGET not in phases:
        return asyncio.run(run_all(redis_url or ""))
    with RedisServer() as server:
        return asyncio.run(run_all(server.url))


def format_table(results: Sequence[PhaseResult]) -> str:
    lines = [
        f"{'phase':<22} {'procs':>5} {'ideal/s':>8} {'steady/s':>9} {'ratio':>7} "
        f"{'overall/s':>10} {'429s':>6} {'caller errors':<14} per process",
    ]
    for r in results:
        errors = ", ".join(f"{k} {v}" for k, v in r.caller_errors.items()) or "none"
        lines.append(
            f"{r.phase:<22} {r.processes:>5} {r.ideal_rate:>8.1f} {r.steady_rate:>9.2f} "
            f"{r.ratio:>7.1%} {r.overall_rate:>10.2f} {r.rejected_429:>6} {errors:<14} "
            f"{r.per_process}"
        )
    lines.append(
        f"steady = successful calls/s from {_RAMP_UP:g} s after the start to {_DRAIN:g} s "
        "before the end; 429s = EXCEEDING_LIMITS answers at the simulator (retried by clients)"
    )
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
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase (10)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight per process")
    parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    parser.add_argument(
        "--phases",
        default="shared,per-process",
        help="comma-separated: shared, per-process (default both)",
    )
    add_output_options(parser)
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(unknown)}")
    if args.seconds <= _RAMP_UP + _DRAIN:
        parser.error(f"--seconds must exceed {_RAMP_UP + _DRAIN:g}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    results = run_benchmark(
        processes=args.processes,
        rate=args.rate,
        seconds=args.seconds,
        concurrency=args.concurrency,
        phases=args.phases,
        redis_url=args.redis_url,
        progress=progress_printer(args.quiet),
    )
    print(format_table(results))
    if args.json:
        payload = {
            "settings": {
                "processes": args.processes,
                "rate": args.rate,
                "seconds": args.seconds,
                "concurrency": args.concurrency,
            },
            "environment": _environment(),
            "phases": [{**asdict(r), "ratio": r.ratio} for r in results],
        }
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
