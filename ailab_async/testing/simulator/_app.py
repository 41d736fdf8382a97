"""The aiohttp.web application: HTTP in, decisions from the state, HTTP out.

Every API request goes through :func:`_serve`, in this order:

1. count it in flight (``max_concurrent``);
2. draw a fault; a fault "before" answers now (nothing processed, nothing billed);
3. authenticate (401 ``ERROR_USER_NOT_EXISTS``), the key's rate limit, the server-wide
   concurrency limit (429 ``EXCEEDING_LIMITS``, with ``Retry-After`` when the limit knows
   the wait; the limits themselves live in ``_limits.py``);
4. the endpoint itself: parameters (400), credits (429 ``ERROR_NOT_ENOUGH_CREDITS``), image
   rules (413/415/422), then the work (billed);
5. latency (skipped for a limit's ``instant_429``);
6. a fault "after" replaces the answer (the call was processed and billed: ambiguous);
7. the limits that accepted the request are told it is done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from aiohttp import BodyPartReader, web

from ._config import (
    QUERY_CREDITS,
    QUERY_TASK,
    RESULTS,
    SMART_BEAUTY,
    SMART_SKIN,
    ImageRules,
    SimulatorConfig,
)
from ._envelopes import (
    FAULT_ENVELOPES,
    HTML_502_PAGE,
    error_envelope,
    status_for_code,
    success_envelope,
)
from ._imaging import DecodedImage, beautify, decode_image
from ._state import Admission, Clock, SimulatorState, StoredResult
from ._validation import Rejection, check_image, parse_degree

__all__ = ["STATE_KEY", "STOPPING_KEY", "make_app"]

STATE_KEY = web.AppKey("ailab_simulator_state", SimulatorState)
STOPPING_KEY = web.AppKey("ailab_simulator_stopping", asyncio.Event)

API_KEY_HEADER = "ailabapi-api-key"
# Uploads are read whole up to this size so that oversized images get the documented 413
# envelope; beyond it the simulator stops reading.
_HARD_UPLOAD_CAP = 64 * 1024 * 1024
_RENDER_CACHE_SIZE = 64


@attrs.frozen
class Reply:
    """An answer decided but not yet sent."""

    status: int
    body: dict[str, Any]
    outcome: str
    headers: dict[str, str] = attrs.field(factory=dict)
    #: Send at once, skipping the endpoint's latency (a limit's instant 429).
    instant: bool = False


Inner = Callable[[web.Request, SimulatorState, str], Awaitable[Reply]]


# --------------------------------------------------------------------------- replies


def _ok(state: SimulatorState, **fields: Any) -> Reply:
    body = success_envelope(state.new_id(), state.new_id(), state.config.envelope, **fields)
    return Reply(200, body, "OK")


def _error(state: SimulatorState, status: int, code: str, message: str, **headers: str) -> Reply:
    body = error_envelope(
        state.new_id(), state.new_id(), state.config.envelope, status, code, message
    )
    return Reply(status, body, code, dict(headers))


def _rejected(state: SimulatorState, rejection: Rejection) -> Reply:
    return _error(state, rejection.status, rejection.code, rejection.message)


def _to_http(reply: Reply) -> web.Response:
    return web.Response(
        status=reply.status,
        body=json.dumps(reply.body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=reply.headers,
    )


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


# --------------------------------------------------------------------------- request plumbing


@attrs.define
class _Form:
    fields: dict[str, str] = attrs.field(factory=dict)
    files: dict[str, bytes] = attrs.field(factory=dict)


async def _read_form(
    request: web.Request, state: SimulatorState, file_fields: frozenset[str]
) -> _Form | Reply:
    """Read a multipart form; file fields are kept as bytes whatever their filename."""
    form = _Form()
    if not request.content_type.startswith("multipart/"):
        return form  # nothing usable: the endpoint reports the missing fields
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            data = bytearray()
            while chunk := await part.read_chunk():
                data += chunk
                if len(data) > _HARD_UPLOAD_CAP:
                    return _error(
                        state, 413, "FILE_SIZE_EXCEEDS_LIMIT", f"{part.name} is far too large"
                    )
            if part.name in file_fields or part.filename is not None:
                form.files[part.name] = bytes(data)
            else:
                form.fields[part.name] = data.decode("utf-8", errors="replace")
    except (ValueError, AssertionError, RuntimeError) as exc:
        return _error(state, 400, "ERROR_PARAMETERS", f"malformed multipart body: {exc}")
    return form


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _abort_connection(request: web.Request, *, reset: bool) -> None:
    """Drop the connection without (the rest of) a response; ``reset`` sends a TCP RST."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if reset and sock is not None:
        with contextlib.suppress(OSError):
            # Linger on with a zero timeout: close() then sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _stall(request: web.Request, state: SimulatorState) -> None:
    """Hold the answer for ``stall_seconds`` of real time, or until the simulator stops."""
    stopping = request.app[STOPPING_KEY]
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stopping.wait(), state.config.faults.stall_seconds)


