"""What a batch decides before it sends anything (``ailab_async.batch._plan``): the journal
rule of simulated runs, which items will be paid for, and whether the balance covers them.

The rules are tested here with tables, without the command line; the CLI tests check only
how their answers are worded.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ailab_async.batch import BatchItem, Operation
from ailab_async.batch._plan import (
    SIMULATED_JOURNAL,
    CreditVerdict,
    SimulatedJournalError,
    batch_spec,
    billable_items,
    credit_check,
    forget_dead_simulator_work,
    preflight,
)
from ailab_async.batch.journal import ItemIdentity, ItemState, Journal, JournalBusyError
from ailab_async.errors import ConfigurationError, ServerError

NOW = dt.datetime.now(dt.timezone.utc)
S = ItemState


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("journal_path", "simulated", "journal_file", "check_account"),
    [
        (None, False, "out/.ailab-journal.sqlite3", True),
        (Path("state/j.sqlite3"), False, "state/j.sqlite3", True),
        (None, True, f"out/{SIMULATED_JOURNAL}", False),
    ],
)
def test_the_journal_and_account_check_of_a_spec(
    journal_path: Path | None, simulated: bool, journal_file: str, check_account: bool
) -> None:
    spec = batch_spec(
        Operation.SKIN, {"retouch_degree": 1}, Path("out"), journal_path=journal_path,
        simulated=simulated,
    )  # fmt: skip
    assert spec.journal_file == Path(journal_file)
    assert spec.check_account is check_account
    assert spec.params == {"retouch_degree": 1}


def test_a_simulated_run_refuses_a_journal_of_its_own_choosing() -> None:
    with pytest.raises(SimulatedJournalError, match=SIMULATED_JOURNAL) as excinfo:
        batch_spec(Operation.SKIN, {}, Path("out"), journal_path=Path("j"), simulated=True)
    assert isinstance(excinfo.value, ConfigurationError)  # nothing was sent: fix the set-up


# --------------------------------------------------------------------------- what is billed


def photos(folder: Path, count: int) -> list[BatchItem]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for number in range(count):
        path = folder / f"p{number}.jpg"
        path.write_bytes(b"photo %d" % number)
        items.append(BatchItem(path, path.name))
    return items


async def test_billable_items_follow_the_journal_identity_and_parameters(tmp_path: Path) -> None:
    items = photos(tmp_path / "in", 4)
    spec = batch_spec(Operation.SKIN, {"retouch_degree": 1}, tmp_path / "out")
    async with await Journal.open(spec.journal_file) as journal:
        assert await billable_items(journal, items, spec) == 4
        for item, state in zip(items[:3], (S.DOWNLOADED, S.FAILED, S.PENDING), strict=True):
            # As the runner claims it: normalised parameters (1 and 1.0 are one operation).
            entry = await journal.claim(
                ItemIdentity.for_path(item.path),
                "smart-skin",
                {"retouch_degree": 1.0},
                source=str(item.path),
                relative=item.relative,
            )
            if state is S.DOWNLOADED:
                await journal.mark_sending(entry.item_id)
                await journal.mark_succeeded(
                    entry.item_id,
                    image_url="https://x/r.png",
                    request_id=None,
                    log_id=None,
                    produced_at=NOW,
                )
                await journal.mark_downloaded(entry.item_id, output_path="o.png")
            elif state is S.FAILED:
                await journal.mark_failed(entry.item_id, code="E", message="m", retryable=False)
        # p0 done, p1 failed for good, p2 pending, p3 never seen.
        assert await billable_items(journal, items, spec) == 2
        retrying = batch_spec(
            Operation.SKIN, {"retouch_degree": 1}, tmp_path / "out", retry_failed=True
        )
        assert await billable_items(journal, items, retrying) == 3
        # Other parameters or another operation: other rows, all billable.
        other = batch_spec(Operation.SKIN, {"retouch_degree": 0.5}, tmp_path / "out")
        assert await billable_items(journal, items, other) == 4
        beauty = batch_spec(Operation.BEAUTY, {"retouch_degree": 1}, tmp_path / "out")
        assert await billable_items(journal, items, beauty) == 4
        # An input that vanished is not paid for: the runner fails it without a request.
        items[3].path.unlink()
        assert await billable_items(journal, items, spec) == 1


async def test_work_that_waited_on_a_gone_simulator_goes_back_to_pending(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / SIMULATED_JOURNAL) as journal:
        states = []
        for number, target in enumerate((S.SUBMITTED, S.SUCCEEDED, S.FAILED, S.PENDING)):
            entry = await journal.claim(
                ItemIdentity(f"id{number}"), "smart-beauty", {}, source="a", relative="a"
            )
            if target is not S.PENDING:
                await journal.mark_sending(entry.item_id)
            if target is S.SUBMITTED:
                await journal.mark_submitted(
                    entry.item_id, task_id="t", request_id=None, log_id=None, submitted_at=NOW
                )
            elif target is S.SUCCEEDED:
                await journal.mark_succeeded(
                    entry.item_id, image_url="https://x/r", request_id=None, log_id=None,
                    produced_at=NOW,
                )  # fmt: skip
            elif target is S.FAILED:
                await journal.mark_failed(entry.item_id, code="E", message="m", retryable=True)
            states.append(target)
        assert await forget_dead_simulator_work(journal) == 2
        after = [entry.state for entry in await journal.entries()]
        assert after == [S.PENDING, S.PENDING, S.FAILED, S.PENDING]
        assert await forget_dead_simulator_work(journal) == 0


async def test_preflight_holds_the_journal_it_counted_on(tmp_path: Path) -> None:
    items = photos(tmp_path / "in", 2)
    spec = batch_spec(Operation.SKIN, {}, tmp_path / "out", simulated=True)
    async with preflight(items, spec, simulated=True) as found:
        assert (found.billable, found.reset) == (2, 0)
        with pytest.raises(JournalBusyError):  # no other run slips in before the batch
            await Journal.open(spec.journal_file)
    # Released when the block ends; while another run holds it, the pre-flight stops.
    async with await Journal.open(spec.journal_file):
        with pytest.raises(JournalBusyError):
            async with preflight(items, spec, simulated=True):
                pass


# --------------------------------------------------------------------------- credits


@pytest.mark.parametrize(
    ("balance", "needed", "short"),
    [(0, 1, True), (2, 4, True), (3.5, 4, True), (4, 4, False), (10, 4, False), (0, 0, False)],
)
def test_the_balance_covers_the_billed_requests_or_not(
    balance: float, needed: int, short: bool
) -> None:
    verdict = credit_check(balance, needed)
    assert verdict.short is short
    assert (verdict.balance, verdict.needed, verdict.error) == (balance, needed, None)


def test_an_unknown_balance_is_never_short() -> None:
    error = ServerError("down", status=503)
    assert not CreditVerdict(needed=5, error=error).short
    assert not CreditVerdict(needed=5).short
