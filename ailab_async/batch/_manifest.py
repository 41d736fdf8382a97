"""The manifest: one typed line per item (:class:`ManifestLine`), the one definition every
runner writes (``run_batch`` and the Dask recipe).

Building a line is pure (from a journal row, an item's outcome, or an error for an item with
no row); :func:`write_manifest` is the only I/O: ``manifest.jsonl`` from the journal,
replaced atomically. Lines are unstructured by the shared converter
(:data:`ailab_async.models.converter`), so the JSON keys are the field names; the extras
(``how``, ``partition``, ``worker``, ``pid``) appear only when set.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from cattrs.gen import make_dict_unstructure_fn, override

from .._threads import to_thread
from ..models import converter
from ._failures import failure_fields
from ._model import BatchSpec, How, ItemOutcome, normalized_params
from ._paths import BatchItem
from .journal import ItemState, Journal, JournalEntry

__all__ = [
    "ManifestLine",
    "error_line",
    "manifest_line",
    "outcome_line",
    "write_manifest",
]


@attrs.frozen(kw_only=True)
class ManifestLine:
    """One ``manifest.jsonl`` line. Result URLs are left out: they grant access to the image
    for 24 hours.

    An item is done when ``state`` is ``downloaded``; ``submitted`` or ``succeeded`` with an
    ``error_code`` means the last run could not finish it, and the next run will without
    paying again. ``interrupted_sends`` counts ambiguous resends (see
    :attr:`~ailab_async.batch.journal.JournalEntry.interrupted_sends`).
    """

    # Mostly the journal entry's fields (JournalEntry), deliberately again: this is the public
    # file format, with its own names (``input``, ``output``) and no result URL, kept stable
    # whatever the journal's schema does.
    input: str
    relative: str
    operation: str
    params: dict[str, Any]
    state: ItemState
    #: Relative to the output directory when inside it; set only once downloaded.
    output: str | None = None
    task_id: str | None = None
    request_id: str | None = None
    log_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    attempts: int = 0
    interrupted_sends: int = 0
    updated_at: dt.datetime | None = None
    #: How this run settled the item (lines of a run's outcomes only).
    how: How | None = None
    #: Where the Dask recipe ran it: the partition's name, the worker's address, its pid.
    partition: str | None = None
    worker: str | None = None
    pid: int | None = None

    @classmethod
    def for_entry(cls, entry: JournalEntry, spec: BatchSpec) -> ManifestLine:
        """The line of a journaled item."""
        output = entry.output_path if entry.state is ItemState.DOWNLOADED else None
        if output:
            with contextlib.suppress(ValueError):
                output = str(Path(output).relative_to(spec.out_dir))
        return cls(
            input=entry.source,
            relative=entry.relative,
            operation=entry.operation,
            params=json.loads(entry.params),
            state=entry.state,
            output=output,
            task_id=entry.task_id,
            request_id=entry.request_id,
            log_id=entry.log_id,
            error_code=entry.error_code,
            error_message=entry.error_message,
            retryable=entry.retryable,
            attempts=entry.attempts,
            interrupted_sends=entry.interrupted_sends,
            updated_at=entry.updated_at,
        )

    @classmethod
    def unjournaled(
        cls, item: BatchItem, spec: BatchSpec, *, code: str, message: str, retryable: bool
    ) -> ManifestLine:
        """The line of an item with no journal row: its input could not be read, or (in the
        Dask recipe) its whole partition failed."""
        return cls(
            input=str(item.path),
            relative=item.relative,
            operation=spec.operation.value,
            params=normalized_params(spec),
            state=ItemState.FAILED,
            error_code=code,
            error_message=message,
            retryable=retryable,
        )

    @classmethod
    def for_error(cls, item: BatchItem, spec: BatchSpec, error: BaseException) -> ManifestLine:
        """:meth:`unjournaled`, with the code, message and retryability of ``error``."""
        code, message, retryable = failure_fields(error)
        return cls.unjournaled(item, spec, code=code, message=message, retryable=retryable)

    @classmethod
    def for_outcome(cls, outcome: ItemOutcome, spec: BatchSpec) -> ManifestLine:
        """The line of an item a runner settled, with its ``how``."""
        if outcome.entry is not None:
            line = cls.for_entry(outcome.entry, spec)
        else:
            line = cls.unjournaled(
                outcome.item,
                spec,
                code=outcome.error_code or "UNKNOWN",
                message=outcome.error_message or "",
                retryable=bool(outcome.retryable),
            )
        return attrs.evolve(line, how=outcome.how)

    def to_json(self) -> str:
        """The line as written to ``manifest.jsonl`` (keys sorted, no newline)."""
        return json_line(converter.unstructure(self))


# ``How`` is a ``str`` enum, which cattrs would read back as a plain ``str``.
converter.register_structure_hook(How, lambda value, _: How(value))

# The shared converter writes every field, except the extras when unset: a line of a plain
# run has no ``how``, and only the Dask recipe's lines say where they ran.
converter.register_unstructure_hook(
    ManifestLine,
    make_dict_unstructure_fn(
        ManifestLine,
        converter,
        how=override(omit_if_default=True),
        partition=override(omit_if_default=True),
        worker=override(omit_if_default=True),
        pid=override(omit_if_default=True),
    ),
)


def manifest_line(entry: JournalEntry, spec: BatchSpec) -> dict[str, Any]:
    """One ``manifest.jsonl`` line for a journaled item, as a dict (see :class:`ManifestLine`)."""
    return _as_dict(ManifestLine.for_entry(entry, spec))


def error_line(item: BatchItem, spec: BatchSpec, error: BaseException) -> dict[str, Any]:
    """A manifest line, as a dict, for an item that has no journal row: its input could not
    be read, or (in the Dask recipe) its whole partition failed."""
    return _as_dict(ManifestLine.for_error(item, spec, error))


def outcome_line(outcome: ItemOutcome, spec: BatchSpec) -> dict[str, Any]:
    """The manifest line, as a dict, for an item a runner settled, plus its ``how``."""
    return _as_dict(ManifestLine.for_outcome(outcome, spec))


def json_line(fields: Mapping[str, Any]) -> str:
    """An unstructured line as written to ``manifest.jsonl``: the one JSON form (keys sorted,
    no newline) for lines written here and lines that came back from Dask workers as dicts."""
    return json.dumps(fields, sort_keys=True)


def _as_dict(line: ManifestLine) -> dict[str, Any]:
    unstructured: dict[str, Any] = converter.unstructure(line)
    return unstructured


async def write_manifest(journal: Journal, spec: BatchSpec) -> Path:
    """``manifest.jsonl`` in the output directory: one line per journaled item, atomically."""
    target = spec.out_dir / "manifest.jsonl"
    temporary = target.with_name(".manifest.jsonl.part")
    lines = [
        ManifestLine.for_entry(entry, spec).to_json() async for entry in journal.iter_entries()
    ]

    def write() -> None:
        temporary.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        os.replace(temporary, target)

    await to_thread(write)
    return target
