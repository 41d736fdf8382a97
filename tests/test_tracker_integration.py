"""The task tracker end to end on the simulator: many concurrent tasks, failures, resuming.

Issue 4: 500 concurrent smart-beauty tasks, some failing, each end in a result or the right
typed error, and nothing is submitted twice; a second client picks up by ``task_id`` what a
closed one left pending. Task durations and poll intervals are shrunk so this runs in seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from ailab_async import (
    AILabClient,
    ClientClosedError,
    ImageResult,
    PollingConfig,
    TaskFailedError,
    TaskHandle,
)
from ailab_async.testing.simulator import (
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)

TASKS = 500
FAILURE_SHARE = 0.1
IMAGE_SIDE = 64
TRACKER_TASK_NAME = "ailab-async task tracker"
FAILURE_CODE = "ERROR_NO_FACE_IN_FILE"  # the simulator's default failure_code


def fast_tasks(low: float, high: float, *, failure_report: str = "envelope") -> SimulatorConfig:
    return SimulatorConfig(
        seed=4,
        tasks=TaskBehaviour(
            duration=Uniform(low, high),
            failure_share=FAILURE_SHARE,
            failure_report=failure_report,  # type: ignore[arg-type]
        ),
    )


def fast_client(sim: Simulator) -> AILabClient:
    """A client polling at a tenth of a second until it has learned the task durations."""
    return AILabClient(
        api_key=sim.api_key,
        base_url=sim.url,
        max_concurrency=32,
        task_timeout=60.0,
        polling=PollingConfig(fallback_interval=0.1, min_interval=0.05),
    )


def distinct_images(count: int) -> list[bytes]:
    """Small portraits, all different, so ``submits_per_image`` tells tasks apart."""
    images = [sample_image(IMAGE_SIDE, IMAGE_SIDE, seed=seed) for seed in range(count)]
    assert len({hashlib.sha256(image).digest() for image in images}) == count
    return images


def tracker_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == TRACKER_TASK_NAME]


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    async with Simulator(request.param) as simulator:
        yield simulator


@pytest.mark.parametrize(
    ("sim", "failure_status", "failure_code"),
    [
        # A failed task's query answers the simulator's error envelope (422 + its code) ...
        pytest.param(fast_tasks(0.05, 0.4), 422, FAILURE_CODE, id="error-envelope"),
        # ... or 200 with task_status 3, what the official SDK's wait_for_task calls failure.
        pytest.param(
            fast_tasks(0.05, 0.4, failure_report="status"), 200, "TASK_STATUS_3", id="status-3"
        ),
    ],
    indirect=["sim"],
)
async def test_500_concurrent_tasks_each_end_in_a_result_or_its_typed_failure(
    sim: Simulator, failure_status: int, failure_code: str
) -> None:
    images = distinct_images(TASKS)
    async with fast_client(sim) as client:
        handles = await asyncio.gather(*(client.submit_smart_beauty(image) for image in images))
        outcomes = await asyncio.gather(
            *(handle.result() for handle in handles), return_exceptions=True
        )
        assert client.tracker.pending == 0

        results: list[ImageResult] = []
        failed_ids: set[str] = set()
        for handle, outcome in zip(handles, outcomes, strict=True):
            remote = sim.state.tasks[handle.task_id]
            if remote.failure_code is None:
                assert isinstance(outcome, ImageResult), (handle.task_id, outcome)
                assert outcome.task_id == handle.task_id
                assert outcome.image_url.startswith(f"{sim.url}/results/")
                results.append(outcome)
            else:
                assert isinstance(outcome, TaskFailedError), (handle.task_id, outcome)
                assert outcome.task_id == handle.task_id
                assert outcome.code == failure_code
                assert outcome.status == failure_status
                assert outcome.request_id
                failed_ids.add(handle.task_id)
            assert handle.done()

        # Some of each, and exactly as many failures as the simulator decided.
        assert 0 < len(failed_ids) < TASKS
        assert len(failed_ids) == sum(t.failure_code is not None for t in sim.state.tasks.values())
        assert len(results) + len(failed_ids) == TASKS

        # Every task paid once, each seen finished by exactly one first query.
        stats = sim.stats
        assert stats.count("smart-beauty", "OK") == TASKS
        assert stats.count("smart-beauty") == TASKS
        assert stats.duplicate_submits() == 0
        assert len(stats.submits_per_image) == TASKS
        assert set(stats.submits_per_image.values()) == {1}
        task_ids = {handle.task_id for handle in handles}
        assert len(task_ids) == TASKS
        assert set(stats.detection_lag) == task_ids
        assert set(stats.polls_per_task) == task_ids
        assert client.tracker.polls_sent == sum(stats.polls_per_task.values())

        # The result URLs serve real images of the uploaded size.
        for result in results[:3]:
            data = await client.download(result)
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "PNG"
                assert image.size == (IMAGE_SIDE, IMAGE_SIDE)
    assert client.closed
    assert client.tracker.pending == 0
    assert tracker_tasks() == []


@pytest.mark.parametrize("sim", [fast_tasks(0.3, 3.0)], indirect=True)
async def test_second_client_resumes_by_task_id_what_a_closed_client_left_pending(
    sim: Simulator,
) -> None:
    count = 40
    images = distinct_images(count)
    first = fast_client(sim)
    try:
        handles: list[TaskHandle] = await asyncio.gather(
            *(first.submit_smart_beauty(image) for image in images)
        )
        waiters = [asyncio.ensure_future(handle.result()) for handle in handles]
        # Close mid-way: once about a quarter of the tasks have ended for the first client.
        pending: set[asyncio.Future[ImageResult]] = set(waiters)
        while len(pending) > 3 * count // 4:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await first.aclose()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert tracker_tasks() == []

    left_behind: list[str] = []
    for handle, outcome in zip(handles, outcomes, strict=True):
        assert isinstance(outcome, ImageResult | TaskFailedError | ClientClosedError), outcome
        if isinstance(outcome, ClientClosedError):
            assert handle.task_id in str(outcome)  # the error says which task to pick up
            left_behind.append(handle.task_id)
    assert left_behind  # the close really happened mid-way
    with pytest.raises(ClientClosedError):
        first.track(left_behind[0])

    async with fast_client(sim) as second:
        resumed = [second.track(task_id) for task_id in left_behind]
        finals = await asyncio.gather(*(h.result() for h in resumed), return_exceptions=True)
        assert second.tracker.pending == 0
        assert second.tracker.polls_sent >= len(left_behind)  # each one asked again
    for task_id, final in zip(left_behind, finals, strict=True):
        if sim.state.tasks[task_id].failure_code is None:
            assert isinstance(final, ImageResult), (task_id, final)
        else:
            assert isinstance(final, TaskFailedError), (task_id, final)
            assert final.code == FAILURE_CODE
        assert final.task_id == task_id

    # Nothing was submitted again: one paid upload per image.
    assert sim.stats.count("smart-beauty") == count
    assert sim.stats.duplicate_submits() == 0
    assert set(sim.stats.submits_per_image.values()) == {1}
    assert tracker_tasks() == []
