"""What benchmarks share: the processes they measure against, their inputs, and their output.

The one helper module of ``benchmarks/`` (a benchmark module holds only its own scenario, its
figures and its table), so no benchmark copies another's helpers, nor the tests' (benchmarks
never import from ``tests/``). Its parts:

* where a run happened: :func:`environment`;
* output: :func:`add_output_options` (``--json``, ``--check``, ``--quiet``),
  :func:`progress_printer`, :func:`write_json`;
* inputs and measures: :func:`sample_portraits`, :func:`png_head` and :func:`png_chunk`,
  :func:`rss_bytes`, the smart-skin parameters, and the official SDK the benchmarks compare
  against (:func:`official_sdk`);
* child processes, talked to in lines (:class:`ChildProcess`): the simulator
  (:class:`SimulatorProcess`: a ``SimulatorConfig`` in, its ``SimulatorStats`` back between
  phases), a throw-away ``redis-server`` (:class:`RedisServer`), and OS processes of clients
  calling ``query-credits`` flat out (:func:`run_credit_workers` with a :class:`CreditWorkload`).

The child sides run as ``python -m benchmarks._common simulator`` and ``python -m
benchmarks._common credits-worker WORKLOAD``. Nothing of ``ailab_async`` is imported at the
top: ``_local_server.py``'s child imports this module and must know nothing of the SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import math
import os
import pickle
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ailab_async.testing.simulator import SimulatorConfig, SimulatorStats

REPO_ROOT = Path(__file__).resolve().parent.parent
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0

#: A progress line printer (``None``: quiet).
Progress = Callable[[str], None]


# --- where a run happened ----------------------------------------------------------------------


def package_version(name: str) -> str:
    """The installed version of ``name``, or ``"not installed"``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Python, platform, CPUs and the versions of the packages the benchmarks compare."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "aiohttp": package_version("aiohttp"),
        "ailab-async": package_version("ailab-async"),
        "ailabtools-sdk": package_version("ailabtools-sdk"),
        "httpx": package_version("httpx"),
    }


def run_record(started: float) -> dict[str, Any]:
    """When a run started and finished (UTC, from ``time.time()`` values) and the load average
    as it finished: a run beside other CPU-heavy work reads slower, and the report says so."""
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "started": time.strftime(stamp, time.gmtime(started)),
        "finished": time.strftime(stamp, time.gmtime()),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


# --- output -------------------------------------------------------------------------------------


def progress_printer(quiet: bool) -> Progress | None:
    """Progress lines go to stderr (the table goes to stdout); ``None`` when ``quiet``."""
    if quiet:
        return None
    return lambda line: print(line, file=sys.stderr)


def add_output_options(
    parser: argparse.ArgumentParser, *, check: str | None = None, quiet: bool = True
) -> None:
    """The options every benchmark shares: ``--json PATH``, ``--check`` (``check`` is its help:
    what makes the run exit 1; without it the figures never decide the exit status) and
    ``--quiet``."""
    parser.add_argument("--json", metavar="PATH", help="also write the full result as JSON")
    if check is not None:
        parser.add_argument("--check", action="store_true", help=check)
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress lines")


def write_json(path: str, data: Any) -> None:
    """``--json PATH``: the full result, indented, one trailing newline."""
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")


# --- inputs and measures ------------------------------------------------------------------------


def sample_portraits(count: int, side: int, *, first_seed: int = 0) -> list[bytes]:
    """Distinct small portrait JPEGs (the simulator draws a task's duration from its image)."""
    from ailab_async.testing.simulator import sample_image  # noqa: PLC0415 - Pillow: parent only

    return [sample_image(side, side, seed=first_seed + i) for i in range(count)]


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data, CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_head(width: int, height: int) -> bytes:
    """The PNG signature and the ``IHDR`` of an 8-bit RGB image; ``IDAT`` and ``IEND`` follow."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)


def rss_bytes() -> int | None:
    """This process's resident set size, from ``/proc`` (``None`` where there is none)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


#: The smart-skin parameters every benchmark sends (the local server requires both).
RETOUCH_DEGREE = 0.6
WHITENING_DEGREE = 0.5
#: The official SDK's smart-skin method, as a path for :func:`official_sdk`.
OFFICIAL_SMART_SKIN = "portrait.portraitIntelligentSkinRetouching"


