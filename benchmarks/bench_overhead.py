"""Client-side CPU overhead of ailab-async against hand-written aiohttp.

The same N smart-skin calls, at the same concurrency, with the same image, go to a local
aiohttp server running in another process, through three clients in turn:

* ``raw aiohttp``: the minimal correct hand-written client (one session, a ``FormData``,
  the key header, ``resp.json()``, check ``error_code``, read ``data.image_url``);
* ``ailab-async``: ``AILabClient.smart_skin``;
* ``ailabtools-sdk``: the provider's official httpx-based SDK, if it is installed.

Only this process's CPU time is measured (``time.process_time()`` around each measured
phase), so the server's work never counts. Each client gets a warm-up, then a measured
phase; the whole round repeats ``--repeat`` times in a rotating order and the median is
reported. Target: ailab-async at most 1.3x raw aiohttp's CPU per request.

    python -m benchmarks.bench_overhead                 # N=2000, concurrency 16, 3 repeats
    python -m benchmarks.bench_overhead --check         # exit 1 if the target is missed
    python -m benchmarks.bench_overhead --clients ailab-async --repeat 1   # e.g. to profile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from ailab_async import AILabClient

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
from ._local_server import API_KEY, IMAGE_URL, SMART_SKIN_PATH, LocalServer

RAW = "raw aiohttp"
SDK = "ailab-async"
OFFICIAL = "ailabtools-sdk"
TARGET_RATIO = 1.3

#: One smart-skin call through some client; returns the result's image URL.
CallOnce = Callable[[], Awaitable[str]]
#: Opens a client for (base URL, image bytes, concurrency) and yields its ``CallOnce``.
ClientFactory = Callable[[str, bytes, int], contextlib.AbstractAsyncContextManager[CallOnce]]


# --- the input -----------------------------------------------------------------------------


def make_png(width: int = 256, height: int = 256) -> bytes:
    """A valid RGB PNG of about 28 kB at 256x256: a skin-toned oval with a little grain.

    Flat colour would compress to almost nothing and pure noise to ~200 kB; this sits where a
    small portrait JPEG does, so neither the per-request fixed cost nor byte copying dominates.
    """
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type: none
        for x in range(width):
            grain = ((x * 7919 + y * 104729) >> 3) & 7
            dx, dy = (x - width / 2) / (width * 0.27), (y - height * 0.47) / (height * 0.37)
            if dx * dx + dy * dy < 1:
                row += bytes((220 - (y >> 2) + grain, 170 - (x >> 3) + grain, 140 + grain))
            else:
                row += bytes((40 + (y >> 2), 60 + (x >> 3), 90))
        rows.append(bytes(row))
    return (
        png_head(width, height)
        + png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + png_chunk(b"IEND", b"")
    )


# --- the clients -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_aiohttp(base_url: str, image: bytes, concurrency: int) -> AsyncIterator[CallOnce]:
    """The minimal correct hand-written client: what the SDK's overhead is measured against."""
    url = base_url + SMART_SKIN_PATH
    headers = {"ailabapi-api-key": API_KEY}
    async with aiohttp.ClientSession() as session:

        async def call() -> str:
            form = aiohttp.FormData()
            form.add_field("retouch_degree", str(RETOUCH_DEGREE))
            form.add_field("whitening_degree", str(WHITENING_DEGREE))
            form.add_field("image", image, filename="face.png", content_type="image/png")
            async with session.post(url, data=form, headers=headers) as response:
                body = await response.json()
            if body.get("error_code") != 0:
                raise RuntimeError(f"raw aiohttp: API error {body.get('error_detail')!r}")
            image_url: str = body["data"]["image_url"]
            return image_url

        yield call


@contextlib.asynccontextmanager
async def ailab_async(base_url: str, image: bytes, concurrency: int) -> AsyncIterator[CallOnce]:
    """This SDK, configured as a user would for this concurrency."""
    async with AILabClient(
        api_key=API_KEY, base_url=base_url, max_concurrency=concurrency
    ) as client:

        async def call() -> str:
            result = await client.smart_skin(
                image, retouch_degree=RETOUCH_DEGREE, whitening_degree=WHITENING_DEGREE
            )
            return result.image_url

        yield call


