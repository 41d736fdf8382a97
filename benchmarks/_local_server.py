"""A minimal stand-in for the API, run in its own process so its CPU never counts as the client's.

It answers ``POST /api/portrait/effects/smart-skin`` with one fixed legacy success envelope
after reading the whole multipart body, and ``400 MISSING_PARAMETERS`` when a field or the
key is missing, so a benchmark client that sends the wrong request fails loudly instead of
looking fast. It knows nothing of the SDK: benchmarks must measure the SDK, not share code
with it.

    with LocalServer() as server:        # python -m benchmarks._local_server, stopped on exit
        asyncio.run(work(server.url))
    print(server.requests_served)
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import BodyPartReader, web

from ._common import ChildProcess

__all__ = ["API_KEY", "IMAGE_URL", "SMART_SKIN_PATH", "LocalServer"]

SMART_SKIN_PATH = "/api/portrait/effects/smart-skin"
API_KEY = "bench-key"
API_KEY_HEADER = "ailabapi-api-key"
IMAGE_URL = "https://ai-result.example/bench/skin.png?expires=86400"
_SMART_SKIN_FIELDS = frozenset({"image", "retouch_degree", "whitening_degree"})

_SUCCESS_BODY = json.dumps(
    {
        "request_id": "0f0e0d0c-bench-4000-8000-000000000001",
        "log_id": "BENCHLOG0001",
        "error_code": 0,
        "error_code_str": "",
        "error_msg": "",
        "error_detail": {"status_code": 200, "code": "", "code_message": "", "message": ""},
        "data": {"image_url": IMAGE_URL},
    }
).encode()
_MISSING_BODY = json.dumps(
    {
        "request_id": "0f0e0d0c-bench-4000-8000-000000000002",
        "log_id": "BENCHLOG0002",
        "error_code": 400,
        "error_code_str": "MISSING_PARAMETERS",
        "error_msg": "missing parameters",
        "error_detail": {
            "status_code": 400,
            "code": "MISSING_PARAMETERS",
            "code_message": "missing parameters",
            "message": "image, retouch_degree, whitening_degree and the API key are required",
        },
    }
).encode()


class _Counters:
    served = 0
    rejected = 0


_COUNTERS = web.AppKey("counters", _Counters)


async def _smart_skin(request: web.Request) -> web.Response:
    counters: _Counters = request.app[_COUNTERS]
    seen: set[str] = set()
    if request.content_type != "multipart/form-data":
        counters.rejected += 1
        return web.Response(status=400, body=_MISSING_BODY, content_type="application/json")
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):  # nested multipart: not this API
            await part.release()
            continue
        await part.read()  # drain the part fully, as a real server must
        if part.name:
            seen.add(part.name)
    if request.headers.get(API_KEY_HEADER) != API_KEY or not seen >= _SMART_SKIN_FIELDS:
        counters.rejected += 1
        return web.Response(status=400, body=_MISSING_BODY, content_type="application/json")
    counters.served += 1
    return web.Response(body=_SUCCESS_BODY, content_type="application/json")


async def _serve_until_stdin_closes() -> None:
    app = web.Application()
    counters = _Counters()
    app[_COUNTERS] = counters
    app.router.add_post(SMART_SKIN_PATH, _smart_skin)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(port, flush=True)
    # The parent closes our stdin to stop us (and so does its death). A worker thread waits
    # for that, not the loop.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()
    print(counters.served, counters.rejected, flush=True)


class LocalServer(ChildProcess):
    """The stand-in server in a child interpreter, found at :attr:`url` while in the block."""

    def __init__(self) -> None:
        super().__init__("benchmarks._local_server")
        self.url = ""
        self.requests_served = 0
        self.requests_rejected = 0

    def handshake(self) -> None:
        line = self.read_line()  # "" if the child died before binding
        if not line.strip().isdigit():
            raise RuntimeError(f"the benchmark server did not start (it said {line!r})")
        self.url = f"http://127.0.0.1:{int(line)}"

    def stop(self) -> None:
        super().stop()
        counts = (self.final_output or "").split()
        if len(counts) == 2 and all(c.isdigit() for c in counts):
            self.requests_served, self.requests_rejected = int(counts[0]), int(counts[1])


if __name__ == "__main__":
    asyncio.run(_serve_until_stdin_closes())
