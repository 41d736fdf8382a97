"""Client CPU per call of ailab-async against hand-written aiohttp doing the same thing.

A matrix, in one run: image 20 kB / 170 kB / 2 MB / 5 MB x concurrency 1 / 16 / 64 / 256 x
the image given as bytes or as a path x with or without the two degrees. In every cell the
same N smart-skin calls go to a local aiohttp server running in another process through:

* ``raw aiohttp``: the minimal correct hand-written client for what the user asked, and
  nothing more: one session, a ``FormData`` with the degrees only if the user gave them and
  the image (for a path, the same file, opened as aiohttp's documentation shows), the key
  header, ``resp.json()``, check ``error_code``, read ``data.image_url``;
* ``ailab-async``: ``AILabClient(max_concurrency=C).smart_skin(image, **degrees)``;
* ``ailabtools-sdk``: the provider's official httpx-based SDK, on a few cells (bytes input),
  if it is installed.

Only this process's CPU time is measured (``time.process_time()`` around each measured
batch, worker threads included), so the server's work never counts. A cell's round runs on
its own event loop: every client warmed up, then its N calls in batches taken in turn (A B,
B A, ...), so the load of a busy machine drifts onto both alike. A batch is at least twice
the cell's concurrency, so that C calls really are in flight for most of it (N grows to at
least four such batches: 2,048 calls at C=256), and a round has up to 16 batches. The cell
repeats ``--repeat`` times and the median is reported. The server records the shape of
every request (fields, their values, the file's name, type, length and CRC-32): if the raw
client's requests differ from ours in any cell, the run stops with an error, since the
comparison would be unfair.

The polling path is measured the same way: CPU per poll of tasks tracked by the client's
tracker (``client.track(task_id)``, the server always answering "processing") against a raw
aiohttp loop of GETs, one per task, at the same spacing. Both are measured twice: with the
tasks' polling started spread evenly over one poll interval (as tasks submitted over time
are), and with every task started in the same instant, which leaves the raw loop's polls in
lockstep (many served by each turn of the event loop) for as long as it runs.

Target: at most 1.15x raw aiohttp's CPU per call in every cell, and per poll.

    python -m benchmarks.bench_overhead                  # the full matrix, 3 repeats
    python -m benchmarks.bench_overhead --quick          # 16 small cells, fewer calls
    python -m benchmarks.bench_overhead --sizes 170kB --concurrency 64 --inputs bytes
    python -m benchmarks.bench_overhead --check          # exit 1 if a cell misses the target
    python -m benchmarks.bench_overhead --telemetry      # no hooks / a no-op hook / OpenTelemetry
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import itertools
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ailab_async import AILabClient, PollingConfig
from ailab_async.telemetry import Telemetry

from ._common import (
    OFFICIAL_SMART_SKIN,
    RETOUCH_DEGREE,
    WHITENING_DEGREE,
    UnavailableError,
    add_output_options,
    environment,
    official_sdk,
    png_chunk,
    png_head,
    progress_printer,
    write_json,
)
from ._local_server import API_KEY, IMAGE_URL, QUERY_TASK_PATH, SMART_SKIN_PATH, LocalServer

RAW = "raw aiohttp"
SDK = "ailab-async"
OFFICIAL = "ailabtools-sdk"
CLIENTS = (RAW, SDK, OFFICIAL)
TARGET_RATIO = 1.15

#: Image sizes of the matrix, by label, with the calls per phase at ``--scale 1``. Large
#: images get fewer calls, but not so few that one stray collection or scheduler hiccup
#: decides a round (with 15-30 calls a round, a cell moved by 0.2x from run to run).
SIZES: dict[str, tuple[int, int]] = {
    "20kB": (20_000, 600),
    "170kB": (170_000, 400),
    "2MB": (2_000_000, 200),
    "5MB": (5_000_000, 160),
}
CONCURRENCIES = (1, 16, 64, 256)
INPUTS = ("bytes", "path")
DEGREES = ("none", "given")
#: What "given" means: the degrees every benchmark sends.
GIVEN_DEGREES = {"retouch_degree": RETOUCH_DEGREE, "whitening_degree": WHITENING_DEGREE}
#: The cells the official SDK also runs (it takes bytes only here).
OFFICIAL_CELLS = frozenset(
    {("20kB", 16, "bytes", "given"), ("170kB", 16, "bytes", "none"), ("170kB", 64, "bytes", "none")}
)
#: The file name and type both clients give the upload (ours sends ``image.<format>``).
UPLOAD_NAME, UPLOAD_TYPE = "image.png", "image/png"

#: One smart-skin call through some client; returns the result's image URL.
CallOnce = Callable[[], Awaitable[str]]


# --- the inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix: what the user asks for, and how many at once."""

    size: str
    concurrency: int
    input: str
    degrees: str

    @property
    def label(self) -> str:
        return f"{self.size} c={self.concurrency} {self.input} degrees={self.degrees}"

    @property
    def params(self) -> dict[str, float]:
        """The keyword arguments the user passes (and the fields raw aiohttp sends)."""
        return dict(GIVEN_DEGREES) if self.degrees == "given" else {}


