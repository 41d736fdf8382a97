"""The simulator's memory: clock, ids, keys, rate buckets, credits, tasks, results, stats.

No HTTP here.  Time comes from an injectable :class:`Clock` so that tests of task progress,
expiry and rate limits advance a :class:`ManualClock` instead of waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import random
import secrets
import time
from collections import Counter, OrderedDict
from typing import Protocol

import attrs

from ._config import RateLimit, SimulatorConfig, TaskContext, sample_task_duration
from ._limits import ServerLimit, server_limit

__all__ = [
    "UNLIMITED_BALANCE",
    "Admission",
    "Clock",
    "ManualClock",
    "SimulatorState",
    "SimulatorStats",
    "StoredResult",
    "SystemClock",
    "Task",
]

#: The balance reported for an account without a :class:`Credits` knob.
UNLIMITED_BALANCE = 1_000_000.0
_SWEEP_EVERY = 512


class Clock(Protocol):
    """Where the simulator reads time and how it waits (latency knobs)."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Real time: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    def now(self) -> float:
        """Seconds from :func:`time.monotonic`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that only moves when told to; for tests.

    ``sleep`` advances the clock instead of waiting (and records the duration in ``slept``),
    so latency knobs cost no real time.

    >>> clock = ManualClock()
    >>> clock.advance(5.0)
    >>> clock.now()
    5.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.slept: list[float] = []

    def now(self) -> float:
        """The current manual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` and yield to the event loop once."""
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


@attrs.define
class SimulatorStats:
    """What the simulator saw, for tests to assert on.  ``reset()`` clears everything.

    - ``requests``: ``Counter`` of ``(endpoint, outcome)``; outcome is ``"OK"``, an
      ``error_detail.code`` or a fault name (``connection_reset``, ``html_502``,
      ``truncated_json``).
    - ``faults``: ``Counter`` of ``(fault, "before" | "after")`` injected.
    - ``in_flight`` / ``max_concurrent``: API requests being handled now / at most at once.
    - ``submits_per_image``: ``Counter`` of sha256 (hex) of accepted, billed uploads.
    - ``polls_per_task``: ``Counter`` of task-result queries per ``task_id``.
    - ``detection_lag``: ``task_id`` -> seconds between the task finishing and the first
      query that observed it finished.
    - ``credits_spent``: credits charged over all keys.
    - ``rate_limited``: requests the rate or concurrency limits refused (429
      ``EXCEEDING_LIMITS``), whether or not a fault then replaced the answer.
    - ``admitted_at``: arrival times (the simulator's clock) of the API requests the limits
      accepted, in order: an accepted rate per second is a histogram of these.
    - ``refused_at``: arrival times of the API requests the limits refused, in order.
    """

    requests: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    faults: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    in_flight: int = 0
    max_concurrent: int = 0
    submits_per_image: Counter[str] = attrs.field(factory=Counter)
    polls_per_task: Counter[str] = attrs.field(factory=Counter)
    detection_lag: dict[str, float] = attrs.field(factory=dict)
    credits_spent: float = 0.0
    rate_limited: int = 0
    admitted_at: list[float] = attrs.field(factory=list)
    refused_at: list[float] = attrs.field(factory=list)

    def count(self, endpoint: str | None = None, outcome: str | None = None) -> int:
        """Requests seen, optionally only for one endpoint and/or outcome.

        >>> SimulatorStats().count("smart-skin", "OK")
        0
        """
        return sum(
            n
            for (ep, out), n in self.requests.items()
            if (endpoint is None or ep == endpoint) and (outcome is None or out == outcome)
        )

    def duplicate_submits(self) -> int:
        """Billed uploads of an image that had already been billed (duplicate paid work)."""
        return sum(n - 1 for n in self.submits_per_image.values() if n > 1)

    def reset(self) -> None:
        """Forget everything seen so far (``in_flight`` keeps counting live requests)."""
        self.requests.clear()
        self.faults.clear()
        self.max_concurrent = self.in_flight
        self.submits_per_image.clear()
        self.polls_per_task.clear()
        self.detection_lag.clear()
        self.credits_spent = 0.0
        self.rate_limited = 0
        self.admitted_at.clear()
        self.refused_at.clear()


@attrs.frozen
class Admission:
    """What the limits said to one API request.

    ``passed``: the limits that accepted it (to release when it is answered); ``refused_by``
    the limit that refused it, if any, with ``wait``, the seconds until a request would be
    accepted (``math.inf``: unknown).
    """

    passed: tuple[ServerLimit, ...]
    refused_by: RateLimit | None = None
    wait: float = 0.0


@attrs.define
class Task:
    """One smart-beauty asynchronous task."""

    task_id: str
    api_key: str
    created_at: float
    duration: float
    queued_fraction: float
    result_token: str | None
    failure_code: str | None
    observed_done: bool = False

    @property
    def completes_at(self) -> float:
        """When the task finishes (succeeds or fails)."""
        return self.created_at + self.duration

    def status_at(self, now: float) -> int:
        """0 queued, 1 processing, 2 finished (failure or success: see ``failure_code``)."""
        if now >= self.completes_at:
            return 2
        if now >= self.created_at + self.duration * self.queued_fraction:
            return 1
        return 0


@attrs.frozen
class StoredResult:
    """A result image, rendered on download from the stored upload (deterministically)."""

    upload: bytes
    retouch_degree: float
    whitening_degree: float
    expires_at: float


class SimulatorState:
    """All mutable state of one simulator instance.

    Single-threaded: only the event loop touches it, so check-then-act sequences are atomic.
    """

    def __init__(self, config: SimulatorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.stats = SimulatorStats()
        seed = config.seed
        self._seed = seed
        # Independent seeded streams, so e.g. enabling latency does not shift fault draws.
        self._id_rng = random.Random(f"{seed}:ids")  # noqa: S311 - simulation, not security
        self._fault_rng = random.Random(f"{seed}:faults")  # noqa: S311
        self._latency_rngs: dict[str, random.Random] = {}
        self._keys = frozenset(config.api_keys)
        self._key_limits: dict[str, ServerLimit] = {}
        self._server_limit: tuple[ServerLimit, RateLimit] | None = None
        if config.concurrency_limit is not None:
            # One limit shared by every key, its 429s sent after the usual latency.
            shared = RateLimit.concurrency(config.concurrency_limit, retry_after=False)
            rng = random.Random(f"{seed}:limit")  # noqa: S311
            self._server_limit = (server_limit(shared, rng), shared)
        start = config.credits.balance if config.credits is not None else UNLIMITED_BALANCE
        self._balances: dict[str, float] = dict.fromkeys(config.api_keys, start)
        self._uploads_seen: Counter[str] = Counter()
        self.tasks: dict[str, Task] = {}
        self._tasks_submitted = 0
        self._first_task_at: float | None = None
        self._unfinished: list[float] = []  # a heap of the unfinished tasks' completion times
        self.results: dict[str, StoredResult] = {}
        #: Rendered result images by token (a small LRU kept by the app).
        self.rendered: OrderedDict[str, bytes] = OrderedDict()
        self._stores = 0

    # ------------------------------------------------------------------ ids and draws

    def new_id(self) -> str:
        """A fresh 32-hex-digit id (request ids, log ids, task ids), seeded."""
        return f"{self._id_rng.getrandbits(128):032x}"

    def draw_fault(self) -> tuple[str | None, bool]:
        """One fault draw: the fault's name (or ``None``) and whether it hits after processing."""
        faults = self.config.faults
        name = faults.pick(self._fault_rng.random())
        after = name is not None and self._fault_rng.random() < faults.after_processing_share
        return name, after

    def draw_latency(self, endpoint: str) -> float:
        """The extra delay for one request to ``endpoint`` (0 when not configured)."""
        dist = self.config.latency.for_endpoint(endpoint)
        if dist is None:
            return 0.0
        rng = self._latency_rngs.get(endpoint)
        if rng is None:
            rng = random.Random(f"{self._seed}:latency:{endpoint}")  # noqa: S311
            self._latency_rngs[endpoint] = rng
        return dist.sample(rng)

    # ------------------------------------------------------------------ access control

    def is_known_key(self, key: str | None) -> bool:
        """Whether ``key`` authenticates."""
        return key is not None and key in self._keys

    def admit(self, key: str) -> Admission:
        """Pass one API request from ``key`` through its rate limit, then the server-wide
        ``concurrency_limit``.  Call :meth:`release` with the answer once it is sent."""
        now = self.clock.now()
        passed: list[ServerLimit] = []
        for limit, config in self._limits_for(key):
            wait = limit.admit(now)
            if wait is not None:
                self.stats.rate_limited += 1
                self.stats.refused_at.append(now)
                return Admission(tuple(passed), config, wait)
            passed.append(limit)
        self.stats.admitted_at.append(now)
        return Admission(tuple(passed))

    def release(self, admission: Admission) -> None:
        """The request ``admission`` was made for has been answered."""
        now = self.clock.now()
        for limit in admission.passed:
            limit.done(now)

    def _limits_for(self, key: str) -> list[tuple[ServerLimit, RateLimit]]:
        limits = []
        config = self.config.rate_limit
        if config is not None:
            limit = self._key_limits.get(key)
            if limit is None:
                rng = random.Random(f"{self._seed}:limit:{key}")  # noqa: S311
                limit = self._key_limits[key] = server_limit(config, rng)
            limits.append((limit, config))
        if self._server_limit is not None:
            limits.append(self._server_limit)
        return limits

    # ------------------------------------------------------------------ credits

    def balance(self, key: str) -> float:
        """The credits left for ``key``."""
        return self._balances.get(key, 0.0)

    def reserve_credit(self, key: str) -> bool:
        """Take the cost of one billed call from ``key``; ``False`` if it cannot pay.

        Call :meth:`refund_credit` if the call then fails.
        """
        cost = self.config.credits.cost_per_call if self.config.credits is not None else 1.0
        balance = self._balances.get(key, 0.0)
        if self.config.credits is not None and balance < cost:
            return False
        self._balances[key] = balance - cost
        self.stats.credits_spent += cost
        return True

    def refund_credit(self, key: str) -> None:
        """Give back a reservation made by :meth:`reserve_credit`."""
        cost = self.config.credits.cost_per_call if self.config.credits is not None else 1.0
        self._balances[key] = self._balances.get(key, 0.0) + cost
        self.stats.credits_spent -= cost

    def total_credits(self) -> float:
        """The account's ``total`` as reported by query-credits."""
        credits = self.config.credits
        if credits is None:
            return UNLIMITED_BALANCE
        return credits.total if credits.total is not None else credits.balance

    # ------------------------------------------------------------------ uploads, tasks, results

    def record_billed_upload(self, digest: str) -> int:
        """Count an accepted upload; returns how many times this image was accepted before."""
        previous = self._uploads_seen[digest]
        self._uploads_seen[digest] += 1
        self.stats.submits_per_image[digest] += 1
        return previous

    def store_result(
        self, upload: bytes, retouch_degree: float, whitening_degree: float, available_at: float
    ) -> str:
        """Keep a result (expiring ``result_ttl`` after ``available_at``); returns its token."""
        self._stores += 1
        if self._stores % _SWEEP_EVERY == 0:
            self.sweep()
        token = secrets.token_urlsafe(24)  # unguessable, like the provider's signed URLs
        self.results[token] = StoredResult(
            upload, retouch_degree, whitening_degree, available_at + self.config.result_ttl
        )
        return token

    def create_task(self, key: str, digest: str, upload: bytes, beauty_level: float) -> Task:
        """Register a smart-beauty task; its duration and fate are drawn from the seed and the
        image, so the same image submitted in the same order always behaves the same (a
        duration that reads the :class:`TaskContext`, such as a growing queue, also depends on
        the tasks submitted before)."""
        occurrence = self.record_billed_upload(digest)
        rng = random.Random(f"{self._seed}:task:{digest}:{occurrence}")  # noqa: S311
        behaviour = self.config.tasks
        now = self.clock.now()
        duration = sample_task_duration(behaviour.duration, rng, self._task_context(now))
        fails = rng.random() < behaviour.failure_share
        heapq.heappush(self._unfinished, now + duration)
        self._tasks_submitted += 1
        token = None
        if not fails:
            token = self.store_result(upload, beauty_level, beauty_level, now + duration)
        task = Task(
            task_id=self.new_id(),
            api_key=key,
            created_at=now,
            duration=duration,
            queued_fraction=behaviour.queued_fraction,
            result_token=token,
            failure_code=behaviour.failure_code if fails else None,
        )
        self.tasks[task.task_id] = task
        return task

    def _task_context(self, now: float) -> TaskContext:
        """What a duration may depend on at a submit at ``now`` (all keys together)."""
        if self._first_task_at is None:
            self._first_task_at = now
        unfinished = self._unfinished
        while unfinished and unfinished[0] <= now:
            heapq.heappop(unfinished)
        return TaskContext(self._tasks_submitted, now - self._first_task_at, len(unfinished))

    def find_task(self, task_id: str, key: str) -> Task | None:
        """The task, if it exists, belongs to ``key`` and has not expired."""
        task = self.tasks.get(task_id)
        if task is None or task.api_key != key:
            return None
        if self.clock.now() > task.completes_at + self.config.result_ttl:
            return None
        return task

    def observe_task(self, task: Task, status: int) -> None:
        """Count a poll; on the first poll that sees the task finished, record the lag."""
        self.stats.polls_per_task[task.task_id] += 1
        if status == 2 and not task.observed_done:
            task.observed_done = True
            self.stats.detection_lag[task.task_id] = self.clock.now() - task.completes_at

    def find_result(self, token: str) -> tuple[StoredResult | None, bool]:
        """``(result, expired)``; ``(None, False)`` for an unknown token."""
        result = self.results.get(token)
        if result is None:
            return None, False
        return result, self.clock.now() > result.expires_at

    def sweep(self) -> None:
        """Forget expired results and tasks (keeps memory bounded on long runs)."""
        now = self.clock.now()
        ttl = self.config.result_ttl
        # Expired results are kept one more TTL, so they answer "expired", not "unknown".
        for token in [t for t, r in self.results.items() if now > r.expires_at + ttl]:
            del self.results[token]
        for task_id in [i for i, t in self.tasks.items() if now > t.completes_at + 2 * ttl]:
            del self.tasks[task_id]

    @staticmethod
    def digest(data: bytes) -> str:
        """The sha256 hex digest identifying an upload."""
        return hashlib.sha256(data).hexdigest()
