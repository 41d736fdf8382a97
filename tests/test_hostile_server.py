"""Against servers we did not write: every call ends in a result or a typed error, in time.

Each case starts an "API" on 127.0.0.1 that misbehaves in one way (bodies, statuses,
headers, redirects, encodings, timing) and runs every kind of call against it: smart_skin
(then a download of its result, if it gave one), credits, a smart-beauty submit and a task
poll through ``client.track``. For every call:

* the outcome is a result or an :class:`~ailab_async.AILabError`, never another exception;
* it ends within its deadline (checked against a generous outer bound, not a tight timer:
  the machine may be busy);
* the key never reaches a server other than the API, and never appears in an error's
  ``str`` or ``repr``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from ailab_async import AILabClient, AILabError, ImageResult

from ._hostile import (
    RawScenario,
    Servers,
    WebHandler,
    gzip_bomb,
    http_head,
    raw_reply,
    servers,
    stall,
    stream_body,
)
from .conftest import TEST_KEY, envelope, error_envelope, png_bytes

DEADLINE = 1.5
#: How long the task poll is awaited: failed polls are retried until then.
POLL_WAIT = 0.75
#: The outer bound: far above any call's deadline; hitting it means a call hung.
OUTER_BOUND = DEADLINE + 20.0
IMAGE = png_bytes(300, 300)

Setup = Callable[[Servers], Awaitable[str]]


# -- answers -----------------------------------------------------------------------------------


def _answer(
    status: int = 200,
    body: bytes | Callable[[str], bytes] = b"",
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> WebHandler:
    """Answer every request alike; ``body`` may be built from the server's own base URL."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        base = f"{request.scheme}://{request.host}"
        raw = body(base) if callable(body) else body
        response = web.Response(status=status, body=raw, headers=headers or {})
        response.content_type = content_type
        return response

    return handler


def _ok(base: str) -> bytes:
    """A success envelope for every endpoint at once (image, task id, status, credits)."""
    return json.dumps(
        envelope(
            {
                "image_url": base + "/r/1.png",
                "task_id": "T-1",
                "task_status": 2,
                "unique_sign": "a",
                "name": "API",
                "balance": 5,
                "total": 10,
            },
            task_id="T-1",
        )
    ).encode()


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _web(handler: WebHandler) -> Setup:
    async def setup(running: Servers) -> str:
        return await running.web("api", handler)

    return setup


def _raw(scenario: RawScenario, *, read_request: bool = True) -> Setup:
    async def setup(running: Servers) -> str:
        return await running.raw("api", scenario, read_request=read_request)

    return setup


def _redirect_to_evil(status: int, *, loop: bool = False, location: bool = True) -> Setup:
    async def setup(running: Servers) -> str:
        evil = await running.web("evil", _answer(200, _ok))
        api_url = ""

        async def api(request: web.Request) -> web.Response:
            await request.read()
            if not location:
                return web.Response(status=status)
            target = (api_url if loop else evil) + request.path_qs
            return web.Response(status=status, headers={"Location": target})

        api_url = await running.web("api", api)
        return api_url

    return setup


def _huge_body(running_total: int) -> Setup:
    async def setup(running: Servers) -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await stream_body(request, running, "api", total=running_total)

        return await running.web("api", handler)

    return setup


def _trickle(delay: float) -> RawScenario:
    async def scenario(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"data": {"image_url": "http://127.0.0.1:9/x.png"}}'
        writer.write(http_head(b"HTTP/1.1 200 OK", [(b"Content-Length", str(len(body)).encode())]))
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(delay)

    return scenario


def _then(first: bytes, then: RawScenario) -> RawScenario:
    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(first)
        await writer.drain()
        await then(reader, writer)

    return scenario