@contextlib.asynccontextmanager
async def ailabtools_sdk(base_url: str, image: bytes, concurrency: int) -> AsyncIterator[CallOnce]:
    """The provider's official SDK (``ailabtools-sdk``, httpx-based), driven unchanged."""
    params = {"image": image, "retouchDegree": RETOUCH_DEGREE, "whiteningDegree": WHITENING_DEGREE}
    async with official_sdk(API_KEY, base_url, OFFICIAL_SMART_SKIN) as client:
        method = client.portrait.portraitIntelligentSkinRetouching

        async def call() -> str:
            body = await method(params)  # raises AILabApiError on an error envelope
            image_url: str = body["data"]["image_url"]
            return image_url

        yield call


CLIENTS: dict[str, ClientFactory] = {
    RAW: raw_aiohttp,
    SDK: ailab_async,
    OFFICIAL: ailabtools_sdk,
}


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Sample:
    """One measured phase: N calls through one client."""

    requests: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000.0 * self.cpu_seconds / self.requests

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.wall_seconds


@dataclass
class ClientReport:
    """All phases of one client, and the error that stopped it, if any."""

    client: str
    samples: list[Sample] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def cpu_ms_per_request(self) -> float | None:
        if not self.samples:
            return None
        return statistics.median(s.cpu_ms_per_request for s in self.samples)

    @property
    def requests_per_second(self) -> float | None:
        if not self.samples:
            return None
        return statistics.median(s.requests_per_second for s in self.samples)


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


async def _phase(
    factory: ClientFactory, base_url: str, image: bytes, n: int, concurrency: int, warmup: int
) -> Sample:
    async with factory(base_url, image, concurrency) as call:
        # Warm-up: connections opened, code paths and caches hot, before the clock starts.
        await _drive(call, warmup, concurrency)
        gc.collect()
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        await _drive(call, n, concurrency)
        cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    return Sample(requests=n, cpu_seconds=cpu, wall_seconds=wall)


@dataclass
class Result:
    """A whole run: settings, environment and one report per client."""

    n: int
    concurrency: int
    repeat: int
    warmup: int
    image_bytes: int
    environment: dict[str, str]
    reports: dict[str, ClientReport]
    requests_served: int = 0
    requests_rejected: int = 0

    def ratio(self, client: str) -> float | None:
        """CPU per request of ``client`` over raw aiohttp's (medians)."""
        own = self.reports[client].cpu_ms_per_request if client in self.reports else None
        raw = self.reports[RAW].cpu_ms_per_request if RAW in self.reports else None
        if own is None or not raw:
            return None
        return own / raw

    def to_json(self) -> dict[str, Any]:
        clients: dict[str, Any] = {}
        for name, report in self.reports.items():
            clients[name] = {
                "cpu_ms_per_request": report.cpu_ms_per_request,
                "requests_per_second": report.requests_per_second,
                "ratio_vs_raw": self.ratio(name),
                "unavailable": report.unavailable,
                "samples": [asdict(s) for s in report.samples],
            }
        return {
            "benchmark": "overhead",
            "endpoint": "smart-skin",
            "n": self.n,
            "concurrency": self.concurrency,
            "repeat": self.repeat,
            "warmup": self.warmup,
            "image_bytes": self.image_bytes,
            "requests_served": self.requests_served,
            "requests_rejected": self.requests_rejected,
            "environment": self.environment,
            "target_ratio": TARGET_RATIO,
            "clients": clients,
        }


