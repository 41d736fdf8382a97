"""AILabClient over aioresponses: results, error families, retries, limits, lifecycle."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import itertools
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from ailab_async import (
    AILabClient,
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
    ServerError,
    ValidationError,
)
from ailab_async._aimd import HEADROOM
from ailab_async._transport import MultipartBody

from .conftest import (
    BASE_URL,
    CREDITS_URL,
    SKIN_URL,
    TEST_KEY,
    FakeTime,
    envelope,
    error_envelope,
    png_bytes,
    skin_ok,
)

RESULT_URL = "https://results.example/r/1.png?sig=s3cret"


def sent(mocked: aioresponses, url: str = SKIN_URL, method: str = "POST") -> list[Any]:
    return mocked.requests.get((method, URL(url)), [])


def client_for(fake_time: FakeTime, **kwargs: Any) -> AILabClient:
    kwargs.setdefault("api_key", TEST_KEY)
    kwargs.setdefault("base_url", BASE_URL)
    return AILabClient(clock=fake_time.clock, sleep=fake_time.sleep, random=lambda: 0.5, **kwargs)


async def test_smart_skin_returns_typed_result_and_sends_key_and_fields(
    mocked: aioresponses, mock_client: AILabClient, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, payload=skin_ok(RESULT_URL))
    result = await mock_client.smart_skin(face_png, retouch_degree=0.8, whitening_degree=0.5)
    assert result.image_url == RESULT_URL
    assert (result.request_id, result.log_id) == ("req-1", "log-1")
    [call] = sent(mocked)
    assert call.kwargs["headers"]["ailabapi-api-key"] == TEST_KEY
    body: MultipartBody = call.kwargs["data"]
    assert parse_form(body) == {
        "retouch_degree": b"0.8",
        "whitening_degree": b"0.5",
        "image": face_png,
    }


async def test_image_bytes_reach_aiohttp_as_they_are_without_a_copy(
    mocked: aioresponses, mock_client: AILabClient, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, payload=skin_ok(RESULT_URL))
    await mock_client.smart_skin(face_png)
    [call] = sent(mocked)
    body = call.kwargs["data"]
    assert isinstance(body, MultipartBody)  # not a FormData over a BytesIO copy
    assert body.image is face_png
    assert body.size == len(body.head) + len(face_png) + len(body.tail)
    assert parse_form(body) == {"image": face_png}  # no degree given: none sent


def parse_form(body: MultipartBody) -> dict[str, bytes]:
    """The fields of an in-memory multipart body, as a server's parser reads them."""
    assert isinstance(body.image, bytes)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {body.content_type}\r\n\r\n".encode() + body.head + body.image + body.tail
    )
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str)
        assert isinstance(payload, bytes)
        fields[name] = payload
    return fields


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "ERROR_INVALID_PARAMETER", InvalidRequestError),
        (401, "ERROR_USER_NOT_EXISTS", AuthenticationError),
        (403, "ERROR_USER_LOCKED", PermissionDeniedError),
        (413, "FILE_SIZE_EXCEEDS_LIMIT", ImageRejectedError),
        (422, "ERROR_NO_FACE_IN_FILE", ImageRejectedError),
        (429, "ERROR_NOT_ENOUGH_CREDITS", InsufficientCreditsError),
    ],
)
async def test_final_errors_raise_typed_and_are_not_retried(
    mocked: aioresponses,
    mock_client: AILabClient,
    face_png: bytes,
    status: int,
    code: str,
    expected: type[Exception],
) -> None:
    mocked.post(SKIN_URL, status=status, payload=error_envelope(status, code), repeat=True)
    with pytest.raises(expected) as info:
        await mock_client.smart_skin(face_png)
    assert len(sent(mocked)) == 1
    assert info.value.code == code
    assert info.value.request_id == "req-err"
    assert info.value.retryable is False  # type: ignore[attr-defined]


