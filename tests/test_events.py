"""Event hooks (``on_event``): each kind in the right order, isolation, no secrets, no cost."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
from aioresponses import aioresponses

from ailab_async import (
    AILabClient,
    ConfigurationError,
    DeadlineExceededError,
    InvalidRequestError,
    ServerError,
)
from ailab_async import events as ev
from ailab_async.sync import AILabClient as SyncClient

from .conftest import (
    BASE_URL,
    SKIN_URL,
    TEST_KEY,
    FakeTime,
    envelope,
    error_envelope,
    png_bytes,
    skin_ok,
)
from .test_tracker import FakeBeautyAPI, make_client

RESULT_URL = "https://results.example/r/1.png?sig=s3cret"
IMAGE = png_bytes(300, 300)


class Recorder:
    """An ``on_event`` hook keeping every event."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)

    def kinds(self, *, rate: bool = True) -> list[str]:
        return [type(e).__name__ for e in self.events if rate or not isinstance(e, ev.RateChanged)]

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def client_with(fake_time: FakeTime, *hooks: Any, **kwargs: Any) -> AILabClient:
    return make_client(fake_time, on_event=list(hooks), telemetry=False, **kwargs)


CALL = ["CallStarted", "RequestSent", "ResponseReceived", "CallEnded"]
#: A call retried once: the failed attempt, the retry, the attempt that succeeded.
RETRIED_CALL = [*CALL[:3], "RetryScheduled", *CALL[1:]]


