"""The inspection counters tests rely on."""

from __future__ import annotations

import asyncio
import hashlib

from ailab_async.testing.simulator import (
    Fixed,
    Latency,
    ManualClock,
    SimulatorConfig,
    TaskBehaviour,
)
from tests.simulator._helpers import SimFactory


async def test_counters_per_endpoint_and_outcome(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    await api.skin(face)
    await api.skin(face, key="bad")
    await api.skin(face, retouch_degree=9)
    await api.credits()
    stats = api.stats
    assert stats.requests[("smart-skin", "OK")] == 1
    assert stats.requests[("smart-skin", "ERROR_USER_NOT_EXISTS")] == 1
    assert stats.requests[("smart-skin", "ERROR_INVALID_PARAMETER")] == 1
    assert stats.count("smart-skin") == 3
    assert stats.count(outcome="OK") == 2
    assert stats.count() == 4


async def test_max_concurrent_requests_seen(make_sim: SimFactory) -> None:
    api = await make_sim(SimulatorConfig(latency=Latency(query_credits=Fixed(0.1))))
    await asyncio.gather(*(api.credits() for _ in range(5)))
    assert api.stats.max_concurrent == 5
    assert api.stats.in_flight == 0


async def test_submits_per_distinct_image_reveal_duplicate_paid_work(
    make_sim: SimFactory, faces: list[bytes]
) -> None:
    api = await make_sim()
    await api.skin(faces[0])
    await api.beauty(faces[0])
    await api.beauty(faces[1])
    await api.skin(b"rejected, not billed")
    digest = hashlib.sha256(faces[0]).hexdigest()
    assert api.stats.submits_per_image[digest] == 2
    assert len(api.stats.submits_per_image) == 2
    assert api.stats.duplicate_submits() == 1


async def test_polls_per_task_and_detection_lag(
    make_sim: SimFactory, face: bytes, clock: ManualClock
) -> None:
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(10.0)))
    api = await make_sim(config, clock=clock)
    task_id = (await api.beauty(face)).json["task_id"]
    for _ in range(3):
        await api.query(task_id)
        clock.advance(4.0)  # polls at 0, 4, 8; the task completes at 10
    await api.query(task_id)  # at 12: sees it done, 2 s late
    clock.advance(5.0)
    await api.query(task_id)  # later polls do not change the lag
    assert api.stats.polls_per_task[task_id] == 5
    assert api.stats.detection_lag == {task_id: 2.0}


async def test_reset_clears_everything(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    await api.skin(face)
    await api.beauty(face)
    api.stats.reset()
    assert api.stats.count() == 0
    assert not api.stats.submits_per_image
    assert api.stats.max_concurrent == 0
    assert api.stats.credits_spent == 0
    await api.credits()
    assert api.stats.count() == 1
