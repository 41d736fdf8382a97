"""Configuration of the simulator: frozen value classes, every knob off by default.

Nothing here does I/O.  Distributions draw from a :class:`random.Random` handed to them, so
that every random choice the simulator makes comes from its seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Literal

import attrs

__all__ = [
    "API_ENDPOINTS",
    "RATE_SHAPES",
    "SMART_BEAUTY_RULES",
    "SMART_SKIN_RULES",
    "Bimodal",
    "Credits",
    "Distribution",
    "Drift",
    "Faults",
    "Fixed",
    "ImageRules",
    "Latency",
    "LogNormal",
    "QueueGrowth",
    "RateLimit",
    "RateSchedule",
    "RateShape",
    "SimulatorConfig",
    "TaskBehaviour",
    "TaskContext",
    "TaskDuration",
    "Uniform",
    "parse_distribution",
    "parse_task_duration",
    "sample_task_duration",
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


@attrs.frozen
class Bimodal:
    """Two kinds of tasks in one stream: a ``long_share`` of the draws come from ``long``, the
    others from ``short``.

    >>> mix = Bimodal(Fixed(1), Fixed(20), long_share=0.25)
    >>> sorted({mix.sample(random.Random(i)) for i in range(20)})
    [1, 20]
    """

    short: Distribution
    long: Distribution
    long_share: float = attrs.field(validator=_share)

    def sample(self, rng: random.Random) -> float:
        """Pick a kind (one draw), then draw a duration of that kind."""
        kind = self.long if rng.random() < self.long_share else self.short
        return kind.sample(rng)


#: A duration that needs nothing but a random stream (task times and latencies).
Distribution = Fixed | Uniform | LogNormal | Bimodal


@attrs.frozen
class TaskContext:
    """What the server knows when a task is submitted, for durations that depend on it.

    ``submitted``: tasks submitted before this one; ``elapsed``: seconds since the first task
    was submitted; ``pending``: tasks submitted before this one that have not finished yet.
    """

    submitted: int = 0
    elapsed: float = 0.0
    pending: int = 0


@attrs.frozen
class QueueGrowth:
    """A server whose queue slows it down: ``base`` plus ``per_pending`` seconds for every
    task still pending when this one is submitted.

    >>> QueueGrowth(Fixed(1.0), per_pending=0.5).sample(random.Random(0), TaskContext(pending=4))
    3.0
    """

    base: Distribution
    per_pending: float = attrs.field(validator=_non_negative)

    def sample(self, rng: random.Random, context: TaskContext) -> float:
        """Draw the base duration and add the queue's share."""
        return self.base.sample(rng) + self.per_pending * context.pending


@attrs.frozen
class Drift:
    """Task times that change mid-run: ``before`` until ``after_tasks`` tasks were submitted or
    ``after_seconds`` passed since the first one (exactly one of the two), then ``after``.

    >>> drift = Drift(Fixed(1), Fixed(5), after_tasks=100)
    >>> [drift.sample(random.Random(0), TaskContext(submitted=n)) for n in (99, 100)]
    [1, 5]
    """

    before: Distribution | QueueGrowth
    after: Distribution | QueueGrowth
    after_tasks: int | None = None
    after_seconds: float | None = None

    def __attrs_post_init__(self) -> None:
        if (self.after_tasks is None) == (self.after_seconds is None):
            raise ValueError("Drift needs exactly one of after_tasks and after_seconds")
        if self.after_tasks is not None and self.after_tasks < 0:
            raise ValueError(f"after_tasks must be >= 0, got {self.after_tasks!r}")
        if self.after_seconds is not None and not (
            self.after_seconds >= 0 and math.isfinite(self.after_seconds)
        ):
            raise ValueError(
                f"after_seconds must be a finite number >= 0, got {self.after_seconds!r}"
            )

    def sample(self, rng: random.Random, context: TaskContext) -> float:
        """Draw from the part of the run ``context`` falls in."""
        drifted = (self.after_tasks is not None and context.submitted >= self.after_tasks) or (
            self.after_seconds is not None and context.elapsed >= self.after_seconds
        )
        return sample_task_duration(self.after if drifted else self.before, rng, context)


#: What a task's duration can be: a :data:`Distribution`, or one that reads a
#: :class:`TaskContext` (:class:`QueueGrowth`, :class:`Drift`).
TaskDuration = Distribution | QueueGrowth | Drift


def sample_task_duration(duration: TaskDuration, rng: random.Random, context: TaskContext) -> float:
    """Draw one task's duration, giving ``context`` to the durations that read it.

    >>> sample_task_duration(Fixed(2.0), random.Random(0), TaskContext(pending=9))
    2.0
    """
    if isinstance(duration, QueueGrowth | Drift):
        return duration.sample(rng, context)
    return duration.sample(rng)


