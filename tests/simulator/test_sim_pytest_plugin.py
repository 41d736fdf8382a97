"""The pytest plugin our users get: fixtures wired to a fresh simulator."""

from __future__ import annotations

import pytest

from ailab_async import AILabClient, ServerError, TaskTimeoutError
from ailab_async.testing import pytest_plugin
from ailab_async.testing.simulator import (
    Faults,
    Fixed,
    Latency,
    ManualClock,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    sample_image,
)


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


@pytest.mark.ailab_simulator(seed=5, concurrency_limit=2)
class TestMarkersStack:
    @pytest.mark.ailab_simulator(seed=6)
    async def test_the_closest_marker_wins_field_by_field(self, ailab_simulator: Simulator) -> None:
        assert ailab_simulator.config.seed == 6
        assert ailab_simulator.config.concurrency_limit == 2

    @pytest.fixture
    def ailab_simulator_config(self) -> SimulatorConfig:
        return SimulatorConfig(api_key="class-key", seed=1)

    async def test_markers_change_the_overridden_config(self, ailab_simulator: Simulator) -> None:
        assert ailab_simulator.api_key == "class-key"
        assert ailab_simulator.config.seed == 5


class _FakeNode:
    def __init__(self, *markers: pytest.MarkDecorator) -> None:
        self.markers = [decorator.mark for decorator in markers]

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [mark for mark in self.markers if mark.name == name]


class _FakeRequest:
    def __init__(self, *markers: pytest.MarkDecorator) -> None:
        self.node = _FakeNode(*markers)


def test_a_marker_field_that_does_not_exist_is_named() -> None:
    request = _FakeRequest(pytest.mark.ailab_simulator(rate_limits=5, seed=1))
    with pytest.raises(pytest.UsageError, match="not SimulatorConfig fields: rate_limits"):
        pytest_plugin._marked_config(request, SimulatorConfig())  # type: ignore[arg-type]


def test_a_marker_takes_keywords_only() -> None:
    request = _FakeRequest(pytest.mark.ailab_simulator(SimulatorConfig()))
    with pytest.raises(pytest.UsageError, match="keyword arguments only"):
        pytest_plugin._marked_config(request, SimulatorConfig())  # type: ignore[arg-type]


@pytest.mark.ailab_simulator(faults=Faults(error_500=1.0))
@pytest.mark.ailab_client(max_retries=0)
async def test_client_marker_passes_options_to_the_client(
    ailab_client: AILabClient, ailab_simulator: Simulator
) -> None:
    with pytest.raises(ServerError):
        await ailab_client.credits()
    assert ailab_simulator.stats.count("query-credits") == 1  # no retry


class TestClientOptions:
    @pytest.fixture
    def ailab_client_options(self) -> dict[str, object]:
        return {"max_concurrency": 3, "max_retries": 1}

    @pytest.mark.ailab_simulator(faults=Faults(error_500=1.0))
    @pytest.mark.ailab_client(max_retries=0)
    async def test_options_fixture_and_marker_combine(
        self, ailab_client: AILabClient, ailab_simulator: Simulator
    ) -> None:
        assert ailab_client.max_concurrency == 3  # from the fixture
        with pytest.raises(ServerError):
            await ailab_client.credits()
        assert ailab_simulator.stats.count("query-credits") == 1  # the marker's max_retries


class TestManualClock:
    @pytest.fixture
    def ailab_simulator_clock(self) -> ManualClock:
        return ManualClock(start=100.0)

    @pytest.mark.ailab_simulator(latency=Latency(smart_skin=Fixed(30.0)))
    async def test_latency_moves_the_manual_clock(
        self, ailab_client: AILabClient, ailab_simulator: Simulator
    ) -> None:
        await ailab_client.smart_skin(sample_image(200, 200))
        assert ailab_simulator.clock.now() == 130.0

    @pytest.mark.ailab_simulator(tasks=TaskBehaviour(duration=Fixed(50.0)))
    async def test_tasks_finish_when_the_test_moves_time(
        self, ailab_client: AILabClient, ailab_simulator: Simulator
    ) -> None:
        submitted = await ailab_client.submit_smart_beauty(sample_image(200, 200))
        task_id = submitted.task_id
        del submitted  # no longer tracked
        pending = ailab_client.track(task_id)
        with pytest.raises(TaskTimeoutError):
            await pending.result(timeout=0)
        del pending
        assert isinstance(ailab_simulator.clock, ManualClock)
        ailab_simulator.clock.advance(51)
        result = await ailab_client.track(task_id)
        assert result.task_id == task_id


def test_the_default_clock_is_real_time(request: pytest.FixtureRequest) -> None:
    assert request.getfixturevalue("ailab_simulator_clock") is None


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
