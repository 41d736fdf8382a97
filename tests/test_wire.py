"""Wire-level behaviour against a real local aiohttp server on 127.0.0.1."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from ailab_async import AILabClient, ConnectionFailedError, MalformedResponseError

from .conftest import TEST_KEY, FakeTime, error_envelope, png_bytes, skin_ok

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


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
