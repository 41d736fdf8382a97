"""The visual batch report: ``report.html`` beside ``manifest.jsonl``, and what it says.

Three parts, deciding apart from doing:

- what the report says, pure: :func:`report_view` turns manifest lines and the run's
  :class:`Timeline` into a :class:`~._report_page.PageView` (counts, errors by code, the next
  step for each unfinished item from :func:`next_step`, the chart data); the page itself is
  drawn by :mod:`._report_page`;
- what a run records for it: :class:`TimelineRecorder` samples the client's public
  ``stats`` and ``tracker`` snapshots about once a second (a bounded series: when full, every
  other sample goes and the interval doubles) and stamps each item's start, submission,
  detection and end; saved as ``report-timeline.json``;
- the doing: :func:`build_report` reads ``manifest.jsonl`` and the timeline from the output
  directory, makes thumbnails with Pillow when it is installed (into ``report-thumbs/``,
  reused while their source is unchanged), and writes ``report.html`` atomically.

Thumbnails are files, not ``data:`` URIs, so the page stays small for 10,000 photos (a few
hundred bytes of data per photo) and only the cards on screen load their pictures. The page
holds no API key and no result URL: the manifest never has them, and any URL in an error
message is cut to its host.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .._aio import cancel_and_wait
from .._polling import FALLBACK_INTERVAL
from .._threads import to_thread
from ..models import converter, redact_url
from ._manifest import ManifestLine
from ._model import ItemOutcome
from ._report_page import PAGE_SIZE, Chart, PageView, nice_ceiling, render_page
from .journal import ItemState

if TYPE_CHECKING:
    from ..client import AILabClient

__all__ = [
    "REPORT_NAME",
    "THUMBS_DIR",
    "TIMELINE_NAME",
    "ItemTiming",
    "ReportRecorder",
    "ReportSummary",
    "Sample",
    "ThumbnailMaker",
    "Timeline",
    "TimelineRecorder",
    "build_report",
    "detection_lag_bound",
    "next_step",
    "read_manifest",
    "report_view",
    "write_report",
]

REPORT_NAME = "report.html"
THUMBS_DIR = "report-thumbs"
TIMELINE_NAME = "report-timeline.json"
#: Longest side of a thumbnail, in pixels.
THUMB_SIZE = 240
#: Buckets of a chart over time or over a distribution.
_BUCKETS = 30
_THUMB_FILE = re.compile(r"^[0-9a-f]{24}\.jpg$")
_URL = re.compile(r"https?://[^\s\"'<>]+")
logger = logging.getLogger("ailab_async")

_NO_PILLOW = (
    "No thumbnails: they are made with Pillow, which is not installed "
    "(pip install 'ailab-async[simulator]'), then run: ailab-async report OUT"
)


# --------------------------------------------------------------------------- the timeline


@attrs.frozen
class Sample:
    """The client's counters at ``t`` seconds into the run (see ``client.stats``)."""

    t: float
    requests: int
    retries: int
    rate_limited: int
    #: Requests per second the limiter allowed (``None``: unlimited).
    rate: float | None
    in_flight: int
    pending_tasks: int


@attrs.frozen
class ItemTiming:
    """When an item's work happened in this run, in seconds from its start."""

    relative: str
    started: float
    finished: float | None = None
    #: Its smart-beauty task was accepted, and its result seen by a poll.
    submitted: float | None = None
    detected: float | None = None
    ok: bool | None = None


