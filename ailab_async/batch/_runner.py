"""The batch runner: photos in, processed photos out, every paid step journaled.

``run_batch`` walks the inputs lazily, claims each photo in the journal
(:class:`~ailab_async.batch.journal.Journal`),
decides from its journaled state what is left to do (nothing, download, track the task again,
or run it), does that through ``client.map``, and writes ``manifest.jsonl`` from the journal at
the end. Killed at any instant and run again with the same journal, it finishes the work
without paying twice for anything that finished: downloaded items are skipped, submitted
smart-beauty tasks are tracked again by ``task_id``, results not yet downloaded are fetched
while their URL lives, and failed items are retried only when retryable (or when asked).

A failure after the paid step never costs a new payment: a task that outlives the task
timeout stays ``SUBMITTED`` (tracked again by the next run), a download that fails on a 5xx,
a broken connection or a full disk stays ``SUCCEEDED`` (downloaded again while its URL
lives). Both count as not done in the report and the manifest, with their error code, so the
caller knows to run again. Only a result known to be gone (the task failed, the URL answered
404/410 or expired) is run, and paid for, again.

Outputs: every item gets its own output path, reserved in the journal before the file is
moved into place (:meth:`~ailab_async.batch.journal.Journal.reserve_output`): ``a.png`` and
``a_png.jpg`` both want ``a_png.jpg`` when the API serves JPEG, and the second one gets
``a_png~2.jpg``. The reservation is kept, so reruns write to the same place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import json
import os
import re
import secrets
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import anyio.to_thread
import attrs

from .._download import EXTENSIONS
from ..client import AILabClient
from ..errors import AILabError, APIError, DownloadError, TaskFailedError, ValidationError
from ..models import ImageResult
from .journal import ItemIdentity, ItemState, Journal, JournalAccount, JournalEntry, ResumeAction

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchItem",
    "BatchReport",
    "BatchRunner",
    "BatchSpec",
    "ItemOutcome",
    "Operation",
    "discover_inputs",
    "error_line",
    "manifest_line",
    "normalized_params",
    "outcome_line",
    "output_family",
    "run_batch",
    "safe_output_path",
]

#: Files picked up from input directories.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


class Operation(enum.Enum):
    """What a batch does to each photo."""

    SKIN = "smart-skin"
    BEAUTY = "smart-beauty"


@attrs.frozen
class BatchItem:
    """One input photo: where it is, and its path relative to the input it came from."""

    path: Path
    relative: str


@attrs.frozen
class BatchSpec:
    """A batch: the operation, its parameters, and where outputs and the journal go."""

    operation: Operation
    params: Mapping[str, Any]
    out_dir: Path
    journal_path: Path | None = None
    retry_failed: bool = False
    #: Items in progress at once (default: the client's ``map`` default, x4 for beauty).
    concurrency: int | None = None
    #: Whose journal it is (``JournalAccount.for_key(base_url, api_key)``): recorded on
    #: first use, and a journal of another account or base URL is then refused with
    #: ``JournalAccountError`` rather than trusting its task ids. ``None``: not checked.
    account: JournalAccount | None = None
    #: With no ``account`` given, check (or record) the client's own: its base URL and key
    #: fingerprint. Off only for journals that belong to no account (a throw-away simulator).
    check_account: bool = True

    @property
    def journal_file(self) -> Path:
        return self.journal_path or self.out_dir / ".ailab-journal.sqlite3"


@attrs.frozen
class ItemOutcome:
    """What became of one item in this run."""

    item: BatchItem
    state: ItemState
    #: ``ran``, ``resumed`` (tracked or downloaded from an earlier run), ``skipped``.
    how: str
    output_path: Path | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    #: This run sent the item's billed request again although the one before was still in
    #: flight when its process died: that one may have been billed too.
    ambiguous_resend: bool = False
    #: The item's journal row after this run (``None`` if the input could not be claimed).
    entry: JournalEntry | None = attrs.field(default=None, repr=False, eq=False)


@attrs.define
class BatchReport:
    """Counts by outcome and error code, filled in as items finish.

    ``failed`` counts every item not done, including the ``resumable`` ones: items whose
    paid result still lives (a task still running, a download that failed on a transient
    error or a full disk), which the next run finishes without paying again.
    ``ambiguous_resends`` counts billed requests sent again because the previous one was in
    flight when its process died: each may have been billed twice.
    """

    total: int = 0
    downloaded: int = 0
    skipped: int = 0
    resumed: int = 0
    failed: int = 0
    resumable: int = 0
    ambiguous_resends: int = 0
    errors_by_code: dict[str, int] = attrs.field(factory=dict)
    manifest_path: Path | None = None

    @property
    def succeeded(self) -> int:
        return self.downloaded + self.skipped

    def add(self, outcome: ItemOutcome) -> None:
        self.total += 1
        if outcome.how == "resumed":
            self.resumed += 1
        if outcome.ambiguous_resend:
            self.ambiguous_resends += 1
        if outcome.state is ItemState.DOWNLOADED:
            if outcome.how == "skipped":
                self.skipped += 1
            else:
                self.downloaded += 1
        else:
            self.failed += 1
            if outcome.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED):
                self.resumable += 1
            code = outcome.error_code or "UNKNOWN"
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1


# --- inputs and output names --------------------------------------------------------------


def discover_inputs(inputs: Iterable[str | os.PathLike[str]]) -> Iterator[BatchItem]:
    """Files as given, and image files found recursively under directories, lazily.

    A file's relative path is its name; a directory's files keep their path below it,
    prefixed with the directory's own name (so two input folders cannot collide).
    """
    for raw in inputs:
        root = Path(raw)
        if root.is_dir():
            base = root.resolve().name or "input"
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                        relative = PurePosixPath(base, *path.relative_to(root).parts)
                        yield BatchItem(path, str(relative))
        else:
            yield BatchItem(root, root.name)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f<>:\"|?*\\/]")


_MAX_NAME_BYTES = 180  # leaves room for the download's temporary prefix and suffix


def _safe_component(part: str) -> str:
    return _fit(_clean_component(part))


def _clean_component(part: str) -> str:
    part = unicodedata.normalize("NFC", part)
    part = _UNSAFE.sub("_", part).strip().rstrip(".")
    if not part or set(part) <= {"."}:
        return "_"
    if part.startswith("."):
        part = "_" + part[1:]
    return part


def _fit(name: str) -> str:
    """``name`` within the file-name byte limit: a prefix, a digest of the whole so two long
    names sharing a prefix stay apart, and the extension."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 8:
        stem, dot, ext = name, "", ""
    tail = f"~{hashlib.sha256(raw).hexdigest()[:8]}{dot}{ext}"
    budget = _MAX_NAME_BYTES - len(tail.encode("utf-8"))
    return stem.encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "ignore") + tail


