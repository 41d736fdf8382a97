"""Batches against a zoo of server rate limiters, and memory over a long stream of photos.

**Rate limits.** N distinct photos (256x256 JPEGs from ``sample_image(seed=i)``, made in memory
before the clock starts) go to the simulator, with ``--latency`` seconds on every answer (429s
included unless the shape answers them at once), against every shape of the limiter zoo at
``--rps`` requests per second (``--shapes`` picks some): token buckets of burst 1, ``rps`` and
``2 * rps``, a sliding window, the same answering 429 at once and without ``Retry-After``, a
fixed window and a queue-free leaky bucket (each also answering 429 at once), a cap of
``rps * latency`` requests in flight (and the same answering 429 at once), and a sliding
window whose limit drops to 40 % at 3 s and comes back at 8 s. Each shape, through:

* ``A map, adaptive``: ``client.map(client.smart_skin, photos)`` with
  ``AILabClient(max_concurrency=C)`` and no ``rate_limit``: the client must find the limit by
  itself. Targets: every photo succeeds, wall time <= 1.15x the ideal (1.25x on the shapes
  that allow no burst: a token bucket of burst 1, a leaky bucket), 429s <= 10 % of the
  requests sent (retries included);
  on the changing limit, what the server accepts is back within 10 % of the restored limit
  5 s after it came back;
* ``B map, rate_limit``: the same with ``rate_limit=rps`` (the true limit). Target: all
  succeed within 1.05x (1.15x without burst, where jitter in the send times costs refusals);
* ``C official SDK``: ``ailabtools-sdk``'s ``portraitIntelligentSkinRetouching`` started with
  ``asyncio.gather`` under an ``asyncio.Semaphore(C)``, as its README suggests. It neither
  retries nor slows down, so 429s are lost photos; we count them.

The ideal is the time the server's limit allows: ``N / rps`` (its schedule integrated, for
the changing limit). Every scenario runs against a fresh simulator.

**Memory.** ``--rss-photos`` distinct 1 MiB PNGs (592x592 noise, stored uncompressed, so the
simulator decodes them in ~2.5 ms) through ``client.map(client.smart_skin, ...)`` at
concurrency C, in a child interpreter that reports its own peak RSS: ``VmHWM`` from
``/proc/self/status``, with ``getrusage(RUSAGE_SELF).ru_maxrss`` beside it. On Linux the latter
starts at the spawning parent's peak (``execve`` folds the replaced address space's high-water
mark into it), so after scenarios A-C it shows the parent's ~70 MiB; ``VmHWM`` is the child's
own. The photos are produced lazily: a generator writes each one to a temporary file just
before ``map`` takes it, and the file is deleted when its outcome comes back, so the input
never sits in memory. The simulator has no rate limit, no latency and a 1 s result TTL (it
keeps uploads as results; a short TTL bounds its own memory).
Target: peak RSS below 150 MiB.

Every simulator runs in its own process (``_common.SimulatorProcess``), so its CPU and memory
never mix with the client's.

    python -m benchmarks.bench_batch             # the zoo, 500 photos at 50/s; 10,000 x 1 MiB
    python -m benchmarks.bench_batch --check     # exit 1 if a target is missed
    python -m benchmarks.bench_batch --skip-rss --shapes sliding,leaky --json batch.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import attrs

from ailab_async import AdaptiveRateLimiter, AILabClient, RateLimiter
from ailab_async.errors import APIError
from ailab_async.testing.simulator import Fixed, Latency, RateLimit, SimulatorConfig

from ._common import (
    OFFICIAL_SMART_SKIN,
    REPO_ROOT,
    RETOUCH_DEGREE,
    WHITENING_DEGREE,
    SimulatorProcess,
    UnavailableError,
    add_output_options,
    environment,
    official_sdk,
    png_chunk,
    png_head,
    progress_printer,
    run_record,
    sample_portraits,
    write_json,
)

SCENARIO_ADAPTIVE = "A map, adaptive"
SCENARIO_RATE_LIMIT = "B map, rate_limit"
SCENARIO_OFFICIAL = "C official SDK"
SCENARIOS = (SCENARIO_ADAPTIVE, SCENARIO_RATE_LIMIT, SCENARIO_OFFICIAL)
#: Wall time at most this multiple of the ideal, with every photo succeeding ...
TARGET_RATIO = {SCENARIO_ADAPTIVE: 1.15, SCENARIO_RATE_LIMIT: 1.05}
#: ... or this one on a shape that allows no burst (send-time jitter costs refusals there).
TARGET_RATIO_NO_BURST = {SCENARIO_ADAPTIVE: 1.25, SCENARIO_RATE_LIMIT: 1.15}
#: 429s at most this share of the requests sent, retries included (scenarios A and B).
TARGET_429_SHARE = 0.10
#: After the limit comes back, what the server accepts is within 10 % of it by 5 s.
TARGET_RECOVERY_SECONDS = 5.0
TARGET_RSS_MIB = 150.0
RSS_PHOTO_SIDE = 592  # 592 * (592 * 3 + 1) bytes of pixel rows: a PNG just over 1 MiB
PHOTO_SIDE = 256
SAMPLE_PERIOD = 0.25  # seconds between two timeline points


@dataclass(frozen=True)
class Shape:
    """One server limiter of the zoo, at the benchmark's rate."""

    #: Short name (``--shapes``) and the table's label.
    key: str
    label: str
    limit: RateLimit
    #: Whether the shape allows no burst at all (the looser targets apply).
    no_burst: bool = False
    #: For a changing limit: when it comes back to ``rps`` (seconds since the first request).
    restored_at: float | None = None

    def ideal_seconds(self, photos: int, rps: float) -> float:
        """How long ``photos`` take at exactly the limit (its schedule integrated; for the
        concurrency shape, ``rps * latency`` in flight, each for ``latency``)."""
        if self.limit.shape == "concurrency":
            return photos / rps
        return self.limit.seconds_for(photos)