class UnavailableError(Exception):
    """A compared client cannot run here (the official SDK is not installed, or has changed)."""


@contextlib.asynccontextmanager
async def official_sdk(
    api_key: str, base_url: str, *needed: str, **options: Any
) -> AsyncIterator[Any]:
    """The provider's official SDK (``ailabtools-sdk``) pointed at ``base_url``, closed on exit.

    ``needed`` are dotted attribute paths (``"portrait.portraitIntelligentSkinRetouching"``)
    it must have; :class:`UnavailableError` when it is not installed or lacks one of them.
    """
    try:
        import ailabtools  # noqa: PLC0415 - optional: every benchmark runs without it
    except ImportError as exc:
        raise UnavailableError(f"not installed ({exc})") from None
    sdk: Any = ailabtools.AILabClient(api_key=api_key, base_url=base_url, **options)
    try:
        missing = [path for path in needed if _attribute(sdk, path) is None]
        if missing:
            raise UnavailableError(f"no {' / '.join(missing)}")
        yield sdk
    finally:
        await sdk.aclose()


def _attribute(thing: Any, path: str) -> Any:
    for name in path.split("."):
        thing = getattr(thing, name, None)
    return thing


# --- child processes ----------------------------------------------------------------------------


class ChildProcess:
    """``python -m MODULE ARGS`` from the repository root, talked to in lines, while in the block.

    On entry it starts and :meth:`handshake` reads what the child says once it is ready (a
    subclass checks it). On exit it is stopped by closing its stdin (so it also stops when we
    die), then killed if it has not exited within a timeout. A plain subprocess rather than
    ``multiprocessing``: spawning re-imports the caller's ``__main__``, which breaks callers
    without a ``__main__`` guard. :attr:`cpu_seconds` is the CPU it used, read from ``/proc``
    just before stopping it (``None`` where there is no ``/proc``); :attr:`final_output` is
    what it printed after its stdin closed (``None`` if it had to be killed).
    """

    def __init__(self, module: str, *args: str) -> None:
        self.command = [sys.executable, "-m", module, *args]
        self.cpu_seconds: float | None = None
        self.final_output: str | None = None
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self: _Child) -> _Child:
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        try:
            self.handshake()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def handshake(self) -> None:
        """Wait until the child is ready; raise if it says something else (or dies)."""

    def send(self, line: str) -> None:
        """Write one line to the child's stdin."""
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def read_line(self) -> str:
        """One line the child printed, without its newline; ``""`` at EOF (the child died)."""
        assert self._process is not None
        assert self._process.stdout is not None
        return self._process.stdout.readline().rstrip("\n")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self.cpu_seconds = _process_cpu_seconds(process.pid)
        try:
            self.final_output, _ = process.communicate(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


_Child = TypeVar("_Child", bound=ChildProcess)


class SimulatorProcess(ChildProcess):
    """The simulator with ``config`` in a child interpreter, at :attr:`url` while in the block.

    Its CPU and memory never mix with the client's. :meth:`stats` brings its counters back
    (a blocking call: use it between phases, not while a measured loop runs).

        with SimulatorProcess(SimulatorConfig(rate_limit=RateLimit(50))) as sim:
            asyncio.run(work(sim.url, sim.api_key))
            print(sim.stats().count(outcome="EXCEEDING_LIMITS"))
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        super().__init__("benchmarks._common", "simulator")
        self.config = config
        self.url = ""
        self.api_key = ""

    def handshake(self) -> None:
        from ailab_async.testing.simulator import SimulatorConfig  # noqa: PLC0415

        self.send(_encode(self.config or SimulatorConfig()))
        words = self.read_line().split()  # [] if the child died before binding
        if len(words) != 2 or not words[0].startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the simulator did not start (it said {words!r})")
        self.url, self.api_key = words

    def stats(self) -> SimulatorStats:
        """What the simulator has seen so far (a copy)."""
        self.send("stats")
        stats: SimulatorStats = _decode(self.read_line())
        return stats


# Pickle, not JSON: both ends run this same code, so the config and the stats cross as the
# simulator's own typed objects instead of a second description of their fields.
def _encode(value: object) -> str:
    return base64.b64encode(pickle.dumps(value)).decode("ascii")


def _decode(line: str) -> Any:
    return pickle.loads(base64.b64decode(line))


async def _serve_simulator() -> None:
    """Child side of :class:`SimulatorProcess`: config in, ``URL KEY`` out, then ``stats``
    lines answered until stdin closes."""
    from ailab_async.testing.simulator import Simulator  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    config = _decode(await loop.run_in_executor(None, sys.stdin.readline))
    async with Simulator(config) as sim:
        print(sim.url, sim.api_key, flush=True)
        # A worker thread waits for our stdin, not the loop; EOF (the parent is done): stop.
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "stats":
                print(_encode(sim.stats), flush=True)


class RedisServer:
    """A throw-away ``redis-server`` on a free port of 127.0.0.1 (no persistence), in the block."""

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


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    """``given`` (a ``--redis-url``), else a throw-away :class:`RedisServer`'s, in the block."""
    if given:
        yield given
        return
    with RedisServer() as server:
        yield server.url


def redis_server_version() -> str:
    """``redis-server --version``, or ``"not installed"``."""
    binary = shutil.which("redis-server")
    if binary is None:
        return "not installed"
    completed = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return completed.stdout.strip()


# --- OS processes of clients calling query-credits flat out -------------------------------------

#: The modes of a :class:`CreditWorkload`: one Redis-shared budget, a limit per process, or
#: a fixed shared schedule (:class:`FixedPace`, no adaptation: the oracle of a fixed pace).
SHARED_BUDGET = "shared"
OWN_LIMIT = "per-process"
FIXED_PACE = "fixed-pace"
#: How often a worker of a shared budget notes the pace it sees (seconds).
PACE_SAMPLE = 0.5


class FixedPace:
    """A fixed shared schedule, without Redis and without adaptation: slot ``n`` of all
    ``processes`` together is at ``start_at + n / pace``, and process ``index`` owns the
    slots ``n = index, index + processes, ...`` (one machine, one wall clock, so the
    processes agree on the schedule without talking).

    What the best any shared client could do at a constant pace: no booking round trip, no
    slow-down, no pause; a 429 is only counted (the client waits its ``Retry-After`` and
    takes the next free slot). A slot already past when asked for is skipped, never sent
    late (a late send crowds the next process's slot). ``clock`` and ``sleep`` are for tests.
    """

    def __init__(
        self,
        start_at: float,
        pace: float,
        index: int,
        processes: int,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 <= index < processes or not pace > 0:
            raise ValueError(f"process {index} of {processes} at {pace}/s")
        self._pace = pace
        self._interval = processes / pace
        self._next = start_at + index / pace
        self._clock = clock
        self._sleep = sleep
        self.rate_limited_count = 0

    @property
    def configured_rate(self) -> float | None:
        return self._pace

    def current_rate(self) -> float | None:
        return self._pace

    async def acquire(self) -> float:
        now = self._clock()
        if self._next < now:  # skip the slots already past
            self._next += self._interval * math.ceil((now - self._next) / self._interval)
        slot = self._next
        self._next += self._interval
        await self._sleep(max(0.0, slot - self._clock()))
        return slot

    def on_success(self, sent_at: float) -> None:
        del sent_at

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        del sent_at, retry_after
        self.rate_limited_count += 1


@dataclass(frozen=True)
class CreditWorkload:
    """What each process of :func:`run_credit_workers` does: one ``AILabClient`` calling
    ``query-credits`` from ``concurrency`` loops for ``seconds`` (or, with ``calls``, until it
    has made that many calls, ``seconds`` then being only a time limit).

    ``mode`` :data:`SHARED_BUDGET`: the client uses ``RedisRateLimiter(redis_url,
    name=budget_name, rate=rate)``; :data:`OWN_LIMIT`: it has ``rate_limit=rate`` of its own;
    :data:`FIXED_PACE`: all processes keep to one fixed schedule of ``rate`` in total
    (:class:`FixedPace`, ``redis_url`` unused).
    """

    mode: str
    redis_url: str
    base_url: str
    api_key: str
    budget_name: str
    rate: float
    seconds: float
    concurrency: int
    calls: int = 0


async def run_credit_workers(
    workload: CreditWorkload, processes: int
) -> tuple[list[dict[str, Any]], float]:
    """``processes`` OS processes run ``workload`` from one agreed start; returns each one's
    report and that start (``time.time()``).

    A report holds ``done`` (completion times: one machine, one wall clock), ``errors`` (what
    callers saw, by type), ``rate_limited`` (429s met, retried inside the client),
    ``using_redis`` and ``degraded`` (the shared budget's state at the end), and ``paces``
    (the shared budget's pace as the process saw it, ``(seconds from the start, req/s)``
    every :data:`PACE_SAMPLE` s; empty without one).
    """
    command = [sys.executable, "-m", "benchmarks._common", "credits-worker"]
    workers = [
        await asyncio.create_subprocess_exec(
            *command,
            json.dumps(asdict(workload)),
            str(index),
            str(processes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        for index in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            ready = await asyncio.wait_for(worker.stdout.readline(), _START_TIMEOUT)
            if ready != b"ready\n":
                raise RuntimeError(f"a worker failed to start: {ready!r}")
        start_at = time.time() + 0.2
        line = f"{start_at!r}\n".encode()
        outputs = await asyncio.wait_for(
            asyncio.gather(*(w.communicate(line) for w in workers)), workload.seconds + 60
        )
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
            await worker.wait()
    return [json.loads(out.splitlines()[-1]) for out, _ in outputs], start_at


async def _call_credits_flat_out(
    work: CreditWorkload, start_at: float, index: int, processes: int
) -> dict[str, Any]:
    """Child side of :func:`run_credit_workers`: one client, ``work.concurrency`` loops
    (``index`` of ``processes``)."""
    from ailab_async import AILabClient, AILabError, RateLimiter  # noqa: PLC0415
    from ailab_async.contrib.redis import RedisRateLimiter  # noqa: PLC0415

    done: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    end_at = start_at + work.seconds
    async with contextlib.AsyncExitStack() as stack:
        limiter: RedisRateLimiter | None = None
        rate_limit: float | RateLimiter = work.rate
        if work.mode == SHARED_BUDGET:
            limiter = RedisRateLimiter(work.redis_url, name=work.budget_name, rate=work.rate)
            rate_limit = await stack.enter_async_context(limiter)
        elif work.mode == FIXED_PACE:
            rate_limit = FixedPace(start_at, work.rate, index, processes)
        client = await stack.enter_async_context(
            AILabClient(
                api_key=work.api_key,
                base_url=work.base_url,
                rate_limit=rate_limit,
                max_concurrency=work.concurrency,
            )
        )
        await asyncio.sleep(max(0.0, start_at - time.time()))

        tickets = iter(range(work.calls)) if work.calls else None

        async def calls() -> None:
            while time.time() < end_at:
                if tickets is not None and next(tickets, None) is None:
                    return  # this process has made its calls
                try:
                    await client.credits(deadline=max(1.0, end_at - time.time() + 5))
                except AILabError as exc:
                    errors[type(exc).__name__] += 1
                else:
                    done.append(time.time())

        paces: list[tuple[float, float]] = []

        async def sample_pace() -> None:
            # The shared pace this process last saw, every PACE_SAMPLE s from the start.
            assert limiter is not None
            while True:
                paces.append((round(time.time() - start_at, 3), round(limiter.current_rate(), 2)))
                await asyncio.sleep(PACE_SAMPLE)

        sampler = asyncio.ensure_future(sample_pace()) if limiter is not None else None
        await asyncio.gather(*(calls() for _ in range(work.concurrency)))
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        return {
            "paces": paces,
            "done": done,
            "errors": dict(errors),
            "rate_limited": client.stats.rate_limited,
            "using_redis": limiter.using_redis if limiter else False,
            "degraded": limiter.degraded_count if limiter else 0,
        }


def _credits_worker(workload_json: str, index: str = "0", processes: str = "1") -> None:
    work = CreditWorkload(**json.loads(workload_json))
    # The SDK is imported before this process says it is ready: the wall time runs from the
    # agreed start (0.2 s after the last "ready"), and four processes importing it after
    # the start (0.5 s of CPU each, on two cores) put 1.0-1.5 s of start-up into it.
    import ailab_async.contrib.redis  # noqa: F401, PLC0415

    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    report = asyncio.run(_call_credits_flat_out(work, start_at, int(index), int(processes)))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    # The parent stops its children by closing their stdin; Ctrl-C in a terminal reaches the
    # whole process group, and must not leave a traceback per child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    role, *rest = sys.argv[1:]
    if role == "simulator":
        asyncio.run(_serve_simulator())
    elif role == "credits-worker":
        _credits_worker(*rest)
    else:
        raise SystemExit(f"unknown role {role!r}")
