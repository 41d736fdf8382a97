"""The task tracker on an injected clock: scheduling, learning, failures, waiters, shutdown."""

from __future__ import annotations

import asyncio
import gc
import random
import re
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from ailab_async import (
    AILabClient,
    ClientClosedError,
    ImageRejectedError,
    PollingConfig,
    TaskFailedError,
    TaskHandle,
    TaskStatus,
    TaskTimeoutError,
    TrackerStats,
    ValidationError,
)

from .conftest import (
    BASE_URL,
    BEAUTY_URL,
    TEST_KEY,
    FakeTime,
    envelope,
    error_envelope,
    png_bytes,
)

QUERY_PATTERN = re.compile(r"^http://127\.0\.0\.1:9/api/common/query-async-task-result\?.*$")


class FakeBeautyAPI:
    """Smart-beauty submit and query, with task durations on the fake clock."""

    def __init__(self, mocked: aioresponses, time: FakeTime, durations: list[float]) -> None:
        self.time = time
        self.durations = list(durations)
        self.done_at: dict[str, float] = {}
        self.detected_at: dict[str, float] = {}
        self.polls: dict[str, int] = {}
        self.poll_times: list[float] = []
        #: Scripted answers per task, used first: a response, or an exception to raise
        #: (aiohttp turns it into a transport failure).
        self.query_override: dict[str, list[CallbackResult | Exception]] = {}
        self.submits = 0
        mocked.post(BEAUTY_URL, callback=self.submit, repeat=True)
        mocked.get(QUERY_PATTERN, callback=self.query, repeat=True)

    def submit(self, url: URL, **kwargs: Any) -> CallbackResult:
        self.submits += 1
        task_id = f"T{self.submits}"
        self.done_at[task_id] = self.time.now + self.durations.pop(0)
        return CallbackResult(payload=envelope(None, task_type="async", task_id=task_id))

    def query(self, url: URL, **kwargs: Any) -> CallbackResult:
        task_id = kwargs["params"][0][1]
        self.polls[task_id] = self.polls.get(task_id, 0) + 1
        self.poll_times.append(self.time.now)
        scripted = self.query_override.get(task_id)
        if scripted:
            answer = scripted.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if task_id not in self.done_at:
            return CallbackResult(
                status=400, payload=error_envelope(400, "ERROR_INVALID_PARAMETER")
            )
        if self.time.now >= self.done_at[task_id]:
            self.detected_at.setdefault(task_id, self.time.now)
            return CallbackResult(
                payload=envelope({"image_url": f"https://r.example/{task_id}.png"}, task_status=2)
            )
        started = self.done_at[task_id] - 1.0 <= self.time.now
        return CallbackResult(payload=envelope(None, task_status=1 if started else 0))


def make_client(time: FakeTime, **kwargs: Any) -> AILabClient:
    return AILabClient(
        api_key=TEST_KEY,
        base_url=BASE_URL,
        clock=time.clock,
        sleep=time.sleep,
        random=lambda: 0.5,
        **kwargs,
    )


def tracker_stats(client: AILabClient) -> TrackerStats:
    """What ``client.tracker`` reports, read from the private tracker itself."""
    return client._tracker.stats()


def tracker_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "ailab-async task tracker"]


IMAGE = png_bytes(300, 300)


async def test_submit_then_await_polls_geometrically_before_evidence(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [3.0])
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE, beauty_level=0.7, multi_face=True)
        assert task.task_id == "T1"
        assert not task.done()
        result = await task
    assert result.task_id == "T1"
    assert result.image_url == "https://r.example/T1.png"
    # 0.5 s, then each 1.5x the age: found at 3.8 s, not at the 5 s fallback.
    offsets = [0.5, 0.75, 1.125, 1.6875, 2.53125, 3.796875]
    assert api.polls == {"T1": len(offsets)}
    assert api.poll_times == [pytest.approx(fake_time.start + o) for o in offsets]
    assert task.done()
    assert task.status is TaskStatus.SUCCEEDED


