"""Shared test helpers: fake time, tiny valid images, a client wired to aioresponses."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator, Iterator

import pytest
from aioresponses import aioresponses

from ailab_async import AILabClient

BASE_URL = "http://127.0.0.1:9"
SKIN_URL = f"{BASE_URL}/api/portrait/effects/smart-skin"
BEAUTY_URL = f"{BASE_URL}/api/portrait/effects/smart-beauty"
CREDITS_URL = f"{BASE_URL}/api/common/query-credits"
QUERY_URL = f"{BASE_URL}/api/common/query-async-task-result"
TEST_KEY = "test-key-not-real-0123456789"


class FakeTime:
    """A clock and a sleeper: a sleep moves the clock to its wake-up time at once.

    Concurrent sleepers overlap as in real time (the clock goes to the latest wake-up time,
    it does not add the waits up). ``wakeups`` records each sleeper's wake-up time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.start = start
        self.now = start
        self.sleeps: list[float] = []
        self.wakeups: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake_at = self.now + max(0.0, seconds)
        self.wakeups.append(wake_at)
        self.now = max(self.now, wake_at)
        await asyncio.sleep(0)


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