def _parse_simple(spec: str, whole: str) -> Fixed | Uniform | LogNormal:
    parts = spec.strip().split(":")
    if parts[0].lower() == "lognormal" and len(parts) in (3, 4):
        cap = float(parts[3]) if len(parts) == 4 else None
        return LogNormal(float(parts[1]), float(parts[2]), cap)
    if len(parts) == 1:
        return Fixed(float(parts[0]))
    if len(parts) == 2:
        return Uniform(float(parts[0]), float(parts[1]))
    raise ValueError(
        f"bad duration spec {whole!r}: use SECONDS, MIN:MAX or lognormal:MEDIAN:SIGMA[:CAP]"
    )


def _composite(spec: str, kinds: tuple[str, ...]) -> tuple[str, str, list[str]] | None:
    """``KIND:PARAMETER/SUB/SUB...`` split up, or ``None`` when ``spec`` is no such kind."""
    head, *subs = spec.strip().split("/")
    kind, _, parameter = head.partition(":")
    kind = kind.strip().lower()
    if kind not in kinds:
        return None
    return kind, parameter.strip(), subs


def parse_distribution(spec: str) -> Distribution:
    """Parse a command-line duration spec.

    ``"0.2"`` is :class:`Fixed`, ``"0.1:0.5"`` is :class:`Uniform`, ``"lognormal:MEDIAN:SIGMA"``
    (optionally ``:CAP``) is :class:`LogNormal`, ``"bimodal:LONG_SHARE/SHORT/LONG"`` (two of
    the former) is :class:`Bimodal`.

    >>> parse_distribution("0.1:0.5")
    Uniform(low=0.1, high=0.5)
    >>> parse_distribution("bimodal:0.2/1:2/20")
    Bimodal(short=Uniform(low=1.0, high=2.0), long=Fixed(seconds=20.0), long_share=0.2)
    """
    try:
        composite = _composite(spec, ("bimodal",))
        if composite is None:
            return _parse_simple(spec, spec)
        _, share, subs = composite
        if len(subs) != 2:
            raise ValueError("use bimodal:LONG_SHARE/SHORT/LONG")
        return Bimodal(_parse_simple(subs[0], spec), _parse_simple(subs[1], spec), float(share))
    except ValueError as exc:
        if str(exc).startswith("bad duration spec"):
            raise
        raise ValueError(f"bad duration spec {spec!r}: {exc}") from None


def parse_task_duration(spec: str) -> TaskDuration:
    """Parse a task-duration spec: a :func:`parse_distribution` spec, or
    ``"queue:PER_PENDING/BASE"`` (:class:`QueueGrowth`), or ``"drift:N/BEFORE/AFTER"`` (after
    ``N`` tasks) or ``"drift:Ts/BEFORE/AFTER"`` (after ``T`` seconds) (:class:`Drift`).  The
    parts after ``/`` are simple specs (``SECONDS``, ``MIN:MAX``, ``lognormal:...``).

    >>> parse_task_duration("queue:0.05/1:6")
    QueueGrowth(base=Uniform(low=1.0, high=6.0), per_pending=0.05)
    >>> parse_task_duration("drift:30s/1:6/5:10").after_seconds
    30.0
    """
    composite = _composite(spec, ("queue", "drift"))
    if composite is None:
        return parse_distribution(spec)
    kind, parameter, subs = composite
    try:
        if kind == "queue":
            if len(subs) != 1:
                raise ValueError("use queue:PER_PENDING/BASE")
            return QueueGrowth(_parse_simple(subs[0], spec), float(parameter))
        if len(subs) != 2:
            raise ValueError("use drift:N/BEFORE/AFTER or drift:Ts/BEFORE/AFTER")
        before, after = _parse_simple(subs[0], spec), _parse_simple(subs[1], spec)
        if parameter.lower().endswith("s"):
            return Drift(before, after, after_seconds=float(parameter[:-1]))
        return Drift(before, after, after_tasks=int(parameter))
    except ValueError as exc:
        if str(exc).startswith("bad duration spec"):
            raise
        raise ValueError(f"bad duration spec {spec!r}: {exc}") from None


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


RateShape = Literal["token-bucket", "sliding-window", "fixed-window", "leaky-bucket", "concurrency"]
#: Every :class:`RateLimit` shape, in the order the documentation lists them.
RATE_SHAPES: tuple[RateShape, ...] = (
    "token-bucket",
    "sliding-window",
    "fixed-window",
    "leaky-bucket",
    "concurrency",
)
#: ``(seconds since the first request, requests per second)`` steps of a changing limit.
RateSchedule = tuple[tuple[float, float], ...]


def _to_schedule(steps: object) -> RateSchedule:
    """Accept any iterable of ``(time, rate)`` pairs (lists from JSON, say) as a tuple."""
    if not isinstance(steps, Iterable):
        raise TypeError(f"schedule must be a sequence of (seconds, rate) pairs, got {steps!r}")
    pairs: list[tuple[float, float]] = []
    for step in steps:
        at, rate = step
        pairs.append((float(at), float(rate)))
    return tuple(pairs)