async def test_many_tasks_share_one_scheduler(mocked: aioresponses, fake_time: FakeTime) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [2.0 + i % 4 for i in range(40)])
    async with make_client(fake_time, max_concurrency=16) as client:
        tasks = [await client.submit_smart_beauty(IMAGE) for _ in range(40)]
        await asyncio.sleep(0)
        assert len(tracker_tasks()) == 1
        assert client.tracker.pending == 40
        results = await asyncio.gather(*(t.result() for t in tasks))
        assert {r.task_id for r in results} == set(api.done_at)
        assert client.tracker.pending == 0
        for _ in range(3):
            await asyncio.sleep(0)
        assert tracker_tasks() == []  # idle once nothing is pending
    assert api.submits == 40


async def test_learning_beats_fixed_polling(mocked: aioresponses, fake_time: FakeTime) -> None:
    rng = random.Random(7)
    durations = [rng.uniform(1.0, 6.0) for _ in range(160)]
    api = FakeBeautyAPI(mocked, fake_time, durations)
    lags: list[float] = []
    polls: list[int] = []
    async with make_client(fake_time) as client:
        for _ in range(160):
            task = await client.submit_smart_beauty(IMAGE)
            await task
            lags.append(api.detected_at[task.task_id] - api.done_at[task.task_id])
            polls.append(api.polls[task.task_id])
        stats = tracker_stats(client)
        assert stats.plan  # a learned schedule is in use
        assert stats.observations >= client._tracker.planner.config.min_observations
    learned_lag = sum(lags[60:]) / 100
    learned_polls = sum(polls[60:]) / 100
    assert learned_lag <= 1.0
    assert learned_polls <= 2.2
    fixed_lag = sum(5.0 - d % 5.0 for d in durations[60:]) / 100  # polls every 5 s
    assert learned_lag < fixed_lag / 2


