"""Wire-level behaviour against a real local aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import stat
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ailab_async import (
    AILabClient,
    ClientClosedError,
    ConfigurationError,
    ConnectionFailedError,
    DeadlineExceededError,
    DownloadError,
    ImageRejectedError,
    InvalidRequestError,
    MalformedResponseError,
    RequestTimeoutError,
    ServerError,
    ValidationError,
)
from ailab_async._dispatch import RetryPolicy
from ailab_async._endpoints import Endpoint
from ailab_async._ratelimit import AdaptiveRateLimiter

from ._hostile import (
    Servers,
    WebHandler,
    gzip_bomb,
    hang_after_upload,
    raw_reply,
    redirect_to,
    servers,
    stall,
    stream_body,
)
from .conftest import TEST_KEY, FakeTime, error_envelope, png_bytes, skin_ok

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.mark.parametrize("source", ["path", "fileobj"])
async def test_multipart_body_is_rebuilt_for_every_attempt(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path, source: str
) -> None:
    image = png_bytes(300, 300)
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["image"]
        assert isinstance(upload, web.FileField)
        received.append(upload.file.read())
        assert request.headers["ailabapi-api-key"] == TEST_KEY
        if len(received) == 1:
            return web.json_response(error_envelope(503, "AI_SERVICE_ERROR"), status=503)
        return web.json_response(skin_ok())

    url = await serve(handler)
    path = tmp_path / "face.png"
    path.write_bytes(image)
    fake = FakeTime()
    async with AILabClient(
        api_key=TEST_KEY, base_url=url, sleep=fake.sleep, clock=fake.clock
    ) as client:
        if source == "path":
            await client.smart_skin(path)
        else:
            handle = io.BytesIO(image)
            await client.smart_skin(handle)
            assert not handle.closed  # the caller's object is theirs to close
    assert received == [image, image]


async def test_truncated_success_body_is_typed_and_retried_as_ambiguous(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await request.read()
        if calls == 1:
            return web.Response(
                body=json.dumps(skin_ok()).encode()[:25], content_type="application/json"
            )
        return web.json_response(skin_ok())

    url = await serve(handler)
    fake = FakeTime()
    async with AILabClient(
        api_key=TEST_KEY, base_url=url, sleep=fake.sleep, clock=fake.clock
    ) as client:
        result = await client.smart_skin(png_bytes(300, 300))
        assert result.request_id == "req-1"
        assert client.stats.ambiguous_retries == 1
    async with AILabClient(
        api_key=TEST_KEY, base_url=url, retry_ambiguous=False, sleep=fake.sleep, clock=fake.clock
    ) as client:
        calls = 0
        with pytest.raises(MalformedResponseError, match="truncated"):
            await client.smart_skin(png_bytes(300, 300))


async def test_connection_reset_after_upload_is_ambiguous(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        raise web.HTTPInternalServerError

    url = await serve(handler)
    async with AILabClient(api_key=TEST_KEY, base_url=url, retry_ambiguous=False) as client:
        with pytest.raises(ConnectionFailedError) as info:
            await client.smart_skin(png_bytes(300, 300))
    assert info.value.ambiguous is True
    assert info.value.retryable is True


# --- hostile servers: caps, redirects, the key, closed clients ------------------------------


def _walk_errors(error: BaseException) -> list[BaseException]:
    """The error and everything chained to it (cause and context), once each."""
    seen: list[BaseException] = []
    stack = [error]
    while stack:
        current = stack.pop()
        if any(current is known for known in seen):
            continue
        seen.append(current)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return seen


def _assert_key_unreachable(error: BaseException) -> None:
    formatted = "".join(
        traceback.TracebackException.from_exception(error, capture_locals=True).format()
    )
    assert TEST_KEY not in formatted
    for chained in _walk_errors(error):
        assert TEST_KEY not in str(chained)
        assert TEST_KEY not in repr(chained)
        tb = chained.__traceback__
        while tb is not None:
            for name, value in tb.tb_frame.f_locals.items():
                assert TEST_KEY not in repr(value), (tb.tb_frame.f_code.co_name, name)
                if isinstance(value, dict):
                    assert TEST_KEY not in repr(list(value.values()))
            tb = tb.tb_next
    for chained in _walk_errors(error)[1:]:
        # Nothing of aiohttp's hangs off our errors: its frames hold the request headers.
        assert not type(chained).__module__.startswith("aiohttp"), type(chained)


def _client(url: str, **kwargs: Any) -> AILabClient:
    settings: dict[str, Any] = {
        "timeout": 1.0,
        "deadline": 5.0,
        "max_retries": 0,
        "backoff_initial": 0.01,
        "backoff_max": 0.02,
    }
    settings.update(kwargs)
    return AILabClient(api_key=TEST_KEY, base_url=url, **settings)


async def test_gzip_bomb_is_a_typed_error_and_reading_stops_at_the_cap() -> None:
    bomb = gzip_bomb(48 * 1024 * 1024)
    async with servers() as running:

        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(
                body=bomb,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )

        url = await running.web("api", handler)
        async with _client(url, max_retries=3) as client:
            with pytest.raises(MalformedResponseError) as info:
                await client.smart_skin(png_bytes(300, 300))
            assert client.stats.attempts == 1  # not retried: it would only happen again
    assert info.value.code == "RESPONSE_TOO_LARGE"
    assert info.value.retryable is False
    assert "billed" in str(info.value)


async def test_endless_body_is_cut_off_at_the_cap() -> None:
    async with servers() as running:

        async def handler(request: web.Request) -> web.StreamResponse:
            return await stream_body(request, running, "api", total=96 * 1024 * 1024)

        url = await running.web("api", handler)
        async with _client(url) as client:
            with pytest.raises(MalformedResponseError) as info:
                await client.credits()
            assert info.value.code == "RESPONSE_TOO_LARGE"
            for _ in range(200):  # the server notices the drop on its next write
                if running.dropped["api"]:
                    break
                await asyncio.sleep(0.05)
        assert running.dropped["api"]
        # The server could push at most the cap plus the socket and reader buffers.
        assert running.written["api"] < 32 * 1024 * 1024


async def test_declared_length_over_the_cap_is_refused_unread() -> None:
    async with servers() as running:
        url = await running.raw(
            "api",
            raw_reply(b"HTTP/1.1 200 OK", b"{}", content_length=1_000_000_000, close=False),
        )
        async with _client(url) as client:
            with pytest.raises(MalformedResponseError) as info:
                await client.credits()
    assert info.value.code == "RESPONSE_TOO_LARGE"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_api_redirect_is_not_followed_and_the_key_stays_home(status: int) -> None:
    async with servers() as running:

        async def evil(request: web.Request) -> web.Response:
            return web.json_response(skin_ok())

        evil_url = await running.web("evil", evil)

        async def api(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=status, headers={"Location": evil_url + request.path_qs})

        url = await running.web("api", api)
        async with _client(url, max_retries=3) as client:
            with pytest.raises(InvalidRequestError) as info:
                await client.smart_skin(png_bytes(300, 300))
            with pytest.raises(InvalidRequestError):
                await client.credits()
            assert client.stats.attempts == 2  # not retried
        assert running.requests("evil") == 0
        assert not running.saw_key("evil")
    assert info.value.status == status
    assert evil_url not in str(info.value)


async def test_download_redirect_lands_elsewhere_without_the_key() -> None:
    async with servers() as running:

        async def cdn(request: web.Request) -> web.Response:
            return web.Response(body=png_bytes(8, 8), content_type="image/png")

        cdn_url = await running.web("cdn", cdn)

        results_url = await running.web("results", redirect_to(cdn_url + "/final.png"))

        async def api(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response(skin_ok(results_url + "/r/1.png?sig=s3cret"))

        url = await running.web("api", api)
        async with _client(url) as client:
            result = await client.smart_skin(png_bytes(300, 300))
            data = await client.download(result)
        assert data == png_bytes(8, 8)
        assert running.saw_key("api")
        assert running.requests("results") == running.requests("cdn") == 1
        assert not running.saw_key("results")
        assert not running.saw_key("cdn")


def _reset_mid_request() -> WebHandler:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        raise web.HTTPInternalServerError

    return handler


def _answer(status: int, body: bytes) -> WebHandler:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, content_type="application/json")

    return handler


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("refused", ConnectionFailedError),
        ("reset", ConnectionFailedError),
        ("timeout", RequestTimeoutError),
        ("deadline", (DeadlineExceededError, RequestTimeoutError)),
        ("500", ServerError),
        ("malformed", MalformedResponseError),
        ("too-large", MalformedResponseError),
    ],
)
async def test_the_key_is_unreachable_from_errors(
    case: str, expected: type[Exception] | tuple[type[Exception], ...]
) -> None:
    async with servers() as running:
        timeout = 1.0
        if case == "refused":
            url = await running.raw("api", stall())
            for server in running._raw:  # a port nobody listens on any more
                server.close()
                await server.wait_closed()
        elif case == "reset":
            url = await running.web("api", _reset_mid_request())
        elif case in ("timeout", "deadline"):
            url = await running.raw("api", stall())
            timeout = 0.2 if case == "timeout" else 5.0
        elif case == "500":
            url = await running.web("api", _answer(500, b'{"error_detail": {"code": "X"}}'))
        elif case == "malformed":
            url = await running.web("api", _answer(200, b'{"data": '))
        else:
            url = await running.web("api", _answer(200, b" " * (5 * 1024 * 1024)))
        deadline = 0.5 if case == "deadline" else 5.0
        async with _client(url, timeout=timeout, deadline=deadline) as client:
            for call in (lambda: client.smart_skin(png_bytes(300, 300)), client.credits):
                with pytest.raises(expected) as info:
                    await call()
                _assert_key_unreachable(info.value)


async def test_deadline_error_does_not_carry_the_cancelled_attempt() -> None:
    # The hard deadline cancels the attempt where it stands (inside aiohttp, whose frames
    # hold the request headers); that cancellation must not hang off our error.
    async with _client("http://127.0.0.1:9") as client:
        dispatcher = client._dispatcher

        async def attempt(_: None, _timeout: float) -> None:
            headers = {"ailabapi-api-key": TEST_KEY}  # what aiohttp's frames hold
            await asyncio.sleep(30)
            del headers

        with pytest.raises(DeadlineExceededError) as info:
            await dispatcher._run(
                Endpoint("x", "GET", "/x", billed=True), attempt, None, 0.2, rate_limited=False
            )
    assert info.value.__context__ is None
    _assert_key_unreachable(info.value)


async def test_user_session_raising_for_status_keeps_typed_errors() -> None:
    async with servers() as running:

        async def api(request: web.Request) -> web.Response:
            await request.read()
            if request.path.endswith("/missing.png"):
                return web.Response(status=404, text="gone")
            return web.json_response(error_envelope(422, "ERROR_NO_FACE_IN_FILE"), status=422)

        url = await running.web("api", api)
        async with (
            aiohttp.ClientSession(raise_for_status=True) as session,
            _client(url, session=session) as client,
        ):
            with pytest.raises(ImageRejectedError) as info:
                await client.smart_skin(png_bytes(300, 300))
            assert info.value.code == "ERROR_NO_FACE_IN_FILE"
            with pytest.raises(DownloadError) as download:
                await client.download(url + "/missing.png")
            assert download.value.status == 404


async def test_gateway_html_429_is_a_rate_limit_not_an_ambiguous_retry() -> None:
    calls = 0

    async def api(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await request.read()
        if calls == 1:
            return web.Response(status=429, text="<html>Too Many Requests</html>")
        return web.json_response(skin_ok())

    async with servers() as running:
        url = await running.web("api", api)
        async with _client(url, retry_ambiguous=False) as client:
            await client.smart_skin(png_bytes(300, 300))
            assert client.stats.ambiguous_retries == 0
            assert client.stats.rate_limited == 1


class _SpyLimiter(AdaptiveRateLimiter):
    def __init__(self, fake: FakeTime) -> None:
        super().__init__(None, clock=fake.clock, sleep=fake.sleep)
        self.told: list[float | None] = []

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        self.told.append(retry_after)
        super().on_rate_limited(sent_at, retry_after)


@pytest.mark.parametrize(
    ("deadline", "outcome"), [(300.0, "result"), (5.0, "deadline")], ids=["capped", "past-deadline"]
)
async def test_huge_retry_after_is_capped(deadline: float, outcome: str) -> None:
    calls = 0

    async def api(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await request.read()
        if calls == 1:
            return web.json_response(
                error_envelope(429, "EXCEEDING_LIMITS"),
                status=429,
                headers={"Retry-After": "1000000000"},
            )
        return web.json_response(skin_ok())

    fake = FakeTime()
    limiter = _SpyLimiter(fake)
    async with servers() as running:
        url = await running.web("api", api)
        async with _client(
            url, rate_limit=limiter, deadline=deadline, clock=fake.clock, sleep=fake.sleep
        ) as client:
            if outcome == "result":
                await client.smart_skin(png_bytes(300, 300))
                assert max(fake.sleeps) == RetryPolicy().max_retry_after
            else:
                with pytest.raises(DeadlineExceededError):
                    await client.smart_skin(png_bytes(300, 300))
                assert not [s for s in fake.sleeps if s >= deadline]  # ended at once
    assert limiter.told
    assert all(told is not None and told <= min(120.0, deadline) for told in limiter.told)


async def test_aclose_while_a_billed_call_is_in_flight_says_it_may_be_billed() -> None:
    arrived = asyncio.Event()
    async with servers() as running:
        url = await running.web("api", hang_after_upload(arrived))
        client = _client(url, timeout=20.0, deadline=25.0)
        call = asyncio.ensure_future(client.smart_skin(png_bytes(300, 300)))
        await asyncio.wait_for(arrived.wait(), 10)
        await client.aclose()
        with pytest.raises(ClientClosedError) as info:
            await asyncio.wait_for(call, 10)
    assert getattr(info.value, "ambiguous", None) is True
    assert "billed" in str(info.value)
    assert info.value.retryable is False


async def test_request_on_a_session_closed_under_us_is_client_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with servers() as running:
        url = await running.web("api", _answer(200, json.dumps(skin_ok()).encode()))
        closed = aiohttp.ClientSession()
        await closed.close()
        async with _client(url) as client:

            async def closed_session() -> aiohttp.ClientSession:
                return closed

            monkeypatch.setattr(client._sessions, "get", closed_session)
            with pytest.raises(ClientClosedError) as info:
                await client.smart_skin(png_bytes(300, 300))
    assert getattr(info.value, "ambiguous", None) is False


async def _serve_image(running: Servers) -> str:
    async def results(request: web.Request) -> web.Response:
        return web.Response(body=png_bytes(8, 8), content_type="image/png")

    return await running.web("results", results) + "/r/1.png"


async def test_downloaded_file_gets_the_umask_mode(tmp_path: Path) -> None:
    current = os.umask(0o022)
    os.umask(current)
    async with servers() as running:
        image_url = await _serve_image(running)
        async with _client("http://127.0.0.1:9") as client:
            written = await client.download(image_url, tmp_path / "out.png")
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~current
    assert written.read_bytes() == png_bytes(8, 8)


async def test_disk_full_is_a_final_download_error_and_leaves_no_part_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self._inner = real_fdopen(fd, "wb")

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self) -> int:
            return self._inner.fileno()

        def close(self) -> None:
            self._inner.close()
            super().close()

    monkeypatch.setattr("ailab_async._download.os.fdopen", lambda fd, *a, **k: FullDisk(fd))
    async with servers() as running:
        image_url = await _serve_image(running)
        async with _client("http://127.0.0.1:9", max_retries=3) as client:
            with pytest.raises(DownloadError) as info:
                await client.download(image_url, tmp_path / "out.png")
            assert client.stats.attempts == 1
        assert running.requests("results") == 1
    assert info.value.retryable is False
    assert "disk is full" in str(info.value)
    assert info.value.code == "DISK_FULL"
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["abc\r\nX-Evil: 1", "abc\x00", "ключ-0123456789"])
def test_key_that_cannot_be_a_header_is_a_configuration_error(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        AILabClient(api_key=key, base_url="http://127.0.0.1:9")
    assert key.strip() not in str(info.value)


async def test_image_gone_before_a_retry_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(300, 300))

    async def api(request: web.Request) -> web.Response:
        await request.read()
        path.unlink()  # the file vanishes between attempts
        return web.json_response(error_envelope(503, "AI_SERVICE_ERROR"), status=503)

    async with servers() as running:
        url = await running.web("api", api)
        async with _client(url, max_retries=2) as client:
            with pytest.raises(ValidationError) as info:
                await client.smart_skin(path)
    assert info.value.rule == "exists"  # the image check names why


# --- what goes on the wire: only what the caller gave, the image as it is ----------------------


def _form_recorder(seen: list[dict[str, object]]) -> Handler:
    """A smart-skin stand-in recording each request's form: text fields, file bytes, types."""

    async def handler(request: web.Request) -> web.Response:
        fields: dict[str, object] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            assert part.name is not None
            data = b""
            while chunk := await part.read_chunk():  # no 1 MiB cap, unlike read()
                data += chunk
            if part.filename is None:
                fields[part.name] = data.decode()
            else:
                fields[part.name] = (part.filename, part.headers["Content-Type"], data)
        seen.append(fields)
        return web.json_response(skin_ok())

    return handler