@attrs.frozen
class RateLimit:
    """A per-key request limit of one ``shape`` (see ``docs/simulator.md``, "limiter zoo").

    - ``"token-bucket"`` (default): ``requests_per_second`` refill, ``burst`` capacity
      (default ``ceil(rate)``, following the rate when it changes);
    - ``"sliding-window"``: at most ``floor(rate * window)`` accepted requests in any sliding
      ``window`` seconds (refusals do not count);
    - ``"fixed-window"``: the same count per window, the counter reset every ``window``
      seconds since the key's first request;
    - ``"leaky-bucket"``: queue-free and without burst: a request is accepted only if at
      least ``1/rate`` passed since the last accepted one;
    - ``"concurrency"``: at most ``max_in_flight`` accepted requests being handled at once
      (``requests_per_second`` is ignored; see :meth:`concurrency`).

    Refused requests get 429 ``EXCEEDING_LIMITS``, with a ``Retry-After`` header (whole
    seconds, rounded up) when ``retry_after`` is true and the wait is known, at once when
    ``instant_429`` is true, otherwise after the endpoint's usual latency.  ``schedule``
    changes the rate over time: ``((0, 50), (10, 20), (20, 50))`` is 50/s, then 20/s from
    10 s after the key's first request, then 50/s again from 20 s; before the first step the
    rate is ``requests_per_second``.

    >>> RateLimit(50, schedule=[(10, 20)]).rate_at(12.5)
    20.0
    """

    requests_per_second: float = attrs.field(validator=_non_negative)
    burst: int | None = None
    retry_after: bool = True
    shape: RateShape = "token-bucket"
    instant_429: bool = False
    schedule: RateSchedule = attrs.field(default=(), converter=_to_schedule)
    window: float = 1.0
    max_in_flight: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.shape not in RATE_SHAPES:
            raise ValueError(f"shape must be one of {', '.join(RATE_SHAPES)}, got {self.shape!r}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst!r}")
        if self.burst is not None and self.shape != "token-bucket":
            raise ValueError(f"burst applies to the token-bucket shape only, not {self.shape}")
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(f"window must be a finite number > 0, got {self.window!r}")
        if self.shape == "concurrency":
            if self.max_in_flight is None or self.max_in_flight < 1:
                raise ValueError(
                    f"the concurrency shape needs max_in_flight >= 1, got {self.max_in_flight!r}"
                )
            if self.schedule:
                raise ValueError("schedule applies to the rate shapes, not to concurrency")
        elif self.max_in_flight is not None:
            raise ValueError(f"max_in_flight applies to the concurrency shape, not {self.shape}")
        previous = -math.inf
        for at, rate in self.schedule:
            if not (0 <= at < math.inf and previous < at):
                raise ValueError(
                    f"schedule times must be finite, >= 0 and increasing, got {self.schedule!r}"
                )
            if not (rate >= 0 and math.isfinite(rate)):
                raise ValueError(f"schedule rates must be finite numbers >= 0, got {rate!r}")
            previous = at

    @classmethod
    def concurrency(
        cls, max_in_flight: int, *, retry_after: bool = True, instant_429: bool = False
    ) -> RateLimit:
        """A limit of ``max_in_flight`` accepted requests in flight per key.

        >>> RateLimit.concurrency(4).max_in_flight
        4
        """
        return cls(
            0.0,
            retry_after=retry_after,
            shape="concurrency",
            instant_429=instant_429,
            max_in_flight=max_in_flight,
        )

    def rate_at(self, elapsed: float) -> float:
        """Requests per second ``elapsed`` seconds after the key's first request."""
        rate = self.requests_per_second
        for at, scheduled in self.schedule:
            if at > elapsed:
                break
            rate = scheduled
        return rate

    def seconds_for(self, requests: float, latency: float = 0.0) -> float:
        """How long ``requests`` take at exactly this limit from the first one: its schedule
        integrated; for the concurrency shape, ``max_in_flight`` at a time of ``latency`` each.
        The ideal a client's wall time is measured against.

        >>> RateLimit(50).seconds_for(500)
        10.0
        >>> RateLimit(50, schedule=((3.0, 20.0), (8.0, 50.0))).seconds_for(500)
        13.0
        >>> RateLimit.concurrency(10).seconds_for(500, latency=0.2)
        10.0
        """
        if self.shape == "concurrency":
            assert self.max_in_flight is not None  # the shape's validator requires it
            return requests * latency / self.max_in_flight
        left, t, rate = float(requests), 0.0, self.requests_per_second
        for at, scheduled in self.schedule:
            if rate > 0 and rate * (at - t) >= left:
                break
            left -= rate * max(0.0, at - t)
            t, rate = max(t, at), scheduled
        return t + left / rate

    def capacity_at(self, rate: float) -> int:
        """The token bucket's size while the rate is ``rate``: ``burst``, else ``ceil(rate)``."""
        return self.burst if self.burst is not None else max(1, math.ceil(rate))

    @property
    def capacity(self) -> int:
        """The bucket's size at ``requests_per_second``."""
        return self.capacity_at(self.requests_per_second)


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

    duration: TaskDuration = Uniform(0.5, 2.0)
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
