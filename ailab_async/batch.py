"""The batch runner: photos in, processed photos out, every paid step journaled.

``run_batch`` walks the inputs lazily, claims each photo in the journal
(:class:`~ailab_async.journal.Journal`),
decides from its journaled state what is left to do (nothing, download, track the task again,
or run it), does that through ``client.map``, and writes ``manifest.jsonl`` from the journal at
the end. Killed at any instant and run again with the same journal, it finishes the work
without paying twice for anything that finished: downloaded items are skipped, submitted
smart-beauty tasks are tracked again by ``task_id``, results not yet downloaded are fetched
while their URL lives, and failed items are retried only when retryable (or when asked).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import anyio.to_thread
import attrs

from ._download import EXTENSIONS
from .client import AILabClient
from .errors import AILabError, APIError, ValidationError
from .journal import ItemIdentity, ItemState, Journal, JournalEntry, ResumeAction
from .models import ImageResult

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchItem",
    "BatchReport",
    "BatchRunner",
    "BatchSpec",
    "ItemOutcome",
    "Operation",
    "discover_inputs",
    "manifest_line",
    "normalized_params",
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


@attrs.define
class BatchReport:
    """Counts by outcome and error code, filled in as items finish."""

    total: int = 0
    downloaded: int = 0
    skipped: int = 0
    resumed: int = 0
    failed: int = 0
    errors_by_code: dict[str, int] = attrs.field(factory=dict)
    manifest_path: Path | None = None

    @property
    def succeeded(self) -> int:
        return self.downloaded + self.skipped

    def add(self, outcome: ItemOutcome) -> None:
        self.total += 1
        if outcome.how == "resumed":
            self.resumed += 1
        if outcome.state is ItemState.DOWNLOADED:
            if outcome.how == "skipped":
                self.skipped += 1
            else:
                self.downloaded += 1
        else:
            self.failed += 1
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
    part = unicodedata.normalize("NFC", part)
    part = _UNSAFE.sub("_", part).strip().rstrip(".")
    if not part or set(part) <= {"."}:
        return "_"
    if part.startswith("."):
        part = "_" + part[1:]
    return _fit(part)


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
        return type(error).__name__, str(error), error.retryable
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
        try:
            if action is ResumeAction.RUN:
                result = await self._run(item, entry)
            elif action is ResumeAction.TRACK:
                assert entry.task_id is not None
                result = await self._await_task(entry, entry.task_id, entry.submitted_at)
            else:  # DOWNLOAD
                assert entry.image_url is not None
                result = ImageResult(
                    image_url=entry.image_url,
                    request_id=entry.request_id,
                    log_id=entry.log_id,
                    task_id=entry.task_id,
                    produced_at=entry.produced_at or dt.datetime.now(dt.timezone.utc),
                )
            await self._download(item, entry, result)
        except Exception as exc:  # the item's failure is its outcome; the batch goes on
            code, message, retryable = _failure(exc)
            await self.journal.mark_failed(
                entry.item_id,
                code=code,
                message=message,
                retryable=retryable,
                request_id=getattr(exc, "request_id", None),
                log_id=getattr(exc, "log_id", None),
            )
        return self._outcome(item, await self.journal.get(entry.item_id), how)

    async def _run(self, item: BatchItem, entry: JournalEntry) -> ImageResult:
        await self.journal.mark_sending(entry.item_id)
        if self.spec.operation is Operation.SKIN:
            result = await self.client.smart_skin(item.path, **self.params)
            await self._record_result(entry, result)
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
        return await self._await_task(entry, task.task_id, submitted_at)

    async def _await_task(
        self, entry: JournalEntry, task_id: str, submitted_at: dt.datetime | None
    ) -> ImageResult:
        result = await self.client.track(task_id, submitted_at=submitted_at)
        await self._record_result(entry, result)
        return result

    async def _record_result(self, entry: JournalEntry, result: ImageResult) -> None:
        await self.journal.mark_succeeded(
            entry.item_id,
            image_url=result.image_url,
            request_id=result.request_id,
            log_id=result.log_id,
            produced_at=result.produced_at,
        )

    async def _download(self, item: BatchItem, entry: JournalEntry, result: ImageResult) -> None:
        def destination(content_type: str) -> Path:
            suffix = EXTENSIONS.get(content_type, ".img")
            return safe_output_path(self.spec.out_dir, item.relative, suffix)

        path = await self.client.download_to_dir(result, destination)
        await self.journal.mark_downloaded(entry.item_id, output_path=str(path))

    def _outcome(self, item: BatchItem, entry: JournalEntry, how: str) -> ItemOutcome:
        return ItemOutcome(
            item=item,
            state=entry.state,
            how=how,
            output_path=Path(entry.output_path) if entry.output_path else None,
            error_code=entry.error_code,
            error_message=entry.error_message,
            retryable=entry.retryable,
        )


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
    async with await Journal.open(spec.journal_file) as journal:
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
    grant access to the image for 24 hours)."""
    output = entry.output_path
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
        "updated_at": entry.updated_at.isoformat() if entry.updated_at else None,
    }
