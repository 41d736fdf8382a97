"""The FastAPI example against the simulator: lifespan, routes, errors, a caller hanging up.

The app is started as a server starts it (the ASGI lifespan protocol) and called through
httpx's ASGI transport; the SDK inside talks to the ``ailab_simulator`` fixture over HTTP.
"""

# ruff: noqa: E402 - the imports below the skip need what it checks for

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest

# The example's stack comes with the [dev] extra; a plain install skips these tests.
for _module in ("fastapi", "httpx"):
    pytest.importorskip(_module, reason="the FastAPI example needs ailab-async[dev]")

import httpx
from fastapi import FastAPI
from PIL import Image

from ailab_async import (
    AILabClient,
    AILabError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    ConnectionFailedError,
    DeadlineExceededError,
    DownloadError,
    ImageRejectedError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
)
from ailab_async.testing.simulator import (
    Credits,
    Faults,
    Fixed,
    RateLimit,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    sample_image,
)
from examples import fastapi_app

FACE = sample_image(256, 256, seed=3)


def blank_photo() -> bytes:
    """A uniform grey photo: valid for the SDK, "no face" for the API."""
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), (120, 120, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(image: bytes) -> dict[str, Any]:
    return {"image": ("face.jpg", image, "image/jpeg")}


# --8<-- [start:harness]
@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``app`` as an ASGI server does (lifespan startup, then shutdown) and yield an
    HTTP client for it. httpx's ASGI transport runs no lifespan by itself."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            yield http
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await from_app.get()
        await lifespan
    assert stopped["type"] == "lifespan.shutdown.complete", stopped


def app_for(sim: Simulator, **options: Any) -> FastAPI:
    """The example app whose client talks to ``sim`` (``options`` go to the client)."""
    return fastapi_app.create_app(
        lambda: AILabClient(api_key=sim.api_key, base_url=sim.url, **options)
    )


@pytest.fixture
async def http(ailab_simulator: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    """The started app, its SDK client pointed at the simulator, retries off (an error
    comes back as it happened)."""
    async with running(app_for(ailab_simulator, max_retries=0)) as client:
        yield client


# --8<-- [end:harness]


# -- lifespan and routes ---------------------------------------------------------------------


async def test_lifespan_opens_one_client_for_every_request_and_closes_it(
    ailab_simulator: Simulator,
) -> None:
    made: list[AILabClient] = []

    def new_client() -> AILabClient:
        made.append(AILabClient(api_key=ailab_simulator.api_key, base_url=ailab_simulator.url))
        return made[-1]

    app = fastapi_app.create_app(new_client)
    assert made == []  # nothing before the server starts
    async with running(app) as http:
        assert len(made) == 1
        assert not made[0].closed
        for _ in range(2):
            answer = await http.post("/retouch", files=upload(FACE))
            assert answer.status_code == 200
    assert len(made) == 1  # one client, shared
    assert made[0].closed
    assert made[0].stats.requests >= 4  # both calls and both downloads went through it


async def test_retouch_answers_the_retouched_png(
    http: httpx.AsyncClient, ailab_simulator: Simulator
) -> None:
    answer = await http.post("/retouch?retouch=0.8&whitening=0.2", files=upload(FACE))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.content.startswith(b"\x89PNG")
    assert answer.headers["X-AILab-Request-Id"]
    assert ailab_simulator.stats.count("smart-skin", "OK") == 1


@pytest.mark.ailab_simulator(tasks=TaskBehaviour(duration=Fixed(0)))
async def test_beauty_is_submitted_then_its_result_fetched_by_task_id(
    http: httpx.AsyncClient, ailab_simulator: Simulator
) -> None:
    submitted = await http.post("/beauty?level=0.5", files=upload(FACE))
    assert submitted.status_code == 202
    task_id = submitted.json()["task_id"]
    assert submitted.headers["Location"] == f"http://app/beauty/{task_id}"
    finished = await http.get(f"/beauty/{task_id}")  # polled at once: it is done
    assert finished.status_code == 200
    assert finished.content.startswith(b"\x89PNG")
    assert ailab_simulator.stats.count("smart-beauty", "OK") == 1


@pytest.mark.ailab_simulator(tasks=TaskBehaviour(duration=Fixed(3600)))
async def test_status_without_waiting_reports_an_unfinished_task(
    http: httpx.AsyncClient,
) -> None:
    task_id = (await http.post("/beauty", files=upload(FACE))).json()["task_id"]
    answer = await http.get(f"/beauty/{task_id}?wait=0")
    assert answer.status_code == 200
    assert answer.json() == {"task_id": task_id, "status": "queued"}


@pytest.mark.ailab_simulator(tasks=TaskBehaviour(duration=Fixed(0), failure_share=1.0))
async def test_status_of_a_failed_task_says_why(http: httpx.AsyncClient) -> None:
    task_id = (await http.post("/beauty", files=upload(FACE))).json()["task_id"]
    answer = await http.get(f"/beauty/{task_id}")
    assert answer.status_code == 200
    assert answer.json()["status"] == "failed"
    assert answer.json()["code"] == "ERROR_NO_FACE_IN_FILE"


async def test_status_of_an_unknown_task_is_404(http: httpx.AsyncClient) -> None:
    answer = await http.get("/beauty/no-such-task")
    assert answer.status_code == 404
    assert answer.json()["error"] == "unknown task"


async def test_status_wait_is_bounded(http: httpx.AsyncClient) -> None:
    answer = await http.get("/beauty/some-task?wait=3600")
    assert answer.status_code == 422  # FastAPI's own parameter check


# -- typed errors become HTTP answers --------------------------------------------------------


def deadline_after(cause: AILabError) -> DeadlineExceededError:
    """What the SDK raises when it retried ``cause`` until the call's deadline."""
    error = DeadlineExceededError("deadline", endpoint="smart-skin", attempts=2)
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValidationError("too small", input="<bytes>", rule="resolution"), 422),
        (ImageRejectedError("no face", status=422, code="ERROR_NO_FACE_IN_FILE"), 422),
        (TaskFailedError("no face", task_id="t1", status=422, code="X"), 422),
        (RateLimitedError("slow down", status=429, code="EXCEEDING_LIMITS"), 429),
        (InsufficientCreditsError("top up", status=429, code="ERROR_NOT_ENOUGH_CREDITS"), 503),
        (ClientClosedError("closed"), 503),
        (DeadlineExceededError("late", endpoint="smart-skin", attempts=3), 504),
        (deadline_after(RateLimitedError("slow", status=429, retry_after=5)), 429),
        (deadline_after(ServerError("down", status=500, code="PROCESSING_FAILURE")), 502),
        (RequestTimeoutError("late", endpoint="smart-skin", ambiguous=True), 504),
        (TaskTimeoutError("late", task_id="t1"), 504),
        (ServerError("down", status=503, code="ERROR_INSUFFICIENT_RESOURCES"), 502),
        (ConnectionFailedError("reset", endpoint="smart-skin", ambiguous=False), 502),
        (MalformedResponseError("html", status=502), 502),
        (InvalidRequestError("refused", status=400, code="ERROR_INVALID_PARAMETER"), 502),
        (DownloadError("gone", status=410), 502),
        (AuthenticationError("bad key", status=401, code="ERROR_USER_NOT_EXISTS"), 500),
        (PermissionDeniedError("locked", status=403), 500),
        (ConfigurationError("no API key"), 500),
        (AILabError("something else"), 502),
    ],
)
async def test_each_sdk_error_has_its_http_answer(error: AILabError, status: int) -> None:
    class FailingClient:
        async def smart_skin(self, *args: object, **kwargs: object) -> None:
            raise error

    app = fastapi_app.create_app()
    app.dependency_overrides[fastapi_app.ailab_client] = FailingClient
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        answer = await http.post("/retouch", files=upload(FACE))
    assert answer.status_code == status
    assert answer.json() == fastapi_app.error_answer(error).body
    if status == 500:
        assert answer.json() == {"error": "service misconfigured"}  # no details leak
    else:
        assert answer.json()["error"] == type(error.__cause__ or error).__name__


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    def answer(retry_after: float | None) -> str:
        error = RateLimitedError("slow", status=429, retry_after=retry_after)
        return fastapi_app.error_answer(error).headers["Retry-After"]

    assert [answer(2.1), answer(0.2), answer(None), answer(30)] == ["3", "1", "1", "30"]


