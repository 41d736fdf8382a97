"""Configuration of the simulator: frozen value classes, every knob off by default.

Nothing here does I/O.  Distributions draw from a :class:`random.Random` handed to them, so
that every random choice the simulator makes comes from its seed.
"""

from __future__ import annotations

import math
import random
from typing import Literal

import attrs

__all__ = [
    "API_ENDPOINTS",
    "SMART_BEAUTY_RULES",
    "SMART_SKIN_RULES",
    "Credits",
    "Distribution",
    "Faults",
    "Fixed",
    "ImageRules",
    "Latency",
    "LogNormal",
    "RateLimit",
    "SimulatorConfig",
    "TaskBehaviour",
    "Uniform",
    "parse_distribution",
]

#: Endpoint names used in configuration and statistics.
SMART_SKIN = "smart-skin"
SMART_BEAUTY = "smart-beauty"
QUERY_TASK = "query-async-task-result"
QUERY_CREDITS = "query-credits"
RESULTS = "results"
API_ENDPOINTS: frozenset[str] = frozenset({SMART_SKIN, SMART_BEAUTY, QUERY_TASK, QUERY_CREDITS})

EnvelopeStyle = Literal["legacy", "modern"]
FailureReport = Literal["envelope", "status"]


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _share(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


# --------------------------------------------------------------------------- distributions


@attrs.frozen
class Fixed:
    """Always the same duration, in seconds.

    >>> Fixed(0.2).sample(random.Random(0))
    0.2
    """

    seconds: float = attrs.field(validator=_non_negative)

    def sample(self, rng: random.Random) -> float:
        """Return ``seconds``; ``rng`` is not consumed."""
        return self.seconds


@attrs.frozen
class Uniform:
    """A duration drawn uniformly from ``[low, high]`` seconds."""

    low: float = attrs.field(validator=_non_negative)
    high: float = attrs.field(validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.high < self.low:
            raise ValueError(f"Uniform high ({self.high}) must be >= low ({self.low})")

    def sample(self, rng: random.Random) -> float:
        """Draw one duration."""
        return rng.uniform(self.low, self.high)


@attrs.frozen
class LogNormal:
    """A long-tailed duration: log-normal with the given ``median`` and ``sigma``.

    ``cap`` (seconds) bounds the tail when set.
    """

    median: float = attrs.field(validator=_non_negative)
    sigma: float = attrs.field(validator=_non_negative)
    cap: float | None = None

    def sample(self, rng: random.Random) -> float:
        """Draw one duration."""
        if self.median == 0:
            return 0.0
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return value if self.cap is None else min(value, self.cap)


Distribution = Fixed | Uniform | LogNormal


def parse_distribution(spec: str) -> Distribution:
    """Parse a command-line duration spec.

    ``"0.2"`` is :class:`Fixed`, ``"0.1:0.5"`` is :class:`Uniform`, ``"lognormal:MEDIAN:SIGMA"``
    (optionally ``:CAP``) is :class:`LogNormal`.

    >>> parse_distribution("0.1:0.5")
    Uniform(low=0.1, high=0.5)
    """
    parts = spec.strip().split(":")
    try:
        if parts[0].lower() == "lognormal" and len(parts) in (3, 4):
            cap = float(parts[3]) if len(parts) == 4 else None
            return LogNormal(float(parts[1]), float(parts[2]), cap)
        if len(parts) == 1:
            return Fixed(float(parts[0]))
        if len(parts) == 2:
            return Uniform(float(parts[0]), float(parts[1]))
    except ValueError as exc:
        raise ValueError(f"bad duration spec {spec!r}: {exc}") from None
    raise ValueError(f"bad duration spec {spec!r}: use SECONDS, MIN:MAX or lognormal:MEDIAN:SIGMA")


# --------------------------------------------------------------------------- knobs


@attrs.frozen
class Latency:
    """Extra time each endpoint takes before answering (``None``: answer at once)."""

    smart_skin: Distribution | None = None
    smart_beauty: Distribution | None = None
    query_task: Distribution | None = None
    query_credits: Distribution | None = None
    results: Distribution | None = None

    @classmethod
    def everywhere(cls, distribution: Distribution) -> Latency:
        """The same latency on every endpoint, result downloads included."""
        return cls(distribution, distribution, distribution, distribution, distribution)

    def for_endpoint(self, endpoint: str) -> Distribution | None:
        """The latency configured for ``endpoint`` (a name from the stats)."""
        return {
            SMART_SKIN: self.smart_skin,
            SMART_BEAUTY: self.smart_beauty,
            QUERY_TASK: self.query_task,
            QUERY_CREDITS: self.query_credits,
            RESULTS: self.results,
        }.get(endpoint)


@attrs.frozen
class RateLimit:
    """A per-key token bucket: ``requests_per_second`` refill, ``burst`` capacity.

    ``burst`` defaults to ``ceil(requests_per_second)``.  Requests over the limit get
    429 ``EXCEEDING_LIMITS``, with a ``Retry-After`` header (whole seconds, rounded up) when
    ``retry_after`` is true.
    """

    requests_per_second: float = attrs.field(validator=_non_negative)
    burst: int | None = None
    retry_after: bool = True

    @property
    def capacity(self) -> int:
        """The bucket's size."""
        return self.burst if self.burst is not None else max(1, math.ceil(self.requests_per_second))


@attrs.frozen
class Credits:
    """A per-key credit balance; each billed call costs ``cost_per_call``.

    When the balance cannot pay for a call, it is answered 429 ``ERROR_NOT_ENOUGH_CREDITS``.
    """

    balance: float = attrs.field(validator=_non_negative)
    total: float | None = None
    cost_per_call: float = attrs.field(default=1.0, validator=_non_negative)


@attrs.frozen
class TaskBehaviour:
    """How smart-beauty asynchronous tasks progress.

    A task is queued (0) for ``queued_fraction`` of its ``duration``, then processing (1), then
    succeeded (2).  A seeded ``failure_share`` of tasks fails instead, reported either as an
    error envelope with ``failure_code`` on the query (``failure_report="envelope"``) or as a
    200 answer with ``task_status`` 3 (``"status"``).  ``task_status_in_data`` also copies the
    status into ``data.task_status`` (the provider documents it top-level; its official SDK
    reads ``data`` first).
    """

    duration: Distribution = Uniform(0.5, 2.0)
    queued_fraction: float = attrs.field(default=0.25, validator=_share)
    failure_share: float = attrs.field(default=0.0, validator=_share)
    failure_code: str = "ERROR_NO_FACE_IN_FILE"
    failure_report: FailureReport = "envelope"
    task_status_in_data: bool = True


@attrs.frozen
class Faults:
    """Injected failures, each with a rate in [0, 1] (their sum must not exceed 1).

    One seeded draw per API request picks at most one fault.  With probability
    ``after_processing_share`` the fault hits *after* the request was processed (and billed:
    the "ambiguous" case), otherwise before anything happened.  ``stall`` holds the answer for
    ``stall_seconds`` (or until the simulator stops) and then answers normally.
    ``truncated_json`` sends half of the JSON body with status 200; with
    ``truncated_lying_length`` the ``Content-Length`` claims the full body and the connection
    is then closed.
    """

    error_500: float = attrs.field(default=0.0, validator=_share)
    error_502: float = attrs.field(default=0.0, validator=_share)
    error_503: float = attrs.field(default=0.0, validator=_share)
    error_504: float = attrs.field(default=0.0, validator=_share)
    connection_reset: float = attrs.field(default=0.0, validator=_share)
    html_502: float = attrs.field(default=0.0, validator=_share)
    truncated_json: float = attrs.field(default=0.0, validator=_share)
    stall: float = attrs.field(default=0.0, validator=_share)
    stall_seconds: float = attrs.field(default=30.0, validator=_non_negative)
    truncated_lying_length: bool = False
    after_processing_share: float = attrs.field(default=0.0, validator=_share)
    endpoints: frozenset[str] = API_ENDPOINTS

    def __attrs_post_init__(self) -> None:
        if sum(rate for _, rate in self.rates()) > 1.0 + 1e-9:
            raise ValueError("the fault rates must add up to at most 1")
        unknown = self.endpoints - API_ENDPOINTS
        if unknown:
            raise ValueError(f"unknown endpoints in Faults.endpoints: {sorted(unknown)}")

    def rates(self) -> tuple[tuple[str, float], ...]:
        """``(fault name, rate)`` pairs in a fixed order."""
        return (
            ("error_500", self.error_500),
            ("error_502", self.error_502),
            ("error_503", self.error_503),
            ("error_504", self.error_504),
            ("connection_reset", self.connection_reset),
            ("html_502", self.html_502),
            ("truncated_json", self.truncated_json),
            ("stall", self.stall),
        )

    def pick(self, draw: float) -> str | None:
        """The fault selected by a uniform ``draw`` in [0, 1), or ``None``."""
        threshold = 0.0
        for name, rate in self.rates():
            threshold += rate
            if draw < threshold:
                return name
        return None


@attrs.frozen
class ImageRules:
    """Server-side image rules of one endpoint.

    ``formats`` are Pillow format names found by content (``JPEG``, ``PNG``, ``BMP``);
    width and height must both be strictly greater than ``min_side_exclusive`` (when set) and
    strictly smaller than ``max_side_exclusive``.
    """

    formats: frozenset[str]
    max_bytes: int
    max_side_exclusive: int
    min_side_exclusive: int | None = None


#: smart-skin: JPEG/PNG, at most 6 MiB, larger than 128x128 and smaller than 5000x5000.
SMART_SKIN_RULES = ImageRules(frozenset({"JPEG", "PNG"}), 6 * 1024 * 1024, 5000, 128)
#: smart-beauty: JPEG/BMP/PNG, at most 5 MiB, smaller than 4096x4096.
SMART_BEAUTY_RULES = ImageRules(frozenset({"JPEG", "PNG", "BMP"}), 5 * 1024 * 1024, 4096)


@attrs.frozen
class SimulatorConfig:
    """Everything the simulator can be told; the defaults behave like a healthy API.

    >>> SimulatorConfig(seed=7, rate_limit=RateLimit(5)).rate_limit.capacity
    5
    """

    #: The key that authenticates (header ``ailabapi-api-key``); others get 401.
    api_key: str = "sim-key-000"
    #: More accepted keys (each has its own rate-limit bucket and credit balance).
    extra_api_keys: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    #: Seeds every random choice (ids, durations, failures, faults, latencies).
    seed: int = 0
    #: ``"modern"`` omits ``error_code``, ``error_code_str``, ``error_msg`` and
    #: ``error_detail.status_code``, as newer provider responses do.
    envelope: EnvelopeStyle = "legacy"
    latency: Latency = Latency()
    rate_limit: RateLimit | None = None
    #: At most this many API requests in flight; more get 429 ``EXCEEDING_LIMITS``.
    concurrency_limit: int | None = None
    #: ``None``: an unlimited account (balance still reported, never enforced).
    credits: Credits | None = None
    tasks: TaskBehaviour = TaskBehaviour()
    faults: Faults = Faults()
    #: Seconds a result URL (and a finished task) stays available.
    result_ttl: float = attrs.field(default=24 * 3600.0, validator=_non_negative)
    smart_skin_rules: ImageRules = SMART_SKIN_RULES
    smart_beauty_rules: ImageRules = SMART_BEAUTY_RULES
    #: Treat a (nearly) uniform image as containing no face: 422 ``ERROR_NO_FACE_IN_FILE``.
    blank_is_no_face: bool = True
    #: Accept ``task_type=sync`` on smart-beauty (answers ``data.image`` in base64).
    allow_sync_beauty: bool = True

    @property
    def api_keys(self) -> tuple[str, ...]:
        """Every accepted key, ``api_key`` first."""
        return (self.api_key, *self.extra_api_keys)
