"""Fixtures for the simulator's tests: started simulators, a manual clock, sample faces."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from ailab_async.testing.simulator import ManualClock, Simulator, SimulatorConfig, sample_image
from tests.simulator._helpers import SimApi, SimFactory


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """``await make_sim(config, clock=...)`` starts a simulator and returns a :class:`SimApi`."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            config: SimulatorConfig | None = None,
            *,
            clock: ManualClock | None = None,
            timeout: float | None = None,
        ) -> SimApi:
            sim = await stack.enter_async_context(Simulator(config, clock=clock))
            session = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
            )
            return SimApi(session, sim)

        yield factory


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


@pytest.fixture(scope="session")
def face() -> bytes:
    """A 256x256 synthetic portrait (JPEG)."""
    return sample_image(256, 256, seed=1)


@pytest.fixture(scope="session")
def faces() -> list[bytes]:
    """Forty distinct small portraits."""
    return [sample_image(160, 160, seed=100 + i) for i in range(40)]