async def test_a_successful_call_reports_start_attempt_answer_end(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.post(SKIN_URL, payload=skin_ok())
    recorder = Recorder()
    async with client_with(fake_time, recorder) as client:
        await client.smart_skin(IMAGE)
    assert recorder.kinds() == CALL
    started, sent, answer, ended = recorder.events
    assert isinstance(started, ev.CallStarted)
    assert (started.endpoint, started.method) == ("smart-skin", "POST")
    assert (started.server_address, started.server_port) == ("127.0.0.1", 9)
    assert isinstance(sent, ev.RequestSent)
    assert sent.attempt == 1
    assert isinstance(answer, ev.ResponseReceived)
    assert (answer.status, answer.error_type, answer.request_id) == (200, None, "req-1")
    assert answer.duration >= 0
    assert isinstance(ended, ev.CallEnded)
    assert (ended.error_type, ended.status, ended.log_id) == (None, 200, "log-1")
    assert {e.call_id for e in (started, sent, answer, ended)} == {started.call_id}


async def test_a_5xx_then_ok_reports_the_retry_between_two_attempts(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.post(SKIN_URL, status=503, payload=error_envelope(503, "ERROR_INSUFFICIENT_RESOURCES"))
    mocked.post(SKIN_URL, payload=skin_ok())
    recorder = Recorder()
    async with client_with(fake_time, recorder) as client:
        await client.smart_skin(IMAGE)
    assert recorder.kinds() == RETRIED_CALL
    first, second = recorder.of(ev.ResponseReceived)
    assert (first.attempt, first.status, first.code) == (1, 503, "ERROR_INSUFFICIENT_RESOURCES")
    assert (first.error_type, first.ambiguous) == ("ServerError", False)
    assert (second.attempt, second.status) == (2, 200)
    [retry] = recorder.of(ev.RetryScheduled)
    assert (retry.attempt, retry.delay, retry.ambiguous) == (1, 0.5, False)
    assert retry.reason == "ServerError 503 ERROR_INSUFFICIENT_RESOURCES"
    assert recorder.of(ev.CallEnded)[0].error_type is None


async def test_a_429_then_ok_reports_rate_limited_and_the_limiters_cut(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.post(
        SKIN_URL,
        status=429,
        payload=error_envelope(429, "EXCEEDING_LIMITS"),
        headers={"Retry-After": "2"},
    )
    mocked.post(SKIN_URL, payload=skin_ok())
    recorder = Recorder()
    async with client_with(fake_time, recorder, rate_limit=10) as client:
        await client.smart_skin(IMAGE)
        rate_after = client.stats.current_rate
    assert recorder.kinds(rate=False) == [
        "CallStarted",
        "RequestSent",
        "ResponseReceived",
        "RateLimited",
        "RetryScheduled",
        "RequestSent",
        "ResponseReceived",
        "CallEnded",
    ]
    [limited] = recorder.of(ev.RateLimited)
    assert (limited.endpoint, limited.attempt, limited.retry_after) == ("smart-skin", 1, 2.0)
    # The limiter's cut is reported between the 429 and the retry, with the new rate.
    kinds = recorder.kinds()
    assert kinds.index("RateChanged") == kinds.index("RateLimited") + 1
    [changed] = recorder.of(ev.RateChanged)
    assert changed.old is not None
    assert changed.new is not None
    assert changed.new < changed.old
    assert changed.new == pytest.approx(rate_after)
    assert recorder.of(ev.RetryScheduled)[0].delay >= 2.0


async def test_a_final_failure_ends_the_call_with_its_error_and_no_retry(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.post(SKIN_URL, status=400, payload=error_envelope(400, "ERROR_INVALID_PARAMETER"))
    recorder = Recorder()
    async with client_with(fake_time, recorder) as client:
        with pytest.raises(InvalidRequestError):
            await client.smart_skin(IMAGE)
    assert recorder.kinds() == CALL
    ended = recorder.of(ev.CallEnded)[0]
    assert (ended.error_type, ended.status, ended.code) == (
        "InvalidRequestError",
        400,
        "ERROR_INVALID_PARAMETER",
    )
    assert (ended.request_id, ended.log_id) == ("req-err", "log-err")


async def test_a_deadline_ends_the_call_with_its_error(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.post(SKIN_URL, status=503, payload=error_envelope(503, "BUSY"), repeat=True)
    recorder = Recorder()
    async with client_with(fake_time, recorder, deadline=2.0) as client:
        with pytest.raises(DeadlineExceededError):
            await client.smart_skin(IMAGE)
    assert recorder.kinds()[-2:] == ["ResponseReceived", "CallEnded"]
    assert recorder.of(ev.CallEnded)[0].error_type == "DeadlineExceededError"
    assert len(recorder.of(ev.RetryScheduled)) == len(recorder.of(ev.RequestSent)) - 1


async def test_a_cancelled_call_still_ends(mocked: aioresponses, fake_time: FakeTime) -> None:
    gate = asyncio.Event()

    async def stuck(*_: Any, **__: Any) -> None:
        gate.set()
        await asyncio.Event().wait()

    mocked.post(SKIN_URL, callback=stuck)
    recorder = Recorder()
    async with client_with(fake_time, recorder) as client:
        call = asyncio.ensure_future(client.smart_skin(IMAGE))
        await gate.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assert recorder.kinds() == ["CallStarted", "RequestSent", "CallEnded"]
    assert recorder.of(ev.CallEnded)[0].error_type == "CancelledError"


async def test_a_task_reports_tracked_polls_and_finished_with_its_lag(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [3.0])
    recorder = Recorder()
    async with client_with(fake_time, recorder) as client:
        task = await client.submit_smart_beauty(IMAGE)
        await task
    [tracked] = recorder.of(ev.TaskTracked)
    assert (tracked.task_id, tracked.fresh) == ("T1", True)
    polls = recorder.of(ev.TaskPolled)
    assert [p.poll for p in polls] == list(range(1, api.polls["T1"] + 1))
    assert polls[-1].state == "succeeded"
    assert {p.state for p in polls[:-1]} <= {"queued", "processing"}
    [finished] = recorder.of(ev.TaskFinished)
    assert (finished.task_id, finished.outcome, finished.polls) == ("T1", "succeeded", len(polls))
    assert finished.error_type is None
    assert finished.detection_lag is not None
    assert 0 <= finished.detection_lag <= finished.duration
    # Order: submit call, tracked, then each poll's call and its TaskPolled, finished last.
    kinds = recorder.kinds(rate=False)
    assert kinds[:5] == [*CALL, "TaskTracked"]
    assert kinds[-1] == "TaskFinished"
    poll_calls = [e for e in recorder.of(ev.CallStarted) if e.endpoint == "query-async-task-result"]
    assert {e.task_id for e in poll_calls} == {"T1"}
    assert len(poll_calls) == len(polls)


async def test_a_failed_task_and_a_closed_client_finish_with_their_outcome(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [3.0, 50.0, 50.0])
    api.query_override["T1"] = [
        _answer(422, error_envelope(422, "ERROR_NO_FACE_IN_FILE")),
    ]
    recorder = Recorder()
    async with client_with(fake_time, recorder) as client:
        failed = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(Exception, match="nope"):
            await failed
        pending = await client.submit_smart_beauty(IMAGE)  # still pending at close
        await client.submit_smart_beauty(IMAGE)  # nobody holds its handle
        gc.collect()
    outcomes = {e.task_id: (e.outcome, e.error_type) for e in recorder.of(ev.TaskFinished)}
    assert outcomes == {
        "T1": ("failed", "TaskFailedError"),
        "T2": ("closed", "ClientClosedError"),
        "T3": ("abandoned", None),
    }
    assert pending.task_id == "T2"


def _answer(status: int, payload: dict[str, object]) -> Any:
    from aioresponses import CallbackResult  # noqa: PLC0415

    return CallbackResult(status=status, payload=payload)


async def test_a_download_reports_its_host_type_and_size_never_its_url(
    mocked: aioresponses, fake_time: FakeTime, tmp_path: Path
) -> None:
    mocked.get(RESULT_URL, body=b"PNGDATA", content_type="image/png")
    mocked.get(RESULT_URL, body=b"JPEGDATA!", content_type="image/jpeg")
    recorder = Recorder()
    async with client_with(fake_time, recorder) as client:
        await client.download(RESULT_URL)
        await client.download(RESULT_URL, tmp_path / "out.jpg")
    assert recorder.kinds() == [*CALL, "DownloadDone"] * 2
    in_memory, to_file = recorder.of(ev.DownloadDone)
    assert in_memory == ev.DownloadDone("results.example", "image/png", 7, to_file=False)
    assert to_file == ev.DownloadDone("results.example", "image/jpeg", 9, to_file=True)
    started = recorder.of(ev.CallStarted)[0]
    assert (started.endpoint, started.server_address, started.server_port) == (
        "download",
        "results.example",
        443,
    )


async def test_a_raising_hook_is_logged_once_and_never_breaks_a_call(
    mocked: aioresponses, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.post(SKIN_URL, status=503, payload=error_envelope(503, "BUSY"))
    mocked.post(SKIN_URL, payload=skin_ok())
    mocked.post(SKIN_URL, status=400, payload=error_envelope(400, "ERROR_INVALID_PARAMETER"))

    def broken(event: ev.Event) -> None:
        raise RuntimeError(f"hook bug quoting {TEST_KEY}")

    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="ailab_async")
    async with client_with(fake_time, broken, recorder) as client:
        result = await client.smart_skin(IMAGE)
        with pytest.raises(InvalidRequestError):  # the call's own error, not the hook's
            await client.smart_skin(IMAGE)
    assert result.image_url.startswith("https://results.example/")
    assert recorder.kinds()[:7] == RETRIED_CALL  # the hook after the broken one saw everything
    warnings = [r for r in caplog.records if "on_event hook" in r.getMessage()]
    assert len(warnings) == 1
    assert "RuntimeError" in warnings[0].getMessage()
    assert TEST_KEY not in caplog.text


async def test_no_event_carries_the_key_a_result_url_or_bytes(
    mocked: aioresponses, fake_time: FakeTime, tmp_path: Path
) -> None:
    mocked.post(SKIN_URL, status=502, body=b"<html>502 " + RESULT_URL.encode() + b"</html>")
    mocked.post(SKIN_URL, payload=skin_ok(RESULT_URL))
    mocked.get(RESULT_URL, body=b"PNGDATA", content_type="image/png")
    FakeBeautyAPI(mocked, fake_time, [2.0])
    recorder = Recorder()
    async with client_with(fake_time, recorder) as client:
        result = await client.smart_skin(IMAGE)
        await client.download(result, tmp_path / "r.png")
        await (await client.submit_smart_beauty(IMAGE))
    assert len({type(e) for e in recorder.events}) >= 9
    for event in recorder.events:
        shown = [repr(event), *(str(v) for v in attrs.asdict(event).values())]
        for text in shown:
            assert TEST_KEY not in text
            assert "s3cret" not in text
            assert "/r/1.png" not in text
            assert "r.example/" not in text
        assert not any(isinstance(v, (bytes, bytearray)) for v in attrs.astuple(event))


async def test_without_hooks_no_event_is_built(
    mocked: aioresponses, fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("an event was built with no hook installed")

    for name in ev.__all__:
        if name not in ("Event", "EventHook"):
            monkeypatch.setattr(ev, name, refuse)
    mocked.post(SKIN_URL, status=503, payload=error_envelope(503, "BUSY"))
    mocked.post(SKIN_URL, payload=skin_ok())
    FakeBeautyAPI(mocked, fake_time, [2.0])
    async with client_with(fake_time) as client:
        assert client._dispatcher.hooks is None
        await client.smart_skin(IMAGE)
        await (await client.submit_smart_beauty(IMAGE))


@pytest.mark.parametrize(
    "on_event",
    [42, [print, "not callable"]],
)
def test_a_hook_that_is_not_a_function_is_refused(on_event: object) -> None:
    with pytest.raises(ConfigurationError, match="on_event must be a function"):
        AILabClient(api_key=TEST_KEY, base_url=BASE_URL, on_event=on_event)  # type: ignore[arg-type]


def test_a_coroutine_hook_is_refused() -> None:
    async def hook(event: ev.Event) -> None:
        del event

    with pytest.raises(ConfigurationError, match="must not be coroutine functions"):
        AILabClient(api_key=TEST_KEY, base_url=BASE_URL, on_event=hook)


async def test_a_single_hook_and_a_sequence_both_work(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    mocked.post(SKIN_URL, payload=skin_ok(), repeat=True)
    first, second = Recorder(), Recorder()
    async with AILabClient(
        api_key=TEST_KEY, base_url=BASE_URL, on_event=first, telemetry=False
    ) as client:
        await client.smart_skin(IMAGE)
    async with AILabClient(
        api_key=TEST_KEY, base_url=BASE_URL, on_event=(first, second), telemetry=False
    ) as client:
        await client.smart_skin(IMAGE)
    assert first.kinds() == CALL * 2
    assert second.kinds() == CALL


def test_the_blocking_client_passes_hooks_through(mocked: aioresponses) -> None:
    mocked.post(SKIN_URL, status=500, payload=error_envelope(500, "PROCESSING_FAILURE"))
    mocked.post(SKIN_URL, payload=envelope({"image_url": RESULT_URL}))
    recorder = Recorder()
    with SyncClient(
        api_key=TEST_KEY,
        base_url=BASE_URL,
        backoff_initial=0.001,
        backoff_max=0.001,
        on_event=recorder,
        telemetry=False,
    ) as client:
        client.smart_skin(IMAGE)
    assert recorder.kinds() == RETRIED_CALL
    assert recorder.of(ev.ResponseReceived)[0].error_type == ServerError.__name__
