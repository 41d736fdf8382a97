"""pytest fixtures for testing code that uses ailab-async, offline, against the simulator.

Installed with the package (entry point ``pytest11``), so the fixtures are simply there:

- ``ailab_simulator_config``: the :class:`~ailab_async.testing.simulator.SimulatorConfig` to use;
  override this fixture in your ``conftest.py`` to change it for a whole directory.
- ``@pytest.mark.ailab_simulator(**fields)``: change config fields for one test, e.g.
  ``@pytest.mark.ailab_simulator(seed=3, concurrency_limit=2)``.
- ``ailab_simulator``: a started :class:`~ailab_async.testing.simulator.Simulator` (function scope).
- ``ailab_client``: an ``AILabClient`` wired to that simulator.

Every fixture is named ``ailab_*``, so none shadows a fixture of another plugin (pytest-django's
and pytest-flask's ``client``, for one).

The async fixtures need pytest-asyncio; without it they are not defined.

    async def test_retouch(ailab_client, ailab_simulator):
        result = await ailab_client.smart_skin(my_image)
        assert ailab_simulator.stats.count("smart-skin", "OK") == 1
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ailab_async.client import AILabClient
    from ailab_async.testing.simulator import Simulator, SimulatorConfig

__all__ = [
    "ailab_simulator_config",
]

_MARKER = "ailab_simulator"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``ailab_simulator`` marker."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**fields): SimulatorConfig fields for the ailab_simulator fixture",
    )


@pytest.fixture
def ailab_simulator_config() -> SimulatorConfig:
    """The simulator configuration (defaults: a healthy API); override it to change it."""
    from ailab_async.testing.simulator import SimulatorConfig  # noqa: PLC0415 - lazy: plugin stays light

    return SimulatorConfig()


def _with_marker(request: pytest.FixtureRequest, config: SimulatorConfig) -> SimulatorConfig:
    import attrs  # noqa: PLC0415

    marker = request.node.get_closest_marker(_MARKER)
    if marker is None:
        return config
    if marker.args:
        raise pytest.UsageError(f"@pytest.mark.{_MARKER} takes keyword arguments only")
    return attrs.evolve(config, **marker.kwargs)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is a dev dependency
    pytest_asyncio = None  # type: ignore[assignment]

if pytest_asyncio is not None:
    __all__ += ["ailab_client", "ailab_simulator"]

    @pytest_asyncio.fixture
    async def ailab_simulator(
        request: pytest.FixtureRequest, ailab_simulator_config: SimulatorConfig
    ) -> AsyncIterator[Simulator]:
        """A started simulator on 127.0.0.1 (free port), stopped after the test."""
        from ailab_async.testing.simulator import Simulator  # noqa: PLC0415

        async with Simulator(_with_marker(request, ailab_simulator_config)) as sim:
            yield sim

    @pytest_asyncio.fixture
    async def ailab_client(ailab_simulator: Simulator) -> AsyncIterator[AILabClient]:
        """An ``AILabClient`` talking to ``ailab_simulator``, closed after the test."""
        from ailab_async import AILabClient  # noqa: PLC0415 - the plugin loads before tests

        async with AILabClient(api_key=ailab_simulator.api_key, base_url=ailab_simulator.url) as c:
            yield c
