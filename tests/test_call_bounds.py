"""How an API call is bounded in time without a scope of its own on the common path.

aiohttp times every attempt by the timeout it is given (never past the call's deadline), so
a call whose slot and pace are free at once enters no deadline scope; a wait for a busy
slot or limiter is bounded on its own, and a session whose request method is not aiohttp's
(a test double, a subclass) gets the scope around the whole call, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ailab_async import AILabClient, DeadlineExceededError, _dispatch
from ailab_async._ratelimit import AdaptiveRateLimiter
from ailab_async.events import RequestSent

from ._hostile import servers, stall
from .conftest import TEST_KEY, png_bytes, skin_ok


def _client(url: str, **kwargs: Any) -> AILabClient:
    settings: dict[str, Any] = {"timeout": 5.0, "deadline": 5.0, "max_retries": 0}
    settings.update(kwargs)
    return AILabClient(api_key=TEST_KEY, base_url=url, **settings)


class _Scopes:
    """Counts the deadline scopes entered (and can forbid them)."""

    def __init__(self, *, forbid: bool = False) -> None:
        self.entered = 0
        self.forbid = forbid
        self.real = _dispatch._deadline_scope

    def __call__(self, budget: float) -> Any:
        self.entered += 1
        if self.forbid:
            raise AssertionError("a deadline scope was entered on the common path")
        return self.real(budget)


@contextlib.asynccontextmanager
async def _skin_server() -> AsyncIterator[str]:
    async def api(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(skin_ok())

    async with servers() as running:
        yield await running.web("api", api)


async def test_a_call_with_a_free_slot_and_pace_enters_no_deadline_scope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scopes = _Scopes()
    monkeypatch.setattr(_dispatch, "_deadline_scope", scopes)
    # A pace far above what five calls in a row need: the limiter never makes one wait.
    limiter = AdaptiveRateLimiter(1e6)
    async with _skin_server() as url, _client(url, rate_limit=limiter) as client:
        await client.smart_skin(png_bytes(300, 300))  # the first call creates the session
        scopes.forbid = True
        for _ in range(5):
            result = await client.smart_skin(png_bytes(300, 300))
            assert result.image_url.startswith("https://")
    assert scopes.entered == 1


async def test_a_call_waiting_for_a_busy_slot_ends_at_its_deadline() -> None:
    async with servers() as running:
        url = await running.raw("api", stall())
        sent = asyncio.Event()

        def on_event(event: object) -> None:
            if isinstance(event, RequestSent):
                sent.set()

        async with _client(url, max_concurrency=1, timeout=30.0, on_event=on_event) as client:
            holder = asyncio.create_task(client.smart_skin(png_bytes(300, 300)))
            await sent.wait()  # the stalled call holds the only slot
            with pytest.raises(DeadlineExceededError):
                await client.smart_skin(png_bytes(300, 300), deadline=0.2)
            assert client.stats.attempts == 1  # the waiting call never sent anything
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder


async def test_a_stalled_attempt_ends_at_the_deadline_without_a_scope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with servers() as running:
        url = await running.raw("api", stall())
        async with _client(url, timeout=30.0) as client:
            await client._sessions.get()  # aiohttp's own session: attempts time themselves
            scopes = _Scopes(forbid=True)
            monkeypatch.setattr(_dispatch, "_deadline_scope", scopes)
            with pytest.raises(DeadlineExceededError) as info:
                await client.smart_skin(png_bytes(300, 300), deadline=0.3)
    assert info.value.attempts == 1
    assert scopes.entered == 0


async def test_a_session_with_another_request_method_gets_the_whole_call_scope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a test double (aioresponses) or a subclass does: aiohttp's timer may not run.
    async def stalled(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(aiohttp.ClientSession, "_request", stalled)
    async with _client("http://127.0.0.1:9", timeout=30.0) as client:
        await client._sessions.get()
        assert not client._sessions.times_requests
        with pytest.raises(DeadlineExceededError):
            await client.smart_skin(png_bytes(300, 300), deadline=0.2)
        assert client.stats.in_flight == 0
