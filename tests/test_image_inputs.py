"""Image inputs the user can hand us: bad ones never reach the server, nothing hangs, and
file objects survive retries (and stay the caller's)."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from aioresponses import aioresponses

from ailab_async import AILabClient
from ailab_async._endpoints import SMART_BEAUTY_RULES, SMART_SKIN_RULES, ImageRules
from ailab_async._images import READ_WHOLE_LIMIT, aprepare_image, prepare_image
from ailab_async.errors import ValidationError

from .conftest import TEST_KEY, FakeTime, error_envelope, jpeg_header, png_bytes, skin_ok

# Generous: a correct implementation answers at once; a broken one would wait forever.
BOUND = 10.0

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")


def bmp_header(width: int, height: int, *, dib_size: int = 40) -> bytes:
    dib = struct.pack("<IiiHH", dib_size, width, height, 1, 24)
    dib += b"\x00" * (max(dib_size, 16) - len(dib))
    return b"BM" + struct.pack("<IHHI", 14 + len(dib), 0, 0, 14 + len(dib)) + dib


def core_bmp_header(width: int, height: int) -> bytes:
    """An OS/2 BMP: a 12-byte DIB header with unsigned 16-bit sides."""
    dib = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", 26 + 6, 0, 0, 26) + dib + b"\x00" * 6


def _has_a_reader(fifo: Path) -> bool:
    """Whether some thread holds ``fifo`` open for reading (or is stuck opening it)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    os.close(fd)  # this also releases a reader stuck in open(): the test can end
    return True


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    path = tmp_path / "face.png"
    os.mkfifo(path)
    # Should the code under test ever block on the FIFO again, and wait for the stuck thread
    # while being cancelled, this releases it: the test then fails instead of hanging.
    safety_valve = threading.Timer(2 * BOUND, _has_a_reader, [path])
    safety_valve.daemon = True
    safety_valve.start()
    yield path
    safety_valve.cancel()
    _has_a_reader(path)  # never leave a blocked thread behind, whatever the outcome


# --- 1. paths that would block, or are not regular files --------------------------------------


@needs_fifo
async def test_fifo_path_is_refused_at_once_and_no_thread_is_left_blocked(fifo: Path) -> None:
    with pytest.raises(ValidationError) as info:
        await asyncio.wait_for(aprepare_image(fifo, SMART_SKIN_RULES), BOUND)
    assert info.value.rule == "not_regular"
    assert info.value.input == str(fifo)
    assert "FIFO" in str(info.value)
    assert not _has_a_reader(fifo)


@needs_fifo
async def test_fifo_given_to_the_client_fails_without_a_request(
    fifo: Path, mock_client: AILabClient, mocked: aioresponses
) -> None:
    with pytest.raises(ValidationError) as info:
        await asyncio.wait_for(mock_client.smart_skin(str(fifo)), BOUND)
    assert info.value.rule == "not_regular"
    assert not mocked.requests
    assert not _has_a_reader(fifo)


@needs_fifo
async def test_file_swapped_for_a_fifo_between_attempts_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(300, 300) + bytes(READ_WHOLE_LIMIT))  # streamed from disk
    prepared = prepare_image(path, SMART_SKIN_RULES)
    path.unlink()
    os.mkfifo(path)

    def one_attempt() -> None:
        with prepared.open():
            pass

    try:
        with pytest.raises(ValidationError) as info:
            await asyncio.wait_for(asyncio.to_thread(one_attempt), BOUND)
        assert info.value.rule == "not_regular"
    finally:
        assert not _has_a_reader(path)


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_character_devices_are_refused(device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    with pytest.raises(ValidationError) as info:
        prepare_image(device, SMART_BEAUTY_RULES)
    assert info.value.rule == "not_regular"
    assert "character device" in str(info.value)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no unix sockets here")
def test_unix_socket_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(ValidationError) as info:
            prepare_image(path, SMART_SKIN_RULES)
    assert info.value.rule == "not_regular"


def test_directory_is_refused_as_before(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="directory") as info:
        prepare_image(tmp_path, SMART_SKIN_RULES)
    assert info.value.rule == "exists"


def test_file_changed_between_attempts_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(300, 300) + bytes(READ_WHOLE_LIMIT))  # streamed from disk
    prepared = prepare_image(path, SMART_SKIN_RULES)
    path.write_bytes(png_bytes(300, 301))
    with pytest.raises(ValidationError) as info, prepared.open():
        pass
    assert info.value.rule == "changed"
    path.unlink()
    with pytest.raises(ValidationError) as gone, prepared.open():
        pass
    assert gone.value.rule == "exists"