@dataclass(frozen=True)
class Image:
    """One test image, in memory and on disk."""

    data: bytes
    path: Path


def make_image(size: int, seed: int = 0) -> bytes:
    """A PNG of exactly ``size`` bytes whose pixels do not compress (as a photo's would not).

    Nothing here decodes it: the SDK reads the header only, and the server digests bytes.
    """
    side = 512 if size < 1_000_000 else 1600
    head, tail = png_head(side, side), png_chunk(b"IEND", b"")
    filler = size - len(head) - len(tail) - 12  # an IDAT chunk's length, tag and CRC
    pixels = random.Random(seed).randbytes(filler)
    image = head + png_chunk(b"IDAT", pixels) + tail
    assert len(image) == size
    return image


# --- the clients -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_aiohttp(base_url: str, image: Image, cell: Cell) -> AsyncIterator[CallOnce]:
    """The minimal correct hand-written client for the cell, sending what the user asked."""
    url = base_url + SMART_SKIN_PATH
    headers = {"ailabapi-api-key": API_KEY}
    fields = [(name, str(value)) for name, value in cell.params.items()]
    connector = aiohttp.TCPConnector(limit=cell.concurrency)  # as many as ours opens

    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(form: aiohttp.FormData) -> str:
            async with session.post(url, data=form, headers=headers) as response:
                body = await response.json()
            if body.get("error_code") != 0:
                raise RuntimeError(f"raw aiohttp: API error {body.get('error_detail')!r}")
            image_url: str = body["data"]["image_url"]
            return image_url

        async def call() -> str:
            form = aiohttp.FormData(fields)
            if cell.input == "path":
                with image.path.open("rb") as handle:  # as aiohttp's documentation shows
                    form.add_field("image", handle, filename=UPLOAD_NAME, content_type=UPLOAD_TYPE)
                    return await post(form)
            form.add_field("image", image.data, filename=UPLOAD_NAME, content_type=UPLOAD_TYPE)
            return await post(form)

        with warnings.catch_warnings():
            # aiohttp suggests a BytesIO for bytes over 1 MB; a plain user passes bytes.
            warnings.filterwarnings("ignore", "Sending a large body", ResourceWarning)
            yield call


class PassThroughLimiter:
    """A rate limiter that never waits (``--sdk-limiter passthrough``): a diagnostic run
    that tells the rate limiter's share of the SDK's cost from the rest."""

    rate_limited_count = 0
    configured_rate = None

    def current_rate(self) -> float | None:
        return None

    async def acquire(self) -> float:
        return time.monotonic()

    def on_success(self, sent_at: float) -> None:
        del sent_at

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        del sent_at, retry_after


#: ``--sdk-limiter``: what ``AILabClient(rate_limit=...)`` gets (a fresh one per client).
SDK_LIMITERS: dict[str, Callable[[], PassThroughLimiter | None]] = {
    "default": lambda: None,
    "passthrough": PassThroughLimiter,
}


@contextlib.asynccontextmanager
async def ailab_async(
    base_url: str, image: Image, cell: Cell, *, limiter: str = "default"
) -> AsyncIterator[CallOnce]:
    """This SDK, configured as a user would for this concurrency."""
    source: bytes | Path = image.path if cell.input == "path" else image.data
    params = cell.params
    async with AILabClient(
        api_key=API_KEY,
        base_url=base_url,
        max_concurrency=cell.concurrency,
        rate_limit=SDK_LIMITERS[limiter](),
    ) as client:

        async def call() -> str:
            result = await client.smart_skin(source, **params)
            return result.image_url

        yield call


@contextlib.asynccontextmanager
async def ailabtools_sdk(base_url: str, image: Image, cell: Cell) -> AsyncIterator[CallOnce]:
    """The provider's official SDK (``ailabtools-sdk``, httpx-based), driven unchanged."""
    params: dict[str, Any] = {"image": image.data}
    if cell.degrees == "given":
        params.update(retouchDegree=RETOUCH_DEGREE, whiteningDegree=WHITENING_DEGREE)
    async with official_sdk(API_KEY, base_url, OFFICIAL_SMART_SKIN) as client:
        method = client.portrait.portraitIntelligentSkinRetouching

        async def call() -> str:
            body = await method(params)  # raises AILabApiError on an error envelope
            image_url: str = body["data"]["image_url"]
            return image_url

        yield call


FACTORIES = {RAW: raw_aiohttp, SDK: ailab_async, OFFICIAL: ailabtools_sdk}


# --- measuring calls ---------------------------------------------------------------------------


class WireMismatchError(RuntimeError):
    """The raw client and ours sent different requests: their costs are not comparable."""


