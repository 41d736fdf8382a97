"""The pytest plugin our users get: fixtures wired to a fresh simulator."""

from __future__ import annotations

import pytest

from ailab_async import AILabClient
from ailab_async.simulator import Simulator, SimulatorConfig, sample_image


def test_plugin_is_registered_through_its_entry_point(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.has_plugin("ailab_async")


async def test_ailab_simulator_is_running_on_loopback(ailab_simulator: Simulator) -> None:
    assert ailab_simulator.url.startswith("http://127.0.0.1:")
    assert ailab_simulator.api_key == "sim-key-000"
    assert ailab_simulator.stats.count() == 0


@pytest.mark.ailab_simulator(seed=9, concurrency_limit=3)
async def test_marker_changes_the_config(ailab_simulator: Simulator) -> None:
    assert ailab_simulator.config.seed == 9
    assert ailab_simulator.config.concurrency_limit == 3


class TestOverriddenConfig:
    @pytest.fixture
    def ailab_simulator_config(self) -> SimulatorConfig:
        return SimulatorConfig(api_key="overridden-key", seed=42)

    async def test_override_fixture_is_used(self, ailab_simulator: Simulator) -> None:
        assert ailab_simulator.api_key == "overridden-key"

    async def test_client_uses_the_overridden_key(
        self, client: AILabClient, ailab_simulator: Simulator
    ) -> None:
        await client.credits()
        assert ailab_simulator.stats.count("query-credits", "OK") == 1


async def test_client_fixture_talks_to_the_simulator(
    client: AILabClient, ailab_simulator: Simulator
) -> None:
    result = await client.smart_skin(sample_image(200, 200), retouch_degree=0.5)
    image = await client.download(result)
    assert image.startswith(b"\x89PNG")
    assert ailab_simulator.stats.count("smart-skin", "OK") == 1
    credits = await client.credits()
    assert credits.balances[0].balance == credits.balances[0].total - 1


async def test_ailab_client_and_client_are_the_same(
    ailab_client: AILabClient, client: AILabClient
) -> None:
    assert ailab_client is client