def safe_output_path(out_dir: Path, relative: str, suffix: str) -> Path:
    """Where the result of the input at ``relative`` goes: always inside ``out_dir``.

    Every component is sanitised (no ``..``, no absolute paths, no control or reserved
    characters, no hidden files); the input's extension becomes part of the stem when the
    output's differs (``a.jpg`` → ``a_jpg.png``) so ``a.jpg`` and ``a.png`` cannot collide.

    >>> safe_output_path(Path("/out"), "../../etc/passwd", ".png")
    PosixPath('/out/_/_/etc/passwd.png')
    """
    parts = [p for p in re.split(r"[\\/]+", relative) if p not in ("",)]
    clean = [_safe_component(p) for p in parts] or ["item"]
    name = clean[-1]
    stem, dot, ext = name.rpartition(".")
    if dot and stem:
        name = stem if f".{ext.lower()}" == suffix else f"{stem}_{ext}"
    clean[-1] = _fit(name + suffix)
    target = out_dir.joinpath(*clean)
    root = out_dir.resolve()
    resolved = target.resolve()
    if root != resolved and root not in resolved.parents:
        raise ValidationError(
            f"output for {relative!r} would escape the output directory",
            input=relative,
            rule="output_path",
        )
    return target


_FAMILY_BREAK = re.compile(r"[._~]")


