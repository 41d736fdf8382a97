"""What every benchmark reports about where it ran."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str:
    """The installed version of ``name``, or ``"not installed"``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Python, platform, CPUs and the versions of the packages the benchmarks compare."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "aiohttp": package_version("aiohttp"),
        "ailab-async": package_version("ailab-async"),
        "ailabtools-sdk": package_version("ailabtools-sdk"),
        "httpx": package_version("httpx"),
    }
