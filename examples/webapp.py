"""An aiohttp.web app that uses one shared AILabClient.

    AILAB_API_KEY=... python examples/webapp.py            # against the API
    python examples/webapp.py --simulate                    # against a local simulator

Routes:
    POST /retouch?retouch=0.6&whitening=0.5   multipart "image" -> the retouched image
    POST /beauty?level=0.7                     multipart "image" -> 202 {"task_id": ...}
    GET  /beauty/{task_id}                     -> {"status": ...} or the finished image

The client lives in ``cleanup_ctx``: created when the app starts, closed when it stops, and
shared by every request. Requests are cancelled when their caller disconnects
(``handler_cancellation=True``); the SDK then releases its slot at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from ailab_async import (
    AILabClient,
    AILabError,
    APIError,
    AuthenticationError,
    ImageRejectedError,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
)

CLIENT = web.AppKey("ailab_client", AILabClient)
MAX_UPLOAD = 8 * 1024 * 1024


def create_app(*, api_key: str | None = None, base_url: str | None = None) -> web.Application:
    """The app; the client reads AILAB_API_KEY / AILAB_BASE_URL when not given."""
    app = web.Application(client_max_size=MAX_UPLOAD, middlewares=[errors_as_json])

    async def ailab_client(app: web.Application) -> AsyncIterator[None]:
        async with AILabClient(api_key=api_key, base_url=base_url) as client:
            app[CLIENT] = client
            yield

    app.cleanup_ctx.append(ailab_client)
    app.router.add_post("/retouch", retouch)
    app.router.add_post("/beauty", submit_beauty)
    app.router.add_get("/beauty/{task_id}", beauty_status)
    return app


async def read_image(request: web.Request) -> bytes:
    form = await request.post()
    upload = form.get("image")
    if not isinstance(upload, web.FileField):
        raise web.HTTPBadRequest(text='expected a multipart field "image" with a file')
    with upload.file as handle:  # a spooled temporary file: ours to close
        return handle.read()


def number(request: web.Request, name: str, default: float) -> float:
    try:
        return float(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number") from None


async def retouch(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    image = await read_image(request)
    result = await client.smart_skin(
        image,
        retouch_degree=number(request, "retouch", 1.0),
        whitening_degree=number(request, "whitening", 1.0),
        deadline=30,  # a web request should not wait for minutes
    )
    data = await client.download(result)
    return web.Response(body=data, content_type="image/png", headers=ids(result.request_id))


async def submit_beauty(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    image = await read_image(request)
    task = await client.submit_smart_beauty(image, beauty_level=number(request, "level", 1.0))
    return web.json_response({"task_id": task.task_id}, status=202)


async def beauty_status(request: web.Request) -> web.StreamResponse:
    client = request.app[CLIENT]
    task = client.track(request.match_info["task_id"])
    try:
        result = await task.result(timeout=2)  # a short wait; the client may ask again
    except TaskTimeoutError:
        status = task.status.name.lower()  # queued, processing (or failed: tracking ended)
        return web.json_response({"task_id": task.task_id, "status": status})
    data = await client.download(result)
    return web.Response(body=data, content_type="image/png", headers=ids(result.request_id))


def ids(request_id: str | None) -> dict[str, str]:
    return {"X-AILab-Request-Id": request_id} if request_id else {}


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Typed SDK errors become JSON answers with a fitting status; nothing else changes."""
    try:
        return await handler(request)
    except AILabError as error:
        status = 503 if error.retryable else 502
        if isinstance(error, ValidationError):
            status = 400
        elif isinstance(error, (ImageRejectedError, TaskFailedError)):
            status = 422
        elif isinstance(error, AuthenticationError):
            status = 502  # our key, not the caller's fault
        body: dict[str, object] = {"error": type(error).__name__, "message": str(error)}
        if isinstance(error, APIError):
            body.update(code=error.code, request_id=error.request_id, log_id=error.log_id)
        return web.json_response(body, status=status)


async def serve(host: str, port: int, *, simulate: bool) -> None:
    async with contextlib.AsyncExitStack() as stack:
        api_key = base_url = None
        if simulate:
            from ailab_async.testing.simulator import Simulator  # noqa: PLC0415 - needs [simulator]

            sim = await stack.enter_async_context(Simulator())
            api_key, base_url = sim.api_key, sim.url
        runner = web.AppRunner(
            create_app(api_key=api_key, base_url=base_url), handler_cancellation=True
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, host, port).start()
        print(f"serving on http://{host}:{port}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--simulate", action="store_true", help="use a local simulator")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, simulate=args.simulate))


if __name__ == "__main__":
    main()
