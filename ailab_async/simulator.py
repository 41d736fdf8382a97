"""Compatibility import path: the simulator lives in :mod:`ailab_async.testing.simulator`."""

from __future__ import annotations

from .testing.simulator import *  # noqa: F403
from .testing.simulator import __all__  # noqa: F401 - the same public names