def run_benchmark(
    *,
    n: int = 2000,
    concurrency: int = 16,
    repeat: int = 3,
    warmup: int | None = None,
    clients: Sequence[str] = tuple(CLIENTS),
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Run every phase against a fresh local server; blocking (each phase has its own loop)."""
    if n < 1 or concurrency < 1 or repeat < 1:
        raise ValueError("n, concurrency and repeat must be at least 1")
    warmup = min(200, n) if warmup is None else warmup
    image = make_png()
    reports = {name: ClientReport(name) for name in clients}
    with LocalServer() as server:
        for round_number in range(repeat):
            # Rotate the order so no client always runs first (cold CPU caches, turbo).
            shift = round_number % len(clients)
            for name in [*clients[shift:], *clients[:shift]]:
                report = reports[name]
                if report.unavailable:
                    continue
                try:
                    sample = asyncio.run(
                        _phase(CLIENTS[name], server.url, image, n, concurrency, warmup)
                    )
                except UnavailableError as exc:
                    report.unavailable = str(exc)
                    continue
                report.samples.append(sample)
                if progress:
                    progress(
                        f"round {round_number + 1}/{repeat} {name}: "
                        f"{sample.cpu_ms_per_request:.3f} CPU ms/request, "
                        f"{sample.requests_per_second:.0f} req/s"
                    )
    return Result(
        n=n,
        concurrency=concurrency,
        repeat=repeat,
        warmup=warmup,
        image_bytes=len(image),
        environment=environment(),
        reports=reports,
        requests_served=server.requests_served,
        requests_rejected=server.requests_rejected,
    )


# --- reporting ---------------------------------------------------------------------------------


def format_table(result: Result) -> str:
    """The human-readable summary: one row per client."""
    env = result.environment
    lines = [
        f"smart-skin overhead: N={result.n} concurrency={result.concurrency} "
        f"repeats={result.repeat} (median) warm-up={result.warmup} "
        f"image=256x256 PNG {result.image_bytes} B",
        f"python {env['python']}, aiohttp {env['aiohttp']}, httpx {env['httpx']}, "
        f"{env['cpus']} CPUs; client-process CPU only (server in another process)",
        "",
        f"{'client':<16} {'CPU ms/req':>11} {'range':>15} {'wall req/s':>11} {'vs raw':>8}",
    ]
    for name, report in result.reports.items():
        cpu = report.cpu_ms_per_request
        if cpu is None or report.requests_per_second is None:
            lines.append(f"{name:<16} unavailable: {report.unavailable or 'no samples'}")
            continue
        per_sample = [s.cpu_ms_per_request for s in report.samples]
        spread = f"{min(per_sample):.3f}-{max(per_sample):.3f}"
        ratio = result.ratio(name)
        ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
        lines.append(
            f"{name:<16} {cpu:>11.3f} {spread:>15} {report.requests_per_second:>11.0f} "
            f"{ratio_text:>8}"
        )
    sdk_ratio = result.ratio(SDK)
    if sdk_ratio is not None:
        verdict = "meets" if sdk_ratio <= TARGET_RATIO else "MISSES"
        lines += ["", f"{SDK} {verdict} the target of <= {TARGET_RATIO}x ({sdk_ratio:.2f}x)"]
    lines.append(
        f"server answered {result.requests_served} requests ({result.requests_rejected} rejected)"
    )
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_overhead",
        description="Client CPU per smart-skin request: ailab-async vs raw aiohttp "
        "(and the official SDK).",
    )
    parser.add_argument("--n", type=int, default=2000, help="measured calls per phase")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight at once")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument(
        "--warmup", type=int, default=None, help="unmeasured calls first (default min(200, N))"
    )
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help=f"comma-separated subset of: {', '.join(CLIENTS)}",
    )
    too_costly = f"exit 1 if {SDK} costs more than {TARGET_RATIO}x raw aiohttp's CPU per request"
    add_output_options(parser, check=too_costly)
    args = parser.parse_args(argv)
    args.clients = [name.strip() for name in args.clients.split(",") if name.strip()]
    unknown = [name for name in args.clients if name not in CLIENTS]
    if unknown or not args.clients:
        parser.error(f"unknown client(s) {unknown}; choose from {', '.join(CLIENTS)}")
    if args.check and not {RAW, SDK} <= set(args.clients):
        parser.error(f"--check needs both {RAW!r} and {SDK!r} in --clients")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    result = run_benchmark(
        n=args.n,
        concurrency=args.concurrency,
        repeat=args.repeat,
        warmup=args.warmup,
        clients=args.clients,
        progress=progress_printer(args.quiet),
    )
    print(format_table(result))
    if args.json:
        write_json(args.json, result.to_json())
    sdk_ratio = result.ratio(SDK)
    if args.check and (sdk_ratio is None or sdk_ratio > TARGET_RATIO):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
