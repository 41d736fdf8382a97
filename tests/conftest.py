"""Shared test helpers: fake time, tiny valid images, a client wired to aioresponses."""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import web
from aioresponses import aioresponses

from ailab_async import AILabClient

BASE_URL = "http://127.0.0.1:9"
SKIN_URL = f"{BASE_URL}/api/portrait/effects/smart-skin"
BEAUTY_URL = f"{BASE_URL}/api/portrait/effects/smart-beauty"
CREDITS_URL = f"{BASE_URL}/api/common/query-credits"
QUERY_URL = f"{BASE_URL}/api/common/query-async-task-result"
TEST_KEY = "test-key-not-real-0123456789"


class FakeTime:
    """Virtual time: a clock, and a sleeper whose sleeps end in wake-up order, instantly.

    Time moves only when every task on the loop is blocked: it then jumps to the earliest
    pending wake-up. Concurrent sleepers overlap as they would in real time, so races between
    a timeout and a result resolve as they would, without waiting. ``sleeps`` records each
    requested duration, ``wakeups`` each wake-up time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.start = start
        self.now = start
        self.sleeps: list[float] = []
        self.wakeups: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self._advancer: asyncio.Task[None] | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake_at = self.now + max(0.0, seconds)
        self.wakeups.append(wake_at)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (wake_at, next(self._sequence), future))
        if self._advancer is None or self._advancer.done():
            self._advancer = loop.create_task(self._advance())
        await future

    async def _advance(self) -> None:
        loop = asyncio.get_running_loop()
        while self._sleepers:
            quiet_rounds = 0
            while quiet_rounds < 3:  # let everything that can run, run
                await asyncio.sleep(0)
                quiet_rounds = 0 if loop._ready else quiet_rounds + 1  # type: ignore[attr-defined]
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # a cancelled sleeper
            if not self._sleepers:
                return
            wake_at, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake_at)
            future.set_result(None)


def png_bytes(width: int = 256, height: int = 256) -> bytes:
    """A valid (tiny, grey) PNG of the given size."""
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg_header(width: int, height: int, *, app_padding: int = 0) -> bytes:
    """The header of a baseline JPEG (SOI, APP0 with optional padding, SOF0)."""
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * app_padding
    sof0 = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    return (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", len(app0) + 2)
        + app0
        + b"\xff\xc0"
        + struct.pack(">H", len(sof0) + 2)
        + sof0
        + b"\xff\xd9"
    )


def envelope(data: object = None, **extra: object) -> dict[str, object]:
    """A legacy-style success envelope."""
    body: dict[str, object] = {
        "request_id": "req-1",
        "log_id": "log-1",
        "error_code": 0,
        "error_code_str": "",
        "error_msg": "",
        "error_detail": {"status_code": 200, "code": "", "code_message": "", "message": ""},
    }
    if data is not None:
        body["data"] = data
    body.update(extra)
    return body


def error_envelope(status: int, code: str, message: str = "nope") -> dict[str, object]:
    return {
        "request_id": "req-err",
        "log_id": "log-err",
        "error_code": status,
        "error_code_str": code,
        "error_msg": message,
        "error_detail": {
            "status_code": status,
            "code": code,
            "code_message": message,
            "message": message,
        },
    }


def skin_ok(url: str = "https://results.example/r/1.png?sig=s3cret") -> dict[str, object]:
    return envelope({"image_url": url})


@pytest.fixture(autouse=True)
async def _loop_errors_fail_the_test() -> AsyncIterator[None]:
    """Errors the loop would only log (a future's exception never retrieved, a task
    destroyed while pending, a callback that raised) fail the test instead."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    yield
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(previous)
    assert not reported, [c.get("message") for c in reported]


#: The socket timeout a RedisRateLimiter gets in the tests against a real redis-server, when
#: the test gives none: its default (0.2 s) is a real-time bound that a busy machine (the
#: suite runs on every core) overruns now and then, and a limiter that times out degrades,
#: which those tests do not expect. An outage (redis-server killed) still fails at once.
REDIS_TEST_TIMEOUT = 2.0


@pytest.fixture(autouse=True)
def _redis_timeout_for_a_busy_machine(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("redis") is None:
        return
    from ailab_async.contrib.redis import RedisRateLimiter  # noqa: PLC0415 - the extra

    defaults = RedisRateLimiter.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "timeout", REDIS_TEST_TIMEOUT)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def mock_client(fake_time: FakeTime) -> AsyncIterator[AILabClient]:
    async with AILabClient(
        api_key=TEST_KEY,
        base_url=BASE_URL,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        random=lambda: 0.5,
    ) as client:
        yield client


@pytest.fixture
def face_png() -> bytes:
    return png_bytes(256, 256)


WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[WebHandler], Awaitable[str]]]:
    """Start real aiohttp.web servers on 127.0.0.1 (a free port each) answering every path
    with a handler; returns each one's base URL. All are stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(handler: WebHandler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()