async def test_transient_error_is_retried_then_succeeds(
    mocked: aioresponses, mock_client: AILabClient, face_png: bytes, fake_time: FakeTime
) -> None:
    mocked.post(SKIN_URL, status=503, payload=error_envelope(503, "ERROR_INSUFFICIENT_RESOURCES"))
    mocked.post(SKIN_URL, status=502, body=b"<html>502 Bad Gateway</html>")
    mocked.post(SKIN_URL, payload=skin_ok())
    result = await mock_client.smart_skin(face_png)
    assert result.request_id == "req-1"
    assert len(sent(mocked)) == 3
    # Full jitter with rand=0.5: half of 1 s, then half of 2 s.
    assert fake_time.sleeps == [0.5, 1.0]
    stats = mock_client.stats
    assert (stats.attempts, stats.retries) == (3, 2)
    # The HTML 502 could have hidden a processed request; the 503 envelope could not.
    assert stats.ambiguous_retries == 1


async def test_retries_are_bounded_by_max_retries(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    mocked.post(
        SKIN_URL, status=500, payload=error_envelope(500, "PROCESSING_FAILURE"), repeat=True
    )
    async with client_for(fake_time, max_retries=2) as client:
        with pytest.raises(ServerError):
            await client.smart_skin(face_png)
    assert len(sent(mocked)) == 3


async def test_retry_after_is_honoured(
    mocked: aioresponses, mock_client: AILabClient, face_png: bytes, fake_time: FakeTime
) -> None:
    mocked.post(
        SKIN_URL,
        status=429,
        payload=error_envelope(429, "EXCEEDING_LIMITS"),
        headers={"Retry-After": "7"},
    )
    mocked.post(SKIN_URL, payload=skin_ok())
    await mock_client.smart_skin(face_png)
    # The retry waited at least the server's seven seconds (limiter pause + backoff floor).
    assert sum(fake_time.sleeps) >= 7.0
    assert mock_client.stats.rate_limited == 1


async def test_credits_exhausted_is_not_retried_even_with_retry_after(
    mocked: aioresponses, mock_client: AILabClient, face_png: bytes
) -> None:
    mocked.post(
        SKIN_URL,
        status=429,
        payload=error_envelope(429, "ERROR_NOT_ENOUGH_CREDITS"),
        headers={"Retry-After": "1"},
        repeat=True,
    )
    with pytest.raises(InsufficientCreditsError):
        await mock_client.smart_skin(face_png)
    assert len(sent(mocked)) == 1
    assert mock_client.stats.rate_limited == 0


async def test_validation_error_makes_no_request(
    mocked: aioresponses, mock_client: AILabClient
) -> None:
    with pytest.raises(ValidationError) as info:
        await mock_client.smart_skin(png_bytes(100, 100))
    assert info.value.rule == "resolution"
    with pytest.raises(ValidationError):
        await mock_client.smart_skin(png_bytes(300, 300), retouch_degree=2.0)
    assert mocked.requests == {}


async def test_in_flight_never_exceeds_max_concurrency(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    active = 0
    peak = 0

    async def slow(url: URL, **kwargs: Any) -> CallbackResult:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await fake_time.sleep(0.5)  # answers take time: calls overlap even when paced
        active -= 1
        return CallbackResult(payload=skin_ok())

    mocked.post(SKIN_URL, callback=slow, repeat=True)
    async with client_for(fake_time, max_concurrency=5) as client:
        results = await asyncio.gather(*(client.smart_skin(face_png) for _ in range(200)))
        assert len(results) == 200
        assert peak == 5  # saturated, never above
        assert client.stats.max_in_flight == 5
        assert client.stats.in_flight == 0


async def test_rate_limit_spaces_requests(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    seen: list[float] = []

    def record(url: URL, **kwargs: Any) -> CallbackResult:
        seen.append(fake_time.now)
        return CallbackResult(payload=skin_ok())

    mocked.post(SKIN_URL, callback=record, repeat=True)
    async with client_for(fake_time, rate_limit=10, max_concurrency=50) as client:
        await asyncio.gather(*(client.smart_skin(face_png) for _ in range(30)))
    assert len(seen) == 30
    # Never two requests closer than 0.1 s (paced with a little headroom under 10/s).
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(seen))
    assert seen[-1] - seen[0] == pytest.approx(2.9 / HEADROOM)


async def test_burst_far_above_the_server_limit_completes_without_rate_limit_errors(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    # The server admits 5 requests per (fake) second and answers 429 beyond that.
    admitted: list[float] = []

    def limited(url: URL, **kwargs: Any) -> CallbackResult:
        now = fake_time.now
        recent = [t for t in admitted if t > now - 1.0]
        if len(recent) >= 5:
            return CallbackResult(status=429, payload=error_envelope(429, "EXCEEDING_LIMITS"))
        admitted.append(now)
        return CallbackResult(payload=skin_ok())

    mocked.post(SKIN_URL, callback=limited, repeat=True)
    async with client_for(fake_time, max_concurrency=20, deadline=10_000) as client:
        results = await asyncio.gather(*(client.smart_skin(face_png) for _ in range(60)))
        assert len(results) == 60
        stats = client.stats
    assert stats.rate_limited > 0
    assert stats.current_rate is not None
    assert stats.current_rate < 20


async def test_cancelled_caller_releases_its_slot(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    hang = asyncio.Event()
    entered = asyncio.Event()

    calls = 0

    async def first_hangs(url: URL, **kwargs: Any) -> CallbackResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await hang.wait()
        return CallbackResult(payload=skin_ok())

    mocked.post(SKIN_URL, callback=first_hangs, repeat=True)
    async with client_for(fake_time, max_concurrency=1) as client:
        stuck = asyncio.create_task(client.smart_skin(face_png))
        await entered.wait()
        assert client.stats.in_flight == 1
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert client.stats.in_flight == 0
        # The only slot is free again: the next call goes straight through.
        result = await asyncio.wait_for(client.smart_skin(face_png), timeout=5)
        assert result.request_id == "req-1"


async def test_ambiguous_retries_are_counted_and_can_be_refused(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, exception=aiohttp.ServerDisconnectedError())
    mocked.post(SKIN_URL, payload=skin_ok())
    async with client_for(fake_time) as client:
        await client.smart_skin(face_png)
        assert client.stats.ambiguous_retries == 1

    mocked.post(SKIN_URL, exception=aiohttp.ServerDisconnectedError())
    mocked.post(SKIN_URL, payload=skin_ok())
    async with client_for(fake_time, retry_ambiguous=False) as client:
        with pytest.raises(ConnectionFailedError) as info:
            await client.smart_skin(face_png)
        assert info.value.ambiguous is True
        assert client.stats.ambiguous_retries == 0


async def test_connect_failure_is_retried_and_not_ambiguous(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 9, False, True, None, None, None),
        ConnectionRefusedError(111, "Connection refused"),
    )
    mocked.post(SKIN_URL, exception=refused)
    mocked.post(SKIN_URL, payload=skin_ok())
    async with client_for(fake_time, retry_ambiguous=False) as client:
        await client.smart_skin(face_png)
        assert client.stats.retries == 1
        assert client.stats.ambiguous_retries == 0


async def test_timeout_is_retried_as_ambiguous(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, exception=asyncio.TimeoutError())
    mocked.post(SKIN_URL, payload=skin_ok())
    async with client_for(fake_time) as client:
        await client.smart_skin(face_png)
        assert client.stats.ambiguous_retries == 1


async def test_deadline_stops_retrying_and_keeps_the_last_error(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, status=503, payload=error_envelope(503, "AI_SERVICE_ERROR"), repeat=True)
    async with client_for(fake_time, max_retries=10) as client:
        with pytest.raises(DeadlineExceededError) as info:
            await client.smart_skin(face_png, deadline=3.0)
    # Waits 0.5 + 1 + 2 would cross the 3 s deadline: three attempts, then give up.
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, ServerError)
    assert sum(fake_time.sleeps) < 3.0


async def test_stalled_call_is_cut_by_the_real_time_deadline(
    mocked: aioresponses, face_png: bytes
) -> None:
    async def stall(url: URL, **kwargs: Any) -> CallbackResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    mocked.post(SKIN_URL, callback=stall, repeat=True)
    async with AILabClient(api_key=TEST_KEY, base_url=BASE_URL) as client:
        with pytest.raises(DeadlineExceededError):
            await client.smart_skin(face_png, deadline=0.05)
        assert client.stats.in_flight == 0


async def test_credits_are_typed(mocked: aioresponses, mock_client: AILabClient) -> None:
    mocked.get(
        CREDITS_URL,
        payload=envelope([{"unique_sign": "s", "name": "API calls", "balance": 42, "total": 100}]),
    )
    credits = await mock_client.credits()
    assert credits.balance == 42.0
    assert credits.balances[0].name == "API calls"


async def test_malformed_success_body_is_a_typed_error(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.get(CREDITS_URL, status=200, body=b'{"data": [', repeat=True)
    async with client_for(fake_time, max_retries=1) as client:
        with pytest.raises(MalformedResponseError):
            await client.credits()
    assert len(sent(mocked, CREDITS_URL, "GET")) == 2


# --- lifecycle ---------------------------------------------------------------------------


def test_missing_key_is_a_clear_error_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AILAB_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="AILAB_API_KEY"):
        AILabClient()


def test_key_and_base_url_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AILAB_API_KEY", "env-key-123")
    monkeypatch.setenv("AILAB_BASE_URL", "http://127.0.0.1:1234/")
    client = AILabClient()
    assert client.base_url == "http://127.0.0.1:1234"
    monkeypatch.delenv("AILAB_BASE_URL")
    assert AILabClient().base_url == "https://www.ailabapi.com"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrency": 0},
        {"timeout": 0},
        {"rate_limit": -1},
        {"max_retries": -1},
        {"base_url": "ftp://x"},
        {"base_url": "http://api.example.com"},  # the key over plain HTTP to another host
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("base_url", BASE_URL)
    with pytest.raises(ConfigurationError):
        AILabClient(api_key=TEST_KEY, **kwargs)


def test_plain_http_to_a_remote_host_needs_the_loud_option() -> None:
    client = AILabClient(
        api_key=TEST_KEY, base_url="http://api.example.com", dangerously_allow_plain_http=True
    )
    assert client.base_url == "http://api.example.com"


async def test_owned_session_is_closed_twice_safely_and_calls_after_close_fail(
    mocked: aioresponses, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, payload=skin_ok())
    client = AILabClient(api_key=TEST_KEY, base_url=BASE_URL)
    await client.smart_skin(face_png)
    session = client._sessions._session
    assert session is not None
    await client.aclose()
    assert session.closed
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await client.smart_skin(face_png)
    with pytest.raises(ClientClosedError):
        await client.credits()


async def test_injected_session_is_used_and_never_closed(
    mocked: aioresponses, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, payload=skin_ok())
    async with aiohttp.ClientSession() as session:
        async with AILabClient(api_key=TEST_KEY, base_url=BASE_URL, session=session) as client:
            await client.smart_skin(face_png)
        assert not session.closed
        assert len(sent(mocked)) == 1


async def test_client_without_calls_creates_no_session() -> None:
    client = AILabClient(api_key=TEST_KEY, base_url=BASE_URL)
    await client.aclose()
    assert client._sessions._session is None


# --- secrets -----------------------------------------------------------------------------


async def test_key_and_result_urls_never_reach_logs_reprs_or_errors(
    mocked: aioresponses,
    fake_time: FakeTime,
    face_png: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ailab_async")
    mocked.post(SKIN_URL, status=503, payload=error_envelope(503, "AI_SERVICE_ERROR"))
    mocked.post(SKIN_URL, payload=skin_ok(RESULT_URL))
    mocked.post(SKIN_URL, status=401, payload=error_envelope(401, "ERROR_USER_NOT_EXISTS"))
    mocked.get(RESULT_URL, status=500, body=b"oops")
    mocked.get(RESULT_URL, body=b"img", content_type="image/png")
    texts: list[str] = []
    async with client_for(fake_time) as client:
        result = await client.smart_skin(face_png)
        await client.download(result)
        with pytest.raises(AuthenticationError) as info:
            await client.smart_skin(face_png)
        texts += [repr(client), repr(result), str(result), str(info.value), repr(info.value)]
    texts.append(caplog.text)
    assert "smart-skin" in caplog.text
    assert "request_id=req-1" in caplog.text
    for text in texts:
        assert TEST_KEY not in text
        assert "s3cret" not in text
        assert "/r/1.png" not in text


# --- downloads ---------------------------------------------------------------------------


async def test_download_returns_bytes_and_never_sends_the_key(
    mocked: aioresponses, mock_client: AILabClient, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, payload=skin_ok(RESULT_URL))
    mocked.get(RESULT_URL, body=b"PNGDATA", content_type="image/png")
    result = await mock_client.smart_skin(face_png)
    assert await mock_client.download(result) == b"PNGDATA"
    [call] = sent(mocked, RESULT_URL, "GET")
    assert "ailabapi-api-key" not in {k.lower() for k in call.kwargs.get("headers", {})}


async def test_download_to_file_is_atomic_and_retries_transient_failures(
    mocked: aioresponses, mock_client: AILabClient, tmp_path: Path
) -> None:
    mocked.get(RESULT_URL, status=503, body=b"busy")
    mocked.get(RESULT_URL, body=b"IMAGE", content_type="image/jpeg")
    dest = tmp_path / "deep" / "out.jpg"
    written = await mock_client.download(RESULT_URL, dest)
    assert written == dest
    assert dest.read_bytes() == b"IMAGE"
    assert [p.name for p in dest.parent.iterdir()] == ["out.jpg"]  # no temp files left


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"body": b"<html>", "content_type": "text/html"}, "not an image"),
        ({"status": 404, "body": b"gone"}, "HTTP 404"),
        ({"body": b"x" * 100, "content_type": "image/png"}, "cap"),
    ],
)
async def test_download_refusals(
    mocked: aioresponses,
    mock_client: AILabClient,
    tmp_path: Path,
    kwargs: dict[str, Any],
    words: str,
) -> None:
    mocked.get(RESULT_URL, **kwargs)
    dest = tmp_path / "x.png"
    with pytest.raises(DownloadError, match=words):
        await mock_client.download(RESULT_URL, dest, max_bytes=50)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []
    assert len(sent(mocked, RESULT_URL, "GET")) == 1