def _close_now(reset: bool) -> RawScenario:
    async def scenario(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if reset:
            writer.transport.abort()
        else:
            writer.close()

    return scenario


def _ok_raw(status_line: bytes = b"HTTP/1.1 200 OK", **kwargs: Any) -> RawScenario:
    body = json.dumps(envelope({"image_url": "http://127.0.0.1:9/x.png", "task_id": "T"}))
    return raw_reply(status_line, body.encode(), **kwargs)


_DEEP = b'{"data": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
_CHUNKED = [(b"Transfer-Encoding", b"chunked")]

CASES: dict[str, Setup] = {
    # bodies
    "empty-200": _web(_answer(200, b"")),
    "html-200": _web(_answer(200, b"<html><body>hello</body></html>", content_type="text/html")),
    "truncated-json": _web(_answer(200, lambda base: _ok(base)[:40])),
    "json-array": _web(_answer(200, b"[1, 2, 3]")),
    "json-string": _web(_answer(200, b'"ok"')),
    "huge-body": _huge_body(64 * 1024 * 1024),
    "gzip-bomb": _web(
        _answer(200, gzip_bomb(48 * 1024 * 1024), headers={"Content-Encoding": "gzip"})
    ),
    "deflate-garbage": _web(
        _answer(200, b"\x00\x01garbage" * 100, headers={"Content-Encoding": "deflate"})
    ),
    "invalid-utf8": _web(_answer(200, b'{"data": {"image_url": "http://\xff\xfe/x"}}')),
    "bom-json": _web(_answer(200, lambda base: b"\xef\xbb\xbf" + _ok(base))),
    "nan-infinity": _web(
        _answer(200, b'{"error_code": NaN, "data": {"image_url": Infinity, "task_id": -Infinity}}')
    ),
    "deeply-nested": _web(_answer(200, _DEEP)),
    "duplicate-keys": _web(
        _answer(200, b'{"error_code": 0, "error_code": 429, "error_code_str": "EXCEEDING_LIMITS"}')
    ),
    "image-url-ftp": _web(_answer(200, _json(envelope({"image_url": "ftp://127.0.0.1/x"})))),
    "image-url-javascript": _web(
        _answer(200, _json(envelope({"image_url": "javascript:alert(1)", "task_status": 2})))
    ),
    "image-url-huge": _web(
        _answer(
            200,
            lambda base: _json(
                envelope({"image_url": base + "/" + "a" * 2_000_000, "task_status": 2})
            ),
        )
    ),
    "task-id-and-status-wrong-type": _web(
        _answer(200, _json(envelope({"task_id": {"id": 1}, "task_status": [2], "balance": {}})))
    ),
    "error-code-junk": _web(_answer(200, _json({"error_code": "--1", "error_detail": []}))),
    # statuses
    "status-600": _web(_answer(600, b"{}")),
    "status-line-junk": _raw(_ok_raw(b"HTTP/1.1 abc Nope")),
    "status-line-zero": _raw(_ok_raw(b"HTTP/1.1 000 Zero")),
    "status-line-garbage": _raw(_ok_raw(b"\x00\x01\x02 not http at all")),
    "status-1xx-then-200": _raw(
        _then(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n", _ok_raw())
    ),
    "status-1xx-then-close": _raw(_then(b"HTTP/1.1 100 Continue\r\n\r\n", _close_now(False))),
    "status-204": _web(_answer(204)),
    "redirect-to-other-host": _redirect_to_evil(302),
    "redirect-307-to-plain-http": _redirect_to_evil(307),
    "redirect-without-location": _redirect_to_evil(301, location=False),
    "redirect-loop": _redirect_to_evil(302, loop=True),
    "status-418": _web(_answer(418, b"I'm a teapot", content_type="text/plain")),
    "status-499": _web(_answer(499, b'{"error_detail": {"code": "CLIENT_CLOSED"}}')),
    "status-520-html": _web(_answer(520, b"<html>origin error</html>", content_type="text/html")),
    "gateway-429-html": _web(_answer(429, b"<html>slow down</html>", content_type="text/html")),
    "exceeding-limits-under-422": _web(
        _answer(422, _json(error_envelope(422, "EXCEEDING_LIMITS")))
    ),
    "flow-restriction-503": _web(
        _answer(503, _json(error_envelope(503, "AI_SERVICE_FLOW_RESTRICTION")))
    ),
    # headers
    "content-length-too-short": _raw(_ok_raw(content_length=12, close=False)),
    "content-length-too-long": _raw(_ok_raw(content_length=5000)),
    "content-length-junk": _raw(_ok_raw(headers=[(b"Content-Length", b"-1x")], content_length=-1)),
    "content-type-lies": _web(_answer(200, _ok, content_type="image/png")),
    "retry-after-junk": _web(
        _answer(429, _json(error_envelope(429, "EXCEEDING_LIMITS")), headers={"Retry-After": "?"})
    ),
    "retry-after-huge": _web(
        _answer(
            429,
            _json(error_envelope(429, "EXCEEDING_LIMITS")),
            headers={"Retry-After": "1000000000000000000000"},
        )
    ),
    "retry-after-negative": _web(
        _answer(503, _json(error_envelope(503, "AI_SERVICE_ERROR")), headers={"Retry-After": "-9"})
    ),
    "retry-after-date-in-past": _web(
        _answer(
            429,
            b"",
            headers={"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"},
            content_type="text/plain",
        )
    ),
    "header-not-latin1": _raw(
        _ok_raw(headers=[(b"X-Junk", "caf\u00e9 \u2603 \udcff".encode("utf-8", "surrogatepass"))])
    ),
    "thousands-of-headers": _raw(
        _ok_raw(headers=[(f"X-H{i}".encode(), b"v") for i in range(3000)])
    ),
    "header-line-too-long": _raw(_ok_raw(headers=[(b"X-Long", b"v" * 200_000)])),
    # encodings
    "brotli-claimed-plain-body": _web(_answer(200, _ok, headers={"Content-Encoding": "br"})),
    "gzip-claimed-plain-body": _web(_answer(200, _ok, headers={"Content-Encoding": "gzip"})),
    "chunked-size-junk": _raw(
        raw_reply(b"HTTP/1.1 200 OK", b"zz\r\n{}\r\n0\r\n\r\n", headers=_CHUNKED, content_length=-1)
    ),
    "chunked-cut-off": _raw(
        raw_reply(b"HTTP/1.1 200 OK", b'100\r\n{"data":', headers=_CHUNKED, content_length=-1)
    ),
    # timing
    "stall-before-headers": _raw(stall()),
    "stall-mid-body": _raw(
        _then(
            http_head(b"HTTP/1.1 200 OK", [(b"Content-Length", b"500")]) + b'{"data": {',
            stall(),
        )
    ),
    "trickle-slower-than-deadline": _raw(_trickle(0.2)),
    "close-after-headers": _raw(
        _then(http_head(b"HTTP/1.1 200 OK", [(b"Content-Length", b"100")]), _close_now(False))
    ),
    "accept-then-never-answer": _raw(stall(), read_request=False),
    "reset-on-accept": _raw(_close_now(True), read_request=False),
}


async def _bounded(call: Callable[[], Awaitable[Any]]) -> Any:
    """The call's result or error (never raised); a plain TimeoutError if it hung."""
    try:
        return await asyncio.wait_for(call(), OUTER_BOUND)
    except Exception as exc:  # the test judges every kind, hence the broad catch
        return exc


def _judge(case: str, what: str, outcome: object) -> None:
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, AILabError), (
            f"{case}/{what}: {type(outcome).__module__}.{type(outcome).__name__}: {outcome}"
        )
        assert TEST_KEY not in str(outcome)
        assert TEST_KEY not in repr(outcome)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_every_call_ends_typed_and_in_time(case: str) -> None:
    async with servers() as running:
        url = await CASES[case](running)
        async with AILabClient(
            api_key=TEST_KEY,
            base_url=url,
            timeout=0.4,
            deadline=DEADLINE,
            max_retries=1,
            backoff_initial=0.01,
            backoff_max=0.05,
        ) as client:
            skin, credits, submit, poll, raw_post, raw_get, raw_task = await asyncio.gather(
                _bounded(lambda: client.smart_skin(IMAGE)),
                _bounded(client.credits),
                _bounded(lambda: client.submit_smart_beauty(IMAGE)),
                _bounded(lambda: client.track("T-1").result(timeout=POLL_WAIT)),
                # Any other endpoint goes through the same engine, and ends the same way.
                _bounded(lambda: client.call("POST", "/api/cutout/x", files={"image": IMAGE})),
                _bounded(lambda: client.call("GET", "/api/common/x", billed=False)),
                _bounded(lambda: client.track_task("T-2").result(timeout=POLL_WAIT)),
            )
            outcomes: dict[str, object] = {
                "smart_skin": skin,
                "credits": credits,
                "submit": submit,
                "poll": poll,
                "call POST": raw_post,
                "call GET": raw_get,
                "any task": raw_task,
            }
            for result in (skin, poll):
                if isinstance(result, ImageResult):
                    outcomes["download"] = await _bounded(
                        lambda r=result: client.download(r, deadline=DEADLINE)
                    )
        for what, outcome in outcomes.items():
            _judge(case, what, outcome)
        for name in running.heads:
            if name != "api":
                assert not running.saw_key(name), f"{case}: the key reached {name}"


def test_the_suite_covers_enough_misbehaviours() -> None:
    assert len(CASES) >= 25