async def test_a_photo_the_sdk_refuses_is_422_and_costs_no_request(
    http: httpx.AsyncClient, ailab_simulator: Simulator
) -> None:
    too_small = await http.post("/retouch", files=upload(sample_image(64, 64)))
    out_of_range = await http.post("/retouch?retouch=9", files=upload(FACE))
    for answer in (too_small, out_of_range):
        assert answer.status_code == 422
        assert answer.json()["error"] == "ValidationError"
    assert ailab_simulator.stats.count() == 0


async def test_a_photo_the_api_refuses_is_422_with_its_code(http: httpx.AsyncClient) -> None:
    answer = await http.post("/retouch", files=upload(blank_photo()))
    assert answer.status_code == 422
    assert answer.json()["code"] == "ERROR_NO_FACE_IN_FILE"
    assert answer.json()["request_id"]


@pytest.mark.ailab_simulator(rate_limit=RateLimit(0.01, burst=1))
async def test_rate_limited_is_429_with_retry_after(http: httpx.AsyncClient) -> None:
    assert (await http.post("/beauty", files=upload(FACE))).status_code == 202
    answer = await http.post("/beauty", files=upload(FACE))  # the bucket is empty
    assert answer.status_code == 429
    assert answer.json()["code"] == "EXCEEDING_LIMITS"
    assert int(answer.headers["Retry-After"]) >= 1