def output_family(relative: str) -> str:
    """A key shared by every input whose output could collide with this one's.

    Outputs are the sanitised path with the name's stem, perhaps ``_`` and the input's
    extension, perhaps ``~N``, then the served extension. Two inputs can only want one
    output when their sanitised directories match and one sanitised name starts with the
    other's stem; both then share the part of the name before its first ``.``, ``_`` or
    ``~``. Compared without case, as case-insensitive file systems do. Journals sharded by
    this key (the Dask recipe) keep every possible collision inside one journal, where
    :meth:`~ailab_async.batch.journal.Journal.reserve_output` resolves it.

    >>> output_family("Holiday/a.png") == output_family("holiday/A_png.jpg")
    True
    """
    # Before shortening (``_fit``): a shortened name keeps a digest of the whole, so two
    # shortened names can only collide when the whole names do.
    parts = [_clean_component(p) for p in re.split(r"[\\/]+", relative) if p] or ["item"]
    head = _FAMILY_BREAK.split(parts[-1], maxsplit=1)[0]
    return "/".join([*parts[:-1], head[:64]]).casefold()


# --- running ------------------------------------------------------------------------------


def normalized_params(spec: BatchSpec) -> dict[str, Any]:
    """The spec's parameters with canonical values (1 and 1.0 name the same operation)."""
    return {
        key: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        for key, value in sorted(spec.params.items())
    }


def _failure(error: BaseException) -> tuple[str, str, bool]:
    if isinstance(error, APIError):
        return error.code or type(error).__name__, error.message, error.retryable
    if isinstance(error, ValidationError):
        return f"VALIDATION_{error.rule.upper()}", str(error), False
    if isinstance(error, AILabError):
        # A named cause beats the class name: DISK_FULL says what to fix.
        code = getattr(error, "code", "") or type(error).__name__
        return code, str(error), error.retryable
    return type(error).__name__, str(error), False