def zoo(rps: float, latency: float) -> list[Shape]:
    """Every shape the batch runs against, limited to ``rps`` requests/s."""
    burst = max(1, math.ceil(rps))
    in_flight = max(1, round(rps * latency))
    return [
        Shape("bucket1", "token bucket, burst 1", RateLimit(rps, 1), no_burst=True),
        Shape("bucket", f"token bucket, burst {burst}", RateLimit(rps, burst)),
        Shape("bucket2x", f"token bucket, burst {2 * burst}", RateLimit(rps, 2 * burst)),
        Shape("sliding", "sliding window 1 s", RateLimit(rps, shape="sliding-window")),
        Shape(
            "sliding-instant",
            "sliding window, instant 429",
            RateLimit(rps, shape="sliding-window", instant_429=True),
        ),
        Shape(
            "sliding-no-ra",
            "sliding window, no Retry-After",
            RateLimit(rps, shape="sliding-window", retry_after=False),
        ),
        Shape("fixed", "fixed window 1 s", RateLimit(rps, shape="fixed-window")),
        Shape(
            "fixed-instant",
            "fixed window, instant 429",
            RateLimit(rps, shape="fixed-window", instant_429=True),
        ),
        Shape("leaky", "leaky bucket", RateLimit(rps, shape="leaky-bucket"), no_burst=True),
        Shape(
            "leaky-instant",
            "leaky bucket, instant 429",
            RateLimit(rps, shape="leaky-bucket", instant_429=True),
            no_burst=True,
        ),
        Shape("concurrency", f"{in_flight} in flight", RateLimit.concurrency(in_flight)),
        Shape(
            "concurrency-instant",
            f"{in_flight} in flight, instant 429",
            RateLimit.concurrency(in_flight, instant_429=True),
        ),
        Shape(
            "changing",
            f"{rps:g} -> {0.4 * rps:g} -> {rps:g}/s (3 s, 8 s)",
            RateLimit(rps, shape="sliding-window", schedule=[(3, 0.4 * rps), (8, rps)]),
            restored_at=8.0,
        ),
    ]


def _simulator_config(shape: Shape, latency: float) -> SimulatorConfig:
    """``shape``'s limit; ``latency`` seconds on every API answer."""
    delay = Fixed(latency)
    return SimulatorConfig(
        rate_limit=shape.limit,
        latency=Latency(delay, delay, delay, delay),  # the API endpoints, not result downloads
    )


