"""A local simulator of the AILabTools portrait-effects API (``aiohttp.web``).

It honours the documented protocol (envelopes, statuses, validation rules, asynchronous tasks,
expiring result URLs), really processes images with Pillow, and offers seeded knobs for
latency, rate limits of many shapes (token bucket, sliding and fixed windows, leaky bucket,
requests in flight), task durations of many shapes (bimodal, a growing queue, a mid-run
drift), credits and fault injection, plus statistics for tests.
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
    RATE_SHAPES,
    SMART_BEAUTY_RULES,
    SMART_SKIN_RULES,
    Bimodal,
    Credits,
    Distribution,
    Drift,
    Faults,
    Fixed,
    ImageRules,
    Latency,
    LogNormal,
    QueueGrowth,
    RateLimit,
    RateShape,
    SimulatorConfig,
    TaskBehaviour,
    TaskContext,
    TaskDuration,
    Uniform,
    parse_distribution,
    parse_task_duration,
    sample_task_duration,
)
from ._imaging import SimulatorDependencyError, sample_image
from ._limits import ServerLimit, server_limit
from ._server import Simulator
from ._state import Clock, ManualClock, SimulatorStats, SystemClock

__all__ = [
    "RATE_SHAPES",
    "SMART_BEAUTY_RULES",
    "SMART_SKIN_RULES",
    "Bimodal",
    "Clock",
    "Credits",
    "Distribution",
    "Drift",
    "Faults",
    "Fixed",
    "ImageRules",
    "Latency",
    "LogNormal",
    "ManualClock",
    "QueueGrowth",
    "RateLimit",
    "RateShape",
    "ServerLimit",
    "Simulator",
    "SimulatorConfig",
    "SimulatorDependencyError",
    "SimulatorStats",
    "SystemClock",
    "TaskBehaviour",
    "TaskContext",
    "TaskDuration",
    "Uniform",
    "make_app",
    "parse_distribution",
    "parse_task_duration",
    "sample_image",
    "sample_task_duration",
    "server_limit",
]