async def test_transient_poll_failures_are_retried_without_failing(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    api.query_override["T1"] = [
        CallbackResult(status=503, payload=error_envelope(503, "ERROR_INSUFFICIENT_RESOURCES")),
        CallbackResult(status=502, body=b"<html>bad gateway</html>"),
    ]
    async with make_client(fake_time, max_retries=0) as client:
        result = await (await client.submit_smart_beauty(IMAGE))
    assert result.task_id == "T1"
    assert api.polls["T1"] == 3


async def test_terminal_error_fails_the_task_with_its_code_and_ids(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    api.query_override["T1"] = [
        CallbackResult(status=422, payload=error_envelope(422, "ERROR_NO_FACE_IN_FILE"))
    ]
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(TaskFailedError) as info:
            await task
    error = info.value
    assert (error.task_id, error.code, error.status) == ("T1", "ERROR_NO_FACE_IN_FILE", 422)
    assert (error.request_id, error.log_id) == ("req-err", "log-err")
    assert error.retryable is False
    assert isinstance(error.__cause__, ImageRejectedError)
    assert task.status is TaskStatus.FAILED
    assert repr(task) == "TaskHandle(task_id='T1', status=failed)"


async def test_unknown_task_status_fails_the_task(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1.0])
    api.query_override["T1"] = [CallbackResult(payload=envelope(None, task_status=3))]
    async with make_client(fake_time) as client:
        with pytest.raises(TaskFailedError, match="task_status=3"):
            await (await client.submit_smart_beauty(IMAGE))


async def test_wait_timeout_keeps_the_task_id_and_the_task_goes_on(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    FakeBeautyAPI(mocked, fake_time, [100.0])
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(TaskTimeoutError) as info:
            await task.result(timeout=30)
        assert info.value.task_id == task.task_id
        assert not task.done()
        result = await task.result(timeout=1000)  # the same task, waited for again
        assert result.task_id == task.task_id


async def test_smart_beauty_timeout_uses_client_default(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    FakeBeautyAPI(mocked, fake_time, [100.0])
    async with make_client(fake_time, task_timeout=10) as client:
        with pytest.raises(TaskTimeoutError):
            await client.smart_beauty(IMAGE)


async def test_cancelling_one_waiter_leaves_the_others(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [3.0])
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE)
        first = asyncio.create_task(task.result())
        second = asyncio.create_task(task.result())
        await asyncio.sleep(0)
        first.cancel()
        result = await second
        with pytest.raises(asyncio.CancelledError):
            await first
    assert result.task_id == "T1"
    # One poll stream shared by every waiter: the warm-up's 6 polls up to 3.8 s, once.
    assert api.polls == {"T1": 6}


async def test_track_returns_the_same_handle_and_resumes_by_id(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [4.0])
    async with make_client(fake_time) as client:
        submitted = await client.submit_smart_beauty(IMAGE)
        assert client.track(submitted.task_id) is submitted
    # A new client (a restart) picks the task up by id and polls it at once.
    async with make_client(fake_time) as again:
        handle = again.track("T1")
        assert again.track("T1") is handle
        result = await handle
    assert result.task_id == "T1"
    assert api.submits == 1


async def test_unknown_task_id_is_answered_with_a_typed_failure(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    FakeBeautyAPI(mocked, fake_time, [])
    async with make_client(fake_time) as client:
        with pytest.raises(TaskFailedError) as info:
            await client.track("nope")
    assert info.value.code == "ERROR_INVALID_PARAMETER"


async def test_close_with_pending_tasks_answers_every_waiter(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    FakeBeautyAPI(mocked, fake_time, [1000.0, 1000.0])
    client = make_client(fake_time)
    tasks = [await client.submit_smart_beauty(IMAGE) for _ in range(2)]
    waiters = [asyncio.create_task(t.result(timeout=None)) for t in tasks]
    await asyncio.sleep(0)
    await client.aclose()
    for waiter, task in zip(waiters, tasks, strict=False):
        with pytest.raises(ClientClosedError, match=task.task_id):
            await waiter
    assert tracker_tasks() == []
    with pytest.raises(ClientClosedError):
        client.track("T1")


async def test_polls_keep_to_their_share_of_the_rate_limit(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [0.0] * 20)
    async with make_client(
        fake_time, rate_limit=10, max_concurrency=32, polling=PollingConfig(poll_share=0.5)
    ) as client:
        handles = [client.track(f"T{i}") for i in range(1, 21)]
        api.done_at.update({f"T{i}": 0.0 for i in range(1, 21)})
        await asyncio.gather(*(h.result() for h in handles))
    # 20 polls at half of 10/s: at least 0.2 s apart, so at least 3.8 s from first to last.
    assert len(api.poll_times) == 20
    assert max(api.poll_times) - min(api.poll_times) >= 3.8 - 1e-6


async def test_a_new_plan_leaves_a_poll_held_back_past_its_time_due(fake_time: FakeTime) -> None:
    """A poll held back past its time (by the poll rate, or the slots for polls) is still
    the plan's poll: a re-plan while it waits leaves it due. Re-placed from now, it moved to
    the new plan's next point after now, so in a burst under a rate limit (hundreds of polls
    due at once, a re-plan every few finishes) every task spent fewer polls than counted."""
    async with make_client(fake_time) as client:
        tracker = client._tracker
        planner = tracker.planner
        rng = random.Random(3)
        for _ in range(60):
            duration = rng.uniform(1.0, 6.0)
            planner.observe(max(0.0, duration - rng.uniform(0.1, 1.0)), duration)
        handle = tracker.track("T1", fresh=True)  # placed; the scheduler has not run yet
        tracked = tracker._pending["T1"]
        first = planner.plan[0]
        tracked.last_not_done = first  # its first poll saw it running
        tracker._schedule(
            tracked,
            tracked.submitted_at + planner.next_poll(first + 0.01, first, tracked.lane),
        )
        due = tracked.next_poll_at
        fake_time.now = due + 0.05  # due, but not sent yet
        tracker._replace_pending(fake_time.now, planner)
        assert tracked.next_poll_at == due
        del handle


async def test_submit_validates_before_sending(mocked: aioresponses, fake_time: FakeTime) -> None:
    async with make_client(fake_time) as client:
        with pytest.raises(ValidationError):
            await client.submit_smart_beauty(IMAGE, beauty_level=1.5)
        with pytest.raises(ValidationError):
            await client.submit_smart_beauty(png_bytes(4096, 16))
    assert mocked.requests == {}


async def test_a_task_nobody_can_read_any_more_is_no_longer_polled(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [1000.0, 1000.0])
    async with make_client(fake_time) as client:
        kept = await client.submit_smart_beauty(IMAGE)
        dropped = await client.submit_smart_beauty(IMAGE)
        assert client.tracker.pending == 2
        del dropped
        gc.collect()
        assert client.tracker.pending == 1
        with pytest.raises(TaskTimeoutError):
            await kept.result(timeout=60)
    assert api.polls.get("T2", 0) == 0
    assert api.polls["T1"] >= 2


async def test_polls_take_their_share_of_this_process_part_of_a_shared_budget(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    class SharedLimiter:
        """Forty requests/s for the account, ten of them this process's."""

        rate_limited_count = 0
        configured_rate = 40.0

        def current_rate(self) -> float:
            return 40.0

        def local_rate(self) -> float:
            return 10.0

        async def acquire(self) -> float:
            return fake_time.now

        def on_success(self) -> None:
            pass

        def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
            pass

    api = FakeBeautyAPI(mocked, fake_time, [])
    async with make_client(
        fake_time, rate_limit=SharedLimiter(), polling=PollingConfig(poll_share=0.5)
    ) as client:
        handles = [client.track(f"T{i}") for i in range(1, 11)]
        api.done_at.update({f"T{i}": 0.0 for i in range(1, 11)})
        await asyncio.gather(*(h.result() for h in handles))
    # Half of this process's 10/s: 0.2 s apart (half of the account's 40/s would be 0.05 s).
    assert max(api.poll_times) - min(api.poll_times) >= 9 * 0.2 - 1e-6


async def test_handle_status_follows_the_task(mocked: aioresponses, fake_time: FakeTime) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [6.0, 1.0])
    api.query_override["T2"] = [CallbackResult(payload=envelope(None, task_status=3))]
    async with make_client(fake_time) as client:
        task = await client.submit_smart_beauty(IMAGE)
        seen = [task.status]
        with pytest.raises(TaskTimeoutError):
            await task.result(timeout=5.8)  # polled at 5.7 s: started, not finished
        seen.append(task.status)
        assert repr(task) == "TaskHandle(task_id='T1', status=processing)"
        await task
        seen.append(task.status)
        failed = await client.submit_smart_beauty(IMAGE)
        with pytest.raises(TaskFailedError):
            await failed
        seen.append(failed.status)
    assert seen == [
        TaskStatus.QUEUED,
        TaskStatus.PROCESSING,
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
    ]


async def test_the_tracker_reports_a_snapshot(mocked: aioresponses, fake_time: FakeTime) -> None:
    FakeBeautyAPI(mocked, fake_time, [1.0, 1000.0])
    async with make_client(fake_time) as client:
        assert tracker_stats(client) == TrackerStats()
        await (await client.submit_smart_beauty(IMAGE))
        pending = await client.submit_smart_beauty(IMAGE)
        stats = tracker_stats(client)
        # The 1 s task took 3 warm-up polls (0.5, 0.75, 1.125 s); the other none yet.
        assert (stats.pending, stats.polls_sent, stats.plan, stats.observations) == (1, 3, (), 1)
        assert not pending.done()


async def test_client_tracker_is_the_public_snapshot(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    async with make_client(fake_time) as client:
        assert isinstance(client.tracker, TrackerStats)
        assert client.tracker == tracker_stats(client)


def poller_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "ailab-async task poller"]


async def test_polls_run_on_a_few_long_lived_workers(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    polled_by: set[asyncio.Task[Any] | None] = set()

    class SpyAPI(FakeBeautyAPI):
        def query(self, url: URL, **kwargs: Any) -> CallbackResult:
            polled_by.add(asyncio.current_task())  # the task that sends the poll
            return super().query(url, **kwargs)

    api = SpyAPI(mocked, fake_time, [2.0 + i % 4 for i in range(40)])
    async with make_client(fake_time, max_concurrency=16) as client:
        tasks = [await client.submit_smart_beauty(IMAGE) for _ in range(40)]
        await asyncio.gather(*(t.result() for t in tasks))
        for _ in range(3):
            await asyncio.sleep(0)
        assert poller_tasks() == []  # the workers end with the scheduler
    polls = sum(api.polls.values())
    cap = client._tracker._max_polls_in_flight
    # Every poll ran on one of at most ``cap`` workers, not on a task of its own.
    assert polls > 3 * cap
    assert 1 <= len(polled_by) <= cap
    assert all(t is not None and t.get_name() == "ailab-async task poller" for t in polled_by)


async def test_idle_on_the_real_clock_uses_one_timer_and_cancels_it() -> None:
    client = AILabClient(api_key=TEST_KEY, base_url=BASE_URL)  # asyncio.sleep: the real clock
    tracker = client._tracker
    loop = asyncio.get_running_loop()
    timers: list[asyncio.TimerHandle] = []
    call_later = loop.call_later

    def spy(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        timers.append(call_later(delay, callback, *args))
        return timers[-1]

    tasks_before = len(asyncio.all_tasks())
    try:
        loop.call_later = spy  # type: ignore[method-assign]
        loop.call_soon(tracker._wakeup.set)
        await tracker._idle(3600.0)  # a change wakes it long before the timer
        assert len(asyncio.all_tasks()) == tasks_before  # no helper tasks
    finally:
        del loop.call_later
        await client.aclose()
    assert len(timers) == 1
    assert timers[0].when() - loop.time() > 3000
    assert timers[0].cancelled()
    assert tracker._timer is None


async def test_on_the_real_clock_the_timer_itself_launches_due_polls(
    mocked: aioresponses, fake_time: FakeTime
) -> None:
    api = FakeBeautyAPI(mocked, fake_time, [])
    api.done_at["T1"] = fake_time.now + 3.0
    # The clock is fake (so nothing waits for real), the sleeper is asyncio.sleep.
    client = AILabClient(
        api_key=TEST_KEY, base_url=BASE_URL, clock=fake_time.clock, random=lambda: 0.5
    )
    async with client:
        tracker = client._tracker
        handle = client.track("T1")
        for _ in range(500):  # the first poll goes out at once and sees it unfinished
            await asyncio.sleep(0)
            if tracker._timer is not None:
                break
        timer = tracker._timer
        assert timer is not None
        assert api.polls == {"T1": 1}
        assert timer.when() - asyncio.get_running_loop().time() > 0.1  # not due yet
        fake_time.now += PollingConfig().fallback_interval
        timer.cancel()
        tracker._on_timer()  # what the timer does when it fires
        result = await handle.result(timeout=None)
    assert result.task_id == "T1"
    assert api.polls == {"T1": 2}


class _Unlimited:
    """A rate limiter that never waits (so polls are never spaced for the rate)."""

    rate_limited_count = 0
    configured_rate = None

    def __init__(self, fake_time: FakeTime) -> None:
        self._clock = fake_time.clock

    def current_rate(self) -> float | None:
        return None

    async def acquire(self) -> float:
        return self._clock()

    def on_success(self, sent_at: float) -> None:
        del sent_at

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        del sent_at, retry_after


@pytest.mark.parametrize(("offset", "together"), [(0.02, True), (0.045, True), (0.1, False)])
async def test_on_the_real_clock_polls_due_close_together_go_together(
    mocked: aioresponses, fake_time: FakeTime, offset: float, together: bool
) -> None:
    # One timer and one launch for polls a few hundredths of a second apart: their next
    # polls are then due together too, so a crowd of tasks is polled in a few groups
    # rather than one event-loop wake-up per poll.
    api = FakeBeautyAPI(mocked, fake_time, [])
    api.done_at["T1"] = api.done_at["T2"] = fake_time.now + 1000.0
    client = AILabClient(
        api_key=TEST_KEY,
        base_url=BASE_URL,
        clock=fake_time.clock,
        random=lambda: 0.5,
        rate_limit=_Unlimited(fake_time),  # no spacing between polls for the rate
    )
    async with client:
        tracker = client._tracker

        async def first_poll_of(task_id: str) -> TaskHandle:
            handle = client.track(task_id)
            for _ in range(500):
                await asyncio.sleep(0)
                if api.polls.get(task_id) == 1 and tracker._polls_in_flight == 0:
                    break
            assert api.polls.get(task_id) == 1
            return handle

        handles = [await first_poll_of("T1")]
        fake_time.now += offset
        handles.append(await first_poll_of("T2"))
        first_due = min(t.next_poll_at for t in tracker._pending.values())
        fake_time.now = first_due
        tracker._on_timer()
        for _ in range(500):
            await asyncio.sleep(0)
            if tracker._polls_in_flight == 0 and api.polls["T1"] == 2:
                break
    assert api.polls["T1"] == 2
    assert api.polls["T2"] == (2 if together else 1)
    del handles