# --8<-- [start:a-test]
@pytest.mark.ailab_simulator(credits=Credits(balance=0))
async def test_out_of_credits_is_503(http: httpx.AsyncClient) -> None:
    answer = await http.post("/retouch", files=upload(FACE))
    assert answer.status_code == 503
    assert answer.json()["code"] == "ERROR_NOT_ENOUGH_CREDITS"


# --8<-- [end:a-test]


@pytest.mark.ailab_simulator(faults=Faults(error_502=1.0))
async def test_an_upstream_failure_is_502(http: httpx.AsyncClient) -> None:
    answer = await http.post("/retouch", files=upload(FACE))
    assert answer.status_code == 502
    assert answer.json()["error"] == "ServerError"


async def test_a_wrong_key_is_500_and_neither_answer_nor_log_shows_it(
    ailab_simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = "wrong-key-0123456789abcdef"
    app = fastapi_app.create_app(
        lambda: AILabClient(api_key=wrong_key, base_url=ailab_simulator.url, max_retries=0)
    )
    async with running(app) as http:
        answer = await http.post("/retouch", files=upload(FACE))
    assert answer.status_code == 500
    assert answer.json() == {"error": "service misconfigured"}
    assert wrong_key not in answer.text
    assert "AuthenticationError" in caplog.text  # logged, by type
    assert wrong_key not in caplog.text


async def test_logs_hold_neither_the_key_nor_result_urls(
    http: httpx.AsyncClient, ailab_simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert (await http.post("/retouch", files=upload(FACE))).status_code == 200
    assert (await http.post("/retouch", files=upload(blank_photo()))).status_code == 422
    assert "ImageRejectedError" in caplog.text
    assert ailab_simulator.api_key not in caplog.text
    assert "/results/" not in caplog.text


# -- a caller hanging up mid-request ---------------------------------------------------------


class RecordingClient(AILabClient):
    """The SDK client, counting smart-skin calls that were cancelled."""

    cancelled = 0

    async def smart_skin(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().smart_skin(*args, **kwargs)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def http_scope(request: httpx.Request) -> dict[str, Any]:
    """The ASGI scope a server would build for ``request``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.url.path,
        "raw_path": request.url.raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.headers.raw],
        "server": ("app", 80),
        "client": ("127.0.0.1", 50000),
        "state": {},
    }


@attrs.define
class Stalled:
    """The app, started, with its SDK client at an API that never answers smart-skin."""

    app: FastAPI
    http: httpx.AsyncClient
    client: RecordingClient
    #: Set once the SDK's smart-skin request is on its way to the API.
    sdk_request_sent: asyncio.Event


@pytest.fixture
async def stalled() -> AsyncIterator[Stalled]:
    sdk_request_sent = asyncio.Event()

    async def on_headers_sent(*_: object) -> None:
        sdk_request_sent.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(on_headers_sent)
    # The API holds every smart-skin answer until it stops: the call is in flight for good.
    faults = Faults(stall=1.0, stall_seconds=3600, endpoints=frozenset({"smart-skin"}))
    made: list[RecordingClient] = []
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(Simulator(SimulatorConfig(faults=faults)))
        session = await stack.enter_async_context(aiohttp.ClientSession(trace_configs=[trace]))

        def new_client() -> RecordingClient:
            made.append(RecordingClient(api_key=sim.api_key, base_url=sim.url, session=session))
            return made[0]

        app = fastapi_app.create_app(new_client)
        async with running(app) as http:
            yield Stalled(app, http, made[0], sdk_request_sent)
            # Whatever happened to the first request, the app goes on serving.
            assert (await http.post("/beauty", files=upload(FACE))).status_code == 202
        assert made[0].closed
    # Simulator, app and client stopped: no task of theirs is left behind.
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, others


async def test_a_caller_hanging_up_cancels_the_sdk_call_cleanly(stalled: Stalled) -> None:
    """The server reports ``http.disconnect`` while the SDK's request is at the API (what
    uvicorn does): the SDK call is cancelled and its slot freed, nothing is raised into the
    server and nothing answered."""
    request = stalled.http.build_request("POST", "/retouch", files=upload(FACE))
    server_messages = [{"type": "http.request", "body": await request.aread(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if server_messages:
            return server_messages.pop(0)
        await stalled.sdk_request_sent.wait()  # the caller hangs up now
        return {"type": "http.disconnect"}

    answered: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        answered.append(message)

    # Returns, raising nothing (the bound only keeps a broken app from hanging the suite).
    await asyncio.wait_for(stalled.app(http_scope(request), receive, send), 60)
    assert stalled.sdk_request_sent.is_set()
    assert stalled.client.cancelled == 1
    assert stalled.client.stats.in_flight == 0
    assert answered == []  # nobody to answer


async def test_a_server_cancelling_the_request_cancels_the_sdk_call(stalled: Stalled) -> None:
    """Servers that cancel the request's task themselves (as httpx's ASGI transport passes
    on a cancelled caller) get the same clean stop."""
    caller = asyncio.create_task(stalled.http.post("/retouch", files=upload(FACE)))
    await stalled.sdk_request_sent.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert stalled.client.cancelled == 1
    assert stalled.client.stats.in_flight == 0


async def test_a_disconnect_after_the_answer_cancels_nothing() -> None:
    """Once the response is complete, work the app still does (background tasks) runs on."""
    after_response: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the (empty) body
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        await asyncio.sleep(0)  # the server sees the end, and the connection closes
        await asyncio.sleep(0)
        after_response.append("background task done")

    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    answered: list[dict[str, Any]] = []
    response_complete = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await response_complete.wait()  # as uvicorn: the next message once it has answered
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        answered.append(message)
        if message["type"] == "http.response.body":
            response_complete.set()

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    await fastapi_app.CancelOnDisconnect(app)(scope, receive, send)
    assert [message["type"] for message in answered] == [
        "http.response.start",
        "http.response.body",
    ]
    assert after_response == ["background task done"]
