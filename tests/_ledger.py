"""A billing ledger for batch scenarios: did anything get paid for twice that need not be?

The simulator counts what was paid: ``sim.stats.submits_per_image`` holds, per SHA-256 of the
uploaded bytes, the billed and accepted calls (a rejected image is refunded and not counted).
:func:`check_ledger` compares that with what the scenario may legitimately have paid.

The allowance, precisely. Every input may be paid for:

* **once**;
* plus once per **interrupted send** recorded in the journal: each ``mark_sending`` on a row
  that was still ``SENDING`` counts one (``JournalEntry.interrupted_sends``). A row is left
  ``SENDING`` only when the process died (SIGKILL, OOM) between writing ``SENDING`` and
  writing the request's answer, so the request may have been billed without our knowing;
  sending again may pay twice. All rows whose ``source`` is the input count (one per
  operation and parameter set);
* plus the reruns the test **allows** explicitly (``rerun_allowed``): it made a paid result
  unreachable on purpose (an expired URL, a failed task) and running again is the only way;

and, shared by all inputs, the **ambiguous retries** of every client the scenario used
(``client.stats.ambiguous_retries``, summed and passed in): each retried a billed call whose
first attempt may have been processed, and the client does not record for which image, so
they form one pool any input may draw on. A process that was killed cannot report its
client's counts: scenarios that kill a process inject no transport faults, so its ambiguous
retries are zero by construction, and its in-flight requests are the interrupted sends
above.

The check fails when an image nobody gave was paid for, or when the inputs' excess over
their own allowances is larger than the pool. The failure message lists every input with
its paid, interrupted and allowed counts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from ailab_async.batch.journal import Journal
from ailab_async.testing.simulator import Simulator


@attrs.frozen
class InputBill:
    """What one input cost, and what it was allowed to."""

    path: Path
    digest: str
    paid: int
    interrupted_sends: int
    allowed_reruns: int

    @property
    def excess(self) -> int:
        return max(0, self.paid - 1 - self.interrupted_sends - self.allowed_reruns)


@attrs.frozen
class Ledger:
    """The bill of a scenario: per input, plus images paid for that were no input."""

    inputs: tuple[InputBill, ...]
    strangers: Mapping[str, int]
    ambiguous_retries: int

    @property
    def total_paid(self) -> int:
        return sum(bill.paid for bill in self.inputs) + sum(self.strangers.values())

    @property
    def excess(self) -> int:
        return sum(bill.excess for bill in self.inputs)

    def table(self) -> str:
        rows = [f"{'input':40} {'paid':>5} {'interrupted':>11} {'allowed':>7}"]
        rows += [
            f"{str(bill.path)[-40:]:40} {bill.paid:5} {bill.interrupted_sends:11} "
            f"{bill.allowed_reruns:7}"
            for bill in self.inputs
        ]
        rows += [f"not an input {digest[:12]}: paid {n}" for digest, n in self.strangers.items()]
        rows.append(
            f"excess {self.excess}, ambiguous retries {self.ambiguous_retries}, "
            f"total paid {self.total_paid}"
        )
        return "\n".join(rows)


async def journal_interrupts(journals: Iterable[str | os.PathLike[str]]) -> dict[Path, int]:
    """Interrupted sends per input path (resolved), summed over every row of ``journals``.

    The journals must be closed (each is locked while open).
    """
    found: dict[Path, int] = {}
    for location in journals:
        async with await Journal.open(location) as journal:
            async for entry in journal.iter_entries():
                source = Path(entry.source).resolve()
                # getattr: the ledger also checks code from before the count existed.
                interrupted = getattr(entry, "interrupted_sends", 0)
                found[source] = found.get(source, 0) + interrupted
    return found


async def check_ledger(
    sim: Simulator,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    journals: Iterable[str | os.PathLike[str]] = (),
    ambiguous_retries: int = 0,
    rerun_allowed: Mapping[str | os.PathLike[str], int] | None = None,
    every_input_paid: bool = False,
) -> Ledger:
    """Check the simulator's bill against the allowance (see the module docstring).

    ``inputs`` are the photo files of the scenario (read now: they must still hold the
    bytes that were uploaded). Returns the :class:`Ledger` for further assertions; raises
    ``AssertionError`` with the per-input table when the bill is too high, or, with
    ``every_input_paid``, when an input was never paid for.
    """
    interrupts = await journal_interrupts(journals)
    allowed = {Path(p).resolve(): n for p, n in (rerun_allowed or {}).items()}
    paid = dict(sim.stats.submits_per_image)
    bills = []
    for raw in inputs:
        path = Path(raw).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        bills.append(
            InputBill(
                path=path,
                digest=digest,
                paid=paid.pop(digest, 0),
                interrupted_sends=interrupts.get(path, 0),
                allowed_reruns=allowed.get(path, 0),
            )
        )
    ledger = Ledger(tuple(bills), paid, ambiguous_retries)
    assert not ledger.strangers, "paid for images that were no input\n" + ledger.table()
    assert ledger.excess <= ambiguous_retries, "paid twice without cause\n" + ledger.table()
    if every_input_paid:
        assert all(bill.paid for bill in bills), "an input was never paid for\n" + ledger.table()
    return ledger
