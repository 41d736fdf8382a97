"""Before a batch sends anything: its spec, its journal, what it will pay for, and whether
the balance covers that.

Deciding is kept apart from doing: :func:`batch_spec` and :func:`credit_check` are pure;
:func:`preflight` and :func:`check_credits` read the journal or ask the API (a free call);
what each item will cost is the runner's own plan
(:func:`~ailab_async.batch.planned_actions`), counted. Nothing here prints: a
front end (the command line) words the answers for its users.

The rules live here so every front end applies the same ones:

- a run against a throw-away simulator keeps its own journal, :data:`SIMULATED_JOURNAL`,
  and belongs to no account: a real run must never count a simulated result as done, nor a
  simulated run reset a real (paid) task;
- that simulator forgets its tasks and result URLs when it stops, so items of an earlier
  simulated run waiting on them go back to pending (:func:`forget_dead_simulator_work`);
- the batch runs on the journal its pre-flight opened: no other run can take the lock in
  between.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..client import AILabClient
from ..errors import AILabError, AuthenticationError, ConfigurationError
from ._model import BatchSpec, Operation
from ._paths import BatchItem
from ._runner import planned_actions
from .journal import ItemState, Journal, ResumeAction

__all__ = [
    "SIMULATED_JOURNAL",
    "CreditVerdict",
    "Preflight",
    "SimulatedJournalError",
    "batch_spec",
    "billable_items",
    "check_credits",
    "credit_check",
    "forget_dead_simulator_work",
    "preflight",
]

#: The journal of runs against a throw-away simulator, in the output folder, apart from the
#: real one (``.ailab-journal.sqlite3``).
SIMULATED_JOURNAL = ".ailab-journal-simulated.sqlite3"

#: Journal states whose next step needs the simulator that produced them (its task ids and
#: result URLs): once it is gone, such an item can only run again (for free).
_WAITING_ON_THE_SERVER = frozenset({ItemState.SUBMITTED, ItemState.SUCCEEDED})


#: How long the pre-flight's balance query may take, retries included: it only warns, so it
#: must not hold the batch up.
_CREDITS_DEADLINE = 30.0


class SimulatedJournalError(ConfigurationError):
    """A journal path was given for a simulated run, which always keeps its own
    (:data:`SIMULATED_JOURNAL`). Nothing was sent."""


def batch_spec(
    operation: Operation,
    params: Mapping[str, Any],
    out_dir: Path,
    *,
    journal_path: Path | None = None,
    retry_failed: bool = False,
    simulated: bool = False,
    report: bool = True,
) -> BatchSpec:
    """The spec of a batch, with the journal rule of simulated runs applied.

    >>> batch_spec(Operation.SKIN, {}, Path("out"), simulated=True).journal_file
    PosixPath('out/.ailab-journal-simulated.sqlite3')
    """
    if simulated:
        if journal_path is not None:
            raise SimulatedJournalError(
                f"a simulated run keeps its own journal, {SIMULATED_JOURNAL} in the output folder"
            )
        journal_path = out_dir / SIMULATED_JOURNAL
    return BatchSpec(
        operation=operation,
        params=params,
        out_dir=out_dir,
        journal_path=journal_path,
        retry_failed=retry_failed,
        report=report,
        # A simulator's URL changes every run and forgets its tasks: no account to check.
        check_account=not simulated,
    )


async def forget_dead_simulator_work(journal: Journal) -> int:
    """Send items of an earlier simulated run that wait on its (stopped) simulator back to
    pending; how many there were. Running them again costs nothing."""
    stale = await journal.entries(states=_WAITING_ON_THE_SERVER)
    for entry in stale:
        await journal.reset(entry.item_id)
    return len(stale)


async def billable_items(journal: Journal, items: Sequence[BatchItem], spec: BatchSpec) -> int:
    """How many of ``items`` will send a billed request when ``spec`` runs on ``journal``:
    the runner's own plan (:func:`~ailab_async.batch.planned_actions`), counted. An input
    that cannot be identified is not counted: it fails without a request."""
    actions = await planned_actions(journal, items, spec)
    return sum(action is ResumeAction.RUN for action in actions)


@attrs.frozen
class Preflight:
    """What :func:`preflight` found: the open journal (the batch runs on it:
    ``run_batch(..., journal=found.journal)``), the billed requests the batch will send, and
    how many items of an earlier simulated run were sent back to pending."""

    journal: Journal
    billable: int
    reset: int = 0


@contextlib.asynccontextmanager
async def preflight(
    items: Sequence[BatchItem],
    spec: BatchSpec,
    *,
    simulated: bool = False,
    reassign_account: bool = False,
) -> AsyncIterator[Preflight]:
    """Open the batch's journal and look at it before anything is sent; it stays open (and
    locked) until the block ends, so run the batch inside it.

    Opening takes the journal's lock: when another run works on the same journal this
    raises :class:`~ailab_async.batch.journal.JournalBusyError` before anything is paid for
    (and before a simulated run resets what the other run waits on), and no run can slip in
    between the look and the batch. It also records, or checks, whose journal it is
    (``spec.account``: :class:`~ailab_async.batch.journal.JournalAccountError` for another
    account's journal, unless ``reassign_account``).

    >>> async with preflight(items, spec) as found:  # doctest: +SKIP
    ...     report = await run_batch(client, items, spec, journal=found.journal)
    """
    opened = await Journal.open(
        spec.journal_file, account=spec.account, reassign_account=reassign_account
    )
    async with opened as journal:
        reset = await forget_dead_simulator_work(journal) if simulated else 0
        billable = await billable_items(journal, items, spec)
        yield Preflight(journal=journal, billable=billable, reset=reset)


@attrs.frozen
class CreditVerdict:
    """Whether the balance covers a batch's billed requests.

    ``balance`` is ``None`` when it was not asked (nothing to pay for) or could not be
    learnt (``error`` says why; the batch goes on, as the API refuses unpaid calls anyway).
    """

    needed: int
    balance: float | None = None
    error: AILabError | None = None

    @property
    def short(self) -> bool:
        """The balance is known and cannot pay for every billed request."""
        return self.balance is not None and self.balance < self.needed


def credit_check(balance: float, needed: int) -> CreditVerdict:
    """The verdict for a known ``balance``. Pure.

    >>> credit_check(2, 4).short, credit_check(4, 4).short
    (True, False)
    """
    return CreditVerdict(needed=needed, balance=balance)


async def check_credits(client: AILabClient, needed: int) -> CreditVerdict:
    """Ask the balance (a free call) when something is to be paid for, and judge it.

    A refused key raises :class:`~ailab_async.errors.AuthenticationError`: every item
    would fail, and be journaled as failed for good, so the batch must stop. Other
    failures come back as the verdict's ``error``.
    """
    if needed == 0:
        return CreditVerdict(needed=0)
    try:
        credits = await client.credits(deadline=_CREDITS_DEADLINE)
    except AuthenticationError:
        raise
    except AILabError as exc:
        return CreditVerdict(needed=needed, error=exc)
    return credit_check(credits.balance, needed)