async def _inject(
    fault: str, request: web.Request, state: SimulatorState, endpoint: str, reply: Reply | None
) -> web.StreamResponse:
    stats = state.stats
    if fault in FAULT_ENVELOPES:
        status, code, message = FAULT_ENVELOPES[fault]
        stats.requests[(endpoint, code)] += 1
        return _to_http(_error(state, status, code, message))
    stats.requests[(endpoint, fault)] += 1
    if fault == "html_502":
        return web.Response(status=502, text=HTML_502_PAGE, content_type="text/html")
    if fault == "connection_reset":
        _abort_connection(request, reset=True)
        # Never sent: aiohttp notices the closed transport and drops this quietly.
        return web.Response(status=500)
    # truncated_json: half of the body that would have been sent.
    body_dict = (
        reply.body
        if reply is not None
        else success_envelope(state.new_id(), state.new_id(), state.config.envelope, data={})
    )
    full = json.dumps(body_dict, separators=(",", ":")).encode()
    cut = full[: max(1, len(full) // 2)]
    if not state.config.faults.truncated_lying_length:
        return web.Response(status=200, body=cut, content_type="application/json")
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = len(full)
    await response.prepare(request)
    await response.write(cut)
    _abort_connection(request, reset=False)
    return response


# --------------------------------------------------------------------------- the pipeline


def _api(endpoint: str, inner: Inner) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        stats = state.stats
        stats.in_flight += 1
        stats.max_concurrent = max(stats.max_concurrent, stats.in_flight)
        try:
            return await _serve(endpoint, inner, request, state)
        except ConnectionError:
            # The client went away (e.g. it timed out during a stall); nobody to answer.
            stats.requests[(endpoint, "client_disconnected")] += 1
            return web.Response(status=499)
        finally:
            stats.in_flight -= 1

    return handler


async def _serve(
    endpoint: str, inner: Inner, request: web.Request, state: SimulatorState
) -> web.StreamResponse:
    config = state.config
    fault, after = (None, False)
    if endpoint in config.faults.endpoints:
        fault, after = state.draw_fault()
    if fault is not None and not after:
        state.stats.faults[(fault, "before")] += 1
        if fault != "stall":
            return await _inject(fault, request, state, endpoint, None)
        await _stall(request, state)
        fault = None
    reply, admission = await _decide(inner, request, state)
    try:
        delay = 0.0 if reply.instant else state.draw_latency(endpoint)
        if delay > 0:
            await state.clock.sleep(delay)
        if fault is not None:
            state.stats.faults[(fault, "after")] += 1
            if fault != "stall":
                return await _inject(fault, request, state, endpoint, reply)
            await _stall(request, state)
        state.stats.requests[(endpoint, reply.outcome)] += 1
        return _to_http(reply)
    finally:
        if admission is not None:
            state.release(admission)


async def _decide(
    inner: Inner, request: web.Request, state: SimulatorState
) -> tuple[Reply, Admission | None]:
    """The answer, and the limits' verdict to release once it is sent (``None``: the request
    never reached the limits)."""
    key = request.headers.get(API_KEY_HEADER)
    if key is None or not state.is_known_key(key):
        reply = _error(state, 401, "ERROR_USER_NOT_EXISTS", "The API key is invalid or missing.")
        return reply, None
    admission = state.admit(key)
    limit = admission.refused_by
    if limit is None:
        try:
            return await inner(request, state, key), admission
        except BaseException:  # e.g. the client went away mid-upload: free its place
            state.release(admission)
            raise
    headers: dict[str, str] = {}
    if limit.retry_after and math.isfinite(admission.wait):
        # Whole seconds, rounded up; the epsilon keeps float noise (1.0000000001) from adding one.
        headers["Retry-After"] = str(max(1, math.ceil(admission.wait - 1e-9)))
    message = (
        "Concurrency limit exceeded."
        if limit.shape == "concurrency"
        else "Request rate limit exceeded."
    )
    reply = _error(state, 429, "EXCEEDING_LIMITS", message, **headers)
    return attrs.evolve(reply, instant=limit.instant_429), admission


# --------------------------------------------------------------------------- endpoints


async def _charge_and_check(
    state: SimulatorState, key: str, field: str, image: bytes, rules: ImageRules
) -> DecodedImage | Reply:
    """Reserve the call's credit, then check the image; a refused image is refunded (the
    provider bills only processed calls). The decoded image, or the reply to send."""
    if not state.reserve_credit(key):
        return _error(state, 429, "ERROR_NOT_ENOUGH_CREDITS", "Not enough credits.")
    verdict = await asyncio.to_thread(
        check_image, field, image, rules, blank_is_no_face=state.config.blank_is_no_face
    )
    if isinstance(verdict, Rejection):
        state.refund_credit(key)
        return _rejected(state, verdict)
    return verdict


async def _smart_skin(request: web.Request, state: SimulatorState, key: str) -> Reply:
    config = state.config
    form = await _read_form(request, state, frozenset({"image"}))
    if isinstance(form, Reply):
        return form
    image = form.files.get("image")
    if image is None:
        return _error(state, 400, "MISSING_PARAMETERS", "image is required")
    degrees: list[float] = []
    for name in ("retouch_degree", "whitening_degree"):
        parsed = parse_degree(name, form.fields.get(name), 1.0, 1.5)
        if isinstance(parsed, Rejection):
            return _rejected(state, parsed)
        degrees.append(parsed)
    verdict = await _charge_and_check(state, key, "image", image, config.smart_skin_rules)
    if not isinstance(verdict, DecodedImage):
        return verdict
    state.record_billed_upload(state.digest(image))
    token = state.store_result(image, degrees[0], degrees[1], state.clock.now())
    return _ok(state, data={"image_url": f"{_origin(request)}/results/{token}.png"})


async def _smart_beauty(request: web.Request, state: SimulatorState, key: str) -> Reply:
    config = state.config
    form = await _read_form(request, state, frozenset({"image_target"}))
    if isinstance(form, Reply):
        return form
    image = form.files.get("image_target")
    task_type = form.fields.get("task_type", "").strip()
    if image is None:
        return _error(state, 400, "MISSING_PARAMETERS", "image_target is required")
    if not task_type:
        return _error(state, 400, "MISSING_PARAMETERS", "task_type is required")
    accepted = ("async", "sync") if config.allow_sync_beauty else ("async",)
    if task_type not in accepted:
        return _error(state, 400, "ERROR_INVALID_PARAMETER", f"task_type must be one of {accepted}")
    level = parse_degree("beauty_level", form.fields.get("beauty_level"), 1.0, 1.0)
    if isinstance(level, Rejection):
        return _rejected(state, level)
    verdict = await _charge_and_check(state, key, "image_target", image, config.smart_beauty_rules)
    if not isinstance(verdict, DecodedImage):
        return verdict
    if task_type == "sync":
        state.record_billed_upload(state.digest(image))
        png = await asyncio.to_thread(beautify, verdict, level, level)
        return _ok(state, task_type="sync", data={"image": base64.b64encode(png).decode()})
    task = state.create_task(key, state.digest(image), image, level)
    return _ok(state, task_type="async", task_id=task.task_id)


async def _query_task(request: web.Request, state: SimulatorState, key: str) -> Reply:
    behaviour = state.config.tasks
    task_id = request.query.get("task_id", "").strip()
    if not task_id:
        return _error(state, 400, "MISSING_PARAMETERS", "task_id is required")
    task = state.find_task(task_id, key)
    if task is None:
        state.stats.polls_per_task[task_id] += 1
        return _error(state, 400, "ERROR_INVALID_PARAMETER", "task_id not found or expired")
    status = task.status_at(state.clock.now())
    state.observe_task(task, status)
    in_data = {"task_status": status} if behaviour.task_status_in_data else {}
    if status < 2:
        return _ok(state, task_status=status, **({"data": in_data} if in_data else {}))
    if task.failure_code is not None:
        if behaviour.failure_report == "envelope":
            code = task.failure_code
            return _error(state, status_for_code(code), code, "The task failed.")
        failed = {"task_status": 3} if behaviour.task_status_in_data else {}
        return _ok(state, task_status=3, data=failed)
    url = f"{_origin(request)}/results/{task.result_token}.png"
    return _ok(state, task_status=2, data={"image_url": url, **in_data})


async def _query_credits(request: web.Request, state: SimulatorState, key: str) -> Reply:
    account = {
        "unique_sign": f"sim-account-{state.digest(key.encode())[:12]}",
        "name": "AILabTools simulator",
        "balance": _number(state.balance(key)),
        "total": _number(state.total_credits()),
        "last_recharge_balance": _number(state.total_credits()),
        "balance_warning": 0,
        "first_buy_time": 0,
        "last_update_time": 0,
    }
    return _ok(state, data=[account])


def _render(result: StoredResult) -> bytes:
    decoded = decode_image(result.upload)
    if decoded is None:  # pragma: no cover - uploads are validated before they are stored
        raise RuntimeError("stored upload no longer decodes")
    return beautify(decoded, result.retouch_degree, result.whitening_degree)


async def _result_image(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    token = request.match_info["token"]
    result, expired = state.find_result(token)
    delay = state.draw_latency(RESULTS)
    if delay > 0:
        await state.clock.sleep(delay)
    if result is None:
        reply = _error(state, 404, "RESULT_NOT_FOUND", "No such result.")
    elif expired:
        reply = _error(state, 410, "RESULT_EXPIRED", "The result URL has expired.")
    else:
        cache = state.rendered
        png = cache.get(token)
        if png is None:
            png = await asyncio.to_thread(_render, result)
            cache[token] = png
            if len(cache) > _RENDER_CACHE_SIZE:
                cache.popitem(last=False)
        state.stats.requests[(RESULTS, "OK")] += 1
        return web.Response(body=png, content_type="image/png")
    state.stats.requests[(RESULTS, reply.outcome)] += 1
    return _to_http(reply)


async def _unknown_api(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    reply = _error(state, 404, "ERROR_AI_NOT_EXISTS", f"No such capability: {request.path}")
    state.stats.requests[("unknown", reply.outcome)] += 1
    return _to_http(reply)


def make_app(
    config: SimulatorConfig | None = None,
    *,
    clock: Clock | None = None,
    state: SimulatorState | None = None,
) -> web.Application:
    """Build the simulator as an ``aiohttp.web.Application``, to embed or serve yourself.

    >>> app = make_app(SimulatorConfig(seed=3))
    >>> app[STATE_KEY].config.seed
    3
    """
    if state is None:
        state = SimulatorState(config if config is not None else SimulatorConfig(), clock)
    # Leave room above the documented limits so oversized uploads get the 413 envelope.
    app = web.Application(client_max_size=_HARD_UPLOAD_CAP)
    app[STATE_KEY] = state
    app[STOPPING_KEY] = asyncio.Event()
    app.router.add_post("/api/portrait/effects/smart-skin", _api(SMART_SKIN, _smart_skin))
    app.router.add_post("/api/portrait/effects/smart-beauty", _api(SMART_BEAUTY, _smart_beauty))
    app.router.add_get("/api/common/query-async-task-result", _api(QUERY_TASK, _query_task))
    app.router.add_get("/api/common/query-credits", _api(QUERY_CREDITS, _query_credits))
    app.router.add_get("/results/{token}.png", _result_image)
    app.router.add_route("*", "/api/{tail:.*}", _unknown_api)
    return app