# --- 2. streams are never read past the limit -------------------------------------------------


class CountingStream(io.RawIOBase):
    """A non-seekable stream of ``head`` then zeros, ``total`` bytes, counting what is read."""

    def __init__(self, head: bytes, total: int) -> None:
        self._head = head
        self._total = total
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._total - self.served)
        chunk = (self._head[self.served :] + b"\x00" * n)[:n]
        buffer[:n] = chunk
        self.served += n
        return n


@pytest.mark.parametrize("rules", [SMART_SKIN_RULES, SMART_BEAUTY_RULES])
def test_unseekable_stream_is_read_at_most_max_bytes_plus_one(rules: ImageRules) -> None:
    stream = CountingStream(png_bytes(300, 300), total=3 * rules.max_bytes)
    with pytest.raises(ValidationError) as info:
        prepare_image(stream, rules)  # type: ignore[arg-type]
    assert info.value.rule == "max_bytes"
    assert stream.served <= rules.max_bytes + 1
    assert "MiB limit" in str(info.value)


def test_oversized_stream_that_is_no_image_is_refused_as_such() -> None:
    stream = CountingStream(b"this is not an image", total=2 * SMART_SKIN_RULES.max_bytes)
    with pytest.raises(ValidationError) as info:
        prepare_image(stream, SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert info.value.rule == "format"
    assert stream.served <= SMART_SKIN_RULES.max_bytes + 1


def test_unseekable_stream_at_the_exact_limit_is_accepted() -> None:
    head = png_bytes(300, 300)
    stream = CountingStream(head, total=SMART_SKIN_RULES.max_bytes)
    prepared = prepare_image(stream, SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert prepared.size == SMART_SKIN_RULES.max_bytes


async def test_cancelling_a_call_blocked_on_a_callers_stream_returns_at_once() -> None:
    # An anyio cancel scope (a task group, fail_after) must not wait for the worker thread.
    entered, release = threading.Event(), threading.Event()
    scopes: list[anyio.CancelScope] = []

    class Stalled(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            entered.set()
            release.wait(BOUND * 3)
            return 0

    async def call() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await aprepare_image(Stalled(), SMART_SKIN_RULES)  # type: ignore[arg-type]

    task = asyncio.ensure_future(call())
    try:
        assert await asyncio.to_thread(entered.wait, BOUND)
        scopes[0].cancel()
        done, _ = await asyncio.wait({task}, timeout=BOUND)
        assert task in done
        assert scopes[0].cancelled_caught
    finally:
        release.set()
        await asyncio.wait({task}, timeout=BOUND)


# --- 3. bad file objects and paths: always a ValidationError naming the input -----------------


def test_closed_file_object_is_refused() -> None:
    handle = io.BytesIO(png_bytes(300, 300))
    handle.close()
    with pytest.raises(ValidationError) as info:
        prepare_image(handle, SMART_SKIN_RULES)
    assert info.value.rule == "closed"
    assert info.value.input == "<file object>"


def test_closed_real_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(300, 300))
    handle = path.open("rb")
    handle.close()
    with pytest.raises(ValidationError) as info:
        prepare_image(handle, SMART_SKIN_RULES)
    assert info.value.rule == "closed"
    assert info.value.input == str(path)


def test_text_mode_file_with_default_encoding_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(300, 300))  # not valid UTF-8: reading it as text would raise
    with path.open(encoding="utf-8") as text, pytest.raises(ValidationError) as info:
        prepare_image(text, SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert info.value.rule == "type"
    assert info.value.input == str(path)
    assert "binary" in str(info.value)


class Scripted:
    """A file-like object: seekable or not, each method may raise or return oddities."""

    def __init__(
        self,
        data: bytes,
        *,
        seekable: bool = True,
        fail: str | None = None,
        error: BaseException | None = None,
        read_returns: object = None,
    ) -> None:
        self._buffer = io.BytesIO(data)
        self._seekable = seekable
        self._fail = fail
        self._error = error or OSError(errno.EIO, "Input/output error")
        self._read_returns = read_returns

    def _maybe_fail(self, method: str) -> None:
        if self._fail == method:
            raise self._error

    def seekable(self) -> bool:
        self._maybe_fail("seekable")
        return self._seekable

    def tell(self) -> int:
        self._maybe_fail("tell")
        return self._buffer.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        self._maybe_fail("seek")
        return self._buffer.seek(offset, whence)

    def read(self, n: int = -1) -> object:
        self._maybe_fail("read")
        if self._read_returns is not None:
            return self._read_returns
        return self._buffer.read(n)


@pytest.mark.parametrize(
    ("seekable", "method"),
    [(True, "seekable"), (True, "tell"), (True, "read"), (False, "seekable"), (False, "read")],
)
def test_file_object_raising_oserror_is_refused(seekable: bool, method: str) -> None:
    obj = Scripted(png_bytes(300, 300), seekable=seekable, fail=method)
    with pytest.raises(ValidationError) as info:
        prepare_image(obj, SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert info.value.rule == "readable"
    assert info.value.input == "<file object>"
    assert "Input/output error" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_file_object_that_fails_to_seek_back_still_gives_its_bytes() -> None:
    obj = Scripted(png_bytes(300, 300), fail="seek")
    assert prepare_image(obj, SMART_SKIN_RULES).data == png_bytes(300, 300)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("returns", "rule"),
    [("text", "type"), (12, "type"), ([b"x"], "type")],
)
@pytest.mark.parametrize("seekable", [True, False])
def test_file_object_read_returning_non_bytes_is_refused(
    returns: object, rule: str, seekable: bool
) -> None:
    obj = Scripted(png_bytes(300, 300), seekable=seekable, read_returns=returns)
    with pytest.raises(ValidationError) as info:
        prepare_image(obj, SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert info.value.rule == rule
    assert info.value.input == "<file object>"


def test_non_blocking_stream_with_no_data_is_refused() -> None:
    class Empty(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> None:
            return None  # "would block"

    streams: list[Any] = [Empty(), io.BufferedReader(Empty())]
    for stream in streams:
        with pytest.raises(ValidationError) as info:
            prepare_image(stream, SMART_SKIN_RULES)
        assert info.value.rule == "readable"
        assert "non-blocking" in str(info.value)


def test_hostile_name_property_does_not_escape() -> None:
    class Named(Scripted):
        @property
        def name(self) -> str:
            raise RuntimeError("boom")

    with pytest.raises(ValidationError) as info:
        prepare_image(Named(b"nope"), SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert info.value.input == "<file object>"


def test_released_memoryview_is_refused() -> None:
    view = memoryview(png_bytes(300, 300))
    view.release()
    with pytest.raises(ValidationError) as info:
        prepare_image(view, SMART_SKIN_RULES)
    assert info.value.input == "<bytes>"


def test_path_with_nul_byte_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        prepare_image("a\x00b.jpg", SMART_SKIN_RULES)
    assert info.value.rule == "path"
    assert info.value.input == "a\\x00b.jpg"


def test_path_too_long_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        prepare_image(tmp_path / ("a" * 5000 + ".jpg"), SMART_SKIN_RULES)
    assert info.value.rule == "readable"


def test_permission_denied_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(png_bytes(300, 300))
    real_open = os.open

    def denied(target: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(target) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(target, flags, *args, **kwargs)

    # Patched rather than chmod 000: the test may run as root, who may read anything.
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ValidationError) as info:
        prepare_image(path, SMART_SKIN_RULES)
    assert info.value.rule == "readable"
    assert "Permission denied" in str(info.value)


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "face.png"
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(ValidationError, match="symbolic link") as info:
        prepare_image(link, SMART_SKIN_RULES)
    assert info.value.rule == "exists"


def test_bytes_path_is_image_content_as_documented() -> None:
    with pytest.raises(ValidationError) as info:
        prepare_image(b"/tmp/x.jpg", SMART_SKIN_RULES)
    assert info.value.rule == "format"
    assert info.value.input == "<bytes>"


def test_control_characters_in_a_path_are_escaped_in_messages(tmp_path: Path) -> None:
    hostile = tmp_path / "\x1b[2J\x1b]0;pwned\x07\nface.png"
    with pytest.raises(ValidationError) as info:
        prepare_image(hostile, SMART_SKIN_RULES)
    for text in (str(info.value), info.value.input):
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\n" not in text
        assert "\\x1b[2J" in text
    hostile.write_bytes(b"not an image")
    with hostile.open("rb") as handle, pytest.raises(ValidationError) as named:
        prepare_image(handle, SMART_SKIN_RULES)
    assert named.value.rule == "format"
    assert "\x1b" not in str(named.value)
    assert named.value.input.endswith("\\nface.png")


def test_printable_unicode_path_is_shown_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "visage été 顔.png"
    with pytest.raises(ValidationError) as info:
        prepare_image(path, SMART_SKIN_RULES)
    assert info.value.input == str(path)


# --- 4. file objects survive retries and stay the caller's -----------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.mark.parametrize("source", ["real file", "BytesIO", "offset file"])
async def test_file_object_survives_a_retry_and_stays_open(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path, source: str
) -> None:
    image = png_bytes(300, 300)
    received: list[bytes] = []
    chunked: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        chunked.append(request.headers.get("Transfer-Encoding", "").lower() == "chunked")
        form = await request.post()
        upload = form["image"]
        assert isinstance(upload, web.FileField)
        received.append(upload.file.read())
        if len(received) == 1:
            return web.json_response(error_envelope(500, "SERVICE_INTERNAL_ERROR"), status=500)
        return web.json_response(skin_ok())

    url = await serve(handler)
    path = tmp_path / "face.png"
    prefix = b"some header the caller skipped"
    path.write_bytes(prefix + image if source == "offset file" else image)
    fake = FakeTime()
    async with AILabClient(
        api_key=TEST_KEY, base_url=url, sleep=fake.sleep, clock=fake.clock, random=lambda: 0.5
    ) as client:
        with path.open("rb") if source != "BytesIO" else io.BytesIO(image) as handle:
            if source == "offset file":
                handle.seek(len(prefix))
            start = handle.tell()
            result = await client.smart_skin(handle)
            assert not handle.closed  # the caller's object is theirs to close
            assert handle.tell() == start  # and it is where they left it
            assert handle.read() == image
        assert client.stats.retries == 1
    assert result.request_id == "req-1"
    assert received == [image, image]
    assert chunked == [False, False]  # a Content-Length, as for a path


@needs_fifo
async def test_path_swapped_for_a_fifo_during_backoff_ends_the_call_without_hanging(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path
) -> None:
    requests = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        await request.read()
        return web.json_response(error_envelope(500, "SERVICE_INTERNAL_ERROR"), status=500)

    url = await serve(handler)
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(300, 300) + bytes(READ_WHOLE_LIMIT))  # streamed from disk
    fake = FakeTime()

    async def sleep_then_swap(seconds: float) -> None:
        if path.is_file():
            path.unlink()
            os.mkfifo(path)
        await fake.sleep(seconds)

    # Should the attempt block the loop on the FIFO again, this releases it: fail, not hang.
    safety_valve = threading.Timer(2 * BOUND, _has_a_reader, [path])
    safety_valve.daemon = True
    safety_valve.start()
    try:
        async with AILabClient(
            api_key=TEST_KEY, base_url=url, sleep=sleep_then_swap, clock=fake.clock
        ) as client:
            with pytest.raises(ValidationError) as info:
                await asyncio.wait_for(client.smart_skin(path), BOUND)
    finally:
        safety_valve.cancel()
        released = _has_a_reader(path)
    assert info.value.rule == "not_regular"
    assert requests == 1  # refused before the second upload, and not retried
    assert not released


# --- 5. dimensions no decoder accepts, for every endpoint -------------------------------------


@pytest.mark.parametrize("rules", [SMART_SKIN_RULES, SMART_BEAUTY_RULES])
@pytest.mark.parametrize(
    ("data", "rule"),
    [
        pytest.param(png_bytes(0, 0), "resolution", id="png-0x0"),
        pytest.param(png_bytes(0, 300), "resolution", id="png-0x300"),
        pytest.param(png_bytes(300, 0), "resolution", id="png-300x0"),
        # A JPEG height of 0 defers it to a DNL marker: the API does not decode those.
        pytest.param(jpeg_header(300, 0), "resolution", id="jpeg-height-0"),
        pytest.param(jpeg_header(0, 300), "resolution", id="jpeg-width-0"),
        pytest.param(
            png_bytes(300, 300)[:12] + b"IHDX" + png_bytes(300, 300)[16:],
            "decodable",
            id="png-no-ihdr",
        ),
    ],
)
def test_zero_sides_are_refused_everywhere(data: bytes, rule: str, rules: ImageRules) -> None:
    with pytest.raises(ValidationError) as info:
        prepare_image(data, rules)
    assert info.value.rule == rule


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        pytest.param(b"BM" + b"\x00" * 60, "decodable", id="BM-then-zeros"),
        pytest.param(bmp_header(300, 300, dib_size=41), "decodable", id="dib-41"),
        pytest.param(bmp_header(300, 300, dib_size=16), "decodable", id="dib-16"),
        pytest.param(bmp_header(-300, 300), "decodable", id="negative-width"),
        pytest.param(bmp_header(0, 300), "resolution", id="width-0"),
        pytest.param(bmp_header(300, 0), "resolution", id="height-0"),
        pytest.param(bmp_header(300, -(2**31)), "resolution", id="height-int-min"),
        pytest.param(core_bmp_header(0, 0), "resolution", id="os2-0x0"),
        pytest.param(bmp_header(5000, 300, dib_size=124), "resolution", id="v5-too-wide"),
    ],
)
def test_bmp_headers_no_decoder_accepts_are_refused(data: bytes, rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        prepare_image(data, SMART_BEAUTY_RULES)
    assert info.value.rule == rule


@pytest.mark.parametrize("dib_size", [12, 40, 52, 56, 64, 108, 124])
def test_bmp_with_every_known_dib_header_is_accepted(dib_size: int) -> None:
    data = core_bmp_header(300, 200) if dib_size == 12 else bmp_header(300, 200, dib_size=dib_size)
    prepared = prepare_image(data, SMART_BEAUTY_RULES)
    assert (prepared.width, prepared.height) == (300, 200)


def test_top_down_bmp_stays_accepted() -> None:
    prepared = prepare_image(bmp_header(300, -200), SMART_BEAUTY_RULES)
    assert (prepared.width, prepared.height) == (300, 200)