@attrs.frozen
class Timeline:
    """What one run recorded for the report's charts."""

    started_at: dt.datetime
    samples: tuple[Sample, ...] = ()
    items: tuple[ItemTiming, ...] = ()
    #: The tracker's learned poll schedule at the end (offsets after submit; empty: the
    #: fallback spacing).
    poll_plan: tuple[float, ...] = ()

    def to_json(self) -> str:
        return json.dumps(converter.unstructure(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Timeline:
        return converter.structure(json.loads(text), cls)


class TimelineRecorder:
    """Records a run's :class:`Timeline` from the client's public snapshots.

    :meth:`run` samples until cancelled; the runner calls :meth:`mark` as items move.
    ``clock`` is injectable; ``max_samples`` bounds the series whatever the run's length.
    """

    def __init__(
        self,
        client: AILabClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 1.0,
        max_samples: int = 512,
    ) -> None:
        self.client = client
        self.clock = clock
        self.interval = interval
        self.max_samples = max_samples
        self.started_at = dt.datetime.now(dt.timezone.utc)
        self._start = clock()
        self._samples: list[Sample] = []
        self._items: dict[str, dict[str, Any]] = {}

    def _now(self) -> float:
        return round(self.clock() - self._start, 3)

    def mark(self, relative: str, event: str, *, ok: bool | None = None) -> None:
        """Stamp ``event`` (``started``, ``submitted``, ``detected``, ``finished``) for an
        item; ``ok`` with ``finished``: whether it is done."""
        stamps = self._items.setdefault(relative, {"relative": relative, "started": self._now()})
        stamps[event] = self._now()
        if ok is not None:
            stamps["ok"] = ok

    def sample(self) -> None:
        """Read the client's counters now."""
        stats, tracker = self.client.stats, self.client.tracker
        self._samples.append(
            Sample(
                t=self._now(),
                requests=stats.requests,
                retries=stats.retries,
                rate_limited=stats.rate_limited,
                rate=stats.current_rate,
                in_flight=stats.in_flight,
                pending_tasks=tracker.pending,
            )
        )
        if len(self._samples) > self.max_samples:
            # Keep the series bounded: half the resolution, twice the interval.
            self._samples = self._samples[::2]
            self.interval *= 2

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def timeline(self) -> Timeline:
        """What was recorded so far (with one last sample)."""
        self.sample()
        return Timeline(
            started_at=self.started_at,
            samples=tuple(self._samples),
            items=tuple(converter.structure(s, ItemTiming) for s in self._items.values()),
            poll_plan=tuple(self.client.tracker.plan),
        )


# --------------------------------------------------------------------------- what it says


def next_step(line: ManifestLine) -> str | None:
    """What to do about an item that is not done (``None`` when it is).

    >>> from ailab_async.batch.journal import ItemState
    >>> line = ManifestLine(input="a.jpg", relative="a.jpg", operation="smart-skin",
    ...                     params={}, state=ItemState.SUBMITTED, error_code="TIMEOUT")
    >>> next_step(line)
    'Paid for and not lost: run the same command again to finish it without paying again.'
    """
    if line.state is ItemState.DOWNLOADED:
        return None
    if line.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED):
        return (
            "Paid for and not lost: run the same command again to finish it without paying again."
        )
    if line.state is not ItemState.FAILED:
        return "Not finished: run the same command again."
    code = line.error_code or ""
    if code.startswith("VALIDATION_"):
        return (
            "The photo breaks an API rule (see the message): fix or replace it, then run "
            "again with --retry-failed."
        )
    if line.retryable:
        return "Worth another try: running the same command again retries it (billed again)."
    return (
        "A rerun does not retry it: read the message; add --retry-failed to try anyway, and "
        "quote the request_id to support if the answer looks wrong."
    )


def detection_lag_bound(
    observed: float, plan: Sequence[float], fallback: float = FALLBACK_INTERVAL
) -> float:
    """The most a task can have waited, finished, before a poll saw it: ``observed`` seconds
    from submit to result, with polls at ``plan`` offsets (then every ``fallback`` seconds;
    every ``fallback`` seconds when ``plan`` is empty). The poll before the one that saw the
    result found the task unfinished, so it finished after that one.

    >>> detection_lag_bound(7.2, (2.0, 4.0, 7.0))
    3.2
    >>> detection_lag_bound(1.0, ())
    1.0
    """
    polls = sorted(p for p in plan if p > 0)
    last = polls[-1] if polls else 0.0
    while last <= observed:
        last += fallback
        polls.append(last)
    seen_by = [p for p in polls if p <= observed]
    before = seen_by[-2] if len(seen_by) >= 2 else 0.0
    return round(max(observed - before, 0.0), 3)


def _quantile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{value / 60:.1f} min"


def _histogram(title: str, values: Sequence[float], what: str, empty: str) -> Chart:
    if not values:
        return Chart(title, "", empty=empty)
    width = nice_ceiling(max(values) / _BUCKETS)
    bars = [0.0] * (int(max(values) / width) + 1)
    for value in values:
        bars[int(value / width)] += 1
    return Chart(
        title,
        f"{len(values)} {what}; median {_seconds(_quantile(values, 0.5))}, "
        f"95% under {_seconds(_quantile(values, 0.95))}.",
        bars=bars,
        bar_label="photos per bucket",
        x_labels=("0 s", _seconds(len(bars) * width)),
    )


def _charts(timeline: Timeline | None) -> list[Chart]:
    if timeline is None:
        none = "not recorded (no timeline from the run)"
        return [Chart(t, "", empty=none) for t in ("Throughput", "Latency", "Poll lag", "429s")]
    finished = [i.finished for i in timeline.items if i.finished is not None]
    end = max([*finished, *(s.t for s in timeline.samples), 0.001])
    width = nice_ceiling(end / _BUCKETS)
    per_bucket = [0.0] * (int(end / width) + 1)
    for t in finished:
        per_bucket[int(t / width)] += 1 / width
    throughput = Chart(
        "Throughput",
        f"{len(finished)} photos settled in {_seconds(end)} "
        f"({len(finished) / end:.2f} per second).",
        bars=per_bucket if finished else (),
        bar_label="photos per second",
        x_labels=("0 s", _seconds(len(per_bucket) * width)),
        empty="no photo was worked on in this run",
    )
    latency = _histogram(
        "Latency",
        [i.finished - i.started for i in timeline.items if i.finished is not None],
        "photos, from start to settled",
        "no photo was worked on in this run",
    )
    lag = _histogram(
        "Poll detection lag (upper bound)",
        [
            detection_lag_bound(i.detected - i.submitted, timeline.poll_plan)
            for i in timeline.items
            if i.detected is not None and i.submitted is not None
        ],
        "tasks; the most each waited, finished, before a poll saw it",
        "no smart-beauty task was tracked in this run",
    )
    samples = timeline.samples
    limited = [
        float(later.rate_limited - earlier.rate_limited)
        for earlier, later in itertools.pairwise(samples)
    ]
    rates = [s.rate for s in samples[1:]]
    final_rate = samples[-1].rate if samples else None
    ending = (
        "allowed no limit at the end." if final_rate is None else f"ended at {final_rate:.1f}/s."
    )
    rate_limits = Chart(
        "429s and the limiter's rate",
        f"{samples[-1].rate_limited if samples else 0} rate-limited answers; the limiter " + ending,
        bars=limited if any(limited) else (),
        bar_label="429s per sample",
        line=rates,
        line_label="allowed requests per second",
        x_labels=("0 s", _seconds(samples[-1].t if samples else 0.0)),
        empty="no 429 and no rate limit in this run",
    )
    return [throughput, latency, lag, rate_limits]


def _redacted(text: str | None) -> str | None:
    """``text`` with every URL cut to its host: result URLs grant access to the image."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text) if text else text


def report_view(
    lines: Sequence[ManifestLine],
    timeline: Timeline | None,
    *,
    thumbs: Sequence[tuple[str | None, str | None]] | None = None,
    notes: Iterable[str] = (),
    title: str = "ailab-async batch report",
) -> PageView:
    """What the page of a batch shows: ``lines`` from ``manifest.jsonl``, the run's
    ``timeline`` (``None``: no charts), ``thumbs[i]`` the (before, after) thumbnail file
    names of ``lines[i]`` (``None``: no thumbnails at all)."""
    steps: list[str] = []
    step_index: dict[str, int] = {}
    items: list[dict[str, Any]] = []
    codes: dict[str, int] = {}
    for index, line in enumerate(lines):
        step = next_step(line)
        item: dict[str, Any] = {"n": line.relative, "s": line.state.value}
        if step is not None:
            item["x"] = step_index.setdefault(step, len(step_index))
            if item["x"] == len(steps):
                steps.append(step)
            code = line.error_code or "UNKNOWN"
            codes[code] = codes.get(code, 0) + 1
        optional = {
            "c": line.error_code if step is not None else None,
            "m": _redacted(line.error_message) if step is not None else None,
            "r": line.request_id,
            "l": line.log_id,
            "t": line.task_id,
            "a": line.attempts or None,
            "h": line.how.value if line.how is not None else None,
            "f": line.output,
            "b": thumbs[index][0] if thumbs else None,
            "o": thumbs[index][1] if thumbs else None,
        }
        item.update((key, value) for key, value in optional.items() if value is not None)
        items.append(item)
    states = [line.state for line in lines]
    done = states.count(ItemState.DOWNLOADED)
    failed = states.count(ItemState.FAILED)
    return PageView(
        title=title,
        counts=[
            ("photos", len(lines), "total"),
            ("done", done, "done"),
            ("failed", failed, "failed"),
            ("not finished (a rerun finishes them)", len(lines) - done - failed, "unfinished"),
        ],
        errors_by_code=sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])),
        charts=_charts(timeline),
        notes=list(notes),
        data={
            "items": items,
            "steps": steps,
            "codes": sorted(codes),
            "page_size": PAGE_SIZE,
            "thumbs": THUMBS_DIR,
            "thumb_size": THUMB_SIZE,
        },
    )


# --------------------------------------------------------------------------- the doing


@attrs.frozen
class ReportSummary:
    """What :func:`build_report` wrote."""

    path: Path
    photos: int
    failed: int
    thumbnails: int
    notes: tuple[str, ...]


def read_manifest(path: Path) -> tuple[list[ManifestLine], int]:
    """The lines of ``manifest.jsonl`` and how many could not be read (skipped)."""
    lines: list[ManifestLine] = []
    broken = 0
    with path.open(encoding="utf-8", errors="replace") as file:
        for text in file:
            if not text.strip():
                continue
            try:
                lines.append(converter.structure(json.loads(text), ManifestLine))
            except Exception:  # cattrs raises groups of whatever was wrong
                broken += 1  # a hand-edited or truncated line: report it, show the rest
    return lines, broken


def _thumb_name(kind: str, path: Path) -> str | None:
    """A name that changes when the source does, and says nothing about it."""
    try:
        stat = path.stat()
        resolved = path.resolve()
    except (OSError, ValueError):
        return None
    key = f"{kind}\0{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}\0{THUMB_SIZE}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".jpg"


def _make_thumb(source: Path, target: Path) -> bool:
    """Write a JPEG thumbnail of ``source``; ``False`` if it cannot be read as an image."""
    from PIL import Image, ImageOps  # noqa: PLC0415 - optional dependency

    staging = target.with_name(f".{target.name}.part")
    try:
        with Image.open(source) as opened:
            opened.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG: decode at a smaller scale
            image = ImageOps.exif_transpose(opened)
            image.thumbnail((THUMB_SIZE, THUMB_SIZE))
            image.convert("RGB").save(staging, "JPEG", quality=80)
        os.replace(staging, target)
    except Exception:  # an unreadable photo gets no thumbnail, not a failure
        staging.unlink(missing_ok=True)
        return False
    return True


def _pillow_available() -> bool:
    try:
        import PIL.Image  # noqa: F401, PLC0415 - optional dependency
    except ImportError:
        return False
    return True


def _thumbnails(
    lines: Sequence[ManifestLine], out_dir: Path
) -> tuple[list[tuple[str | None, str | None]], int]:
    """Each line's (before, after) thumbnail names, made where missing; and how many photos
    could not be found or read. Thumbnails no line uses any more are removed, unless a source
    was missing (it may be found again from another working directory)."""
    folder = out_dir / THUMBS_DIR
    folder.mkdir(exist_ok=True)
    wanted: dict[str, Path] = {}
    pairs: list[tuple[str | None, str | None]] = []
    missing = 0
    for line in lines:
        sources = (Path(line.input), out_dir / line.output if line.output else None)
        names: list[str | None] = []
        for kind, source in zip(("before", "after"), sources, strict=True):
            name = _thumb_name(kind, source) if source is not None else None
            if source is not None and name is None:
                missing += 1
            if name is not None:
                wanted[name] = source  # type: ignore[assignment]
            names.append(name)
        pairs.append((names[0], names[1]))
    existing = {entry.name for entry in folder.iterdir() if _THUMB_FILE.match(entry.name)}
    todo = {name: source for name, source in wanted.items() if name not in existing}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda name: _make_thumb(todo[name], folder / name), todo)
        made = dict(zip(todo, results, strict=True))
    unreadable = {name for name, ok in made.items() if not ok}
    if not missing:
        for stale in existing - set(wanted):
            (folder / stale).unlink(missing_ok=True)
    pairs = [
        (b if b not in unreadable else None, a if a not in unreadable else None) for b, a in pairs
    ]
    return pairs, missing + len(unreadable)


class ThumbnailMaker:
    """Makes each settled item's thumbnails while the batch goes on, a few worker threads at
    a time, so that the report at the end finds them made (the same names, by the same rule)
    instead of making them all then."""

    def __init__(self, out_dir: Path, *, workers: int = 2) -> None:
        self.folder = out_dir / THUMBS_DIR
        self.workers = workers
        self._queue: asyncio.Queue[tuple[Path, Path | None]] = asyncio.Queue()
        self._running: list[asyncio.Future[None]] = []

    def add(self, before: Path, after: Path | None) -> None:
        """Queue the thumbnails of an input and its output (``None``: none yet)."""
        if not self._running:
            self._running = [asyncio.ensure_future(self._work()) for _ in range(self.workers)]
        self._queue.put_nowait((before, after))

    async def _work(self) -> None:
        while True:
            sources = await self._queue.get()
            try:
                await to_thread(self._make, sources)
            except Exception as exc:  # a thumbnail is never worth a batch: the report says
                logger.debug("thumbnail not made: %s", exc)
            finally:
                self._queue.task_done()

    def _make(self, sources: tuple[Path, Path | None]) -> None:
        self.folder.mkdir(exist_ok=True)
        for kind, source in zip(("before", "after"), sources, strict=True):
            name = _thumb_name(kind, source) if source is not None else None
            if source is not None and name is not None and not (self.folder / name).exists():
                _make_thumb(source, self.folder / name)

    async def finish(self) -> None:
        """Wait until every queued thumbnail is made."""
        if self._running:
            await self._queue.join()

    async def aclose(self) -> None:
        await cancel_and_wait(*self._running)


class ReportRecorder:
    """What a batch run does for its report: records the :class:`Timeline`, makes
    thumbnails as items settle, and writes the page at the end (:meth:`write`)."""

    def __init__(self, client: AILabClient, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.timeline = TimelineRecorder(client)
        self.thumbnails = ThumbnailMaker(out_dir) if _pillow_available() else None
        self._sampler: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Start sampling the client (until :meth:`aclose`)."""
        self._sampler = asyncio.ensure_future(self.timeline.run())

    def settled(self, outcome: ItemOutcome) -> None:
        """An item was settled: make its thumbnails now rather than at the end."""
        if self.thumbnails is not None:
            self.thumbnails.add(outcome.item.path, outcome.output_path)

    async def write(self) -> Path:
        """Save the timeline and write ``report.html``; its path."""
        if self.thumbnails is not None:
            await self.thumbnails.finish()
        return await write_report(self.out_dir, self.timeline.timeline())

    async def aclose(self) -> None:
        await cancel_and_wait(self._sampler)
        if self.thumbnails is not None:
            await self.thumbnails.aclose()


def build_report(
    out_dir: Path, *, timeline: Timeline | None = None, thumbnails: bool = True
) -> ReportSummary:
    """Write ``report.html`` in ``out_dir`` from its ``manifest.jsonl`` and the run's
    ``timeline`` (default: ``report-timeline.json`` there, if any); blocking I/O.

    Raises ``FileNotFoundError`` when ``out_dir`` has no manifest.

    >>> build_report(Path("retouched"))  # doctest: +SKIP
    """
    lines, broken = read_manifest(out_dir / "manifest.jsonl")
    notes: list[str] = []
    if broken:
        notes.append(f"{broken} line(s) of manifest.jsonl could not be read and are not shown.")
    timeline_file = out_dir / TIMELINE_NAME
    if timeline is None and timeline_file.is_file():
        try:
            timeline = Timeline.from_json(timeline_file.read_text(encoding="utf-8"))
        except Exception:  # a damaged timeline costs the charts, not the page
            notes.append(f"{TIMELINE_NAME} could not be read: no charts.")
    thumbs: list[tuple[str | None, str | None]] | None = None
    if not thumbnails:
        notes.append("Thumbnails were not asked for.")
    elif not _pillow_available():
        notes.append(_NO_PILLOW)
    else:
        thumbs, unseen = _thumbnails(lines, out_dir)
        if unseen:
            notes.append(
                f"{unseen} picture(s) could not be found or read (inputs given as relative "
                "paths are found from the directory the batch ran in)."
            )
    page = render_page(report_view(lines, timeline, thumbs=thumbs, notes=notes))
    target = out_dir / REPORT_NAME
    staging = target.with_name(f".{REPORT_NAME}.part")
    staging.write_text(page, encoding="utf-8")
    os.replace(staging, target)
    made = sum((b is not None) + (a is not None) for b, a in thumbs or ())
    return ReportSummary(
        path=target,
        photos=len(lines),
        failed=sum(line.state is not ItemState.DOWNLOADED for line in lines),
        thumbnails=made,
        notes=tuple(notes),
    )


async def write_report(out_dir: Path, timeline: Timeline | None) -> Path:
    """Save ``timeline`` as ``report-timeline.json`` and build the report, off the event
    loop; the page's path."""

    def write() -> Path:
        if timeline is not None:
            staging = out_dir / f".{TIMELINE_NAME}.part"
            staging.write_text(timeline.to_json(), encoding="utf-8")
            os.replace(staging, out_dir / TIMELINE_NAME)
        return build_report(out_dir, timeline=timeline).path

    return await to_thread(write)