# --- scenario A/B/C: a batch under a rate limit --------------------------------------------------


@dataclass
class TimelinePoint:
    """The client's state ``t`` seconds into a run."""

    t: float
    completed: int
    rate_limited: int
    current_rate: float | None
    #: The pace requests were sent at (probing included), when the limiter says.
    pace: float | None = None


@dataclass
class BatchRun:
    """One scenario, one simulator: what became of every photo, and how long it took."""

    scenario: str
    shape: str
    photos: int
    rps: float
    ideal_seconds: float
    succeeded: int
    failures: dict[str, int]
    wall_seconds: float
    #: 429 EXCEEDING_LIMITS answers received (every attempt, retried or not).
    rate_limited: int
    no_burst: bool = False
    client_stats: dict[str, Any] | None = None
    timeline: list[TimelinePoint] = field(default_factory=list)
    #: Seconds from the start at which each photo succeeded.
    succeeded_at: list[float] = field(default_factory=list)
    #: For a changing limit: successes per second from 4 s to 5 s after it came back.
    recovered_rate: float | None = None
    unavailable: str | None = None

    @property
    def ratio(self) -> float:
        return self.wall_seconds / self.ideal_seconds

    @property
    def lost_share(self) -> float:
        return 1.0 - self.succeeded / self.photos if self.photos else 0.0

    @property
    def requests(self) -> int:
        """Requests sent, retries included (the client's attempts); the photos when the client
        does not count them (the official SDK's run)."""
        attempts = (self.client_stats or {}).get("attempts")
        return attempts if isinstance(attempts, int) and attempts > 0 else self.photos

    @property
    def rate_limited_share(self) -> float:
        """429s as a share of the requests sent (the target's measure: of 553 requests for
        500 photos, 53 refused is 9.6 %, not 10.6 % of the photos)."""
        return self.rate_limited / self.requests if self.requests else 0.0

    @property
    def target(self) -> float | None:
        targets = TARGET_RATIO_NO_BURST if self.no_burst else TARGET_RATIO
        return targets.get(self.scenario)

    @property
    def recovered(self) -> bool | None:
        """Whether the server accepted within 10 % of the restored limit 5 s after it came
        back (``None``: the limit does not change, or the batch ended too soon to tell)."""
        if self.recovered_rate is None:
            return None
        return self.recovered_rate >= 0.9 * self.rps

    @property
    def meets_target(self) -> bool | None:
        """All photos succeeded within the target wall time, 429s within their share, and
        back to a restored limit in time (``None``: no target)."""
        if self.target is None or self.unavailable:
            return None
        return (
            self.succeeded == self.photos
            and self.ratio <= self.target
            and self.rate_limited_share <= TARGET_429_SHARE
            and self.recovered is not False
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            ratio=self.ratio,
            lost_share=self.lost_share,
            requests=self.requests,
            rate_limited_share=self.rate_limited_share,
            target_ratio=self.target,
            recovered=self.recovered,
            meets_target=self.meets_target,
        )
        return data


