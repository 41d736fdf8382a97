"""Compatibility import path: the Dask recipe lives in :mod:`ailab_async.contrib.dask`."""

from __future__ import annotations

from .contrib.dask import *  # noqa: F403
from .contrib.dask import __all__  # noqa: F401 - the same public names
