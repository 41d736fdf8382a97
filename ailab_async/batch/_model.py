"""The batch engine's values, pure: what a batch is, and what became of each item.

:class:`Operation` (or :class:`BatchCall`, any other endpoint) and :class:`BatchSpec` (what to
do, with which parameters, where), with the
decisions that follow from a spec alone (:func:`normalized_params`, the journal file, the
default item concurrency); :class:`How`, :class:`ItemOutcome` and :class:`BatchReport` (what
became of items).
The runner (:mod:`._runner`) produces these; the manifest (:mod:`._manifest`), the command
line and the Dask recipe read them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .._endpoints import encode_free_fields, generic_endpoint
from ..errors import ValidationError
from ._paths import BatchItem
from .journal import ItemState, JournalAccount, JournalEntry

__all__ = [
    "BatchCall",
    "BatchReport",
    "BatchSpec",
    "How",
    "ItemOutcome",
    "Operation",
    "normalized_params",
]

#: Items in progress at once per request slot for smart-beauty: its items mostly wait on
#: remote tasks, so many more can be in progress than requests in flight.
BEAUTY_ITEMS_PER_SLOT = 8


class Operation(enum.Enum):
    """What a batch does to each photo."""

    SKIN = "smart-skin"
    BEAUTY = "smart-beauty"


@attrs.frozen
class BatchCall:
    """Any other endpoint as a batch operation: each photo is uploaded in ``file_field``
    with the spec's ``params`` as form fields, as :meth:`AILabClient.call` would (or
    :meth:`AILabClient.submit_task`, with ``task=True``).

    Each item's output is the answer's ``data`` as JSON (``<name>.json``); when the data
    holds an ``image_url``, that image is downloaded beside it (same name, the served
    extension). Checked when built, like a call's arguments.

    >>> BatchCall("POST", "/api/cutout/portrait/portrait-background-removal").value
    'POST /api/cutout/portrait/portrait-background-removal'
    """

    method: str
    path: str
    #: The form field that carries the photo.
    file_field: str = "image"
    billed: bool = True
    #: The endpoint answers with a ``task_id``, tracked to its result.
    task: bool = False

    def __attrs_post_init__(self) -> None:
        endpoint = generic_endpoint(
            self.method, self.path, billed=self.billed, file_field=self.file_field, task=self.task
        )
        if endpoint.method != "POST":
            raise ValidationError(
                "a batch uploads a photo per item: its method must be POST",
                input="method",
                rule="method",
            )

    @property
    def value(self) -> str:
        """What the journal and the manifest call it (an :class:`Operation`'s ``value``)."""
        return f"{self.method.upper()} {self.path}"


@attrs.frozen
class BatchSpec:
    """A batch: the operation, its parameters, and where outputs and the journal go.

    ``operation`` is one of the typed :class:`Operation` members, or a :class:`BatchCall`
    for any other endpoint (whose ``params`` are its form fields, sent as they are).
    """

    operation: Operation | BatchCall
    params: Mapping[str, Any]
    out_dir: Path = attrs.field(converter=Path)
    journal_path: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
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
    #: Write ``report.html`` (with thumbnails and the run's charts) beside the manifest.
    report: bool = True

    @property
    def journal_file(self) -> Path:
        return self.journal_path or self.out_dir / ".ailab-journal.sqlite3"

    def __attrs_post_init__(self) -> None:
        if isinstance(self.operation, BatchCall):
            encode_free_fields(self.params, "params")  # refused now, not once per item

    def item_concurrency(self, max_concurrency: int) -> int | None:
        """Items in progress at once for a client with ``max_concurrency`` request slots:
        ``concurrency`` if set, else more than the slots for smart-beauty, else ``None`` (the
        client's ``map`` default).

        >>> BatchSpec(Operation.BEAUTY, {}, Path("out")).item_concurrency(4)
        32
        """
        tasks = self.operation is Operation.BEAUTY or (
            isinstance(self.operation, BatchCall) and self.operation.task
        )
        if self.concurrency is None and tasks:
            return BEAUTY_ITEMS_PER_SLOT * max_concurrency
        return self.concurrency


class How(str, enum.Enum):
    """How an item was settled in a run; a ``str`` enum, so it compares and serialises as
    its value (``outcome.how == "skipped"``, ``"how": "skipped"`` in the manifest)."""

    #: This run did the item's work from the start (or found its input unusable).
    RAN = "ran"
    #: This run finished work an earlier run paid for: tracked its task or downloaded its URL.
    RESUMED = "resumed"
    #: Nothing to do: already downloaded, or failed for good in an earlier run.
    SKIPPED = "skipped"
    #: Never an item's own outcome: the Dask recipe's partition failed as a whole, so every
    #: item in it did (its manifest lines say so).
    FAILED = "failed"


@attrs.frozen
class ItemOutcome:
    """What became of one item in this run."""

    item: BatchItem
    state: ItemState
    #: ``ran``, ``resumed`` (tracked or downloaded from an earlier run), ``skipped``; a plain
    #: string is taken as its :class:`How`.
    how: How = attrs.field(converter=How)
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
    #: ``report.html``, the page of the batch (``None``: not asked for, or not written).
    report_path: Path | None = None

    @property
    def succeeded(self) -> int:
        return self.downloaded + self.skipped

    def add(self, outcome: ItemOutcome) -> None:
        self.total += 1
        if outcome.how is How.RESUMED:
            self.resumed += 1
        if outcome.ambiguous_resend:
            self.ambiguous_resends += 1
        if outcome.state is ItemState.DOWNLOADED:
            if outcome.how is How.SKIPPED:
                self.skipped += 1
            else:
                self.downloaded += 1
        else:
            self.failed += 1
            if outcome.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED):
                self.resumable += 1
            code = outcome.error_code or "UNKNOWN"
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1


def normalized_params(spec: BatchSpec) -> dict[str, Any]:
    """The spec's parameters with canonical values (1 and 1.0 name the same operation)."""
    return {
        key: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        for key, value in sorted(spec.params.items())
    }
