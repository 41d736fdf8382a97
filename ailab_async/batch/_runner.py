"""The batch runner: photos in, processed photos out, every paid step journaled.

``run_batch`` walks the inputs lazily, claims each photo in the journal
(:class:`~ailab_async.batch.journal.Journal`),
decides from its journaled state what is left to do (nothing, download, track the task again,
or run it), does that through ``client.map``, and writes ``manifest.jsonl`` from the journal at
the end, then ``report.html`` (:mod:`._report`: its timeline is recorded and its thumbnails
made while the batch runs). Killed at any instant and run again with the same journal, it
finishes the work without paying twice for anything that finished: downloaded items are
skipped, submitted smart-beauty tasks are tracked again by ``task_id``, results not yet
downloaded are fetched while their URL lives, and failed items are retried only when
retryable (or when asked).

A failure after the paid step never costs a new payment: a task that outlives the task
timeout stays ``SUBMITTED`` (tracked again by the next run), a download that fails on a 5xx,
a broken connection or a full disk stays ``SUCCEEDED`` (downloaded again while its URL
lives). Both count as not done in the report and the manifest, with their error code, so the
caller knows to run again. Only a result known to be gone (the task failed, the URL answered
404/410 or expired) is run, and paid for, again.

Outputs: every item gets its own output path (named by :mod:`._paths`), reserved in the
journal before the file is moved into place
(:meth:`~ailab_async.batch.journal.Journal.reserve_output`): ``a.png`` and ``a_png.jpg`` both
want ``a_png.jpg`` when the API serves JPEG, and the second one gets ``a_png~2.jpg``. The
reservation is kept, so reruns write to the same place.

A batch of any other endpoint (:class:`~._model.BatchCall`) follows the same journal: its
answer's ``data`` is written to ``<name>.json`` before anything else is recorded, then an
``image_url`` in it is journaled and downloaded beside it like a smart-skin result; a task is
journaled by ``task_id`` and tracked again on a rerun. A JSON answer with no image is done
once written.

This module is the doing: the decisions it acts on are the journal's
(:meth:`~ailab_async.batch.journal.JournalEntry.resume_action`), the spec's (:mod:`._model`)
and the output names' (:mod:`._paths`); :func:`planned_actions` asks the same questions
without acting, for a pre-flight.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._download import EXTENSIONS
from .._threads import to_thread
from ..client import AILabClient
from ..models import ImageResult, RawResult
from ._failures import failure_fields, record_failure
from ._manifest import write_manifest
from ._model import (
    BatchCall,
    BatchReport,
    BatchSpec,
    How,
    ItemOutcome,
    Operation,
    normalized_params,
)
from ._paths import BatchItem, safe_output_path
from ._report import ReportRecorder, TimelineRecorder
from .journal import ItemIdentity, ItemState, Journal, JournalAccount, JournalEntry, ResumeAction

__all__ = ["BatchRunner", "planned_actions", "run_batch"]

logger = logging.getLogger("ailab_async")


def _identify(item: BatchItem) -> ItemIdentity:
    """The journal identity of an input: the one rule the runner claims by and a pre-flight
    looks up by. Blocking file-system I/O (one ``stat``)."""
    return ItemIdentity.for_path(item.path)


class BatchRunner:
    """Settles one item at a time against a journal (``run_batch`` drives it; the Dask
    recipe drives one per partition)."""

    def __init__(
        self,
        client: AILabClient,
        journal: Journal,
        spec: BatchSpec,
        on_event: Callable[[str, ItemOutcome | None], None] | None,
        *,
        timeline: TimelineRecorder | None = None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.spec = spec
        self.params = normalized_params(spec)
        self.on_event = on_event or (lambda _kind, _outcome: None)
        #: Stamps each item's steps for the report's charts (``None``: not recorded).
        self.timeline = timeline

    def _mark(self, relative: str, event: str, *, ok: bool | None = None) -> None:
        if self.timeline is not None:
            self.timeline.mark(relative, event, ok=ok)

    async def process(self, item: BatchItem) -> ItemOutcome:
        """Do what is left for ``item``; its outcome, failures included (never raises for
        one item's problem)."""
        try:
            identity = await to_thread(_identify, item)
            entry = await self.journal.claim(
                identity,
                self.spec.operation.value,
                self.params,
                source=str(item.path),
                relative=item.relative,
            )
        except (OSError, ValueError) as exc:  # vanished, unreadable, unencodable name
            code, message, retryable = failure_fields(exc)
            return ItemOutcome(
                item=item,
                state=ItemState.FAILED,
                how=How.RAN,
                error_code=code,
                error_message=message,
                retryable=retryable,
            )
        action = entry.resume_action(retry_failed=self.spec.retry_failed)
        if action is ResumeAction.SKIP:
            return self._outcome(item, entry, How.SKIPPED)
        if action is ResumeAction.KEEP_FAILED:
            return self._outcome(item, entry, How.SKIPPED)
        self.on_event("started", None)
        self._mark(item.relative, "started")
        how = How.RAN if action is ResumeAction.RUN else How.RESUMED
        progress = _Progress(entry.state)
        try:
            if isinstance(self.spec.operation, BatchCall):
                await self._settle_call(self.spec.operation, item, entry, action, progress)
            elif action is ResumeAction.RUN:
                result = await self._run(item, entry, progress)
            elif action is ResumeAction.TRACK:
                assert entry.task_id is not None
                result = await self._await_task(entry, entry.task_id, entry.submitted_at, progress)
            else:  # DOWNLOAD
                result = progress.result = _journaled_result(entry)
            if not isinstance(self.spec.operation, BatchCall):
                await self._download(item, entry, result)
        except Exception as exc:  # the item's failure is its outcome; the batch goes on
            await self._settle_failure(entry, progress, exc)
        settled = await self.journal.get(entry.item_id)
        self._mark(item.relative, "finished", ok=settled.state is ItemState.DOWNLOADED)
        return self._outcome(item, settled, how, resent=progress.resent)

    async def _settle_failure(
        self, entry: JournalEntry, progress: _Progress, error: Exception
    ) -> None:
        """Journal a failure as :func:`~._failures.record_failure` decides: never throwing
        paid work away."""
        record = record_failure(error, state=progress.state, result=progress.result)
        write: Callable[..., Awaitable[None]] = (
            self.journal.note_error
            if record.keep_state
            else functools.partial(self.journal.mark_failed, result_gone=record.result_gone)
        )
        await write(
            entry.item_id,
            code=record.code,
            message=record.message,
            retryable=record.retryable,
            request_id=record.request_id,
            log_id=record.log_id,
        )

    # -- any other endpoint (BatchCall) ---------------------------------------------------------

    async def _settle_call(
        self,
        call: BatchCall,
        item: BatchItem,
        entry: JournalEntry,
        action: ResumeAction,
        progress: _Progress,
    ) -> None:
        """Do what is left for an item of a :class:`BatchCall` batch."""
        if action is ResumeAction.DOWNLOAD:  # its JSON was written before its URL was kept
            progress.result = _journaled_result(entry)
            await self._download_beside(item, entry, progress.result)
            return
        if action is ResumeAction.RUN:
            raw = await self._send_call(call, item, entry, progress)
        else:  # TRACK
            assert entry.task_id is not None
            task = self.client.track_task(
                entry.task_id, submitted_at=entry.submitted_at, path=call.path
            )
            raw = await task
        self._mark(entry.relative, "detected")
        json_path = await self._write_data(item, entry, raw)
        if raw.image_url is None:
            await self.journal.mark_downloaded(entry.item_id, output_path=json_path)
            return
        result = ImageResult(
            image_url=raw.image_url,
            request_id=raw.request_id,
            log_id=raw.log_id,
            task_id=raw.task_id,
        )
        await self._record_result(entry, result, progress)
        await self._download_beside(item, entry, result)

    async def _send_call(
        self, call: BatchCall, item: BatchItem, entry: JournalEntry, progress: _Progress
    ) -> RawResult:
        """The paid step, journaled as the typed operations' is (:meth:`_run`)."""
        await self._sending(entry, progress)
        arguments: dict[str, Any] = {
            "files": {call.file_field: item.path},
            "fields": self.spec.params,  # as given: "1" stays "1", never "1.0"
            "billed": call.billed,
        }
        if not call.task:
            return await self.client.call(call.method, call.path, **arguments)
        task = await self.client.submit_task(call.method, call.path, **arguments)
        await self._submitted(entry, task.task_id, progress)
        return await task

    async def _write_data(self, item: BatchItem, entry: JournalEntry, raw: RawResult) -> str:
        """Write the answer's ``data`` to the item's reserved ``.json`` output, atomically."""
        wanted = safe_output_path(self.spec.out_dir, item.relative, ".json")
        chosen = await self.journal.reserve_output(entry.item_id, str(wanted))
        text = json.dumps(raw.data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"

        def write() -> None:
            target = Path(chosen)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".ailab-{secrets.token_hex(8)}.json.staging")
            try:
                staging.write_text(text, encoding="utf-8")
                os.replace(staging, target)
            finally:
                staging.unlink(missing_ok=True)

        await to_thread(write)
        return chosen

    async def _download_beside(
        self, item: BatchItem, entry: JournalEntry, result: ImageResult
    ) -> None:
        """Download the image of a :class:`BatchCall` answer next to its JSON (same name,
        the served extension): the JSON's reserved name keeps it apart from every other
        item's. The JSON stays the item's output in the journal."""
        json_path = Path(
            await self.journal.reserve_output(
                entry.item_id, str(safe_output_path(self.spec.out_dir, item.relative, ".json"))
            )
        )

        def destination(content_type: str) -> Path:
            return json_path.with_suffix(EXTENSIONS.get(content_type, ".img"))

        await self.client.download_to_dir(result, destination)
        await self.journal.mark_downloaded(entry.item_id, output_path=str(json_path))

    # -- the typed operations -------------------------------------------------------------------

    async def _run(self, item: BatchItem, entry: JournalEntry, progress: _Progress) -> ImageResult:
        await self._sending(entry, progress)
        if self.spec.operation is Operation.SKIN:
            result = await self.client.smart_skin(item.path, **self.params)
            await self._record_result(entry, result, progress)
            return result
        task = await self.client.submit_smart_beauty(item.path, **self.params)
        submitted_at = await self._submitted(entry, task.task_id, progress)
        return await self._await_task(entry, task.task_id, submitted_at, progress)

    async def _sending(self, entry: JournalEntry, progress: _Progress) -> None:
        """The paid step is about to leave: the journal hears of it first."""
        progress.resent = await self.journal.mark_sending(entry.item_id)
        progress.state = ItemState.SENDING

    async def _submitted(
        self, entry: JournalEntry, task_id: str, progress: _Progress
    ) -> dt.datetime:
        """A task was accepted: journal its id at once (a rerun tracks it); when it was."""
        submitted_at = dt.datetime.now(dt.timezone.utc)
        await self.journal.mark_submitted(
            entry.item_id,
            task_id=task_id,
            request_id=None,
            log_id=None,
            submitted_at=submitted_at,
        )
        progress.state = ItemState.SUBMITTED
        self._mark(entry.relative, "submitted")
        return submitted_at

    async def _await_task(
        self,
        entry: JournalEntry,
        task_id: str,
        submitted_at: dt.datetime | None,
        progress: _Progress,
    ) -> ImageResult:
        result = await self.client.track(task_id, submitted_at=submitted_at)
        self._mark(entry.relative, "detected")
        await self._record_result(entry, result, progress)
        return result

    async def _record_result(
        self, entry: JournalEntry, result: ImageResult, progress: _Progress
    ) -> None:
        await self.journal.mark_succeeded(
            entry.item_id,
            image_url=result.image_url,
            request_id=result.request_id,
            log_id=result.log_id,
            produced_at=result.produced_at,
        )
        progress.state = ItemState.SUCCEEDED
        progress.result = result

    async def _download(self, item: BatchItem, entry: JournalEntry, result: ImageResult) -> None:
        """Download into a staging file beside the output, then reserve the output path in
        the journal (the served type decides the extension, so only now is it known) and
        move the file there."""
        served: list[str] = []

        def destination(content_type: str) -> Path:
            suffix = EXTENSIONS.get(content_type, ".img")
            served.append(suffix)
            wanted = safe_output_path(self.spec.out_dir, item.relative, suffix)
            # Hidden and unique: never mistaken for an output, never shared by two items.
            return wanted.with_name(f".ailab-{secrets.token_hex(8)}{suffix}.staging")

        staging: Path | None = None
        try:
            staging = await self.client.download_to_dir(result, destination)
            wanted = safe_output_path(self.spec.out_dir, item.relative, served[-1])
            chosen = await self.journal.reserve_output(entry.item_id, str(wanted))
            await to_thread(os.replace, staging, chosen)
            staging = None
            await self.journal.mark_downloaded(entry.item_id, output_path=chosen)
        finally:
            if staging is not None:
                with contextlib.suppress(OSError):
                    await to_thread(staging.unlink)

    def _outcome(
        self, item: BatchItem, entry: JournalEntry, how: How, *, resent: bool = False
    ) -> ItemOutcome:
        return ItemOutcome(
            item=item,
            state=entry.state,
            how=how,
            output_path=Path(entry.output_path)
            if entry.output_path and entry.state is ItemState.DOWNLOADED
            else None,
            error_code=entry.error_code,
            error_message=entry.error_message,
            retryable=entry.retryable,
            ambiguous_resend=resent,
            entry=entry,
        )


def _journaled_result(entry: JournalEntry) -> ImageResult:
    """The result an earlier run got and journaled (its URL), to download now."""
    assert entry.image_url is not None
    return ImageResult(
        image_url=entry.image_url,
        request_id=entry.request_id,
        log_id=entry.log_id,
        task_id=entry.task_id,
        produced_at=entry.produced_at or dt.datetime.now(dt.timezone.utc),
    )


@attrs.define
class _Progress:
    """How far one item got in this run: what the journal says now, and the result."""

    state: ItemState
    result: ImageResult | None = None
    resent: bool = False


async def run_batch(
    client: AILabClient,
    items: Iterable[BatchItem],
    spec: BatchSpec,
    *,
    on_event: Callable[[str, ItemOutcome | None], None] | None = None,
    journal: Journal | None = None,
) -> BatchReport:
    """Process ``items`` per ``spec``; return the report once ``manifest.jsonl`` is written.

    ``on_event(kind, outcome)`` is called with ``("started", None)`` when an item starts
    remote work and ``("finished", outcome)`` when any item is settled (for progress).

    ``journal``: an already open journal to use instead of opening ``spec.journal_file``. It
    is left open (its opener closes it) and its account is not checked again (check it when
    opening). Holding it open from a pre-flight through the run keeps any other run from
    taking its lock in between::

        async with await Journal.open(spec.journal_file, account=account) as journal:
            actions = await planned_actions(journal, items, spec)
            report = await run_batch(client, items, spec, journal=journal)
    """
    report = BatchReport()
    await to_thread(lambda: spec.out_dir.mkdir(parents=True, exist_ok=True))
    async with contextlib.AsyncExitStack() as stack:
        if journal is None:
            account = spec.account
            if account is None and spec.check_account:
                account = JournalAccount.for_client(client)
            journal = await Journal.open(spec.journal_file, account=account)
            stack.push_async_callback(journal.aclose)
        recorder = ReportRecorder(client, spec.out_dir) if spec.report else None
        if recorder is not None:
            recorder.start()
            stack.push_async_callback(recorder.aclose)
        timeline = recorder.timeline if recorder is not None else None
        runner = BatchRunner(client, journal, spec, on_event, timeline=timeline)
        concurrency = spec.item_concurrency(client.max_concurrency)
        outcomes: AsyncIterator[Any] = client.map(runner.process, items, concurrency=concurrency)
        async for outcome in outcomes:
            if outcome.error is not None:  # pragma: no cover - process() catches item errors
                raise outcome.error
            report.add(outcome.result)
            if recorder is not None:
                recorder.settled(outcome.result)
            if on_event is not None:
                on_event("finished", outcome.result)
        report.manifest_path = await write_manifest(journal, spec)
        if recorder is not None:
            try:
                report.report_path = await recorder.write()
            except OSError as exc:  # the batch is done and journaled; only its page is missing
                logger.warning("report.html not written: %s", exc)
    return report


async def planned_actions(
    journal: Journal, items: Sequence[BatchItem], spec: BatchSpec
) -> list[ResumeAction | None]:
    """What :func:`run_batch` would do with each item, in order, without doing it or claiming
    anything: ``RUN`` sends a billed request, ``TRACK``/``DOWNLOAD`` finish paid work for free,
    ``SKIP``/``KEEP_FAILED`` do nothing; ``None`` for an input that cannot be identified (it
    will fail without a request). Uses the runner's own identity and resume rules.

    >>> actions = await planned_actions(journal, items, spec)  # doctest: +SKIP
    >>> billed = sum(action is ResumeAction.RUN for action in actions)  # doctest: +SKIP
    """

    def identities() -> list[ItemIdentity | None]:
        found: list[ItemIdentity | None] = []
        for item in items:
            try:
                found.append(_identify(item))
            except (OSError, ValueError):  # as process() fails such an item
                found.append(None)
        return found

    keys = await to_thread(identities)
    known = await journal.lookup_many(keys, spec.operation.value, normalized_params(spec))
    actions: list[ResumeAction | None] = []
    for key, entry in zip(keys, known, strict=True):
        if key is None:
            actions.append(None)
        elif entry is None:
            actions.append(ResumeAction.RUN)
        else:
            actions.append(entry.resume_action(retry_failed=spec.retry_failed))
    return actions
