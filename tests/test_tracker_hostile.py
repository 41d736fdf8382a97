"""The tracker against hostile worlds: resumed old tasks, failing polls, bugs, bad input.

Polls are free, the tasks behind them are paid for: no poll failure may fail a task, an
old task picked up again must not teach the planner that tasks take hours, and whatever
ends a task's tracking must answer its waiters at once with the right error type.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from ailab_async import (
    AILabError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    InsufficientCreditsError,
    PermissionDeniedError,
    PollingConfig,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
    errors,
)
from ailab_async import _protocol as protocol
from ailab_async._polling import PROCESSING_FAILURE_TRIES
from ailab_async._tracker import TaskTracker

from .conftest import FakeTime, envelope, error_envelope
from .test_tracker import IMAGE, FakeBeautyAPI, make_client, tracker_stats, tracker_tasks

FAR = 100_000.0  # a waiter timeout (fake seconds) that only a hung task would reach
SECRET_URL = "https://r.example/secret.png?sig=s3cret-signature"


def hours_ago(hours: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)


def answer(status: int, code: str, **headers: str) -> CallbackResult:
    return CallbackResult(status=status, payload=error_envelope(status, code), headers=headers)


# -- 1. resumed old tasks do not poison what the planner learns -------------------------------


async def test_resumed_old_tasks_done_at_first_poll_do_not_stretch_fresh_polls(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [2.0] * 12)
    resumed_ids = [f"R{i}" for i in range(100)]
    api.done_at.update(dict.fromkeys(resumed_ids, 0.0))  # finished long ago
    async with make_client(fake_time, max_concurrency=16) as client:
        resumed = [client.track(i, submitted_at=hours_ago(2)) for i in resumed_ids]
        await asyncio.gather(*(h.result() for h in resumed))
        submitted_at: dict[str, float] = {}
        for _ in range(12):
            task = await client.submit_smart_beauty(IMAGE)
            submitted_at[task.task_id] = fake_time.now
            await task.result(timeout=FAR)
        plan = tracker_stats(client).plan
    for task_id, at in submitted_at.items():
        # Done 2 s after submit; found within the 5 s fallback, or sooner by plan.
        assert api.detected_at[task_id] - at <= 5.0 + 1e-6, task_id
    assert plan  # learned from the fresh tasks alone ...
    assert max(plan) < 10.0  # ... and nothing like the resumed tasks' hours


async def test_fresh_tasks_whose_first_poll_came_late_do_not_count_as_long(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [2.0] * 8)
    for n in range(1, 9):  # every first poll is refused for a minute
        api.query_override[f"T{n}"] = [answer(429, "EXCEEDING_LIMITS", **{"Retry-After": "60"})]
    async with make_client(fake_time) as client:
        for _ in range(8):
            result = await (await client.submit_smart_beauty(IMAGE)).result(timeout=FAR)
            assert result.image_url.endswith(".png")
        # (0, 65 s] is true, only wide: learned as "somewhere before 65 s", never as "long",
        # so the next task's first poll is still early.
        stats = tracker_stats(client)
        assert stats.observations == 8
        assert stats.plan[0] <= 5.0
    assert api.polls["T1"] == 2
    first, second = sorted(t for t in api.poll_times[:2])
    assert second - first >= 60.0  # the Retry-After was honoured


# -- 2. the give-up clock starts when we start tracking ---------------------------------------


async def test_a_resumed_task_older_than_give_up_after_is_polled_not_given_up(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [])
    api.done_at["R1"] = fake_time.now + 30.0  # still running when picked up
    async with make_client(fake_time) as client:
        result = await client.track("R1", submitted_at=hours_ago(2)).result(timeout=FAR)
    assert result.task_id == "R1"
    assert api.polls["R1"] >= 2


async def test_a_task_that_finished_long_ago_is_not_given_up_on_a_stale_answer(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [])
    api.done_at["R1"] = 0.0
    api.query_override["R1"] = [CallbackResult(payload=envelope(None, task_status=1))]
    async with make_client(fake_time) as client:
        result = await client.track("R1", submitted_at=hours_ago(5)).result(timeout=FAR)
    assert result.task_id == "R1"


async def test_give_up_counts_from_when_this_tracker_started_tracking(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [])
    api.done_at["R1"] = math.inf  # never finishes
    polling = PollingConfig(give_up_after=120.0)
    async with make_client(fake_time, polling=polling) as client:
        started = fake_time.now
        handle = client.track("R1", submitted_at=hours_ago(2))
        with pytest.raises(TaskTimeoutError, match="120s of polling") as info:
            await handle.result(timeout=FAR)
        assert 120.0 <= fake_time.now - started <= 130.0
        assert info.value.task_id == "R1"
        assert handle.done()  # the tracker stopped, not just this waiter
        assert client.tracker.pending == 0


# -- 3. poll errors never fail paid tasks -----------------------------------------------------

TRANSIENT_POLL_FAILURES = {
    "429-retry-after-60": answer(429, "EXCEEDING_LIMITS", **{"Retry-After": "60"}),
    "429-html-from-gateway": CallbackResult(status=429, body=b"<html>slow down</html>"),
    "500-internal": answer(500, "SERVICE_INTERNAL_ERROR"),
    "502-html": CallbackResult(status=502, body=b"<html>bad gateway</html>"),
    "503-resources": answer(503, "ERROR_INSUFFICIENT_RESOURCES"),
    "504-ai-timeout": answer(504, "AI_SERVICE_TIMEOUT"),
    "200-truncated-json": CallbackResult(status=200, body=b'{"task_status": '),
    "200-html": CallbackResult(status=200, body=b"<!doctype html><p>maintenance</p>"),
    "200-no-task-status": CallbackResult(payload=envelope({"foo": 1})),
    "200-done-without-url": CallbackResult(payload=envelope(None, task_status=2)),
    "connection-reset": aiohttp.ServerDisconnectedError(),
    "processing-failure-once": answer(500, "PROCESSING_FAILURE"),
    "404-json-without-code": CallbackResult(status=404, payload={"message": "Not Found"}),
}


@pytest.mark.parametrize("failure", TRANSIENT_POLL_FAILURES.values(), ids=TRANSIENT_POLL_FAILURES)
async def test_transient_poll_failures_never_fail_the_task(
    mocked: aioresponses, fake_time: FakeTime, failure: CallbackResult | Exception
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    # More failures in a row than the dispatcher retries by itself: the tracker must retry.
    api.query_override["T1"] = [failure] * 3
    async with make_client(fake_time, max_retries=1) as client:
        task = await client.submit_smart_beauty(IMAGE)
        result = await task.result(timeout=FAR)
    assert result.task_id == "T1"
    assert api.polls["T1"] == 4
    assert api.submits == 1


async def test_a_poll_that_keeps_failing_gives_up_with_a_timeout_not_a_failure(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    api.query_override["T1"] = [answer(503, "ERROR_INSUFFICIENT_RESOURCES")] * 10_000
    polling = PollingConfig(give_up_after=600.0)
    async with make_client(fake_time, polling=polling, max_retries=0) as client:
        task = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(TaskTimeoutError, match="ServerError HTTP 503") as info:
            await task.result(timeout=FAR)
        assert not isinstance(info.value, TaskFailedError)
        assert task.done()
    # Backing off: far fewer polls than one every 5 s for 600 s.
    assert 5 <= api.polls["T1"] <= 30


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (answer(401, "ERROR_USER_NOT_EXISTS"), AuthenticationError),
        (answer(403, "ERROR_USER_LOCKED"), PermissionDeniedError),
        (answer(429, "ERROR_NOT_ENOUGH_CREDITS"), InsufficientCreditsError),
    ],
    ids=["401", "403", "no-credits"],
)
async def test_an_account_error_on_a_poll_reaches_the_waiters_as_itself(
    mocked: aioresponses,
    fake_time: FakeTime,
    failure: CallbackResult,
    expected: type[errors.APIError],
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    api.query_override["T1"] = [failure]
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(expected) as info:
            await task.result(timeout=FAR)
    assert type(info.value) is expected
    assert not isinstance(info.value, TaskFailedError)


async def test_a_closed_session_under_a_poll_is_client_closed_not_a_task_failure(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    FakeBeautyAPI(mocked, fake_time, [1.0])
    session = aiohttp.ClientSession()
    async with make_client(fake_time, session=session) as client:
        task = await client.submit_smart_beauty(IMAGE)
        await session.close()  # its owner closes the session it lent us
        with pytest.raises(ClientClosedError):
            await task.result(timeout=FAR)


async def test_processing_failure_again_and_again_is_the_tasks_failure(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    api.query_override["T1"] = [answer(500, "PROCESSING_FAILURE")] * PROCESSING_FAILURE_TRIES
    async with make_client(fake_time, max_retries=0) as client:
        task = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(TaskFailedError) as info:
            await task.result(timeout=FAR)
    assert info.value.code == "PROCESSING_FAILURE"
    assert api.polls["T1"] == PROCESSING_FAILURE_TRIES


# -- 4. tracking again after a non-final end starts afresh ------------------------------------


async def test_tracking_again_after_an_auth_error_polls_afresh(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    api.query_override["T1"] = [answer(401, "ERROR_USER_NOT_EXISTS")]
    async with make_client(fake_time) as client:
        first = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(AuthenticationError):
            await first.result(timeout=FAR)
        again = client.track("T1")
        assert again is not first
        result = await again.result(timeout=FAR)
        assert client.track("T1") is again  # settled for good now: the same handle
    assert result.task_id == "T1"
    # 0.5 s: refused; tracked again: polled at once (unfinished), then 0.5 s later (done).
    assert api.polls["T1"] == 3
    assert api.submits == 1


async def test_tracking_again_after_giving_up_polls_afresh(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    FakeBeautyAPI(mocked, fake_time, [100.0])
    async with make_client(fake_time, polling=PollingConfig(give_up_after=60.0)) as client:
        first = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(TaskTimeoutError):
            await first.result(timeout=FAR)
        result = await client.track("T1").result(timeout=FAR)
    assert result.task_id == "T1"


async def test_a_task_the_server_failed_keeps_its_handle_and_is_not_polled_again(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    api.query_override["T1"] = [answer(422, "ERROR_NO_FACE_IN_FILE")]
    async with make_client(fake_time) as client:
        first = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(TaskFailedError):
            await first.result(timeout=FAR)
        assert client.track("T1") is first
        assert client.tracker.pending == 0
    assert api.polls["T1"] == 1


# -- 5. bugs answer the waiters at once -------------------------------------------------------


async def test_a_poll_that_raises_something_unexpected_fails_its_waiters_at_once(
    mocked: aioresponses, fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeBeautyAPI(mocked, fake_time, [1.0])

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("task_status")

    monkeypatch.setattr(protocol, "parse_task_status", broken)
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE)
        submitted = fake_time.now
        with pytest.raises(AILabError) as info:
            await task.result(timeout=FAR)
        assert fake_time.now - submitted <= 5.0 + 1e-6  # at the first poll, not at timeout
        assert client.tracker.pending == 0
    assert not isinstance(info.value, (TaskTimeoutError, TaskFailedError))
    assert isinstance(info.value.__cause__, KeyError)
    assert "T1" in str(info.value)
    assert info.value.retryable  # a rerun tracks it again rather than keeping it failed


async def test_a_crashing_scheduler_fails_every_waiter(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    class BrokenLimiter:
        """A custom limiter with a bug in the call the scheduler makes."""

        rate_limited_count = 0
        configured_rate = 10.0

        def current_rate(self) -> float:
            return 10.0

        def local_rate(self) -> float:
            raise ZeroDivisionError("bug")

        async def acquire(self) -> float:
            return fake_time.now

        def on_success(self) -> None:
            pass

        def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
            pass

    FakeBeautyAPI(mocked, fake_time, [])
    async with make_client(fake_time, rate_limit=BrokenLimiter()) as client:
        handles = [client.track(f"R{i}") for i in range(3)]
        outcomes = await asyncio.gather(
            *(h.result(timeout=FAR) for h in handles), return_exceptions=True
        )
        assert fake_time.now == fake_time.start  # at once
        assert client.tracker.pending == 0
        assert tracker_tasks() == []
    for outcome in outcomes:
        assert isinstance(outcome, AILabError)
        assert not isinstance(outcome, TaskTimeoutError)
        assert isinstance(outcome.__cause__, ZeroDivisionError)


# -- 6. timeouts are validated; 0 checks now --------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, -1, "5", True, [5]])
async def test_a_bad_wait_timeout_is_a_validation_error(
    mocked: aioresponses, fake_time: FakeTime, bad: Any
) -> None:
    FakeBeautyAPI(mocked, fake_time, [1.0])
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(ValidationError, match="timeout") as info:
            await task.result(timeout=bad)
        assert isinstance(info.value, ValueError)
        await task.result(timeout=FAR)  # the task itself is unaffected


async def test_timeout_zero_checks_without_waiting(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    FakeBeautyAPI(mocked, fake_time, [1.0])
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE)
        sleeps = len(fake_time.sleeps)
        with pytest.raises(TaskTimeoutError, match="without waiting"):
            await task.result(timeout=0)
        assert len(fake_time.sleeps) == sleeps
        assert fake_time.now == fake_time.start
        await task.result(timeout=FAR)
        result = await task.result(timeout=0)
    assert result.task_id == "T1"


@pytest.mark.parametrize("bad", [math.nan, -5.0, "60", False])
async def test_a_bad_default_wait_timeout_is_a_configuration_error(
    fake_time: FakeTime, bad: Any
) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        TaskTracker(
            dispatcher=None,  # type: ignore[arg-type]
            limiter=None,  # type: ignore[arg-type]
            max_concurrency=4,
            config=PollingConfig(),
            clock=fake_time.clock,
            sleep=fake_time.sleep,
            wait_timeout=bad,
            rand=lambda: 0.5,
        )


# -- 7. submitted_at is validated by the tracker too ------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [dt.datetime(2026, 1, 1, 12, 0), "2026-01-01T12:00:00+00:00", 1_700_000_000.0],
    ids=["naive", "string", "epoch"],
)
async def test_track_refuses_a_submitted_at_that_is_not_an_aware_datetime(
    mocked: aioresponses, fake_time: FakeTime, bad: Any
) -> None:
    async with make_client(fake_time) as client:
        with pytest.raises(ValidationError, match="submitted_at"):
            client._tracker.track("R1", submitted_at=bad)
        assert client.tracker.pending == 0
    assert mocked.requests == {}


async def test_a_submitted_at_in_the_future_counts_as_now(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [])
    api.done_at["R1"] = fake_time.now + 1.0
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=3)
    async with make_client(fake_time) as client:
        result = await client._tracker.track("R1", submitted_at=future).result(timeout=FAR)
    assert result.task_id == "R1"
    # Placed like a fresh one: the warm-up's 0.5 s, 0.75 s, 1.125 s.
    assert api.poll_times == [pytest.approx(fake_time.start + o) for o in (0.5, 0.75, 1.125)]


async def test_track_refuses_a_blank_task_id(fake_time: FakeTime) -> None:
    async with make_client(fake_time) as client:
        for bad in ("", "   ", None, 42):
            with pytest.raises(ValidationError, match="task_id"):
                client._tracker.track(bad)  # type: ignore[arg-type]


# -- 8. poll failures are logged with the task id, never with a result URL --------------------


async def test_poll_failures_log_the_task_id_but_never_a_result_url(
    mocked: aioresponses,
    fake_time: FakeTime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0, 1.0])
    api.query_override["T1"] = [answer(503, "ERROR_INSUFFICIENT_RESOURCES")]
    caplog.set_level(logging.DEBUG, logger="ailab_async")

    def leaky(envelope: protocol.Envelope, *, task_id: str | None = None) -> Any:
        raise KeyError(SECRET_URL)

    async with make_client(fake_time, max_retries=0) as client:
        await (await client.submit_smart_beauty(IMAGE)).result(timeout=FAR)
        transient = [r for r in caplog.records if "T1" in r.getMessage()]
        assert transient  # the transient failure names its task
        monkeypatch.setattr(protocol, "parse_image_result", leaky)
        with pytest.raises(AILabError) as info:
            await (await client.submit_smart_beauty(IMAGE)).result(timeout=FAR)
    crash = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert crash
    assert any("T2" in r.getMessage() for r in crash)
    assert "s3cret" not in caplog.text
    assert "s3cret" not in str(info.value)
