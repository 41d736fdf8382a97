"""A local simulator of the AILabTools portrait-effects API (``aiohttp.web``).

It honours the documented protocol (envelopes, statuses, validation rules, asynchronous tasks,
expiring result URLs), really processes images with Pillow, and offers seeded knobs for
latency, rate and concurrency limits, credits and fault injection, plus statistics for tests.
Install with ``pip install 'ailab-async[simulator]'``.

>>> from ailab_async.testing.simulator import Simulator, SimulatorConfig, RateLimit
>>> async def demo() -> None:
...     async with Simulator(SimulatorConfig(rate_limit=RateLimit(5))) as sim:
...         ...  # point a client at sim.url with sim.api_key; then read sim.stats

See ``docs/simulator.md`` for every knob, the ``ailab-async simulate`` command and the pytest
fixtures.
"""

from __future__ import annotations

from ._app import make_app
from ._config import (
    SMART_BEAUTY_RULES,
    SMART_SKIN_RULES,
    Credits,
    Distribution,
    Faults,
    Fixed,
    ImageRules,
    Latency,
    LogNormal,
    RateLimit,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    parse_distribution,
)
from ._imaging import SimulatorDependencyError, sample_image
from ._server import Simulator
from ._state import Clock, ManualClock, SimulatorStats, SystemClock

__all__ = [
    "SMART_BEAUTY_RULES",
    "SMART_SKIN_RULES",
    "Clock",
    "Credits",
    "Distribution",
    "Faults",
    "Fixed",
    "ImageRules",
    "Latency",
    "LogNormal",
    "ManualClock",
    "RateLimit",
    "Simulator",
    "SimulatorConfig",
    "SimulatorDependencyError",
    "SimulatorStats",
    "SystemClock",
    "TaskBehaviour",
    "Uniform",
    "make_app",
    "parse_distribution",
    "sample_image",
]
