"""Compatibility import path: the Redis-shared budget lives in :mod:`ailab_async.contrib.redis`."""

from __future__ import annotations

from .contrib.redis import *  # noqa: F403
from .contrib.redis import __all__  # noqa: F401 - the same public names