@pytest.mark.parametrize("source", ["bytes", "path"])
async def test_a_call_without_degrees_sends_only_the_image(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path, source: str
) -> None:
    image = png_bytes(300, 300)
    path = tmp_path / "face.png"
    path.write_bytes(image)
    seen: list[dict[str, object]] = []
    async with _client(await serve(_form_recorder(seen))) as client:
        await client.smart_skin(image if source == "bytes" else path)
        await client.smart_skin(image if source == "bytes" else path, whitening_degree=0.25)
        await client.smart_skin(image, retouch_degree=1.0, whitening_degree=1.5)
    file_part = ("image.png", "image/png", image)
    assert seen == [
        {"image": file_part},  # the API applies its defaults: nothing else is sent
        {"whitening_degree": "0.25", "image": file_part},
        {"retouch_degree": "1.0", "whitening_degree": "1.5", "image": file_part},
    ]


@pytest.mark.parametrize("size", [512 * 1024, 2 * 1024 * 1024 + 7])
@pytest.mark.parametrize("source", ["bytes", "path"])
async def test_large_images_arrive_byte_for_byte(
    serve: Callable[[Handler], Awaitable[str]], tmp_path: Path, source: str, size: int
) -> None:
    # Above the size joined into one buffer, and (2 MB) above one read of a file.
    image = png_bytes(300, 300)
    image += b"\x00" * (size - len(image))  # trailing bytes after IEND: still a valid PNG
    path = tmp_path / "big.png"
    path.write_bytes(image)
    seen: list[dict[str, object]] = []
    async with _client(await serve(_form_recorder(seen))) as client:
        await client.smart_skin(image if source == "bytes" else path, retouch_degree=0.5)
    assert seen == [{"retouch_degree": "0.5", "image": ("image.png", "image/png", image)}]


async def test_the_hard_deadline_wins_over_the_attempt_timeout_when_both_fire() -> None:
    # The per-attempt timer (aiohttp's) and the call's deadline cancel the same task at the
    # same moment: the call must end with the deadline, not retry after a "timeout".
    async with servers() as running:
        url = await running.raw("api", stall())
        for _ in range(3):
            async with _client(url, timeout=0.1, deadline=0.1, max_retries=5) as client:
                with pytest.raises(DeadlineExceededError) as info:
                    await client.smart_skin(png_bytes(300, 300))
                assert client.stats.attempts == 1
            assert info.value.attempts == 1
