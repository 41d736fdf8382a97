"""How far from its booked slot a sender of the Redis-shared budget is let out.

``--processes`` OS processes, each with one ``RedisRateLimiter`` on one budget (on a
``redis-server`` started here on a free port of 127.0.0.1 unless ``--redis-url``), told
``--rate`` requests/s, run ``--senders`` loops each: ``acquire``, a 5 ms "request", release,
success, ``--calls`` times a loop, from one agreed start. Each process first reads the offset
of Redis's clock from its own (the ``TIME`` reading of least round trip among 50), and records,
for every ``acquire``, the time it returned on Redis's clock minus the slot it returned: how
late the sender is let out. A server that allows no burst (a leaky bucket) refuses a request
that arrives closer than a spacing after the one before: senders of several processes let out
late by different amounts arrive so now and then, whatever the pace.

    python -m benchmarks.bench_redis_slots [--processes 4] [--senders 4] [--calls 25]
                                           [--rate 40] [--redis-url URL] [--json out.json]

No target: the figures compare code before and after a change, in the same sitting (they are
real-time figures: run one at a time on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ._common import (
    add_output_options,
    environment,
    package_version,
    redis_server_version,
    redis_url,
    write_json,
)

#: The stand-in for a request's round trip (seconds).
REQUEST = 0.005


async def _redis_offset(client: Any, readings: int = 50) -> float:
    """Redis's clock minus this one's, from the ``TIME`` reading of least round trip."""
    best = (0.0, float("inf"))
    for _ in range(readings):
        before = time.time()
        seconds, microseconds = await client.time()
        after = time.time()
        if after - before < best[1]:
            best = (float(seconds) + microseconds / 1e6 - (before + after) / 2, after - before)
    return best[0]


async def _process(url: str, name: str, rate: float, senders: int, calls: int, start: float) -> Any:
    import redis.asyncio as aioredis  # noqa: PLC0415 - the optional extra, needed here only

    from ailab_async.contrib.redis import RedisRateLimiter  # noqa: PLC0415

    client = aioredis.Redis.from_url(url)
    try:
        offset = await _redis_offset(client)
    finally:
        await client.aclose()
    late: list[float] = []
    async with RedisRateLimiter(url, name=name, rate=rate) as limiter:
        await asyncio.sleep(max(0.0, start - time.time()))

        async def sender() -> None:
            for _ in range(calls):
                slot = await limiter.acquire()
                late.append(time.time() + offset - slot)
                await asyncio.sleep(REQUEST)
                limiter.on_success(slot)
                limiter.release(slot)

        await asyncio.gather(*(sender() for _ in range(senders)))
    return late


def _run_process(arguments: tuple[str, str, float, int, int, float]) -> list[float]:
    result: list[float] = asyncio.run(_process(*arguments))
    return result


def _measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    name = f"bench-slots-{uuid.uuid4().hex[:8]}"
    start = time.time() + 1.0 + 0.5 * args.processes  # after every process has started
    work = (url, name, args.rate, args.senders, args.calls, start)
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        results = pool.map(_run_process, [work] * args.processes)
    late = sorted(seconds * 1000 for result in results for seconds in result)

    def quantile(share: float) -> float:
        return round(late[min(len(late) - 1, int(share * len(late)))], 2)

    return {
        "processes": args.processes,
        "senders": args.senders,
        "rate": args.rate,
        "sends": len(late),
        "late_ms": {
            "mean": round(statistics.mean(late), 2),
            "sd": round(statistics.pstdev(late), 2),
            "p5": quantile(0.05),
            "median": quantile(0.5),
            "p95": quantile(0.95),
            "max": round(late[-1], 2),
        },
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=4, help="OS processes (default 4)")
    parser.add_argument("--senders", type=int, default=4, help="senders per process (4)")
    parser.add_argument("--calls", type=int, default=25, help="calls per sender (25)")
    parser.add_argument("--rate", type=float, default=40.0, help="the shared rate, req/s (40)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    add_output_options(parser, quiet=False)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    with redis_url(args.redis_url) as url:
        result = _measure(args, url)
    late = result["late_ms"]
    print(
        f"{result['processes']} processes x {result['senders']} senders, {result['sends']} "
        f"sends at {result['rate']:g}/s: let out after the slot by {late['mean']:.2f} ms on "
        f"average (sd {late['sd']:.2f}; p5 {late['p5']:.2f}, median {late['median']:.2f}, "
        f"p95 {late['p95']:.2f}, max {late['max']:.2f} ms)"
    )
    if args.json:
        result["environment"] = {
            **environment(),
            "redis": package_version("redis"),
            "redis-server": redis_server_version(),
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