def _failure_label(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"{type(exc).__name__} {exc.status} {exc.code or ''}".strip()
    return type(exc).__name__


async def _sample_timeline(
    started: float,
    completed: Callable[[], int],
    rate_limited: Callable[[], int],
    current_rate: Callable[[], float | None],
    pace: Callable[[], float | None],
    timeline: list[TimelinePoint],
) -> None:
    while True:
        timeline.append(
            TimelinePoint(
                round(time.perf_counter() - started, 3),
                completed(),
                rate_limited(),
                current_rate(),
                pace(),
            )
        )
        await asyncio.sleep(SAMPLE_PERIOD)


async def run_map(
    scenario: str,
    url: str,
    api_key: str,
    photos: Sequence[bytes],
    *,
    concurrency: int,
    rate_limit: float | RateLimiter | None,
    shape: Shape,
    rps: float,
    timeout: float,
) -> BatchRun:
    """Scenario A (``rate_limit=None``) or B: ``client.map(client.smart_skin, photos)``.

    ``rate_limit`` may be a :class:`RateLimiter` object, to try another limiter on the same
    footing (``run_map(..., rate_limit=MyLimiter(...))``). With ``None`` the client's own
    limiter is built here (what the client would build), so its pace can be sampled.
    """
    failures: Counter[str] = Counter()
    done = [0, 0]  # completed, succeeded
    succeeded_at: list[float] = []
    timeline: list[TimelinePoint] = []
    limiter = AdaptiveRateLimiter(None) if rate_limit is None else rate_limit
    async with AILabClient(
        api_key=api_key, base_url=url, max_concurrency=concurrency, rate_limit=limiter
    ) as client:
        started = time.perf_counter()
        pace = getattr(limiter, "pace", None)
        sampler = asyncio.create_task(
            _sample_timeline(
                started,
                lambda: done[0],
                lambda: client.stats.rate_limited,
                lambda: client.stats.current_rate,
                pace if callable(pace) else lambda: client.stats.current_rate,
                timeline,
            )
        )

        async def consume() -> None:
            outcomes = client.map(
                client.smart_skin,
                photos,
                retouch_degree=RETOUCH_DEGREE,
                whitening_degree=WHITENING_DEGREE,
            )
            async with contextlib.aclosing(outcomes):
                async for outcome in outcomes:
                    done[0] += 1
                    if outcome.error is None:
                        done[1] += 1
                        succeeded_at.append(time.perf_counter() - started)
                    else:
                        failures[_failure_label(outcome.error)] += 1

        try:
            await asyncio.wait_for(consume(), timeout)
        except asyncio.TimeoutError:
            failures[f"unfinished after the {timeout:g}s scenario timeout"] += len(photos) - done[0]
        wall = time.perf_counter() - started
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        stats = client.stats
    timeline.append(
        TimelinePoint(
            round(wall, 3),
            done[0],
            stats.rate_limited,
            stats.current_rate,
            pace() if callable(pace) else stats.current_rate,
        )
    )
    return BatchRun(
        scenario=scenario,
        shape=shape.label,
        photos=len(photos),
        rps=rps,
        ideal_seconds=shape.ideal_seconds(len(photos), rps),
        succeeded=done[1],
        failures=dict(failures),
        wall_seconds=wall,
        rate_limited=stats.rate_limited,
        no_burst=shape.no_burst,
        client_stats=attrs.asdict(stats),
        timeline=timeline,
        succeeded_at=succeeded_at,
        recovered_rate=_recovered_rate(shape, succeeded_at, wall),
    )


def _recovered_rate(shape: Shape, succeeded_at: Sequence[float], wall: float) -> float | None:
    """Successes per second in the second ending ``TARGET_RECOVERY_SECONDS`` after a changing
    limit came back (``None``: it does not change, or the batch ended before)."""
    if shape.restored_at is None:
        return None
    start = shape.restored_at + TARGET_RECOVERY_SECONDS - 1.0
    end = start + 1.0
    if wall < end:
        return None
    return sum(1 for t in succeeded_at if start <= t < end) / (end - start)


async def run_official(
    url: str,
    api_key: str,
    photos: Sequence[bytes],
    *,
    concurrency: int,
    shape: Shape,
    rps: float,
) -> BatchRun:
    """Scenario C: the official SDK, ``asyncio.gather`` under a semaphore; no retries."""
    gate = asyncio.Semaphore(concurrency)
    failures: Counter[str] = Counter()
    succeeded = 0
    ideal = shape.ideal_seconds(len(photos), rps)

    async def one(method: Callable[[dict[str, Any]], Awaitable[Any]], photo: bytes) -> None:
        nonlocal succeeded
        params = {
            "image": photo,
            "retouchDegree": RETOUCH_DEGREE,
            "whiteningDegree": WHITENING_DEGREE,
        }
        async with gate:
            try:
                body = await method(params)  # raises AILabApiError on an error envelope
            except Exception as exc:  # every failure is counted, by kind
                detail = getattr(exc, "detail", None)
                status = getattr(detail, "status_code", None)
                code = getattr(detail, "code", None)
                label = f"{status} {code}" if status else type(exc).__name__
                failures[label] += 1
                return
        if body["data"]["image_url"]:
            succeeded += 1

    try:
        async with official_sdk(api_key, url, OFFICIAL_SMART_SKIN) as sdk:
            method = sdk.portrait.portraitIntelligentSkinRetouching
            started = time.perf_counter()
            await asyncio.gather(*(one(method, photo) for photo in photos))
            wall = time.perf_counter() - started
    except UnavailableError as exc:
        return BatchRun(
            SCENARIO_OFFICIAL, shape.label, len(photos), rps, ideal, 0, {}, 0.0, 0,
            unavailable=str(exc),
        )  # fmt: skip
    return BatchRun(
        scenario=SCENARIO_OFFICIAL,
        shape=shape.label,
        photos=len(photos),
        rps=rps,
        ideal_seconds=ideal,
        succeeded=succeeded,
        failures=dict(failures),
        wall_seconds=wall,
        rate_limited=failures.get("429 EXCEEDING_LIMITS", 0),
        no_burst=shape.no_burst,
    )


# --- scenario D: peak RSS over a long lazy stream of 1 MiB photos --------------------------------


def noise_png_parts(side: int = RSS_PHOTO_SIDE, seed: int = 0) -> tuple[bytes, bytes]:
    """A ``side`` x ``side`` RGB PNG of noise, stored (not compressed), split after ``IHDR``.

    Noise so it is not "blank" (the simulator would find no face); stored deflate blocks so
    it stays ~1 MiB and decodes in a few milliseconds. Split so a chunk can be put between.
    """
    row = side * 3
    pixels = bytearray(random.Random(seed).randbytes(side * (row + 1)))
    pixels[:: row + 1] = bytes(side)  # filter type "none" at the start of every row
    head = png_head(side, side)
    tail = png_chunk(b"IDAT", zlib.compress(bytes(pixels), 0)) + png_chunk(b"IEND", b"")
    return head, tail


def lazy_photo_files(n: int, directory: Path, parts: tuple[bytes, bytes]) -> Iterator[Path]:
    """Write photo ``i`` (the noise PNG plus a ``tEXt`` chunk naming ``i``: distinct bytes)
    to ``directory`` only when it is asked for; the consumer deletes it when done."""
    head, tail = parts
    for index in range(n):
        path = directory / f"photo-{index:06d}.png"
        path.write_bytes(head + png_chunk(b"tEXt", b"Comment\x00photo %d" % index) + tail)
        yield path


def _maxrss_mib() -> float:
    """``getrusage`` peak RSS; on Linux it includes the spawning parent's peak (see above)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peak_rss_mib() -> float:
    """This address space's own peak RSS (``VmHWM``), or ``ru_maxrss`` without ``/proc``."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return _maxrss_mib()


async def rss_child_run(url: str, api_key: str, photos: int, concurrency: int) -> dict[str, Any]:
    """The child's work: stream ``photos`` 1 MiB files through ``client.map``."""
    parts = noise_png_parts()
    photo_bytes = len(parts[0]) + len(parts[1]) + 12 + len(b"Comment\x00photo 0")
    failures: Counter[str] = Counter()
    succeeded = 0
    sent_bytes = 0
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        async with AILabClient(
            api_key=api_key, base_url=url, max_concurrency=concurrency
        ) as client:
            baseline_mib = _peak_rss_mib()
            cpu_started, started = time.process_time(), time.perf_counter()
            outcomes = client.map(
                client.smart_skin,
                lazy_photo_files(photos, Path(tmp), parts),
                retouch_degree=RETOUCH_DEGREE,
                whitening_degree=WHITENING_DEGREE,
            )
            async with contextlib.aclosing(outcomes):
                async for outcome in outcomes:
                    sent_bytes += outcome.item.stat().st_size
                    outcome.item.unlink()
                    if outcome.error is None:
                        succeeded += 1
                    else:
                        failures[_failure_label(outcome.error)] += 1
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            stats = client.stats
        left_behind = len(os.listdir(tmp))
    return {
        "photos": photos,
        "concurrency": concurrency,
        "photo_bytes": photo_bytes,
        "sent_bytes": sent_bytes,
        "succeeded": succeeded,
        "failures": dict(failures),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "baseline_rss_mib": baseline_mib,
        "peak_rss_mib": _peak_rss_mib(),
        "ru_maxrss_mib": _maxrss_mib(),
        "files_left_behind": left_behind,
        "max_in_flight": stats.max_in_flight,
    }


@dataclass
class RssRun:
    """Scenario D as the child reported it, plus the simulator's CPU."""

    photos: int
    concurrency: int
    photo_bytes: int
    sent_bytes: int
    succeeded: int
    failures: dict[str, int]
    wall_seconds: float
    cpu_seconds: float
    baseline_rss_mib: float
    peak_rss_mib: float
    ru_maxrss_mib: float
    files_left_behind: int
    max_in_flight: int
    simulator_cpu_seconds: float | None = None

    @property
    def meets_target(self) -> bool:
        return self.succeeded == self.photos and self.peak_rss_mib < TARGET_RSS_MIB

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "target_rss_mib": TARGET_RSS_MIB, "meets_target": self.meets_target}


