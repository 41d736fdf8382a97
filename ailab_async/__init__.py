"""ailab-async: an asyncio-native SDK for the AILabTools portrait-effects API.

>>> from ailab_async import AILabClient
>>> async with AILabClient() as client:  # doctest: +SKIP
...     result = await client.smart_skin("face.jpg", retouch_degree=0.6)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._map import Outcome
from ._polling import PollingConfig
from ._ratelimit import AdaptiveRateLimiter, RateLimiter
from ._tracker import TaskHandle
from .client import AILabClient
from .errors import (
    AILabError,
    APIError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    ConnectionFailedError,
    DeadlineExceededError,
    DownloadError,
    ImageRejectedError,
    InsufficientCreditsError,
    InvalidRequestError,
    MalformedResponseError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
    ValidationError,
)
from .models import ClientStats, CreditBalance, Credits, ImageResult, TaskStatus

try:
    __version__ = version("ailab-async")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AILabClient",
    "AILabError",
    "APIError",
    "AdaptiveRateLimiter",
    "AuthenticationError",
    "ClientClosedError",
    "ClientStats",
    "ConfigurationError",
    "ConnectionFailedError",
    "CreditBalance",
    "Credits",
    "DeadlineExceededError",
    "DownloadError",
    "ImageRejectedError",
    "ImageResult",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "MalformedResponseError",
    "Outcome",
    "PermissionDeniedError",
    "PollingConfig",
    "RateLimitedError",
    "RateLimiter",
    "RequestTimeoutError",
    "ServerError",
    "TaskError",
    "TaskFailedError",
    "TaskHandle",
    "TaskStatus",
    "TaskTimeoutError",
    "TransportError",
    "ValidationError",
    "__version__",
]
