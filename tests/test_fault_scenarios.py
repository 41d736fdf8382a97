"""Hundreds of mixed calls against a misbehaving simulator: nothing hangs, nothing is lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ailab_async import AILabClient, AILabError, ImageResult, PollingConfig
from ailab_async.testing.simulator import (
    Faults,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)


@pytest.mark.parametrize("after_processing_share", [0.0, 0.5])
async def test_mixed_calls_under_faults_all_settle_without_unaccounted_duplicates(
    after_processing_share: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ailab_async")
    faults = Faults(
        error_500=0.03,
        error_502=0.03,
        error_503=0.03,
        error_504=0.03,
        connection_reset=0.04,
        html_502=0.04,
        truncated_json=0.04,
        stall=0.03,
        stall_seconds=4.0,
        after_processing_share=after_processing_share,
    )
    config = SimulatorConfig(
        faults=faults,
        tasks=TaskBehaviour(duration=Uniform(0.02, 0.2)),
        seed=11,
    )
    images = [sample_image(160, 160, seed=i) for i in range(240)]
    async with Simulator(config) as sim:
        async with AILabClient(
            api_key=sim.api_key,
            base_url=sim.url,
            max_concurrency=16,
            # Only a stall outlasts it: at 0.5 s, answers slowed by a busy machine timed out
            # too, and their retries were duplicates the assertions below do not expect.
            timeout=2.0,
            max_retries=8,
            deadline=30.0,
            backoff_initial=0.01,
            backoff_max=0.1,
            polling=PollingConfig(fallback_interval=0.05, min_interval=0.01),
        ) as client:

            async def one(index: int) -> ImageResult:
                if index % 3 == 0:
                    return await client.smart_beauty(images[index], timeout=30)
                return await client.smart_skin(images[index])

            outcomes = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(len(images))), return_exceptions=True),
                timeout=90,
            )
            stats = client.stats
        injected = sum(sim.stats.faults.values())
        duplicates = sim.stats.duplicate_submits()

    failures = [o for o in outcomes if not isinstance(o, ImageResult)]
    for failure in failures:
        assert isinstance(failure, AILabError), repr(failure)
    # With eight retries and ~27% faults, everything gets through: nothing is lost.
    assert failures == []
    assert injected > 20  # the faults really happened
    # Paid work is only ever duplicated by a retry the client knew might double-bill.
    assert duplicates <= stats.ambiguous_retries
    if after_processing_share == 0.0:
        assert duplicates == 0
    else:
        assert duplicates > 0
    assert stats.in_flight == 0
    assert sim.api_key not in caplog.text