def measure_rss(photos: int, concurrency: int) -> RssRun:
    """Scenario D: a simulator process and a client process; the client reports its peak RSS."""
    # No rate limit, no latency, and a short result TTL: the simulator keeps uploads as
    # results, and this bounds its own memory.
    config = SimulatorConfig(result_ttl=1)
    with SimulatorProcess(config) as simulator:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_batch",
                "--rss-child",
                simulator.url,
                simulator.api_key,
                "--rss-photos",
                str(photos),
                "--concurrency",
                str(concurrency),
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"the RSS child failed: {completed.stderr.strip()[-2000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return RssRun(**report, simulator_cpu_seconds=simulator.cpu_seconds)


# --- the whole run ----------------------------------------------------------------------------


@dataclass
class Result:
    """Settings, environment, every batch run and the memory run."""

    photos: int
    rps: float
    latency: float
    concurrency: int
    shapes: list[str]
    environment: dict[str, str]
    runs: list[BatchRun] = field(default_factory=list)
    rss: RssRun | None = None

    def misses(self) -> list[str]:
        """The targets missed, in words (empty: all met)."""
        missed = [f"{run.scenario} ({run.shape})" for run in self.runs if run.meets_target is False]
        if self.rss is not None and not self.rss.meets_target:
            missed.append(f"D peak RSS ({self.rss.photos} photos)")
        return missed

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "batch",
            "photos": self.photos,
            "rps": self.rps,
            "latency": self.latency,
            "concurrency": self.concurrency,
            "shapes": self.shapes,
            "environment": self.environment,
            "runs": [run.to_json() for run in self.runs],
            "rss": self.rss.to_json() if self.rss else None,
            "missed_targets": self.misses(),
        }


