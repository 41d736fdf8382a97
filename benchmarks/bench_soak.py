"""Soak: 20,000 mixed calls against a faulty simulator, with memory watched over time.

The simulator runs in its own process (``_common.SimulatorProcess``) with faults injected (5xx
envelopes, connection resets, HTML 502 pages, truncated bodies, stalls, some after processing)
and short smart-beauty tasks. This process sends a mix of smart-skin calls and smart-beauty
submit-and-wait calls through ``client.map`` and reports throughput, p50/p99 latency per call,
outcomes by error class, the client's retry counters, and its RSS sampled every second, which
must stay flat (the last quarter's peak within 15% + 10 MB of the second quarter's).

    python -m benchmarks.bench_soak                       # 20,000 calls, concurrency 64
    python -m benchmarks.bench_soak --calls 2000 --check  # quicker; exit 1 if a check fails
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Iterator
from typing import Any

from ailab_async import AILabClient, PollingConfig
from ailab_async.testing.simulator import Faults, SimulatorConfig, TaskBehaviour, Uniform

from ._common import SimulatorProcess, add_output_options, rss_bytes, sample_portraits, write_json


def rss_mb() -> float:
    rss = rss_bytes()
    if rss is None:
        raise RuntimeError("the soak watches its memory in /proc, which this system lacks")
    return rss / 1e6


def images(count: int) -> Iterator[tuple[int, bytes]]:
    """Small portraits, made lazily (a pool of 64 variants, reused by index)."""
    pool = sample_portraits(64, 160)
    for index in range(count):
        yield index, pool[index % 64]


def simulator_config(fault_rate: float) -> SimulatorConfig:
    """Short smart-beauty tasks, and ``fault_rate`` of each fault kind (5xx: per status)."""
    return SimulatorConfig(
        tasks=TaskBehaviour(duration=Uniform(0.05, 0.3)),
        faults=Faults(
            error_500=fault_rate,
            error_502=fault_rate,
            error_503=fault_rate,
            error_504=fault_rate,
            connection_reset=fault_rate,
            html_502=fault_rate,
            truncated_json=fault_rate,
            stall=fault_rate / 4,
            stall_seconds=5,
            after_processing_share=0.3,
        ),
    )


async def soak(url: str, api_key: str, calls: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    outcomes: collections.Counter[str] = collections.Counter()
    rss: list[tuple[float, float]] = []
    started = time.monotonic()

    async def sample_rss() -> None:
        while True:
            rss.append((time.monotonic() - started, rss_mb()))
            await asyncio.sleep(1.0)

    async with AILabClient(
        api_key=api_key,
        base_url=url,
        max_concurrency=32,
        timeout=2.0,
        deadline=60.0,
        backoff_initial=0.05,
        backoff_max=1.0,
        polling=PollingConfig(fallback_interval=0.2, min_interval=0.05),
    ) as client:

        async def one(item: tuple[int, bytes]) -> None:
            index, image = item
            begin = time.monotonic()
            try:
                if index % 4 == 0:
                    await client.smart_beauty(image, beauty_level=0.5, timeout=60)
                else:
                    await client.smart_skin(image, retouch_degree=0.5)
                outcomes["ok"] += 1
            finally:
                latencies.append(time.monotonic() - begin)

        sampler = asyncio.create_task(sample_rss())
        try:
            async for outcome in client.map(one, images(calls), concurrency=concurrency):
                if outcome.error is not None:
                    outcomes[type(outcome.error).__name__] += 1
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        stats = client.stats
    elapsed = time.monotonic() - started
    latencies.sort()
    quarter = max(1, len(rss) // 4)
    second_quarter = max(m for _, m in rss[quarter : 2 * quarter] or rss)
    last_quarter = max(m for _, m in rss[-quarter:])
    return {
        "calls": calls,
        "seconds": round(elapsed, 1),
        "throughput_per_s": round(calls / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        "outcomes": dict(outcomes),
        "retries": stats.retries,
        "ambiguous_retries": stats.ambiguous_retries,
        "rss_mb_samples": [(round(t), round(m, 1)) for t, m in rss],
        "rss_mb_second_quarter_peak": round(second_quarter, 1),
        "rss_mb_last_quarter_peak": round(last_quarter, 1),
        "rss_flat": last_quarter <= second_quarter * 1.15 + 10,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fault-rate", type=float, default=0.02, help="per fault kind")
    add_output_options(parser, check="exit 1 if a check fails", quiet=False)
    args = parser.parse_args(argv)
    with SimulatorProcess(simulator_config(args.fault_rate)) as sim:
        results = asyncio.run(soak(sim.url, sim.api_key, args.calls, args.concurrency))
    samples = results.pop("rss_mb_samples")
    for key, value in results.items():
        print(f"{key:>28}: {value}")
    print(f"{'rss_mb over time (s, MB)':>28}: {samples[:: max(1, len(samples) // 12)]}")
    if args.json:
        write_json(args.json, {**results, "rss_mb_samples": samples})
    failed_calls = sum(n for k, n in results["outcomes"].items() if k != "ok")
    ok = results["rss_flat"] and failed_calls <= args.calls * 0.001
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
