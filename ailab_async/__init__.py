"""ailab-async: an asyncio-native SDK for the AILabTools portrait-effects API.

>>> from ailab_async import AILabClient
>>> async with AILabClient() as client:  # doctest: +SKIP
...     result = await client.smart_skin("face.jpg", retouch_degree=0.6)

The SDK's public names, all in ``__all__``: the client and what it hands out
(:class:`AILabClient`, :class:`TaskHandle`, :class:`Outcome`, ``ImageInput``), results
(:class:`ImageResult`, :class:`RawResult`, :class:`Credits`, :class:`CreditBalance`,
:class:`TaskStatus`, :class:`ClientStats`, :class:`TrackerStats`), configuration
(:class:`PollingConfig`, the :class:`RateLimiter` protocol and :class:`AdaptiveRateLimiter`)
and the exception tree of
:mod:`ailab_async.errors`. The machinery behind them is private (modules named ``_*``).
The batch engine, the command line, integrations and the testing kit are the subpackages
``batch``, ``cli``, ``contrib`` and ``testing``.
"""

import importlib.metadata as _metadata

from ._images import ImageInput
from ._map import Outcome
from ._polling import PollingConfig
from ._ratelimit import AdaptiveRateLimiter, RateLimiter
from ._tasks import TaskHandle
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
from .models import (
    ClientStats,
    CreditBalance,
    Credits,
    ImageResult,
    RawResult,
    TaskStatus,
    TrackerStats,
)

try:
    __version__ = _metadata.version("ailab-async")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
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
    "ImageInput",
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
    "RawResult",
    "RequestTimeoutError",
    "ServerError",
    "TaskError",
    "TaskFailedError",
    "TaskHandle",
    "TaskStatus",
    "TaskTimeoutError",
    "TrackerStats",
    "TransportError",
    "ValidationError",
    "__version__",
]
