"""pytest fixtures for testing code that uses ailab-async, offline, against the simulator.

Installed with the package (entry point ``pytest11``), so the fixtures are simply there once
``ailab-async[testing]`` is installed (docs/testing.md shows the configuration):

- ``ailab_simulator``: a started :class:`~ailab_async.testing.simulator.Simulator` (function
  scope);
- ``ailab_client``: an ``AILabClient`` wired to that simulator, closed after the test.

Changing them, for one test or many:

- ``@pytest.mark.ailab_simulator(**fields)``: fields of
  :class:`~ailab_async.testing.simulator.SimulatorConfig`, e.g.
  ``@pytest.mark.ailab_simulator(rate_limit=RateLimit(5), credits=Credits(3))``.
  On a test, a class or a module (``pytestmark``); the closest one wins for a field.
- ``ailab_simulator_config``: the configuration the markers start from; override this
  fixture in a ``conftest.py``, module or class to change it for all the tests there.
- ``ailab_simulator_clock``: ``None`` (real time); override it to return a
  :class:`~ailab_async.testing.simulator.ManualClock`, and time on the simulator (tasks,
  rate buckets, result lifetimes, latency) moves only when the test says.
- ``@pytest.mark.ailab_client(**options)`` and ``ailab_client_options``: keyword arguments
  for the ``AILabClient``, e.g. ``@pytest.mark.ailab_client(max_retries=0)``.

Every fixture is named ``ailab_*``, so none shadows a fixture of another plugin (pytest-django's
and pytest-flask's ``client``, for one).

The async fixtures need pytest-asyncio; without it they are not defined.

    async def test_retouch(ailab_client, ailab_simulator):
        result = await ailab_client.smart_skin(my_image)
        assert ailab_simulator.stats.count("smart-skin", "OK") == 1
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ailab_async.client import AILabClient
    from ailab_async.testing.simulator import Clock, Simulator, SimulatorConfig

__all__ = [
    "ailab_client_options",
    "ailab_simulator_clock",
    "ailab_simulator_config",
]

_SIMULATOR_MARKER = "ailab_simulator"
_CLIENT_MARKER = "ailab_client"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``ailab_simulator`` and ``ailab_client`` markers."""
    config.addinivalue_line(
        "markers",
        f"{_SIMULATOR_MARKER}(**fields): SimulatorConfig fields for the ailab_simulator fixture",
    )
    config.addinivalue_line(
        "markers",
        f"{_CLIENT_MARKER}(**options): AILabClient keyword arguments for the ailab_client fixture",
    )


@pytest.fixture
def ailab_simulator_config() -> SimulatorConfig:
    """The simulator configuration (defaults: a healthy API); override it to change it."""
    from ailab_async.testing.simulator import SimulatorConfig  # noqa: PLC0415 - lazy: plugin stays light

    return SimulatorConfig()


@pytest.fixture
def ailab_simulator_clock() -> Clock | None:
    """The simulator's clock: ``None`` is real time; override it with a ``ManualClock``."""
    return None


@pytest.fixture
def ailab_client_options() -> dict[str, Any]:
    """Keyword arguments for the ``ailab_client`` fixture's ``AILabClient`` (none by default)."""
    return {}


def _marked_fields(
    name: str, markers: Iterable[pytest.Mark], base: Mapping[str, Any]
) -> dict[str, Any]:
    """``base`` updated by the keyword arguments of ``markers`` (given closest first, as
    ``iter_markers`` yields them): the closest marker wins for each field.

    >>> marks = [pytest.mark.m(seed=2).mark, pytest.mark.m(seed=1, port=0).mark]
    >>> _marked_fields("m", marks, {"host": "127.0.0.1"})
    {'host': '127.0.0.1', 'port': 0, 'seed': 2}
    """
    fields = dict(base)
    for marker in reversed(list(markers)):
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{name} takes keyword arguments only")
        fields.update(marker.kwargs)
    return fields


def _marked_config(request: pytest.FixtureRequest, config: SimulatorConfig) -> SimulatorConfig:
    import attrs  # noqa: PLC0415

    markers = list(request.node.iter_markers(_SIMULATOR_MARKER))
    if not markers:
        return config
    changes = _marked_fields(_SIMULATOR_MARKER, markers, {})
    known = {field.name for field in attrs.fields(type(config))}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise pytest.UsageError(
            f"@pytest.mark.{_SIMULATOR_MARKER}: not SimulatorConfig fields: {', '.join(unknown)}"
        )
    return attrs.evolve(config, **changes)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is a dev dependency
    pytest_asyncio = None  # type: ignore[assignment]

if pytest_asyncio is not None:
    __all__ += ["ailab_client", "ailab_simulator"]

    @pytest_asyncio.fixture
    async def ailab_simulator(
        request: pytest.FixtureRequest,
        ailab_simulator_config: SimulatorConfig,
        ailab_simulator_clock: Clock | None,
    ) -> AsyncIterator[Simulator]:
        """A started simulator on 127.0.0.1 (free port), stopped after the test."""
        from ailab_async.testing.simulator import Simulator  # noqa: PLC0415

        config = _marked_config(request, ailab_simulator_config)
        async with Simulator(config, clock=ailab_simulator_clock) as sim:
            yield sim

    @pytest_asyncio.fixture
    async def ailab_client(
        request: pytest.FixtureRequest,
        ailab_simulator: Simulator,
        ailab_client_options: dict[str, Any],
    ) -> AsyncIterator[AILabClient]:
        """An ``AILabClient`` talking to ``ailab_simulator``, closed after the test."""
        from ailab_async import AILabClient  # noqa: PLC0415 - the plugin loads before tests

        markers = request.node.iter_markers(_CLIENT_MARKER)
        options = _marked_fields(_CLIENT_MARKER, markers, ailab_client_options)
        options.setdefault("api_key", ailab_simulator.api_key)
        options.setdefault("base_url", ailab_simulator.url)
        async with AILabClient(**options) as client:
            yield client
