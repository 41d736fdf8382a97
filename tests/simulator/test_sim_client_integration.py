"""Our own client against the simulator: the protocol end to end, faults included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ailab_async import AILabClient, InsufficientCreditsError, ServerError
from ailab_async.testing.simulator import Credits, Faults, Simulator, SimulatorConfig, sample_image


async def no_wait(_: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    config = getattr(request, "param", SimulatorConfig())
    async with Simulator(config) as simulator:
        yield simulator


def client_for(sim: Simulator, **options: object) -> AILabClient:
    return AILabClient(api_key=sim.api_key, base_url=sim.url, sleep=no_wait, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sim", [SimulatorConfig(seed=1, faults=Faults(error_503=0.3, error_502=0.2))], indirect=True
)
async def test_client_retries_injected_5xx_until_success(sim: Simulator) -> None:
    async with client_for(sim, max_retries=10) as client:
        for seed in range(6):
            await client.smart_skin(sample_image(160, 160, seed=seed))
    assert sim.stats.count("smart-skin", "OK") == 6
    assert sim.stats.count("smart-skin") > 6  # some attempts were faulted and retried


@pytest.mark.parametrize("sim", [SimulatorConfig(faults=Faults(error_504=1.0))], indirect=True)
async def test_client_gives_up_after_max_retries(sim: Simulator) -> None:
    async with client_for(sim, max_retries=2) as client:
        with pytest.raises(ServerError):
            await client.credits()
    assert sim.stats.count("query-credits") == 3


@pytest.mark.parametrize("sim", [SimulatorConfig(credits=Credits(1))], indirect=True)
async def test_client_does_not_retry_exhausted_credits(sim: Simulator) -> None:
    async with client_for(sim) as client:
        await client.smart_skin(sample_image(160, 160))
        with pytest.raises(InsufficientCreditsError):
            await client.smart_skin(sample_image(160, 160, seed=2))
    assert sim.stats.count("smart-skin", "ERROR_NOT_ENOUGH_CREDITS") == 1
