"""The pytest plugin our users get: fixtures wired to a fresh simulator."""

from __future__ import annotations

import pytest

from ailab_async import AILabClient
from ailab_async.testing.simulator import Simulator, SimulatorConfig, sample_image


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
        self, ailab_client: AILabClient, ailab_simulator: Simulator
    ) -> None:
        await ailab_client.credits()
        assert ailab_simulator.stats.count("query-credits", "OK") == 1


async def test_client_fixture_talks_to_the_simulator(
    ailab_client: AILabClient, ailab_simulator: Simulator
) -> None:
    result = await ailab_client.smart_skin(sample_image(200, 200), retouch_degree=0.5)
    image = await ailab_client.download(result)
    assert image.startswith(b"\x89PNG")
    assert ailab_simulator.stats.count("smart-skin", "OK") == 1
    credits = await ailab_client.credits()
    assert credits.balances[0].balance == credits.balances[0].total - 1


def test_the_plugin_defines_no_fixture_named_client(request: pytest.FixtureRequest) -> None:
    """A ``client`` fixture would shadow pytest-django's and pytest-flask's in users' projects."""
    from ailab_async.testing import pytest_plugin  # noqa: PLC0415

    assert not hasattr(pytest_plugin, "client")
    assert all(name.startswith("ailab_") for name in pytest_plugin.__all__)
    with pytest.raises(pytest.FixtureLookupError):
        request.getfixturevalue("client")


def test_the_old_import_paths_still_work() -> None:
    """Documented paths from before the package was laid out by part stay importable."""
    import ailab_async.dask_recipe as dask_recipe  # noqa: PLC0415
    import ailab_async.redis_limiter as redis_limiter  # noqa: PLC0415
    import ailab_async.simulator as simulator  # noqa: PLC0415
    from ailab_async.batch import run_batch  # noqa: PLC0415
    from ailab_async.contrib import dask, redis  # noqa: PLC0415
    from ailab_async.testing import simulator as new_simulator  # noqa: PLC0415

    assert simulator.Simulator is new_simulator.Simulator
    assert simulator.__all__ == new_simulator.__all__
    assert redis_limiter.RedisRateLimiter is redis.RedisRateLimiter
    assert dask_recipe.run_on_cluster is dask.run_on_cluster
    assert callable(run_batch)