def run_benchmark(
    *,
    photos: int = 500,
    rps: float = 50.0,
    latency: float = 0.2,
    concurrency: int = 32,
    shapes: Sequence[str] | None = None,
    scenarios: Sequence[str] = SCENARIOS,
    scenario_timeout: float = 90.0,
    rss_photos: int | None = 10_000,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Every scenario on every shape (``shapes``: keys of :func:`zoo`, default all), each
    against its own fresh simulator process; blocking."""
    if photos < 1 or concurrency < 1 or not rps > 0 or latency < 0:
        raise ValueError("photos and concurrency must be >= 1, rps > 0 and latency >= 0")
    chosen = [shape for shape in zoo(rps, latency) if shapes is None or shape.key in shapes]
    say = progress or (lambda _line: None)
    result = Result(
        photos, rps, latency, concurrency, [shape.key for shape in chosen], environment()
    )
    images = sample_portraits(photos, PHOTO_SIDE) if scenarios else []
    for shape in chosen:
        for scenario in scenarios:
            with SimulatorProcess(_simulator_config(shape, latency)) as sim:
                run: Awaitable[BatchRun]
                if scenario == SCENARIO_OFFICIAL:
                    run = run_official(
                        sim.url, sim.api_key, images, concurrency=concurrency, shape=shape, rps=rps
                    )
                else:
                    run = run_map(
                        scenario,
                        sim.url,
                        sim.api_key,
                        images,
                        concurrency=concurrency,
                        rate_limit=rps if scenario == SCENARIO_RATE_LIMIT else None,
                        shape=shape,
                        rps=rps,
                        timeout=scenario_timeout,
                    )
                batch = asyncio.run(run)
            result.runs.append(batch)
            say(
                f"{shape.label} / {scenario}: {batch.succeeded}/{batch.photos} ok in "
                f"{batch.wall_seconds:.2f}s ({batch.ratio:.2f}x ideal "
                f"{batch.ideal_seconds:.1f}s), {batch.rate_limited} x 429, "
                f"failures {batch.failures or 'none'}"
            )
    if rss_photos:
        result.rss = measure_rss(rss_photos, concurrency)
        say(
            f"D rss: {result.rss.succeeded}/{result.rss.photos} ok in "
            f"{result.rss.wall_seconds:.1f}s, peak RSS {result.rss.peak_rss_mib:.1f} MiB"
        )
    return result


# --- reporting ---------------------------------------------------------------------------------


def _rate_trace(run: BatchRun, at: Sequence[float] = (0.5, 1, 2, 3, 4, 6, 8, 10, 12)) -> str:
    """The adaptive limiter's pace at a few moments of the run."""
    points = []
    for moment in at:
        if moment > run.wall_seconds or not run.timeline:
            break
        point = min(run.timeline, key=lambda p: abs(p.t - moment))
        pace = "-" if point.pace is None else f"{point.pace:.0f}"
        points.append(f"{moment:g}s:{pace}")
    return " ".join(points)


def _ratio_cell(run: BatchRun | None) -> str:
    if run is None or run.unavailable:
        return "-"
    verdict = "" if run.meets_target is not False else " MISSED"
    return f"{run.ratio:.2f}x{verdict}"


def format_table(result: Result) -> str:
    """The human-readable summary: one row per shape, then the memory run."""
    env = result.environment
    lines = [
        f"batch of {result.photos} smart-skin photos ({PHOTO_SIDE}x{PHOTO_SIDE} JPEG) through "
        f"client.map at concurrency {result.concurrency}, against a simulator limited to "
        f"{result.rps:g} req/s with {result.latency:g}s latency",
        f"python {env['python']}, aiohttp {env['aiohttp']}, httpx {env['httpx']}, "
        f"{env['cpus']} CPUs; simulator and client in separate processes",
        f"targets: wall/ideal <= {TARGET_RATIO[SCENARIO_ADAPTIVE]}x with no config "
        f"({TARGET_RATIO_NO_BURST[SCENARIO_ADAPTIVE]}x without burst), "
        f"<= {TARGET_RATIO[SCENARIO_RATE_LIMIT]}x told the limit "
        f"({TARGET_RATIO_NO_BURST[SCENARIO_RATE_LIMIT]}x without burst), 429s <= "
        f"{TARGET_429_SHARE:.0%} of requests, 0 failed",
        "",
        f"{'shape':<32} {'ideal s':>7} {'no config':>12} {'rate_limit':>12} "
        f"{'429s':>9} {'failed':>7}  {'official SDK (gather + semaphore)':<34}",
    ]
    by_shape: dict[str, dict[str, BatchRun]] = {}
    for run in result.runs:
        by_shape.setdefault(run.shape, {})[run.scenario] = run
    for shape, runs in by_shape.items():
        adaptive = runs.get(SCENARIO_ADAPTIVE)
        told = runs.get(SCENARIO_RATE_LIMIT)
        official = runs.get(SCENARIO_OFFICIAL)
        ours = [run for run in (adaptive, told) if run is not None]
        ideal = ours[0].ideal_seconds if ours else (official.ideal_seconds if official else 0.0)
        rejected = "/".join(str(run.rate_limited) for run in ours) or "-"
        failed = "/".join(str(run.photos - run.succeeded) for run in ours) or "-"
        if official is None:
            sdk = "-"
        elif official.unavailable:
            sdk = f"unavailable: {official.unavailable}"
        else:
            sdk = (
                f"{official.lost_share:.0%} of photos lost to 429s in {official.wall_seconds:.1f}s"
            )
        lines.append(
            f"{shape:<32} {ideal:>7.1f} {_ratio_cell(adaptive):>12} {_ratio_cell(told):>12} "
            f"{rejected:>9} {failed:>7}  {sdk}"
        )
    lines.append("(429s and failed: no config / rate_limit)")
    for run in result.runs:
        if run.scenario != SCENARIO_ADAPTIVE or not run.timeline:
            continue
        extra = ""
        if run.recovered_rate is not None:
            extra = (
                f"; {TARGET_RECOVERY_SECONDS:g} s after the limit came back: "
                f"{run.recovered_rate:.0f}/s accepted ({'met' if run.recovered else 'MISSED'})"
            )
        lines.append(f"  {run.shape}: pace over time {_rate_trace(run)}{extra}")
    if result.rss is not None:
        rss = result.rss
        sim_cpu = (
            f", simulator CPU {rss.simulator_cpu_seconds:.1f}s"
            if rss.simulator_cpu_seconds is not None
            else ""
        )
        lines += [
            "",
            f"D memory: {rss.succeeded}/{rss.photos} photos of {rss.photo_bytes / 2**20:.2f} MiB "
            f"({rss.sent_bytes / 2**30:.2f} GiB sent) at concurrency {rss.concurrency} in "
            f"{rss.wall_seconds:.1f}s (client CPU {rss.cpu_seconds:.1f}s{sim_cpu})",
            f"  peak RSS (VmHWM) {rss.peak_rss_mib:.1f} MiB (before the first photo "
            f"{rss.baseline_rss_mib:.1f} MiB; getrusage ru_maxrss {rss.ru_maxrss_mib:.1f} MiB), "
            f"target < {TARGET_RSS_MIB:g} MiB: {'met' if rss.meets_target else 'MISSED'}"
            + (f"; failures {rss.failures}" if rss.failures else ""),
        ]
    misses = result.misses()
    lines += ["", "all targets met" if not misses else f"targets MISSED: {', '.join(misses)}"]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_batch",
        description="client.map against a zoo of rate-limited simulators vs the official SDK, "
        "and peak RSS over a long stream of 1 MiB photos.",
    )
    add = parser.add_argument
    add("--photos", type=int, default=500, help="photos per batch scenario (default 500)")
    add("--rps", type=float, default=50.0, help="the simulator's rate limit (default 50)")
    add("--latency", type=float, default=0.2, help="the simulator's latency (default 0.2 s)")
    add("--concurrency", type=int, default=32, help="max_concurrency / semaphore (default 32)")
    keys = [shape.key for shape in zoo(50.0, 0.2)]
    add(
        "--shapes",
        default=",".join(keys),
        help=f"comma-separated subset of the zoo (default all: {', '.join(keys)})",
    )
    add(
        "--scenarios",
        default="A,B,C",
        help="comma-separated subset of A, B, C (default all; none: the memory run only)",
    )
    add("--scenario-timeout", type=float, default=90.0, help="give up on a batch after this (90 s)")
    add("--rss-photos", type=int, default=10_000, help="1 MiB photos of the memory run")
    add("--skip-rss", action="store_true", help="skip the memory run")
    add_output_options(parser, check="exit 1 if a target is missed")
    add("--rss-child", nargs=2, metavar=("URL", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    by_letter = {name[0]: name for name in SCENARIOS}
    letters = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    if any(letter not in by_letter for letter in letters):
        parser.error(f"--scenarios takes letters among {', '.join(by_letter)}")
    args.scenarios = [by_letter[letter] for letter in dict.fromkeys(letters)]
    args.shapes = [key.strip() for key in args.shapes.split(",") if key.strip()]
    unknown = sorted(set(args.shapes) - set(keys))
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose among {', '.join(keys)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.rss_child:
        url, key = args.rss_child
        report = asyncio.run(rss_child_run(url, key, args.rss_photos, args.concurrency))
        print(json.dumps(report))
        return 0
    started = time.time()
    result = run_benchmark(
        photos=args.photos,
        rps=args.rps,
        latency=args.latency,
        concurrency=args.concurrency,
        shapes=args.shapes,
        scenarios=args.scenarios,
        scenario_timeout=args.scenario_timeout,
        rss_photos=None if args.skip_rss else args.rss_photos,
        progress=progress_printer(args.quiet),
    )
    print(format_table(result))
    if args.json:
        write_json(args.json, {**result.to_json(), "run": run_record(started)})
    return 1 if args.check and result.misses() else 0


if __name__ == "__main__":
    sys.exit(main())
