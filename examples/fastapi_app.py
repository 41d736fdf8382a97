"""A FastAPI app that uses one shared AILabClient.

    AILAB_API_KEY=... uvicorn examples.fastapi_app:app              # against the API

    ailab-async simulate --port 8080 &                               # or a local simulator
    AILAB_API_KEY=sim-key-000 AILAB_BASE_URL=http://127.0.0.1:8080 uvicorn examples.fastapi_app:app

Routes:
    POST /retouch?retouch=0.6&whitening=0.5   multipart "image" -> the retouched PNG
    POST /beauty?level=0.7                     multipart "image" -> 202 {"task_id": ...}
    GET  /beauty/{task_id}?wait=2              -> the finished PNG, or {"status": ...}

The client is created in the ``lifespan`` (when the server starts), closed when it stops, and
handed to the routes by a dependency (:func:`ailab_client`; tests may override it). Typed SDK
errors become HTTP answers in one place (:func:`error_answer`). A request whose caller hangs
up is cancelled (:class:`CancelOnDisconnect`): the SDK then frees its slot at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import attrs
from fastapi import APIRouter, Depends, FastAPI, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ailab_async import (
    AILabClient,
    AILabError,
    APIError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    ImageRejectedError,
    InsufficientCreditsError,
    RateLimitedError,
    RequestTimeoutError,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    ValidationError,
)

__all__ = ["CancelOnDisconnect", "ErrorAnswer", "ailab_client", "app", "create_app", "error_answer"]

logger = logging.getLogger(__name__)

#: Seconds one web request may spend on an SDK call: a browser will not wait for minutes.
REQUEST_DEADLINE = 30.0
#: The longest a status request may wait for a task to finish (``?wait=``).
MAX_STATUS_WAIT = 25.0

router = APIRouter()


def create_app(new_client: Callable[[], AILabClient] = AILabClient) -> FastAPI:
    """The app. ``new_client()`` makes its one client, at start-up; by default the client
    reads ``AILAB_API_KEY`` and ``AILAB_BASE_URL``.

    >>> app = create_app(lambda: AILabClient(max_concurrency=16))  # doctest: +SKIP
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with new_client() as client:
            app.state.ailab_client = client
            yield

    app = FastAPI(title="ailab-async FastAPI example", lifespan=lifespan)
    app.include_router(router)
    app.add_exception_handler(AILabError, _answer_error)
    app.add_middleware(CancelOnDisconnect)
    return app


def ailab_client(request: Request) -> AILabClient:
    """The app's client (a dependency)."""
    client: AILabClient = request.app.state.ailab_client
    return client


Client = Annotated[AILabClient, Depends(ailab_client)]


# -- routes ----------------------------------------------------------------------------------


@router.post("/retouch", response_class=Response)
async def retouch(
    client: Client, image: UploadFile, retouch: float = 1.0, whitening: float = 1.0
) -> Response:
    """Smart-skin on the uploaded photo; answers the retouched PNG."""
    # The spooled upload goes to the SDK as a file object: it checks format, size and
    # resolution before sending, and reads at most the endpoint's size limit.
    result = await client.smart_skin(
        image.file, retouch_degree=retouch, whitening_degree=whitening, deadline=REQUEST_DEADLINE
    )
    data = await client.download(result, deadline=REQUEST_DEADLINE)
    return Response(data, media_type="image/png", headers=_ids(result.request_id))


@router.post("/beauty", status_code=202)
async def submit_beauty(
    client: Client, image: UploadFile, request: Request, level: float = 1.0
) -> JSONResponse:
    """Submit smart-beauty; answers its task id at once (and where to ask for it)."""
    task = await client.submit_smart_beauty(
        image.file, beauty_level=level, deadline=REQUEST_DEADLINE
    )
    location = str(request.url_for("beauty_status", task_id=task.task_id))
    return JSONResponse({"task_id": task.task_id}, status_code=202, headers={"Location": location})


