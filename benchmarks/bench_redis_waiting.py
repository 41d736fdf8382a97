"""What waiting on a full shared window costs Redis, and how soon an own release lets a sender out.

``--processes`` limiters (in this one process, each with its own connection pool and booker,
as separate processes would have) share one ``RedisRateLimiter`` budget on a ``redis-server``
(started here on a free port of 127.0.0.1 unless ``--redis-url``). The first one books a slot
and reports it answered after 0.2 s (the round trip), then books three more at ``--rate``
and reports a ``429`` for one of them: the shared window is then two requests, both held by
it. Then:

* **waiting**: every limiter has a sender waiting for a slot, for ``--seconds``; measured from
  Redis's own counters (``INFO stats`` and ``INFO commandstats``, deltas): the commands per
  second it serves, and the transactions it applies (``EXEC``) and the write commands per
  second, while nothing can be sent;
* **own release**: only the first limiter has a sender waiting; it releases one of its
  requests, ``--rounds`` times, ``0.3 s`` apart (the pace is not what holds the sender back):
  the time from the release to the waiting sender's ``acquire`` returning.

    python -m benchmarks.bench_redis_waiting [--processes 4] [--seconds 3] [--rounds 20]
                                             [--rate 10] [--redis-url URL] [--json out.json]

No target: the figures compare code before and after a change, in the same sitting.
"""

from __future__ import annotations

import argparse
import asyncio
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

#: Redis commands that write (what a waiting booker should not send).
WRITE_COMMANDS = ("hset", "hdel", "pexpire", "set", "del")


async def _counters(client: Any) -> tuple[float, int, dict[str, int]]:
    """Now, Redis's total commands served, and the calls per command."""
    stats = await client.info("stats")
    commands = await client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in commands.items()}
    return time.perf_counter(), int(stats["total_commands_processed"]), calls


async def _measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    import redis.asyncio as aioredis  # noqa: PLC0415 - the optional extra, needed here only

    from ailab_async.contrib.redis import RedisRateLimiter  # noqa: PLC0415

    name = f"bench-waiting-{uuid.uuid4().hex[:8]}"
    limiters = [RedisRateLimiter(url, name=name, rate=args.rate) for _ in range(args.processes)]
    client = aioredis.Redis.from_url(url)
    first = limiters[0]
    try:
        # The window: one request answered after 0.2 s (the round trip the policy learns),
        # one refused with two others in flight: it holds two, both the first's.
        answered = await first.acquire()
        await asyncio.sleep(0.2)
        first.on_success(answered)
        first.release(answered)
        held = [await first.acquire() for _ in range(3)]
        first.release(held[0])
        first.on_rate_limited(held[0])
        await first.flush()
        held = held[1:]
        state = await client.hgetall(first.key)
        window, in_flight = float(state[b"window"]), int(state[b"in_flight"])
        if in_flight < window:
            raise SystemExit(f"the window is not full: {in_flight} in flight, window {window}")

        waiters = [asyncio.create_task(limiter.acquire()) for limiter in limiters]
        await asyncio.sleep(0.3)  # every booker looking at the full window
        start_at, start_total, start_calls = await _counters(client)
        await asyncio.sleep(args.seconds)
        end_at, end_total, end_calls = await _counters(client)
        if any(waiter.done() for waiter in waiters):
            raise SystemExit("a sender got a slot while the window was full")
        elapsed = end_at - start_at
        # (The two INFO calls of the first snapshot are counted; negligible.)
        commands = (end_total - start_total) / elapsed
        execs = (end_calls.get("exec", 0) - start_calls.get("exec", 0)) / elapsed
        writes = sum(end_calls.get(c, 0) - start_calls.get(c, 0) for c in WRITE_COMMANDS) / elapsed

        mine, others = waiters[0], waiters[1:]
        for waiter in others:
            waiter.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        latencies: list[float] = []
        for _ in range(args.rounds):
            await asyncio.sleep(0.3)
            released = time.perf_counter()
            first.release(held.pop(0))
            held.append(await mine)
            latencies.append(time.perf_counter() - released)
            mine = asyncio.create_task(first.acquire())
        mine.cancel()
        await asyncio.gather(mine, return_exceptions=True)
    finally:
        for limiter in limiters:
            await limiter.aclose()
        await client.aclose()
    ms = sorted(latency * 1000 for latency in latencies)
    return {
        "processes": args.processes,
        "rate": args.rate,
        "window": window,
        "seconds": round(elapsed, 3),
        "commands_per_s": round(commands, 1),
        "exec_per_s": round(execs, 1),
        "write_commands_per_s": round(writes, 1),
        "own_release_to_slot_ms": {
            "rounds": len(ms),
            "median": round(statistics.median(ms), 2),
            "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 2),
            "max": round(ms[-1], 2),
        },
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=4, help="limiters sharing (default 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="waiting measured (3 s)")
    parser.add_argument("--rounds", type=int, default=20, help="own releases timed (20)")
    parser.add_argument("--rate", type=float, default=10.0, help="the shared rate, req/s (10)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    add_output_options(parser, quiet=False)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    with redis_url(args.redis_url) as url:
        result = asyncio.run(_measure(args, url))
    latency = result["own_release_to_slot_ms"]
    print(
        f"{result['processes']} limiters waiting on a full window of {result['window']:g} for "
        f"{result['seconds']:.1f} s: {result['commands_per_s']:,.0f} Redis commands/s, "
        f"{result['exec_per_s']:,.1f} EXEC/s, {result['write_commands_per_s']:,.1f} writes/s"
    )
    print(
        f"own release -> slot ({latency['rounds']} rounds): median {latency['median']:.2f} ms, "
        f"p90 {latency['p90']:.2f} ms, max {latency['max']:.2f} ms"
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
