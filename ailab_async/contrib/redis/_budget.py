"""The shared budget's state in Redis: one hash, read and written by the one rate policy.

This module decides nothing on its own account: every operation loads the
:class:`~ailab_async._aimd.AimdState` from the hash, runs the same
:class:`~ailab_async._aimd.AimdPolicy` the in-process limiter runs, on Redis's clock
(``TIME``, so the processes' clocks never have to agree), and writes the state back, all in
one optimistic transaction (``WATCH`` / ``MULTI`` / ``EXEC`` through redis-py's
``transaction`` helper, run again if another process wrote the hash meanwhile). There is no
second copy of the policy to drift from the first. :class:`SharedBudget` is the state's
Python face: one transaction per operation, nothing else (the limiter that sleeps, batches
reports and falls back is in ``_limiter.py``); a reservation that finds the shared window full
only reads, and writes now and then that it waited.

Each process's booked slots are also counted in a field of their own (``held:<id>``), so that
the slots of a process that died are forgotten after five minutes of its silence, and a
release told twice takes no other process's request out of the count.

Why transactions and not a Lua script: a script would be a second implementation of the
policy, in another language, that the tests would have to keep in step with the first. At
the request rates an API key allows (tens per second, shared by a few processes) a
transaction costs a few round trips on a local network and rarely has to run twice.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from ..._aimd import BACKOFF, MIN_RATE, AimdPolicy, AimdState

__all__ = ["Decision", "Report", "SharedBudget"]

#: How long a process's booked slots stay counted in flight after its last transaction
#: (seconds): a live process that holds them makes one at least every minute (the limiter's
#: ``_KEEP_ALIVE``, with nothing else to tell if need be); a process that died (or never
#: reports again) holding them no longer keeps them in the shared count for good.
_BOOKED_TTL = 300.0
#: The hash field prefix of each process's booked slots: ``held:<budget id>`` holds
#: ``"<count>,<time of that process's last transaction>"``.
_HELD = "held:"
#: How long the mark of an applied transaction is kept (seconds): it is read by the same
#: transaction run again at once, or, abandoned in doubt, by this budget's next one, which
#: may come after an outage of any length (see ``_transaction``); a process that comes back
#: later than this has had its slots forgotten anyway. Marks of answered transactions are
#: deleted by the next transaction.
_MARK_TTL = _BOOKED_TTL
#: What a mark says: the transaction booked a slot, or told its report alone; or it was in
#: doubt and has been settled.
_BOOKED, _TOLD, _SETTLED = b"booked", b"told", b"settled"


@attrs.frozen
class Decision:
    """What the shared budget answered, and the state it left."""

    #: Seconds to wait: until the booked slot (``booked``), or before asking again
    #: (``inf``: until a request in flight is released).
    wait: float
    #: Whether a send slot was booked (at ``now + wait``).
    booked: bool
    #: The shared pace now, in requests per second.
    rate: float
    #: Redis's clock when the transaction ran, in seconds since the epoch.
    now: float
    #: Whether a ``429`` report cut the shared rate.
    cut: bool = False
    #: Whether the rate is known (a 429 seen or a rate configured), not still probing.
    known: bool = True
    #: When a sender (of any process) was last held back by the window of requests in
    #: flight, as the state noted it (Redis's clock; ``-inf``: never).
    window_bound_at: float = -math.inf
    #: This machine's wall clock (``time.time()``) when Redis's clock read ``now``: the
    #: middle of the ``TIME`` command's round trip, give or take ``read_error`` seconds (half
    #: of it); ``None`` when ``now`` was given. A store sleeps until a slot on Redis's clock
    #: by this reading (what happened after ``TIME``, the rest of the transaction and the
    #: hand-off to the sender, takes nothing off the sleep otherwise).
    read_at: float | None = None
    read_error: float = math.inf
    #: How late (seconds) a sender may still send on its booked slot; one that wakes later
    #: gives it back and books another (see :meth:`~ailab_async._aimd.AimdPolicy.late_limit`).
    late_limit: float = math.inf

    @property
    def send_at(self) -> float:
        """The booked send time, on Redis's clock."""
        return self.now + self.wait