@router.get("/beauty/{task_id}", response_class=Response)
async def beauty_status(
    client: Client,
    task_id: str,
    wait: Annotated[float, Query(ge=0, le=MAX_STATUS_WAIT)] = 2.0,
) -> Response:
    """The task's result if it finishes within ``wait`` seconds, else its status.

    ``wait=0`` answers at once from what this process knows (``queued`` until a poll said
    otherwise).
    """
    task = client.track(task_id)
    try:
        result = await task.result(timeout=wait)
    except TaskTimeoutError:
        return JSONResponse({"task_id": task_id, "status": task.status.name.lower()})
    except TaskFailedError as error:
        if error.status in (400, 404):  # the API does not know it (or it expired)
            return JSONResponse({"task_id": task_id, "error": "unknown task"}, status_code=404)
        failed = {"task_id": task_id, "status": TaskStatus.FAILED.name.lower()}
        return JSONResponse({**failed, "code": error.code, "request_id": error.request_id})
    data = await client.download(result, deadline=REQUEST_DEADLINE)
    return Response(data, media_type="image/png", headers=_ids(result.request_id))


def _ids(request_id: str | None) -> dict[str, str]:
    return {"X-AILab-Request-Id": request_id} if request_id else {}


# -- errors: deciding (a pure function) apart from answering -----------------------------------


@attrs.frozen
class ErrorAnswer:
    """What an SDK error becomes: an HTTP status, headers and a JSON body."""

    status: int
    body: dict[str, object]
    headers: dict[str, str] = attrs.Factory(dict)


def error_answer(error: AILabError) -> ErrorAnswer:
    """The HTTP answer for a typed SDK error (pure: no I/O).

    >>> error_answer(RateLimitedError("slow down", status=429, retry_after=2.5)).headers
    {'Retry-After': '3'}
    """
    if isinstance(error, DeadlineExceededError) and isinstance(error.__cause__, AILabError):
        # The SDK kept retrying (a 429 always is) until the deadline: answer for the reason,
        # so a rate limit is a 429 with its Retry-After and a failing API a 502.
        return error_answer(error.__cause__)
    name = type(error).__name__
    if isinstance(error, (ConfigurationError, AuthenticationError)):
        # Our set-up or our key: nothing the caller can fix, nothing to show them.
        return ErrorAnswer(500, {"error": "service misconfigured"})
    body: dict[str, object] = {"error": name, "message": str(error)}
    if isinstance(error, APIError):
        body.update(code=error.code, request_id=error.request_id)
    if isinstance(error, (ValidationError, ImageRejectedError, TaskFailedError)):
        return ErrorAnswer(422, body)  # the caller's photo or parameters
    if isinstance(error, RateLimitedError):
        wait = error.retry_after if error.retry_after is not None else 1.0
        return ErrorAnswer(429, body, {"Retry-After": str(max(1, math.ceil(wait)))})
    if isinstance(error, (InsufficientCreditsError, ClientClosedError)):
        return ErrorAnswer(503, body)  # out of credits, or shutting down
    if isinstance(error, (DeadlineExceededError, RequestTimeoutError, TaskTimeoutError)):
        return ErrorAnswer(504, body)
    return ErrorAnswer(502, body)  # the API or the way to it failed


async def _answer_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, AILabError)  # registered for AILabError only
    answer = error_answer(error)
    # The type and status only: SDK messages never hold the key or a result URL, but a log
    # line is no place to find that out.
    logger.warning(
        "%s %s -> %d (%s)", request.method, request.url.path, answer.status, type(error).__name__
    )
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


# -- cancelling requests whose caller hung up ------------------------------------------------


class CancelOnDisconnect:
    """ASGI middleware: cancel a request's handler when its caller disconnects.

    uvicorn and most ASGI servers let a handler run on after its caller went away; an SDK
    call would then hold its slot (and maybe pay) for nobody. This reads the server's
    messages itself and hands them on: on ``http.disconnect`` before the response is
    complete it cancels the handler. After the response, nothing is cancelled (background
    tasks run on). The request body is passed on one message at a time (no buffering).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One message of room: a GET's empty body does not hold up listening for the end.
        to_app, from_server = anyio.create_memory_object_stream[Message](1)
        responded = False

        async def sent(message: Message) -> None:
            nonlocal responded
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                responded = True

        async def received() -> Message:
            try:
                return await from_server.receive()
            except anyio.EndOfStream:
                return {"type": "http.disconnect"}

        async def listen(cancel: anyio.CancelScope) -> None:
            async with to_app:
                while (message := await receive())["type"] != "http.disconnect":
                    await to_app.send(message)
            if not responded:
                cancel.cancel()

        async with from_server, anyio.create_task_group() as group:
            group.start_soon(listen, group.cancel_scope)
            await self.app(scope, received, sent)
            group.cancel_scope.cancel()  # the handler is done: stop listening


app = create_app()
