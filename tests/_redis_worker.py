"""One OS process of the shared-rate-limit test: a client on a Redis budget, calling flat out.

    python -m tests._redis_worker REDIS_URL BASE_URL API_KEY NAME RATE SECONDS CONCURRENCY

Prints ``ready`` once imported, reads the start time (``time.time()``) from stdin, calls
``query-credits`` from CONCURRENCY loops until SECONDS after it, and prints one JSON line:
the completion times of its calls, the errors its callers saw by type, the 429s its client
met (retried inside it), and whether it ended on the shared budget.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time

from ailab_async import AILabClient, AILabError
from ailab_async.contrib.redis import RedisRateLimiter


async def run(
    redis_url: str,
    base_url: str,
    api_key: str,
    name: str,
    rate: float,
    start_at: float,
    seconds: float,
    concurrency: int,
) -> dict[str, object]:
    done: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    end_at = start_at + seconds
    async with (
        RedisRateLimiter(redis_url, name=name, rate=rate) as limiter,
        AILabClient(
            api_key=api_key, base_url=base_url, rate_limit=limiter, max_concurrency=concurrency
        ) as client,
    ):
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def calls() -> None:
            while time.time() < end_at:
                try:
                    await client.credits()
                except AILabError as exc:
                    errors[type(exc).__name__] += 1
                else:
                    done.append(time.time())

        await asyncio.gather(*(calls() for _ in range(concurrency)))
        return {
            "done": done,
            "errors": dict(errors),
            "rate_limited": client.stats.rate_limited,
            "using_redis": limiter.using_redis,
            "degraded": limiter.degraded_count,
        }


def main(argv: list[str]) -> None:
    redis_url, base_url, api_key, name, rate, seconds, concurrency = argv
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    result = asyncio.run(
        run(
            redis_url,
            base_url,
            api_key,
            name,
            float(rate),
            start_at,
            float(seconds),
            int(concurrency),
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