class BatchRunner:
    """Settles one item at a time against a journal (``run_batch`` drives it; the Dask
    recipe drives one per partition)."""

    def __init__(
        self,
        client: AILabClient,
        journal: Journal,
        spec: BatchSpec,
        on_event: Callable[[str, ItemOutcome | None], None] | None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.spec = spec
        self.params = normalized_params(spec)
        self.on_event = on_event or (lambda _kind, _outcome: None)

    async def process(self, item: BatchItem) -> ItemOutcome:
        """Do what is left for ``item``; its outcome, failures included (never raises for
        one item's problem)."""
        try:
            identity = await anyio.to_thread.run_sync(ItemIdentity.for_path, item.path)
            entry = await self.journal.claim(
                identity,
                self.spec.operation.value,
                self.params,
                source=str(item.path),
                relative=item.relative,
            )
        except (OSError, ValueError) as exc:  # vanished, unreadable, unencodable name
            code, message, retryable = _failure(exc)
            return ItemOutcome(
                item=item,
                state=ItemState.FAILED,
                how="ran",
                error_code=code,
                error_message=message,
                retryable=retryable,
            )
        action = entry.resume_action(retry_failed=self.spec.retry_failed)
        if action is ResumeAction.SKIP:
            return self._outcome(item, entry, "skipped")
        if action is ResumeAction.KEEP_FAILED:
            return self._outcome(item, entry, "skipped")
        self.on_event("started", None)
        how = "ran" if action is ResumeAction.RUN else "resumed"
        progress = _Progress(entry.state)
        try:
            if action is ResumeAction.RUN:
                result = await self._run(item, entry, progress)
            elif action is ResumeAction.TRACK:
                assert entry.task_id is not None
                result = await self._await_task(entry, entry.task_id, entry.submitted_at, progress)
            else:  # DOWNLOAD
                assert entry.image_url is not None
                result = ImageResult(
                    image_url=entry.image_url,
                    request_id=entry.request_id,
                    log_id=entry.log_id,
                    task_id=entry.task_id,
                    produced_at=entry.produced_at or dt.datetime.now(dt.timezone.utc),
                )
                progress.result = result
            await self._download(item, entry, result)
        except Exception as exc:  # the item's failure is its outcome; the batch goes on
            await self._settle_failure(entry, progress, exc)
        return self._outcome(
            item, await self.journal.get(entry.item_id), how, resent=progress.resent
        )

    async def _settle_failure(
        self, entry: JournalEntry, progress: _Progress, error: Exception
    ) -> None:
        """Journal a failure without throwing paid work away.

        Before the paid step: ``FAILED``. After it, while the task or URL may still serve:
        the item keeps its state (``SUBMITTED``/``SUCCEEDED``) with the error noted, so the
        next run tracks or downloads it instead of paying. A result known to be gone:
        ``FAILED`` with the result forgotten, so a retry runs it again.
        """
        code, message, retryable = _failure(error)
        ids = {
            "request_id": getattr(error, "request_id", None),
            "log_id": getattr(error, "log_id", None),
        }
        gone = _result_gone(error, progress)
        if gone:
            # Running again is the only way to a result; a dead URL is worth that.
            retryable = retryable or not isinstance(error, TaskFailedError)
        if progress.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED) and not gone:
            await self.journal.note_error(
                entry.item_id, code=code, message=message, retryable=retryable, **ids
            )
            return
        if progress.state is ItemState.FAILED and not gone:
            # An older journal's failed item whose task or URL still lives: trying again
            # costs nothing, so it stays worth retrying.
            retryable = True
        await self.journal.mark_failed(
            entry.item_id,
            code=code,
            message=message,
            retryable=retryable,
            result_gone=gone,
            **ids,
        )

    async def _run(self, item: BatchItem, entry: JournalEntry, progress: _Progress) -> ImageResult:
        progress.resent = await self.journal.mark_sending(entry.item_id)
        progress.state = ItemState.SENDING
        if self.spec.operation is Operation.SKIN:
            result = await self.client.smart_skin(item.path, **self.params)
            await self._record_result(entry, result, progress)
            return result
        task = await self.client.submit_smart_beauty(item.path, **self.params)
        submitted_at = dt.datetime.now(dt.timezone.utc)
        await self.journal.mark_submitted(
            entry.item_id,
            task_id=task.task_id,
            request_id=None,
            log_id=None,
            submitted_at=submitted_at,
        )
        progress.state = ItemState.SUBMITTED
        return await self._await_task(entry, task.task_id, submitted_at, progress)

    async def _await_task(
        self,
        entry: JournalEntry,
        task_id: str,
        submitted_at: dt.datetime | None,
        progress: _Progress,
    ) -> ImageResult:
        result = await self.client.track(task_id, submitted_at=submitted_at)
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
            await anyio.to_thread.run_sync(os.replace, staging, chosen)
            staging = None
            await self.journal.mark_downloaded(entry.item_id, output_path=chosen)
        finally:
            if staging is not None:
                with contextlib.suppress(OSError):
                    await anyio.to_thread.run_sync(staging.unlink)

    def _outcome(
        self, item: BatchItem, entry: JournalEntry, how: str, *, resent: bool = False
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


@attrs.define
class _Progress:
    """How far one item got in this run: what the journal says now, and the result."""

    state: ItemState
    result: ImageResult | None = None
    resent: bool = False


def _result_gone(error: Exception, progress: _Progress) -> bool:
    """Whether the paid result can no longer be had: only running again can help."""
    if progress.state is ItemState.SUBMITTED or (
        progress.state is ItemState.FAILED and progress.result is None
    ):
        # Waiting for the task: it failed, or the API refused to tell (unknown task).
        return isinstance(error, TaskFailedError) or (
            isinstance(error, APIError) and not error.retryable
        )
    if progress.result is not None:  # downloading
        expired = progress.result.expired()
        dead = isinstance(error, DownloadError) and error.status in (403, 404, 410)
        return expired or dead
    return False


async def run_batch(
    client: AILabClient,
    items: Iterable[BatchItem],
    spec: BatchSpec,
    *,
    on_event: Callable[[str, ItemOutcome | None], None] | None = None,
) -> BatchReport:
    """Process ``items`` per ``spec``; return the report once ``manifest.jsonl`` is written.

    ``on_event(kind, outcome)`` is called with ``("started", None)`` when an item starts
    remote work and ``("finished", outcome)`` when any item is settled (for progress).
    """
    report = BatchReport()
    await anyio.to_thread.run_sync(lambda: spec.out_dir.mkdir(parents=True, exist_ok=True))
    account = spec.account
    if account is None and spec.check_account:
        account = JournalAccount.for_client(client)
    async with await Journal.open(spec.journal_file, account=account) as journal:
        runner = BatchRunner(client, journal, spec, on_event)
        concurrency = spec.concurrency
        if concurrency is None and spec.operation is Operation.BEAUTY:
            concurrency = 8 * client.max_concurrency  # items mostly wait on remote tasks
        outcomes: AsyncIterator[Any] = client.map(runner.process, items, concurrency=concurrency)
        async for outcome in outcomes:
            if outcome.error is not None:  # pragma: no cover - process() catches item errors
                raise outcome.error
            report.add(outcome.result)
            if on_event is not None:
                on_event("finished", outcome.result)
        report.manifest_path = await write_manifest(journal, spec)
    return report


async def write_manifest(journal: Journal, spec: BatchSpec) -> Path:
    """``manifest.jsonl`` in the output directory: one line per journaled item, atomically."""
    target = spec.out_dir / "manifest.jsonl"
    temporary = target.with_name(".manifest.jsonl.part")
    lines = []
    async for entry in journal.iter_entries():
        lines.append(json.dumps(manifest_line(entry, spec), sort_keys=True))

    def write() -> None:
        temporary.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        os.replace(temporary, target)

    await anyio.to_thread.run_sync(write)
    return target


def manifest_line(entry: JournalEntry, spec: BatchSpec) -> dict[str, Any]:
    """One ``manifest.jsonl`` line for a journaled item (result URLs are left out: they
    grant access to the image for 24 hours).

    The one definition of a manifest line: the Dask recipe writes the same lines. An item
    is done when ``state`` is ``downloaded``; ``submitted`` or ``succeeded`` with an
    ``error_code`` means the last run could not finish it, and the next run will without
    paying again. ``interrupted_sends`` counts ambiguous resends (see
    :attr:`~ailab_async.batch.journal.JournalEntry.interrupted_sends`).
    """
    output = entry.output_path if entry.state is ItemState.DOWNLOADED else None
    if output:
        with contextlib.suppress(ValueError):
            output = str(Path(output).relative_to(spec.out_dir))
    return {
        "input": entry.source,
        "relative": entry.relative,
        "operation": entry.operation,
        "params": json.loads(entry.params),
        "state": entry.state.value,
        "output": output,
        "task_id": entry.task_id,
        "request_id": entry.request_id,
        "log_id": entry.log_id,
        "error_code": entry.error_code,
        "error_message": entry.error_message,
        "retryable": entry.retryable,
        "attempts": entry.attempts,
        "interrupted_sends": entry.interrupted_sends,
        "updated_at": entry.updated_at.isoformat() if entry.updated_at else None,
    }


def error_line(item: BatchItem, spec: BatchSpec, error: BaseException) -> dict[str, Any]:
    """A manifest line for an item that has no journal row: its input could not be read,
    or (in the Dask recipe) its whole partition failed. Error codes as for journaled items."""
    code, message, retryable = _failure(error)
    return _unjournaled_line(item, spec, code, message, retryable)


def outcome_line(outcome: ItemOutcome, spec: BatchSpec) -> dict[str, Any]:
    """The manifest line for an item processed by :class:`BatchRunner`, plus its ``how``."""
    if outcome.entry is not None:
        line = manifest_line(outcome.entry, spec)
    else:
        line = _unjournaled_line(
            outcome.item,
            spec,
            outcome.error_code or "UNKNOWN",
            outcome.error_message or "",
            bool(outcome.retryable),
        )
    return {**line, "how": outcome.how}


def _unjournaled_line(
    item: BatchItem, spec: BatchSpec, code: str, message: str, retryable: bool
) -> dict[str, Any]:
    return {
        "input": str(item.path),
        "relative": item.relative,
        "operation": spec.operation.value,
        "params": normalized_params(spec),
        "state": ItemState.FAILED.value,
        "output": None,
        "task_id": None,
        "request_id": None,
        "log_id": None,
        "error_code": code,
        "error_message": message,
        "retryable": retryable,
        "attempts": 0,
        "interrupted_sends": 0,
        "updated_at": None,
    }