@attrs.frozen
class Report:
    """What a process has to tell the budget: answers since its last call, each with the
    send time and the answer time (Redis's clock)."""

    #: ``(sent_at, answered_at)`` of requests answered without a rate-limit error.
    successes: Sequence[tuple[float, float]] = ()
    #: Answer times of requests that are over, whatever their outcome.
    releases: Sequence[float] = ()


class SharedBudget:
    """The shared state's operations: one optimistic transaction each.

    ``rate`` is this process's configured ceiling (``None``: find the limit);
    ``horizon`` is how far ahead :meth:`reserve` books a slot (a slot costs a round trip, so
    a sender books a little ahead and sleeps until it). ``now`` overrides Redis's clock
    (tests of the decisions); leave it ``None``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        *,
        rate: float | None,
        min_rate: float = MIN_RATE,
        backoff_factor: float = BACKOFF,
        horizon: float = 0.0,
        ttl: float = 300.0,
    ) -> None:
        self.key = key
        self._client = client
        self._policy = AimdPolicy(
            rate, min_rate=min_rate, backoff_factor=backoff_factor, books_ahead=horizon > 0
        )
        self._horizon = horizon
        self._ttl = ttl
        identity = uuid.uuid4().hex
        # The field counting the slots this budget booked and has not released yet.
        self._held = f"{_HELD}{identity}"
        # Marks of this budget's transactions: key prefix and sequence (see _transaction).
        self._marks = f"{key}:applied:{identity}:"
        self._sequence = itertools.count()
        # Transactions abandoned without an answer (mark, report): settled by the next one.
        self._in_doubt: list[tuple[str, Report]] = []
        # Marks of transactions answered, deleted by the next one.
        self._answered: list[str] = []

    @property
    def in_doubt(self) -> bool:
        """Whether a transaction was abandoned without its answer and is not settled yet
        (the next transaction settles it)."""
        return bool(self._in_doubt)

    async def reserve(self, report: Report = Report(), *, now: float | None = None) -> Decision:
        """Apply ``report``, then book the next shared send slot if it is within the
        horizon (else say how long to wait before asking again)."""

        def book(policy: AimdPolicy, at: float) -> Decision:
            wait, booked = policy.reserve(at, self._horizon)
            return self._decision(at, wait=wait, booked=booked)

        return await self._transaction(report, book, now, looking=True)

    async def report(self, report: Report, *, now: float | None = None) -> Decision:
        """Apply ``report`` (successes and releases) and nothing else."""
        return await self._transaction(report, lambda _policy, at: self._decision(at), now)

    async def rate_limited(
        self,
        sent_at: float,
        retry_after: float | None = None,
        report: Report = Report(),
        *,
        now: float | None = None,
    ) -> Decision:
        """Apply ``report`` (which should include this request's release), then a ``429``
        for a request sent at ``sent_at`` (Redis time)."""

        def refused(policy: AimdPolicy, at: float) -> Decision:
            cut = policy.on_rate_limited(sent_at, at, retry_after)
            return self._decision(at, cut=cut)

        return await self._transaction(report, refused, now)

    async def leave(self, report: Report = Report(), *, now: float | None = None) -> Decision:
        """Apply ``report``, then release every slot this budget booked and has not
        released (its process is closing: whatever it still holds is over for the others)."""
        return await self._transaction(report, lambda _policy, at: self._decision(at), now, True)

    async def peek(self, *, now: float | None = None) -> Decision:
        """The shared pace now, changing nothing (also the reconnection probe)."""
        fields = await self._client.hgetall(self.key)
        reading, at = (None, now) if now is not None else await self._reading()
        self._policy.state = AimdState.from_fields(fields)
        return _stamped(self._decision(at), reading)

    async def state(self) -> AimdState:
        """The shared state as stored (for tests and health checks)."""
        return AimdState.from_fields(await self._client.hgetall(self.key))

    # -- internals ---------------------------------------------------------------------------

    def _settle(self, doubts: list[tuple[str, Report]], marks: list[Any], held: int) -> int:
        """Settle the transactions in doubt from their marks (as read); return the slots
        this budget holds after."""
        for (_, report), mark in zip(doubts, marks, strict=True):
            if mark is None:  # never applied
                held = self._tell(report, held)
            elif mark == _BOOKED and held > 0:  # applied: its slot was never handed out
                held -= 1
                self._policy.forget(1)
        return held

    def _tell(self, report: Report, held: int) -> int:
        """Apply ``report`` to the policy; return the slots this budget holds after it."""
        policy = self._policy
        for sent_at, answered_at in report.successes:
            policy.on_success(sent_at, answered_at)
        for answered_at in report.releases:
            # More releases than slots held: told twice, or forgotten already (see
            # _BOOKED_TTL); another process's requests stay counted.
            policy.release(answered_at, counted=held > 0)
            held = max(0, held - 1)
        return held

    def _write(
        self, pipe: Pipeline, at: float, fields: dict[Any, Any], held: int, gone: dict[str, int]
    ) -> None:
        """Queue the writes of the state, of this budget's held slots and of the fields of
        those forgotten, and the key's expiry (in a MULTI)."""
        state = self._policy.state
        pipe.hset(self.key, mapping=state.to_fields())  # type: ignore[arg-type]
        if held:
            pipe.hset(self.key, self._held, f"{held},{at!r}")
        dropped = [field for field in gone if field != self._held]
        if not held and (self._held in fields or self._held.encode() in fields):
            dropped.append(self._held)
        if dropped:
            pipe.hdel(self.key, *dropped)
        # Abandoned budgets vanish; one paused by a long Retry-After outlives the pause.
        paused = state.paused_until - at if math.isfinite(state.paused_until) else 0.0
        pipe.pexpire(self.key, math.ceil((max(0.0, paused) + self._ttl) * 1000))

    def _held_slots(self, fields: dict[Any, Any], at: float) -> tuple[int, dict[str, int]]:
        """The slots this budget holds, and those of processes silent for longer than
        :data:`_BOOKED_TTL` (theirs, and this one's after such a silence), by field."""
        held = 0
        gone: dict[str, int] = {}
        for raw_field, raw_value in fields.items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
            if not field.startswith(_HELD):
                continue
            value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
            count_text, _, touched_text = value.partition(",")
            try:
                count, touched = int(count_text), float(touched_text)
            except ValueError:  # written by another version: nothing to count
                count, touched = 0, -math.inf
            if at - touched > _BOOKED_TTL:
                gone[field] = count
            elif field == self._held:
                held = count
        return held, gone

    def _decision(
        self, at: float, *, wait: float = 0.0, booked: bool = False, cut: bool = False
    ) -> Decision:
        policy = self._policy
        known = policy.configured is not None or policy.state.cut
        return Decision(
            wait,
            booked,
            policy.rate(at),
            at,
            cut,
            known,
            policy.state.window_bound_at,
            late_limit=policy.late_limit(),
        )

    async def _reading(
        self, pipe: Pipeline | None = None
    ) -> tuple[tuple[float, float, float], float]:
        """Redis's clock, with this machine's wall clock when it was read (the middle of
        the round trip) and the error of that (half the round trip); and Redis's clock."""
        before = time.time()
        seconds, microseconds = await (self._client if pipe is None else pipe).time()
        after = time.time()
        at = float(seconds) + float(microseconds) / 1e6
        return (at, (before + after) / 2, (after - before) / 2), at

    async def _transaction(
        self,
        report: Report,
        decide: Callable[[AimdPolicy, float], Decision],
        now: float | None,
        leaving: bool = False,
        looking: bool = False,
    ) -> Decision:
        # redis-py runs ``run`` again after a timeout or lost connection while the key is
        # watched, EXEC's answer included: an EXEC that Redis applied and whose answer was
        # lost was applied twice (its releases told twice; a slot booked twice, the first
        # never used, in flight for good). Each run therefore marks, in the same MULTI,
        # that this transaction was applied (a key of its own: the same hash slot, never
        # watched), and a run again that finds the mark does nothing and returns the
        # first run's answer.
        #
        # A transaction abandoned without its answer (the caller's deadline, a connection
        # lost past redis-py's retry) is in doubt: Redis may have applied it or not. The
        # mark says which, and what it did ("booked": a slot nobody was handed; "told":
        # its report alone), so this budget's next transaction settles it: it tells the
        # report of one never applied, gives back the slot of one that booked, and marks
        # it settled. (Told again by the caller instead, an applied release was told
        # twice, and a booked slot stayed in flight for good.)
        #
        # A reservation that finds the window full (``looking``) and has nothing else to
        # write is a look, not a transaction: WATCH, HGETALL, TIME, UNWATCH. Every waiting
        # process looks every few milliseconds; only the note that a sender is held back
        # by the window is written, and at most every half round trip (see
        # AimdPolicy.window_wait_is_news).
        mark = f"{self._marks}{next(self._sequence)}"
        first: list[Decision] = []
        # The transactions in doubt this one settles, and the marks it deletes (those of
        # transactions answered: no longer read); whether it wrote.
        settling: list[tuple[str, Report]] = []
        deleting: list[str] = []
        wrote = [False]

        async def run(pipe: Pipeline) -> Decision:
            # Immediate mode (after WATCH): each command answers at once.
            if first and await pipe.exists(mark):
                pipe.multi()  # type: ignore[no-untyped-call]
                return first[0]
            settling[:] = self._in_doubt
            deleting[:] = self._answered
            outcomes = [await pipe.get(doubt) for doubt, _ in settling]
            fields: dict[Any, Any] = await pipe.hgetall(self.key)
            reading, at = (None, now) if now is not None else await self._reading(pipe)
            policy = self._policy
            policy.state = AimdState.from_fields(fields)
            held, gone = self._held_slots(fields, at)
            policy.forget(sum(gone.values()))
            held = self._settle(settling, outcomes, held)
            quiet = not (settling or gone or report.successes or report.releases or leaving)
            news = policy.window_wait_is_news(at)
            held = self._tell(report, held)
            if leaving:
                held = self._tell(Report(releases=[at] * held), held)
            result = _stamped(decide(policy, at), reading)
            if looking and quiet and not news and not result.booked and math.isinf(result.wait):
                # UNWATCH, and no MULTI: a look writes nothing.
                await pipe.reset()  # type: ignore[no-untyped-call]
                wrote[0] = False
                return result
            wrote[0] = True
            if result.booked:
                held += 1
            pipe.multi()  # type: ignore[no-untyped-call]
            self._write(pipe, at, fields, held, gone)
            marked = math.ceil(_MARK_TTL * 1000)
            pipe.set(mark, _BOOKED if result.booked else _TOLD, px=marked)
            for doubt, _ in settling:
                pipe.set(doubt, _SETTLED, px=marked)
            if deleting:
                pipe.delete(*deleting)
            first[:] = [result]
            return result

        try:
            result: Decision = await self._client.transaction(
                run, self.key, value_from_callable=True
            )
        except BaseException:
            self._in_doubt.append((mark, report))
            raise
        if wrote[0]:
            self._note_answered(mark, settling, deleting)
        return result

    def _note_answered(
        self, mark: str, settled: list[tuple[str, Report]], deleted: list[str]
    ) -> None:
        """A transaction was answered: the doubts it settled are over, the marks it deleted
        gone; its own mark, and theirs, are to be deleted by the next one."""
        settled_marks = [doubt for doubt, _ in settled]
        self._in_doubt = [item for item in self._in_doubt if item[0] not in settled_marks]
        self._answered = [m for m in self._answered if m not in deleted]
        self._answered += [mark, *settled_marks]


def _stamped(decision: Decision, reading: tuple[float, float, float] | None) -> Decision:
    """``decision`` with when, by this machine's clock, Redis read its own (see
    :meth:`SharedBudget._reading`)."""
    if reading is None:
        return decision
    _, read_at, read_error = reading
    return attrs.evolve(decision, read_at=read_at, read_error=read_error)
