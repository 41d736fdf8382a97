"""Several processes on one account's rate limit: the Redis-shared budget vs the ideal (issue 7).

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
import json
import platform
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ailab_async import AILabClient, AILabError, RateLimiter

SHARED = "shared Redis budget"
PER_PROCESS = "per-process limit"
PHASES = {"shared": SHARED, "per-process": PER_PROCESS}
_REPO_ROOT = Path(__file__).resolve().parent.parent
_RAMP_UP = 1.0
_DRAIN = 0.5


# --- the worker: one OS process, one client -----------------------------------------------


async def _work(
    mode: str,
    redis_url: str,
    base_url: str,
    api_key: str,
    name: str,
    rate: float,
    seconds: float,
    concurrency: int,
    start_at: float,
) -> dict[str, Any]:
    from ailab_async.contrib.redis import RedisRateLimiter  # noqa: PLC0415 - shared mode only

    done: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    limiter: RedisRateLimiter | None = None
    rate_limit: float | RateLimiter = rate
    if mode == "shared":
        limiter = rate_limit = RedisRateLimiter(redis_url, name=name, rate=rate)
    end_at = start_at + seconds
    try:
        async with AILabClient(
            api_key=api_key, base_url=base_url, rate_limit=rate_limit, max_concurrency=concurrency
        ) as client:
            await asyncio.sleep(max(0.0, start_at - time.time()))

            async def calls() -> None:
                while time.time() < end_at:
                    try:
                        await client.credits(deadline=max(1.0, end_at - time.time() + 5))
                    except AILabError as exc:
                        errors[type(exc).__name__] += 1
                    else:
                        done.append(time.time())

            await asyncio.gather(*(calls() for _ in range(concurrency)))
            return {
                "done": done,
                "errors": dict(errors),
                "rate_limited": client.stats.rate_limited,
                "degraded": limiter.degraded_count if limiter else 0,
            }
    finally:
        if limiter is not None:
            await limiter.aclose()


def _worker_main(argv: Sequence[str]) -> int:
    mode, redis_url, base_url, api_key, name, rate, seconds, concurrency = argv
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    result = asyncio.run(
        _work(
            mode,
            redis_url,
            base_url,
            api_key,
            name,
            float(rate),
            float(seconds),
            int(concurrency),
            start_at,
        )
    )
    print(json.dumps(result), flush=True)
    return 0


# --- redis-server on a free port ----------------------------------------------------------


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1 (no persistence), while in the block."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.__exit__()
        raise RuntimeError("redis-server did not start within 10 s")

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


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

    name = f"bench-{uuid.uuid4().hex[:12]}"
    async with Simulator(SimulatorConfig(rate_limit=RateLimit(rate))) as sim:
        args = [mode, redis_url, sim.url, sim.api_key, name, repr(rate), repr(seconds)]
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.bench_shared_limit",
                "--worker",
                *args,
                str(concurrency),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=_REPO_ROOT,
            )
            for _ in range(processes)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None
                ready = await asyncio.wait_for(worker.stdout.readline(), 60)
                if ready != b"ready\n":
                    raise RuntimeError(f"a worker failed to start: {ready!r}")
            start_at = time.time() + 0.2
            line = f"{start_at!r}\n".encode()
            outputs = await asyncio.wait_for(
                asyncio.gather(*(w.communicate(line) for w in workers)), seconds + 60
            )
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                await worker.wait()
        rejected = sim.stats.count(outcome="EXCEEDING_LIMITS")

    results = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
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
    progress: Any = None,
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

    if redis_url is not None or "shared" not in phases:
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
    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    redis_server = shutil.which("redis-server")
    server_version = "not installed"
    if redis_server:
        completed = subprocess.run(
            [redis_server, "--version"], capture_output=True, text=True, check=False
        )
        server_version = completed.stdout.strip()
    return {
        "python": platform.python_version(),
        "redis-py": installed("redis"),
        "aiohttp": installed("aiohttp"),
        "redis-server": server_version,
        "machine": platform.platform(),
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
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(unknown)}")
    if args.seconds <= _RAMP_UP + _DRAIN:
        parser.error(f"--seconds must exceed {_RAMP_UP + _DRAIN:g}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1:])
    args = _parse_args(argv)
    results = run_benchmark(
        processes=args.processes,
        rate=args.rate,
        seconds=args.seconds,
        concurrency=args.concurrency,
        phases=args.phases,
        redis_url=args.redis_url,
        progress=None if args.quiet else lambda line: print(line, file=sys.stderr),
    )
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
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
            json.dump(payload, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