async def test_download_refuses_non_http_urls(mock_client: AILabClient) -> None:
    with pytest.raises(DownloadError, match="non-http"):
        await mock_client.download("file:///etc/passwd")


class CountingLimiter:
    """A custom RateLimiter: what the dispatcher tells it is recorded."""

    def __init__(self) -> None:
        self.rate_limited_count = 0
        self.acquired = 0
        self.successes = 0
        self.limited_at: list[float] = []

    @property
    def configured_rate(self) -> float | None:
        return 3.0

    def current_rate(self) -> float | None:
        return 3.0

    async def acquire(self) -> float:
        self.acquired += 1
        return 100.0 + self.acquired  # its own clock, not the client's

    def on_success(self) -> None:
        self.successes += 1

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        self.rate_limited_count += 1
        self.limited_at.append(sent_at)


async def test_a_limiter_object_can_be_plugged_in(
    mocked: aioresponses, fake_time: FakeTime, face_png: bytes
) -> None:
    mocked.post(SKIN_URL, status=429, payload=error_envelope(429, "EXCEEDING_LIMITS"))
    mocked.post(SKIN_URL, payload=skin_ok())
    limiter = CountingLimiter()
    async with client_for(fake_time, rate_limit=limiter) as client:
        await client.smart_skin(face_png)
        assert client.stats.rate_limited == 1
        assert client.stats.current_rate == 3.0
        assert "rate_limit=3.0" in repr(client)
    assert (limiter.acquired, limiter.successes) == (2, 1)
    assert limiter.limited_at == [101.0]  # the send time its own acquire() gave


def test_rate_limit_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="RateLimiter"):
        AILabClient(api_key=TEST_KEY, base_url=BASE_URL, rate_limit="fast")  # type: ignore[arg-type]
