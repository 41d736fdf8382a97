"""Secrets stay secret: the key and result URLs never reach logs, reprs, errors or files."""

from __future__ import annotations

import logging
import socket
import sqlite3
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aioresponses import aioresponses

from ailab_async import AILabClient, AILabError, ConfigurationError, PollingConfig
from ailab_async.batch import BatchCall, BatchSpec, Operation, discover_inputs, run_batch
from ailab_async.testing.simulator import (
    Faults,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)

SECRET_KEY = "sk-live-DO-NOT-LEAK-7f3a9c"  # a made-up key with a recognisable shape


async def test_key_and_result_urls_never_leak_anywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    config = SimulatorConfig(
        api_key=SECRET_KEY,
        tasks=TaskBehaviour(duration=Uniform(0.01, 0.05), failure_share=0.3),
        faults=Faults(error_503=0.1, truncated_json=0.05, html_502=0.05),
        blank_is_no_face=True,
        seed=2,
    )
    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(8):
        (photos / f"p{i}.jpg").write_bytes(sample_image(160, 160, seed=i))
    (photos / "tiny.png").write_bytes(sample_image(64, 64, fmt="PNG"))  # fails validation
    texts: list[str] = []
    urls: list[str] = []
    async with Simulator(config) as sim:
        polling = PollingConfig(fallback_interval=0.05, min_interval=0.01)
        async with AILabClient(
            api_key=SECRET_KEY, base_url=sim.url, backoff_initial=0.01, polling=polling
        ) as client:
            texts.append(repr(client))
            result = await client.smart_skin(sample_image(200, 200, seed=50))
            urls.append(result.image_url)
            texts += [repr(result), str(result)]
            raw = await client.call(
                "POST", "/api/portrait/effects/smart-skin", files={"image": sample_image(200, 200)}
            )
            assert raw.image_url is not None
            urls.append(raw.image_url)
            texts += [repr(raw), str(raw)]
            any_endpoint = BatchCall("POST", "/api/portrait/effects/smart-skin")
            for spec in (
                BatchSpec(Operation.SKIN, {}, tmp_path / "out-skin"),
                BatchSpec(Operation.BEAUTY, {"beauty_level": 0.4}, tmp_path / "out-beauty"),
                BatchSpec(any_endpoint, {}, tmp_path / "out-call"),
            ):
                report = await run_batch(client, discover_inputs([photos]), spec)
                assert report.failed >= 1  # error paths were exercised too
            try:
                await client.download(result.image_url + "-nope")
            except AILabError as exc:
                texts += [str(exc), repr(exc)]
        async with AILabClient(api_key=SECRET_KEY + "-wrong", base_url=sim.url) as bad:
            try:
                await bad.credits()
            except AILabError as exc:
                texts += [str(exc), repr(exc)]
    texts.append(caplog.text)
    texts += [p.read_text() for p in tmp_path.rglob("manifest.jsonl")]
    # The journal keeps result URLs on purpose (to download after a restart), never the key.
    stored = [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*.sqlite3*")]
    for journal in tmp_path.rglob("*.sqlite3"):
        with sqlite3.connect(journal) as db:
            stored.append(repr(db.execute("SELECT * FROM items").fetchall()))
        db.close()
    assert "ailab_async" in caplog.text  # the SDK did log
    for text in texts + stored:
        assert SECRET_KEY not in text
    for text in texts:
        for url in urls:
            assert url not in text


def test_plain_http_to_a_remote_host_is_refused_by_default() -> None:
    with pytest.raises(ConfigurationError, match="plain HTTP") as info:
        AILabClient(api_key=SECRET_KEY, base_url="http://api.example.com")
    assert SECRET_KEY not in str(info.value)
    for loopback in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:2"):
        AILabClient(api_key=SECRET_KEY, base_url=loopback)


async def test_tls_verification_stays_on() -> None:
    async with AILabClient(api_key=SECRET_KEY, base_url="https://api.example.com") as client:
        session = await client._sessions.get()
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector._ssl is True  # aiohttp's default: verify certificates


# -- the key in tracebacks rendered with frame locals ---------------------------------------
#
# Error trackers (Sentry and friends) and ``traceback.TracebackException(...,
# capture_locals=True)`` render the locals of every frame an error carries, along its whole
# ``__cause__``/``__context__`` chain. No frame of ours may hold the key (or a Redis
# password) in a local whose repr shows it.

REDIS_PASSWORD = "redis-pw-DO-NOT-LEAK-41d9"
REDIS_URL = f"redis://someone:{REDIS_PASSWORD}@127.0.0.1:1/0"


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return seen


def _leaks(error: BaseException, *secrets: str) -> list[str]:
    """Where a secret shows: the rendered traceback with locals, and every frame's locals
    along the whole chain (also a suppressed context, which the rendering hides)."""
    found = []
    rendered = "".join(
        traceback.TracebackException.from_exception(error, capture_locals=True).format()
    )
    for secret in secrets:
        if secret in rendered:
            found.append(f"rendered traceback shows {secret[:6]}...")
    for link in _chain(error):
        texts = {"str": str(link), "repr": repr(link)}
        tb = link.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            for name, value in frame.f_locals.items():
                texts[f"{frame.f_code.co_name} local {name!r}"] = repr(value)
            tb = tb.tb_next
        for where, text in texts.items():
            for secret in secrets:
                if secret in text:
                    found.append(f"{type(link).__name__}: {where}")
    return found


def _capture(make: Callable[[], object]) -> BaseException:
    try:
        make()
    except AILabError as exc:
        return exc
    raise AssertionError("no AILabError raised")


async def _capture_async(make: Callable[[], Awaitable[object]]) -> BaseException:
    try:
        await make()
    except AILabError as exc:
        return exc
    raise AssertionError("no AILabError raised")


@pytest.mark.parametrize(
    "make",
    [
        lambda: AILabClient(api_key=SECRET_KEY, base_url="ftp://x"),
        lambda: AILabClient(api_key=SECRET_KEY, base_url="http://api.example.com"),
        lambda: AILabClient(api_key=SECRET_KEY, base_url="http://127.0.0.1:1", timeout=-1),
        lambda: AILabClient(api_key=SECRET_KEY, base_url="http://127.0.0.1:1", rate_limit="x"),  # type: ignore[arg-type]
        lambda: AILabClient(api_key=SECRET_KEY + "\nX-Evil: 1", base_url="http://127.0.0.1:1"),
        lambda: AILabClient(api_key=SECRET_KEY + "\u00e9", base_url="http://127.0.0.1:1"),
    ],
    ids=["scheme", "plain-http", "timeout", "rate-limit", "newline-key", "non-ascii-key"],
)
def test_configuration_errors_carry_no_key_in_frame_locals(make: Callable[[], object]) -> None:
    error = _capture(make)
    assert isinstance(error, ConfigurationError)
    assert _leaks(error, SECRET_KEY) == []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: connecting is refused


async def test_a_refused_connection_carries_no_key_in_frame_locals() -> None:
    base_url = f"http://127.0.0.1:{_closed_port()}"
    async with AILabClient(api_key=SECRET_KEY, base_url=base_url, max_retries=0) as client:
        error = await _capture_async(client.credits)
    assert isinstance(error, AILabError)
    assert _leaks(error, SECRET_KEY) == []


async def test_api_and_validation_errors_carry_no_key_in_frame_locals() -> None:
    base_url = "http://127.0.0.1:9"
    errors: list[BaseException] = []
    with aioresponses() as mocked:
        mocked.get(
            f"{base_url}/api/common/query-credits",
            status=401,
            payload={"error_code": 401, "error_detail": {"code": "ERROR_USER_NOT_EXISTS"}},
            repeat=True,
        )
        async with AILabClient(api_key=SECRET_KEY, base_url=base_url) as client:
            errors.append(await _capture_async(client.credits))
            errors.append(await _capture_async(lambda: client.smart_skin(b"not an image")))
            errors.append(await _capture_async(lambda: client.credits(deadline=float("nan"))))
            errors.append(await _capture_async(lambda: client.download("file:///etc/passwd")))
            errors.append(_capture(lambda: client.track("bad id")))
            errors.append(await _capture_async(lambda: client.call("GET", "//evil.example/api")))
            errors.append(
                await _capture_async(
                    lambda: client.call("GET", "/api/common/query-credits", billed=False)
                )
            )
    assert [type(e).__name__ for e in errors] == [
        "AuthenticationError",
        "ValidationError",
        "ValidationError",
        "DownloadError",
        "ValidationError",
        "ValidationError",
        "AuthenticationError",
    ]
    for error in errors:
        assert _leaks(error, SECRET_KEY) == []


def test_redis_limiter_errors_carry_no_password_in_frame_locals() -> None:
    limiter = pytest.importorskip("ailab_async.contrib.redis").RedisRateLimiter
    # Module-level URLs: a URL in a closure would show in the lambda's own frame.
    for make in (
        lambda: limiter(REDIS_URL, name="x", rate=0),
        lambda: limiter(REDIS_URL.replace("redis://", "http://"), name="x", rate=5),
        lambda: limiter(REDIS_URL.replace(":1/0", ":port/0"), name="x", rate=5),
        lambda: limiter(REDIS_URL.replace("@127.0.0.1", "@[::1"), name="x", rate=5),
    ):
        error = _capture(make)
        assert isinstance(error, ConfigurationError)
        assert _leaks(error, REDIS_PASSWORD) == []


def test_the_client_repr_is_safe_while_half_built() -> None:
    # A traceback rendered with locals calls repr(self) on a client whose __init__ raised.
    error = _capture(lambda: AILabClient(api_key=SECRET_KEY, base_url="ftp://x"))
    rendered = "".join(
        traceback.TracebackException.from_exception(error, capture_locals=True).format()
    )
    assert "self = AILabClient(" in rendered
    assert SECRET_KEY not in rendered
