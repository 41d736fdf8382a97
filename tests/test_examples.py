"""The examples run for real against the simulator, a caller hanging up mid-request included."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from anyio.from_thread import start_blocking_portal
from PIL import Image

from ailab_async import AILabClient
from ailab_async.testing.simulator import (
    Fixed,
    Latency,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)
from examples import pipeline, sync_script, webapp

Serve = Callable[[SimulatorConfig], Awaitable[tuple[str, web.Application, Simulator]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(config: SimulatorConfig) -> tuple[str, web.Application, Simulator]:
        sim = Simulator(config)
        await sim.start()
        cleanups.append(sim.stop)
        app = webapp.create_app(api_key=sim.api_key, base_url=sim.url)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        cleanups.append(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}", app, sim

    yield start
    for cleanup in reversed(cleanups):
        await cleanup()


def upload(image: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", image, filename="face.jpg", content_type="image/jpeg")
    return form


async def test_webapp_routes(serve: Serve) -> None:
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Uniform(0.05, 0.2)), seed=4)
    url, _, _ = await serve(config)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/retouch?retouch=0.8", data=upload(sample_image(256, 256))
        ) as r:
            assert r.status == 200
            assert r.content_type == "image/png"
            assert (await r.read()).startswith(b"\x89PNG")
            assert r.headers["X-AILab-Request-Id"]
        async with http.post(f"{url}/beauty?level=0.5", data=upload(sample_image(256, 256))) as r:
            assert r.status == 202
            task_id = (await r.json())["task_id"]
        for _ in range(20):
            async with http.get(f"{url}/beauty/{task_id}") as r:
                if r.content_type == "image/png":
                    assert (await r.read()).startswith(b"\x89PNG")
                    break
                assert (await r.json())["status"] in ("queued", "processing")
        else:
            pytest.fail("the beauty task never finished")


async def test_webapp_maps_errors_to_json(serve: Serve) -> None:
    blank = io.BytesIO()
    Image.new("RGB", (300, 300), (120, 120, 120)).save(blank, format="PNG")
    url, _, sim = await serve(SimulatorConfig(blank_is_no_face=True))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/retouch", data=upload(sample_image(64, 64))) as r:
            assert r.status == 400
            body = await r.json()
            assert body["error"] == "ValidationError"
        async with http.post(f"{url}/retouch", data=upload(blank.getvalue())) as r:
            assert r.status == 422
            body = await r.json()
            assert body["code"] == "ERROR_NO_FACE_IN_FILE"
            assert body["request_id"]
        async with http.post(f"{url}/retouch?retouch=abc", data=upload(b"x")) as r:
            assert r.status == 400
    assert sim.stats.count("smart-skin") == 1  # only the blank photo reached the API


async def test_caller_hanging_up_mid_request_frees_the_sdk(serve: Serve) -> None:
    config = SimulatorConfig(latency=Latency(smart_skin=Fixed(1.0)))
    url, app, sim = await serve(config)
    client = app[webapp.CLIENT]
    async with aiohttp.ClientSession() as http:
        caller = asyncio.create_task(
            http.post(f"{url}/retouch", data=upload(sample_image(256, 256))).__aenter__()
        )
        for _ in range(100):  # wait until the SDK's request is on its way
            await asyncio.sleep(0.01)
            if client.stats.in_flight == 1:
                break
        assert client.stats.in_flight == 1
        caller.cancel()  # the browser tab closes
        with pytest.raises(asyncio.CancelledError):
            await caller
        for _ in range(100):
            await asyncio.sleep(0.01)
            if client.stats.in_flight == 0:
                break
        assert client.stats.in_flight == 0  # handler cancelled, slot released at once
        async with http.post(f"{url}/retouch", data=upload(sample_image(256, 256))) as r:
            assert r.status == 200  # and the app goes on serving
    assert sim.stats.max_concurrent >= 1


def photo_folder(root: Path, count: int) -> Path:
    """``root/in``: photos ``nested/p0.jpg`` ... and one the API refuses, ``too-small.png``."""
    photos = root / "in"
    (photos / "nested").mkdir(parents=True)
    for i in range(count):
        (photos / "nested" / f"p{i}.jpg").write_bytes(sample_image(200, 200, seed=i))
    (photos / "too-small.png").write_bytes(sample_image(50, 50, fmt="PNG"))
    return photos


async def test_pipeline_example(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path, 6)
    out = tmp_path / "out"
    async with Simulator() as sim, AILabClient(api_key=sim.api_key, base_url=sim.url) as client:
        counts = await pipeline.run_pipeline(client, pipeline.photos_from(photos), out)
    assert counts == {"done": 6, "failed": 1}
    assert sorted(p.name for p in out.iterdir()) == [f"p{i}.png" for i in range(6)]


def test_sync_script_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = photo_folder(tmp_path, 4)
    out = tmp_path / "out"
    # The script blocks this thread: the simulator runs in an event loop of its own thread.
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(Simulator()) as sim:
        monkeypatch.setenv("AILAB_API_KEY", sim.api_key)
        monkeypatch.setenv("AILAB_BASE_URL", sim.url)
        status = sync_script.main([str(photos), str(out), "--concurrency", "3"])
    assert status == 1  # one photo failed
    assert sorted(p.name for p in out.iterdir()) == [f"p{i}.png" for i in range(4)]
    printed = capsys.readouterr().out
    assert "failed: too-small.png: ValidationError" in printed
    assert printed.endswith("4 done, 1 failed, of 5 photos\n")
