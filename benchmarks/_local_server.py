"""A minimal stand-in for the API, run in its own process so its CPU never counts as the client's.

It answers ``POST /api/portrait/effects/smart-skin`` with one fixed legacy success envelope
after reading the whole multipart body, and ``GET /api/common/query-async-task-result`` with
"still processing" (so a tracked task polls forever). A request without the key, or a
smart-skin upload without its image, gets ``400 MISSING_PARAMETERS`` (counted as rejected), so
a benchmark client that sends the wrong request fails loudly instead of looking fast.

It also records what it saw, so a benchmark can check that two clients sent the same thing:
each request's *shape* (method, path, query names, the multipart parts in order: name, value or
file name, content type, length and CRC-32 of the file's bytes). ``GET /_bench/seen`` answers
``{shape: count}`` since the last look, and starts a new record. It knows nothing of the SDK:
benchmarks must measure the SDK, not share code with it.

    with LocalServer() as server:        # python -m benchmarks._local_server, stopped on exit
        asyncio.run(work(server.url))
        shapes = server.seen()           # {shape: count}, then a fresh record
    print(server.requests_served)
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import urllib.request
import zlib

from aiohttp import BodyPartReader, web

from ._common import ChildProcess

__all__ = [
    "API_KEY",
    "IMAGE_URL",
    "QUERY_TASK_PATH",
    "SMART_SKIN_PATH",
    "LocalServer",
]

SMART_SKIN_PATH = "/api/portrait/effects/smart-skin"
QUERY_TASK_PATH = "/api/common/query-async-task-result"
SEEN_PATH = "/_bench/seen"
API_KEY = "bench-key"
API_KEY_HEADER = "ailabapi-api-key"
IMAGE_URL = "https://ai-result.example/bench/skin.png?expires=86400"

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
_PROCESSING_BODY = json.dumps(
    {
        "request_id": "0f0e0d0c-bench-4000-8000-000000000003",
        "log_id": "BENCHLOG0003",
        "error_code": 0,
        "error_code_str": "",
        "error_msg": "",
        "error_detail": {"status_code": 200, "code": "", "code_message": "", "message": ""},
        "task_status": 1,
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
            "message": "the image (or task_id) and the API key are required",
        },
    }
).encode()
_READ_CHUNK = 256 * 1024


class _Record:
    served = 0
    rejected = 0

    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()


_RECORD = web.AppKey("record", _Record)


def _rejected(record: _Record) -> web.Response:
    record.rejected += 1
    return web.Response(status=400, body=_MISSING_BODY, content_type="application/json")


async def _part_shape(part: BodyPartReader) -> str:
    """One multipart part as the server understood it: text value, or file digest."""
    if part.filename is None:
        value = (await part.read()).decode("utf-8", "replace")
        return f"{part.name}={value}"
    crc, length = 0, 0
    while chunk := await part.read_chunk(_READ_CHUNK):
        crc, length = zlib.crc32(chunk, crc), length + len(chunk)
    content_type = part.headers.get("Content-Type", "")
    return f"{part.name}=<file {part.filename!r} {content_type} {length} B crc {crc:08x}>"


async def _smart_skin(request: web.Request) -> web.Response:
    record = request.app[_RECORD]
    if request.content_type != "multipart/form-data":
        return _rejected(record)
    parts: list[str] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):  # nested multipart: not this API
            await part.release()
            parts.append("<nested multipart>")
            continue
        parts.append(await _part_shape(part))  # drains the part, as a real server must
    record.seen[f"POST {request.path} {request.query_string} | " + " | ".join(parts)] += 1
    has_image = any(shape.startswith("image=<file") for shape in parts)
    if request.headers.get(API_KEY_HEADER) != API_KEY or not has_image:
        return _rejected(record)
    record.served += 1
    return web.Response(body=_SUCCESS_BODY, content_type="application/json")


async def _query_task(request: web.Request) -> web.Response:
    record = request.app[_RECORD]
    # The id itself differs per task: the shape keeps the query's names only.
    record.seen[f"GET {request.path} {'&'.join(sorted(request.query))}"] += 1
    if request.headers.get(API_KEY_HEADER) != API_KEY or not request.query.get("task_id"):
        return _rejected(record)
    record.served += 1
    return web.Response(body=_PROCESSING_BODY, content_type="application/json")


async def _seen(request: web.Request) -> web.Response:
    record = request.app[_RECORD]
    seen, record.seen = record.seen, collections.Counter()
    return web.json_response(dict(seen))


async def _serve_until_stdin_closes() -> None:
    app = web.Application()
    record = _Record()
    app[_RECORD] = record
    app.router.add_post(SMART_SKIN_PATH, _smart_skin)
    app.router.add_get(QUERY_TASK_PATH, _query_task)
    app.router.add_get(SEEN_PATH, _seen)
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
    print(record.served, record.rejected, flush=True)


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

    def seen(self) -> dict[str, int]:
        """The request shapes seen since the last call, with their counts (blocking)."""
        with urllib.request.urlopen(self.url + SEEN_PATH, timeout=30) as answer:
            shapes: dict[str, int] = json.load(answer)
        return shapes

    def stop(self) -> None:
        super().stop()
        counts = (self.final_output or "").split()
        if len(counts) == 2 and all(c.isdigit() for c in counts):
            self.requests_served, self.requests_rejected = int(counts[0]), int(counts[1])


if __name__ == "__main__":
    asyncio.run(_serve_until_stdin_closes())