@dataclass
class Sample:
    """One measured phase: N calls (or polls) through one client."""

    requests: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000.0 * self.cpu_seconds / self.requests


@dataclass
class CellResult:
    """Every client's samples in one cell, and the request shape the server saw from each."""

    cell: Cell
    calls: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    shapes: dict[str, list[str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def cpu_ms(self, client: str) -> float | None:
        samples = self.samples.get(client)
        if not samples:
            return None
        return statistics.median(s.cpu_ms_per_request for s in samples)

    def ratio(self, client: str = SDK) -> float | None:
        own, raw = self.cpu_ms(client), self.cpu_ms(RAW)
        return None if own is None or not raw else own / raw

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.cell.size,
            "concurrency": self.cell.concurrency,
            "input": self.cell.input,
            "degrees": self.cell.degrees,
            "calls": self.calls,
            "cpu_ms_per_call": {name: self.cpu_ms(name) for name in self.samples},
            "ratio_vs_raw": {name: self.ratio(name) for name in self.samples},
            "samples": {
                name: [s.cpu_ms_per_request for s in samples]
                for name, samples in self.samples.items()
            },
            "request_shape": self.shapes,
            "unavailable": self.unavailable,
        }


async def _drive(call: CallOnce, n: int, concurrency: int) -> None:
    """N calls, at most ``concurrency`` at once; every one must return the expected URL."""
    gate = asyncio.Semaphore(concurrency)

    async def bounded() -> str:
        async with gate:
            return await call()

    urls = await asyncio.gather(*(bounded() for _ in range(n)))
    wrong = sum(url != IMAGE_URL for url in urls)
    if wrong:
        raise RuntimeError(f"{wrong} of {n} calls returned an unexpected image URL")


#: Each round of a cell splits its N calls per client into batches, run in turn (A B, B A,
#: A B, ...) on one event loop: the machine's load drifts, and alternating keeps the drift from
#: landing on one client. A batch is at least twice the cell's concurrency, so that most of
#: it runs with C calls in flight (not only its first wave), and at least ``MIN_BATCH`` calls;
#: within that, a round has up to ``MAX_BATCHES`` of them. With four batches of 40 large
#: uploads whatever C was, one client's rounds moved 6-8 % against the other's; this way,
#: 2-5 % in most cells.
MIN_BATCH = 10
MIN_BATCHES = 4
MAX_BATCHES = 16
#: The polling comparison's phases per client and round, taken in turn likewise.
POLL_PHASES = 4


def batch_size(concurrency: int) -> int:
    """The fewest calls a batch of a cell at ``concurrency`` may have."""
    return max(MIN_BATCH, 2 * concurrency)


def cell_calls(size: str, concurrency: int, scale: float) -> int:
    """N for a cell: its size's default times ``scale``, and at least ``MIN_BATCHES`` batches."""
    return max(round(SIZES[size][1] * scale), MIN_BATCHES * batch_size(concurrency))


def batches(n: int, concurrency: int) -> list[int]:
    """How one client's N calls of a round are split into batches (sizes add up to N)."""
    count = max(1, min(MAX_BATCHES, n // batch_size(concurrency)))
    return [n // count + (i < n % count) for i in range(count)]


async def _cell_round(
    names: Sequence[str],
    server: LocalServer,
    image: Image,
    cell: Cell,
    n: int,
    warmup: int,
    limiter: str,
) -> tuple[dict[str, Sample], dict[str, list[str]], dict[str, str]]:
    """One round of a cell: every client warmed up, then N calls each in alternating batches.

    Returns each client's sample, the request shapes the server saw from it (the same in
    every batch, or :class:`WireMismatchError`), and why a client could not run.
    """
    async with contextlib.AsyncExitStack() as stack:
        calls: dict[str, CallOnce] = {}
        unavailable: dict[str, str] = {}
        for name in names:
            factory = (
                functools.partial(ailab_async, limiter=limiter) if name == SDK else FACTORIES[name]
            )
            try:
                calls[name] = await stack.enter_async_context(factory(server.url, image, cell))
            except UnavailableError as exc:
                unavailable[name] = str(exc)
        await asyncio.to_thread(server.seen)  # a fresh record from here
        shapes: dict[str, list[str]] = {}
        for name, call in calls.items():
            # Warm-up: connections opened, code paths and caches hot, before the clock starts.
            await _drive(call, warmup, cell.concurrency)
            shapes[name] = sorted(await asyncio.to_thread(server.seen))
        cpu = dict.fromkeys(calls, 0.0)
        wall = dict.fromkeys(calls, 0.0)
        order = list(calls)
        for batch, size in enumerate(batches(n, cell.concurrency)):
            for name in order if batch % 2 == 0 else order[::-1]:
                gc.collect()
                cpu_started, wall_started = time.process_time(), time.perf_counter()
                await _drive(calls[name], size, cell.concurrency)
                cpu[name] += time.process_time() - cpu_started
                wall[name] += time.perf_counter() - wall_started
                if sorted(await asyncio.to_thread(server.seen)) != shapes[name]:
                    raise WireMismatchError(f"{cell.label}: {name} changed what it sends")
    samples = {name: Sample(n, cpu[name], wall[name]) for name in calls}
    return samples, shapes, unavailable


def _check_wire(result: CellResult) -> None:
    """Raise unless the raw client and ours each sent one request shape, and the same one."""
    raw, ours = result.shapes.get(RAW), result.shapes.get(SDK)
    if raw is None or ours is None:
        return
    if len(raw) != 1 or raw != ours:
        raise WireMismatchError(
            f"{result.cell.label}: the clients sent different requests\n"
            f"  {RAW}: {raw}\n  {SDK}: {ours}"
        )


def run_cell(
    server: LocalServer,
    image: Image,
    cell: Cell,
    *,
    n: int,
    repeat: int,
    clients: Sequence[str],
    sdk_limiter: str = "default",
    progress: Callable[[str], None] | None = None,
) -> CellResult:
    """Every client through one cell: ``repeat`` rounds, each on a fresh event loop."""
    warmup = min(n, max(10, cell.concurrency, n // 5))
    result = CellResult(cell, n)
    names = [name for name in clients if name != OFFICIAL or _official_runs(cell)]
    for round_number in range(repeat):
        shift = round_number % len(names)  # who goes first rotates too
        ordered = [
            name for name in [*names[shift:], *names[:shift]] if name not in result.unavailable
        ]
        samples, shapes, unavailable = asyncio.run(
            _cell_round(ordered, server, image, cell, n, warmup, sdk_limiter)
        )
        result.unavailable.update(unavailable)
        for name, sample in samples.items():
            result.samples.setdefault(name, []).append(sample)
            if name in (RAW, SDK) and result.shapes.setdefault(name, shapes[name]) != shapes[name]:
                raise WireMismatchError(f"{cell.label}: {name} changed what it sends")
        _check_wire(result)
        if progress:
            progress(
                f"{cell.label} round {round_number + 1}/{repeat}: "
                + ", ".join(f"{name} {s.cpu_ms_per_request:.3f}" for name, s in samples.items())
                + " CPU ms/call"
            )
    return result


def _official_runs(cell: Cell) -> bool:
    return (cell.size, cell.concurrency, cell.input, cell.degrees) in OFFICIAL_CELLS


# --- measuring polls ---------------------------------------------------------------------------


@dataclass
class PollResult:
    """CPU per poll: the client's tracker against a raw GET loop."""

    tasks: int
    interval: float
    window: float
    start: str = "spread"
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    shapes: dict[str, list[str]] = field(default_factory=dict)

    def cpu_ms(self, client: str) -> float | None:
        samples = self.samples.get(client)
        if not samples:
            return None
        return statistics.median(s.cpu_ms_per_request for s in samples)

    def ratio(self) -> float | None:
        own, raw = self.cpu_ms(SDK), self.cpu_ms(RAW)
        return None if own is None or not raw else own / raw


_MIN_POLL_GAP = 0.25
#: How the tracked tasks' polling starts: ``spread`` evenly over one interval (tasks
#: submitted over time), or ``together`` (every task in the same instant).
POLL_STARTS = ("spread", "together")


def _start_offsets(tasks: int, interval: float, start: str) -> list[float]:
    """When each task's polling starts, in seconds after the first."""
    if start == "together":
        return [0.0] * tasks
    return [i * interval / tasks for i in range(tasks)]


@contextlib.asynccontextmanager
async def _raw_polls(
    base_url: str, task_ids: Sequence[str], interval: float, offsets: Sequence[float]
) -> AsyncIterator[None]:
    """Hand-written polling: per task, GET its status every ``interval`` seconds, the
    first after its offset."""
    url = base_url + QUERY_TASK_PATH
    headers = {"ailabapi-api-key": API_KEY}
    async with aiohttp.ClientSession() as session:

        async def poll(task_id: str, offset: float) -> None:
            if offset:
                await asyncio.sleep(offset)
            while True:
                async with session.get(url, params={"task_id": task_id}, headers=headers) as resp:
                    body = await resp.json()
                if body.get("error_code") != 0 or body.get("task_status") not in (0, 1):
                    raise RuntimeError(f"raw aiohttp: unexpected answer {body!r}")
                await asyncio.sleep(interval)

        pollers = [
            asyncio.create_task(poll(task_id, offset))
            for task_id, offset in zip(task_ids, offsets, strict=True)
        ]
        try:
            yield
        finally:
            for poller in pollers:
                poller.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)


@contextlib.asynccontextmanager
async def _tracked_polls(
    base_url: str,
    task_ids: Sequence[str],
    interval: float,
    offsets: Sequence[float],
    limiter: str = "default",
) -> AsyncIterator[None]:
    """The SDK's tracker, polling tasks that never finish at the fallback spacing, each
    tracked at its offset.

    The tracker keeps ``min_interval`` for a poll's round trip: it polls a task
    ``fallback_interval - min_interval`` after the last poll, here ``interval``.
    """
    polling = PollingConfig(fallback_interval=interval + _MIN_POLL_GAP, min_interval=_MIN_POLL_GAP)
    async with AILabClient(
        api_key=API_KEY,
        base_url=base_url,
        max_concurrency=64,
        polling=polling,
        rate_limit=SDK_LIMITERS[limiter](),
    ) as client:
        handles = []
        started = time.perf_counter()
        for task_id, offset in zip(task_ids, offsets, strict=True):
            if offset:
                await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
            handles.append(client.track(task_id))
        yield
        del handles


async def _poll_phase(
    client: str,
    server: LocalServer,
    tasks: int,
    interval: float,
    window: float,
    limiter: str,
    start: str = "spread",
) -> tuple[Sample, list[str]]:
    """CPU per poll over ``window`` seconds, and the shapes of the polls the server saw."""
    task_ids = [f"bench-task-{i:05d}" for i in range(tasks)]
    offsets = _start_offsets(tasks, interval, start)
    pollers = (
        _raw_polls(server.url, task_ids, interval, offsets)
        if client == RAW
        else _tracked_polls(server.url, task_ids, interval, offsets, limiter)
    )
    async with pollers:
        # Warm-up: the tracker polls a task it has just picked up more often at first;
        # measure the steady state.
        await asyncio.sleep(max(3.0, 6 * interval))
        await asyncio.to_thread(server.seen)  # a fresh count from here
        gc.collect()
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        await asyncio.sleep(window)
        cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
        seen = await asyncio.to_thread(server.seen)
    polls = sum(seen.values())
    if polls == 0:
        raise RuntimeError(f"{client}: no polls reached the server")
    server.seen()  # forget the polls in flight at the end
    return Sample(requests=polls, cpu_seconds=cpu, wall_seconds=wall), sorted(seen)


def run_polls(
    server: LocalServer,
    *,
    tasks: int,
    interval: float,
    window: float,
    repeat: int,
    sdk_limiter: str = "default",
    start: str = "spread",
    progress: Callable[[str], None] | None = None,
) -> PollResult:
    """CPU per poll of each client: ``repeat`` rounds, each of :data:`POLL_PHASES` phases per
    client taken in turn (A B, B A, ...), ``window / POLL_PHASES`` seconds measured in each.

    Each phase starts its pollers afresh, and where their polls fall relative to one another
    (how many a loop turn serves) is settled by chance at the start: one long phase per
    client left a round to that draw (the raw loop alone moved 0.08-0.12 ms per poll from
    one phase to the next), several short ones in turn average it out.
    """
    result = PollResult(tasks, interval, window, start)
    for round_number in range(repeat):
        totals: dict[str, Sample] = {}
        for phase in range(POLL_PHASES):
            order = (RAW, SDK) if (round_number + phase) % 2 == 0 else (SDK, RAW)
            for name in order:
                sample, shapes = asyncio.run(
                    _poll_phase(
                        name, server, tasks, interval, window / POLL_PHASES, sdk_limiter, start
                    )
                )
                if result.shapes.setdefault(name, shapes) != shapes or len(shapes) != 1:
                    raise WireMismatchError(f"polling: {name} sent {shapes}")
                total = totals.setdefault(name, Sample(0, 0.0, 0.0))
                total.requests += sample.requests
                total.cpu_seconds += sample.cpu_seconds
                total.wall_seconds += sample.wall_seconds
        for name, sample in totals.items():
            result.samples.setdefault(name, []).append(sample)
            if progress:
                progress(
                    f"polling ({start}) round {round_number + 1}/{repeat} {name}: "
                    f"{sample.requests} "
                    f"polls, {sample.cpu_ms_per_request:.3f} CPU ms/poll"
                )
    if result.shapes.get(RAW) != result.shapes.get(SDK):
        raise WireMismatchError(f"polling: the clients sent different requests {result.shapes}")
    return result


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Result:
    """A whole run: settings, environment, every cell, the polling comparison."""

    repeat: int
    scale: float
    environment: dict[str, str]
    cells: list[CellResult]
    #: One per way of starting the tasks' polling (:data:`POLL_STARTS`); empty: not run.
    polls: list[PollResult]
    sdk_limiter: str = "default"
    requests_served: int = 0
    requests_rejected: int = 0

    def worst(self) -> CellResult | None:
        rated = [cell for cell in self.cells if cell.ratio() is not None]
        return max(rated, key=lambda cell: cell.ratio() or 0.0, default=None)

    def misses(self) -> list[str]:
        """What misses the target: cell labels, and ``polling``."""
        missed = [c.cell.label for c in self.cells if (c.ratio() or 0.0) > TARGET_RATIO]
        missed += [
            f"polling ({polls.start})"
            for polls in self.polls
            if (polls.ratio() or 0.0) > TARGET_RATIO
        ]
        return missed

    def to_json(self) -> dict[str, Any]:
        polls = [
            {
                "start": p.start,
                "tasks": p.tasks,
                "interval": p.interval,
                "window": p.window,
                "cpu_ms_per_poll": {name: p.cpu_ms(name) for name in p.samples},
                "ratio_vs_raw": p.ratio(),
                "request_shape": p.shapes,
            }
            for p in self.polls
        ]
        return {
            "benchmark": "overhead",
            "endpoint": "smart-skin",
            "repeat": self.repeat,
            "scale": self.scale,
            "target_ratio": TARGET_RATIO,
            "sdk_limiter": self.sdk_limiter,
            "environment": self.environment,
            "cells": [cell.to_json() for cell in self.cells],
            "polling": polls,
            "requests_served": self.requests_served,
            "requests_rejected": self.requests_rejected,
        }


def run_benchmark(
    *,
    sizes: Sequence[str] = tuple(SIZES),
    concurrencies: Sequence[int] = CONCURRENCIES,
    inputs: Sequence[str] = INPUTS,
    degrees: Sequence[str] = DEGREES,
    repeat: int = 3,
    scale: float = 1.0,
    calls: int | None = None,
    clients: Sequence[str] = CLIENTS,
    poll_tasks: int = 200,
    poll_interval: float = 0.5,
    poll_window: float = 5.0,
    poll_starts: Sequence[str] = POLL_STARTS,
    sdk_limiter: str = "default",
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Run the matrix (and the polling comparison unless ``poll_tasks`` is 0); blocking.

    ``calls`` fixes N for every cell; otherwise it is the size's default times ``scale``.
    Raises :class:`WireMismatchError` as soon as a cell's clients send different requests.
    """
    if repeat < 1 or scale <= 0 or (calls is not None and calls < 1):
        raise ValueError("repeat, scale and calls must be positive")
    cells = [
        Cell(*combination)
        for combination in itertools.product(sizes, concurrencies, inputs, degrees)
    ]
    results: list[CellResult] = []
    polls: list[PollResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder, LocalServer() as server:
        images: dict[str, Image] = {}
        for size in sizes:
            data = make_image(SIZES[size][0])
            path = Path(folder) / f"{size}.png"
            path.write_bytes(data)
            images[size] = Image(data, path)
        for cell in cells:
            n = calls if calls is not None else cell_calls(cell.size, cell.concurrency, scale)
            results.append(
                run_cell(
                    server,
                    images[cell.size],
                    cell,
                    n=n,
                    repeat=repeat,
                    clients=clients,
                    sdk_limiter=sdk_limiter,
                    progress=progress,
                )
            )
        if poll_tasks > 0 and {RAW, SDK} <= set(clients):
            polls = [
                run_polls(
                    server,
                    tasks=poll_tasks,
                    interval=poll_interval,
                    window=poll_window,
                    repeat=repeat,
                    sdk_limiter=sdk_limiter,
                    start=start,
                    progress=progress,
                )
                for start in poll_starts
            ]
    return Result(
        repeat=repeat,
        scale=scale,
        environment=environment(),
        cells=results,
        polls=polls,
        sdk_limiter=sdk_limiter,
        requests_served=server.requests_served,
        requests_rejected=server.requests_rejected,
    )


# --- the cost of observing: no hooks, a no-op hook, OpenTelemetry ---------------------------------

NOOP_HOOK = "ailab-async + no-op hook"
OTEL = "ailab-async + OpenTelemetry"
#: ``--telemetry``: the cells run, each with raw aiohttp and the three ways of observing.
TELEMETRY_CELLS = tuple(
    Cell(size, concurrency, "bytes", "none")
    for size in ("20kB", "170kB")
    for concurrency in (16, 64)
)


def _no_op(event: object) -> None:
    del event


@contextlib.asynccontextmanager
async def _observed_sdk(
    base_url: str, image: Image, cell: Cell, *, telemetry: Any = False, on_event: Any = None
) -> AsyncIterator[CallOnce]:
    """This SDK as in :func:`ailab_async`, with a hook or OpenTelemetry installed."""
    params = cell.params
    async with AILabClient(
        api_key=API_KEY,
        base_url=base_url,
        max_concurrency=cell.concurrency,
        on_event=on_event,
        telemetry=telemetry,
    ) as client:

        async def call() -> str:
            result = await client.smart_skin(image.data, **params)
            return result.image_url

        yield call


@contextlib.asynccontextmanager
async def _with_opentelemetry(base_url: str, image: Image, cell: Cell) -> AsyncIterator[CallOnce]:
    """OpenTelemetry's SDK as an application configures it: a batch span processor (spans
    exported from its own thread, whose CPU counts too) into an in-memory exporter, and a
    meter provider with an in-memory reader."""
    # An optional dependency: imported here, so the rest of the benchmark runs without it.
    try:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
            InMemorySpanExporter,
        )
    except ImportError as exc:
        raise UnavailableError(f"opentelemetry-sdk is not installed ({exc})") from None
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    try:
        telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        async with _observed_sdk(base_url, image, cell, telemetry=telemetry) as call:
            yield call
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


FACTORIES[NOOP_HOOK] = functools.partial(_observed_sdk, on_event=_no_op)
FACTORIES[OTEL] = _with_opentelemetry
TELEMETRY_CLIENTS = (RAW, SDK, NOOP_HOOK, OTEL)


def run_telemetry(
    *,
    repeat: int = 3,
    scale: float = 1.0,
    calls: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[CellResult]:
    """Each of :data:`TELEMETRY_CELLS` through raw aiohttp and ailab-async three ways."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder, LocalServer() as server:
        for cell in TELEMETRY_CELLS:
            data = make_image(SIZES[cell.size][0])
            path = Path(folder) / f"{cell.size}.png"
            path.write_bytes(data)
            n = calls if calls is not None else cell_calls(cell.size, cell.concurrency, scale)
            results.append(
                run_cell(
                    server,
                    Image(data, path),
                    cell,
                    n=n,
                    repeat=repeat,
                    clients=TELEMETRY_CLIENTS,
                    progress=progress,
                )
            )
    return results


def format_telemetry(results: Sequence[CellResult]) -> str:
    """CPU per call for each way of observing, and its ratio to raw aiohttp."""
    lines = [
        "smart-skin, bytes, no degrees: client-process CPU ms per call (median) / ratio to raw",
        f"{'size':>6} {'conc':>5} {'calls':>6} {'raw':>8} "
        + " ".join(f"{name.replace('ailab-async', 'sdk'):>26}" for name in TELEMETRY_CLIENTS[1:]),
    ]
    for cell in results:
        c = cell.cell
        figures = " ".join(
            f"{_ms(cell.cpu_ms(name)) + ' / ' + _x(cell.ratio(name)):>26}"
            for name in TELEMETRY_CLIENTS[1:]
        )
        lines.append(
            f"{c.size:>6} {c.concurrency:>5} {cell.calls:>6} {_ms(cell.cpu_ms(RAW)):>8} {figures}"
        )
        lines += [f"  {name}: unavailable ({why})" for name, why in cell.unavailable.items()]
    return "\n".join(lines)


# --- reporting ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(result: Result) -> str:
    """The human-readable summary: one row per cell, then polling and the verdict."""
    env = result.environment
    lines = [
        f"smart-skin overhead matrix: repeats={result.repeat} (median), scale={result.scale:g}, "
        f"{SDK} rate limiter: {result.sdk_limiter}",
        f"python {env['python']}, aiohttp {env['aiohttp']}, httpx {env['httpx']}, "
        f"{env['cpus']} CPUs; client-process CPU only (server in another process)",
        "",
        f"{'size':>6} {'conc':>5} {'input':>6} {'degrees':>8} {'calls':>6} "
        f"{'raw ms':>8} {'sdk ms':>8} {'sdk/raw':>8} {'official':>9}",
    ]
    for cell in result.cells:
        c = cell.cell
        official = cell.ratio(OFFICIAL)
        lines.append(
            f"{c.size:>6} {c.concurrency:>5} {c.input:>6} {c.degrees:>8} {cell.calls:>6} "
            f"{_ms(cell.cpu_ms(RAW)):>8} {_ms(cell.cpu_ms(SDK)):>8} {_x(cell.ratio()):>8} "
            f"{_x(official) if official is not None else '':>9}"
        )
    lines.append("CPU ms per call (median); official: the provider's SDK over raw, where run")
    for polls in result.polls:
        lines += [
            "",
            f"polling, started {polls.start}: {polls.tasks} tracked tasks, one poll each per "
            f"{polls.interval:g}s, {polls.window:g}s window",
            f"  {RAW}: {_ms(polls.cpu_ms(RAW))} CPU ms/poll, {SDK}: {_ms(polls.cpu_ms(SDK))} "
            f"CPU ms/poll, sdk/raw {_x(polls.ratio())}",
        ]
    worst = result.worst()
    if worst is not None:
        misses = result.misses()
        verdict = (
            "every cell meets" if not misses else f"{len(misses)} MISS"
        ) + f" the target of <= {TARGET_RATIO}x"
        lines += ["", f"{verdict}; worst cell {worst.cell.label}: {_x(worst.ratio())}"]
        lines += [f"  misses: {label}" for label in misses]
    lines.append(
        "wire check: raw aiohttp and ailab-async sent identical requests in every cell; "
        f"server answered {result.requests_served} ({result.requests_rejected} rejected)"
    )
    return "\n".join(lines)


def markdown_table(result: Result) -> str:
    """The matrix as a Markdown table (``--markdown``), for benchmarks/README.md."""
    rows = [
        "| image | concurrency | input | degrees | raw aiohttp ms | ailab-async ms | ratio "
        "| ailabtools-sdk |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in result.cells:
        c = cell.cell
        official = cell.ratio(OFFICIAL)
        rows.append(
            f"| {c.size} | {c.concurrency} | {c.input} | {c.degrees} | "
            f"{_ms(cell.cpu_ms(RAW))} | {_ms(cell.cpu_ms(SDK))} | **{_x(cell.ratio())}** | "
            f"{_x(official) if official is not None else ''} |"
        )
    return "\n".join(rows)


QUICK = {
    "sizes": ("20kB", "170kB"),
    "concurrencies": (1, 16),
    "scale": 0.1,
    "repeat": 1,
    "poll_tasks": 50,
    "poll_window": 2.0,
}


def _choices(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    chosen = tuple(item.strip() for item in text.split(",") if item.strip())
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {allowed}")
    return chosen


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_overhead",
        description="Client CPU per smart-skin call (and per poll): ailab-async vs raw aiohttp "
        "doing the same thing, over a matrix of image sizes, concurrencies and inputs.",
    )
    parser.add_argument("--quick", action="store_true", help="16 small cells, few calls, 1 round")
    parser.add_argument("--sizes", help=f"comma-separated subset of {', '.join(SIZES)}")
    parser.add_argument("--concurrency", help="comma-separated subset of 1,16,64,256")
    parser.add_argument("--inputs", help="bytes, path or both")
    parser.add_argument("--degrees", help="none, given or both")
    parser.add_argument("--repeat", type=int, help="rounds per cell; the median is reported")
    parser.add_argument("--scale", type=float, help="multiplies every cell's default calls")
    parser.add_argument("--calls", type=int, help="the same N for every cell")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="subset of the clients")
    parser.add_argument("--poll-tasks", type=int, help="tracked tasks (0: skip polling)")
    parser.add_argument("--poll-window", type=float, help="seconds of polling measured")
    parser.add_argument(
        "--poll-start",
        choices=(*POLL_STARTS, "both"),
        default="both",
        help="the tasks' polling started spread over one interval, together, or both (default)",
    )
    parser.add_argument(
        "--sdk-limiter",
        choices=tuple(SDK_LIMITERS),
        default="default",
        help="passthrough: give ailab-async a rate limiter that never waits (a diagnostic: "
        "the limiter's share of the cost is the difference)",
    )
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="instead of the matrix: 20kB and 170kB at concurrency 16 and 64 with no hooks, "
        "a no-op on_event hook, and OpenTelemetry's SDK installed, against raw aiohttp",
    )
    add_output_options(
        parser, check=f"exit 1 if a cell or polling costs more than {TARGET_RATIO}x raw aiohttp"
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = _choices(args.sizes, tuple(SIZES), "sizes") if args.sizes else None
        args.concurrency = (
            tuple(
                int(c)
                for c in _choices(args.concurrency, [str(c) for c in CONCURRENCIES], "concurrency")
            )
            if args.concurrency
            else None
        )
        args.inputs = _choices(args.inputs, INPUTS, "inputs") if args.inputs else None
        args.degrees = _choices(args.degrees, DEGREES, "degrees") if args.degrees else None
        args.clients = _choices(args.clients, CLIENTS, "clients")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.check and not {RAW, SDK} <= set(args.clients):
        parser.error(f"--check needs both {RAW!r} and {SDK!r} in --clients")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    settings: dict[str, Any] = dict(QUICK) if args.quick else {}
    given = {
        "sizes": args.sizes,
        "concurrencies": args.concurrency,
        "inputs": args.inputs,
        "degrees": args.degrees,
        "repeat": args.repeat,
        "scale": args.scale,
        "calls": args.calls,
        "poll_tasks": args.poll_tasks,
        "poll_window": args.poll_window,
        "poll_starts": POLL_STARTS if args.poll_start == "both" else (args.poll_start,),
    }
    settings.update({name: value for name, value in given.items() if value is not None})
    if args.telemetry:
        observed = run_telemetry(
            repeat=settings.get("repeat", 3),
            scale=settings.get("scale", 1.0),
            calls=settings.get("calls"),
            progress=progress_printer(args.quiet),
        )
        print(format_telemetry(observed))
        if args.json:
            write_json(args.json, {"benchmark": "overhead-telemetry", "cells": [
                cell.to_json() for cell in observed
            ]})  # fmt: skip
        return 0
    try:
        result = run_benchmark(
            clients=args.clients,
            sdk_limiter=args.sdk_limiter,
            progress=progress_printer(args.quiet),
            **settings,
        )
    except WireMismatchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.markdown:
        print()
        print(markdown_table(result))
    if args.json:
        write_json(args.json, result.to_json())
    if args.check and result.misses():
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
