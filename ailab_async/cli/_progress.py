"""Progress of a batch on the command line: a live ``rich`` display, or plain lines.

:class:`ProgressState` decides (counts, rate, ETA, elapsed time, what the batch is waiting
for before its first result) and reads no clock of its own; the displays only show it. Feed
any display with :func:`run_batch`'s ``on_event(kind, outcome)`` callback, and now and then
with what the client is doing (:class:`ClientActivity`, via ``observe``)::

    with open_progress(len(items), out=sys.stdout, err=sys.stderr) as progress:
        report = await run_batch(client, items, spec, on_event=progress.on_event)

Words are chosen so they cannot be confused: *in progress* counts photos being worked on
(for smart-beauty, mostly waiting on their tasks); *requests in flight* counts HTTP
requests, what ``--concurrency`` bounds.

``rich`` is optional (the ``[cli]`` extra); without it, or when stderr is not a terminal,
:class:`PlainProgress` prints one line per settled item and a summary line now and then.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal, Protocol, TextIO

import attrs

from ..batch import How
from ..batch.journal import ItemState

if TYPE_CHECKING:
    from ..batch import ItemOutcome

__all__ = [
    "ClientActivity",
    "NullProgress",
    "PlainProgress",
    "ProgressDisplay",
    "ProgressState",
    "describe_outcome",
    "display_text",
    "format_duration",
    "open_progress",
    "plural",
]

Clock = Callable[[], float]
Mode = Literal["auto", "rich", "plain", "none"]


def display_text(text: str) -> str:
    """``text`` safe to print on a terminal: control characters become escapes.

    File names come from the user's disk, and error codes, messages and request ids from the
    server: either may hold newlines, carriage returns, terminal escape sequences or bidi
    overrides that would rewrite what the terminal shows. Every character that is not
    printable (C0 and C1 controls, Unicode format characters such as U+202E, line and
    paragraph separators, surrogates) becomes its Python escape. Escaped text is printable,
    so escaping twice changes nothing.

    >>> display_text("a\\x1b[2Jb.jpg")
    'a\\\\x1b[2Jb.jpg'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_duration(seconds: float) -> str:
    """A short human duration: ``42s``, ``3m05s``, ``1h02m``.

    >>> format_duration(185)
    '3m05s'
    """
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an ``s`` unless there is one.

    >>> plural(1, "photo"), plural(3, "other file")
    ('1 photo', '3 other files')
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _seconds(value: float) -> str:
    """A short duration that keeps tenths below a minute: ``0.4s``, ``12.0s``, ``3m05s``."""
    return f"{value:.1f}s" if value < 59.95 else format_duration(value)


@attrs.frozen
class ClientActivity:
    """What the client is doing at one moment, read from its stats (``client.stats``,
    ``client.tracker``) by the command; the display only words it."""

    #: HTTP requests in flight (what ``--concurrency`` bounds).
    requests_in_flight: int = 0
    #: Smart-beauty tasks submitted and being polled.
    tasks_pending: int = 0
    #: Task polls sent so far.
    polls_sent: int = 0
    #: Seconds after its submit that a new task is first polled (the learned schedule's
    #: first point, or the warm-up's until there is one); ``None``: no tasks.
    first_poll_after: float | None = None


@attrs.define
class ProgressState:
    """Counts of a running batch, and the rate, ETA and elapsed time derived from them.

    ``record`` takes :func:`run_batch` events, ``observe`` the client's activity. Items
    settled without remote work (already done, or failed for good in an earlier run) count
    as settled but not towards the rate, so a rerun that skips most items does not promise
    an ETA it cannot keep. ``concurrency`` is the bound on requests in flight, when known.
    """

    total: int
    clock: Clock = time.monotonic
    concurrency: int | None = None
    settled: int = 0
    downloaded: int = 0
    #: Of ``downloaded``: finished from work an earlier run paid for (a task or a result).
    resumed: int = 0
    failed: int = 0
    skipped: int = 0
    started: int = 0
    worked: int = 0
    first_start: float | None = None
    activity: ClientActivity = ClientActivity()
    #: When tasks were first seen pending (sampled by ``observe``).
    tasks_seen_at: float | None = None
    opened_at: float = attrs.field(
        default=attrs.Factory(lambda self: self.clock(), takes_self=True)
    )

    @property
    def in_progress(self) -> int:
        """Photos started and not settled yet."""
        return self.started - self.worked

    def elapsed(self) -> float:
        """Seconds since the display opened."""
        return self.clock() - self.opened_at

    def observe(self, activity: ClientActivity) -> None:
        """Take a new reading of what the client is doing."""
        self.activity = activity
        if activity.tasks_pending and self.tasks_seen_at is None:
            self.tasks_seen_at = self.clock()

    def record(self, kind: str, outcome: ItemOutcome | None) -> None:
        if kind == "started":
            self.started += 1
            if self.first_start is None:
                self.first_start = self.clock()
            return
        if kind != "finished" or outcome is None:
            return
        self.settled += 1
        if outcome.how == How.SKIPPED:
            self.skipped += 1
        else:
            self.worked += 1
        if outcome.state is ItemState.DOWNLOADED:
            self.downloaded += 1
            if outcome.how == How.RESUMED:
                self.resumed += 1
        else:
            self.failed += 1

    def rate(self) -> float | None:
        """Items settled by remote work per second since the first one started."""
        if self.first_start is None or self.worked == 0:
            return None
        elapsed = self.clock() - self.first_start
        return self.worked / elapsed if elapsed > 0 else None

    def eta(self) -> float | None:
        """Seconds until every item is settled, at the current rate."""
        rate = self.rate()
        if rate is None:
            return None
        return (self.total - self.settled) / rate

    def requests(self) -> str:
        """``3/8 requests in flight``: the same words as ``--concurrency``'s help."""
        bound = "" if self.concurrency is None else f"/{self.concurrency}"
        in_flight = self.activity.requests_in_flight
        return f"{in_flight}{bound} request{'' if in_flight == 1 and not bound else 's'} in flight"

    def waiting(self) -> str | None:
        """What the batch waits for before its first result, or ``None`` once there is one
        (or every item is settled): ``12 tasks submitted, first poll in ~4s``."""
        if self.worked or self.settled >= self.total:
            return None
        if not self.in_progress:
            return "starting"
        activity = self.activity
        if activity.tasks_pending:
            submitted = f"{plural(activity.tasks_pending, 'task')} submitted"
            if activity.polls_sent == 0 and activity.first_poll_after is not None:
                assert self.tasks_seen_at is not None  # set when tasks were seen pending
                due = self.tasks_seen_at + activity.first_poll_after - self.clock()
                if due >= 0.5:
                    return f"{submitted}, first poll in ~{format_duration(due)}"
                return f"{submitted}, first poll due"
            polls = plural(activity.polls_sent, "poll")
            return f"{submitted}, {polls} sent, none done yet"
        if activity.requests_in_flight:
            return f"{self.requests()}, no answer yet"
        return f"{plural(self.in_progress, 'photo')} starting"

    def stats(self) -> str:
        """``ETA 8s · 1.5/s · 1 failed · 20 in progress · 8/8 requests in flight``, or what
        the batch waits for before its first result."""
        waiting = self.waiting()
        if waiting is not None:
            return waiting
        # Most telling first: a narrow terminal cuts the end of the line.
        rate, eta = self.rate(), self.eta()
        eta_text = "-" if eta is None else format_duration(eta)
        return (
            f"{'done' if self.settled >= self.total else f'ETA {eta_text}'} · "
            f"{'-' if rate is None else f'{rate:.1f}'}/s · {self.failed} failed · "
            f"{self.in_progress} in progress · {self.requests()}"
        )

    def summary(self) -> str:
        """One line: ``12/24 settled · elapsed 10s · ETA 8s · ...`` (see :meth:`stats`)."""
        waiting = "waiting: " if self.waiting() is not None else ""
        return (
            f"{self.settled}/{self.total} settled · elapsed {format_duration(self.elapsed())}"
            f" · {waiting}{self.stats()}"
        )


def describe_outcome(outcome: ItemOutcome, *, at: float | None = None) -> str:
    """One item's fate as a line: what it was, what became of it (never a URL).

    With ``at`` (seconds into the run; ``-v``), the line ends with what support and tuning
    need: when it settled, the request id, the task id and how long the task took, the
    billed sends.
    """
    line = _fate(outcome)
    return line if at is None else f"{line} [{_details(outcome, at)}]"


def _fate(outcome: ItemOutcome) -> str:
    name = display_text(outcome.item.relative)
    if outcome.state is ItemState.DOWNLOADED:
        if outcome.how == How.SKIPPED:
            return f"done      {name} (already done)"
        target = display_text(str(outcome.output_path)) if outcome.output_path else "?"
        word = "resumed " if outcome.how == How.RESUMED else "ok      "
        return f"{word}  {name} -> {target}"
    code = display_text(outcome.error_code or "UNKNOWN")  # from the server, like the message
    message = display_text(outcome.error_message or "")
    if outcome.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED):
        # Paid for, and the task or result still lives: the next run finishes it for free.
        return f"NOT DONE  {name}: {code} (paid; the next run finishes it): {message}"
    earlier = " (failed in an earlier run)" if outcome.how == How.SKIPPED else ""
    return f"FAILED    {name}: {code}{earlier}: {message}"


def _details(outcome: ItemOutcome, at: float) -> str:
    """``at 2.1s, request r-1, task t-9 done 1.8s after submit, 2 sends``: ids the server
    sent (escaped), never a URL or the key."""
    parts = [f"at {_seconds(at)}"]
    entry = outcome.entry
    if entry is not None:
        if entry.request_id:
            parts.append(f"request {display_text(entry.request_id)}")
        if entry.task_id:
            task = f"task {display_text(entry.task_id)}"
            if entry.submitted_at is not None and entry.produced_at is not None:
                took = (entry.produced_at - entry.submitted_at).total_seconds()
                task += f" done {_seconds(took)} after submit"
            parts.append(task)
        if entry.attempts > 1:
            parts.append(f"{entry.attempts} sends")
    return ", ".join(parts)


class ProgressDisplay(Protocol):
    """What the CLI needs of a display: batch events in, the client's activity now and then
    (``observe``, which also makes periodic output happen), close at exit."""

    state: ProgressState

    def on_event(self, kind: str, outcome: ItemOutcome | None) -> None: ...

    def observe(self, activity: ClientActivity) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Keeps the state, shows nothing (``--quiet``)."""

    def __init__(self, state: ProgressState) -> None:
        self.state = state

    def on_event(self, kind: str, outcome: ItemOutcome | None) -> None:
        self.state.record(kind, outcome)

    def observe(self, activity: ClientActivity) -> None:
        self.state.observe(activity)

    def close(self) -> None:
        pass


def _already_done(outcome: ItemOutcome) -> bool:
    return outcome.how == How.SKIPPED and outcome.state is ItemState.DOWNLOADED


class PlainProgress:
    """Line output for logs and pipes: a line per item that did work or failed, what the
    batch waits for (before its first result, when that changes), and a summary line at
    most every ``summary_every`` seconds (on events or ``observe``).

    ``verbose`` (``-v``): every item gets a line, those already done included, with its
    details (see :func:`describe_outcome`).
    """

    def __init__(
        self,
        state: ProgressState,
        stream: TextIO,
        *,
        summary_every: float = 10.0,
        verbose: bool = False,
    ):
        self.state = state
        self._stream = stream
        self._summary_every = summary_every
        self._verbose = verbose
        self._last_summary = state.clock()
        self._width = len(str(state.total))
        self._told_waiting: tuple[int, bool] | None = None

    def on_event(self, kind: str, outcome: ItemOutcome | None) -> None:
        self.state.record(kind, outcome)
        # Items already done in an earlier run are counted, not listed: a rerun of a big
        # batch would otherwise print thousands of lines that say nothing.
        if (
            kind == "finished"
            and outcome is not None
            and (self._verbose or not _already_done(outcome))
        ):
            at = self.state.elapsed() if self._verbose else None
            count = f"[{self.state.settled:>{self._width}}/{self.state.total}]"
            self._print(f"{count} {describe_outcome(outcome, at=at)}")
        self._summarise()

    def observe(self, activity: ClientActivity) -> None:
        self.state.observe(activity)
        waiting = self.state.waiting()
        # Told again when there is news (more tasks submitted, polling begun), not for
        # every step of a countdown.
        news = (
            (activity.tasks_pending, activity.polls_sent > 0)
            if activity.tasks_pending
            else (0, activity.requests_in_flight > 0)
        )
        if waiting is not None and news != self._told_waiting:
            self._told_waiting = news
            self._print(f"waiting: {waiting}")
        self._summarise()

    def close(self) -> None:
        self._stream.flush()

    def _summarise(self) -> None:
        now = self.state.clock()
        if now - self._last_summary >= self._summary_every and self.state.settled < (
            self.state.total
        ):
            self._last_summary = now
            self._print(f"progress: {self.state.summary()}")

    def _print(self, line: str) -> None:
        print(line, file=self._stream, flush=True)


class RichProgress:
    """A live bar: settled of total, the elapsed time, then failed, in progress, requests in
    flight, rate and ETA (or, before the first result, what the batch waits for), cut at
    the terminal's edge (``rich``, on a terminal). Failures are printed above it; with
    ``verbose``, every item.

    The rate and ETA come from :class:`ProgressState` rather than rich's own speed estimate,
    which would count skipped items of a rerun as work done in no time.
    """

    def __init__(
        self,
        state: ProgressState,
        stream: TextIO,
        *,
        force_terminal: bool = False,
        verbose: bool = False,
    ):
        from rich.console import Console  # noqa: PLC0415 - optional dependency
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
        )
        from rich.text import Text  # noqa: PLC0415

        self.state = state
        self._text = Text
        self._verbose = verbose

        class StatsColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                # Cut at the terminal's edge rather than wrapped over two lines.
                return Text(state.stats(), no_wrap=True, overflow="ellipsis")

        class ElapsedColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(f"elapsed {format_duration(state.elapsed())}")

        console = Console(file=stream, force_terminal=force_terminal or None)
        self._progress = Progress(
            BarColumn(bar_width=10),  # leaves the counts room on an 80-column terminal
            MofNCompleteColumn(),
            ElapsedColumn(),
            StatsColumn(),
            console=console,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task("", total=state.total)
        self._progress.start()

    def on_event(self, kind: str, outcome: ItemOutcome | None) -> None:
        self.state.record(kind, outcome)
        if kind == "finished" and outcome is not None:
            self._progress.update(self._task, completed=self.state.settled)
            if self._verbose or outcome.state is not ItemState.DOWNLOADED:
                at = self.state.elapsed() if self._verbose else None
                # Text, not a markup string: a file named "[bold]x.jpg" stays as it is.
                self._progress.console.print(self._text(describe_outcome(outcome, at=at)))

    def observe(self, activity: ClientActivity) -> None:
        self.state.observe(activity)  # rich refreshes on its own thread

    def close(self) -> None:
        self._progress.stop()


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def open_progress(
    total: int,
    *,
    out: TextIO,
    err: TextIO,
    mode: Mode = "auto",
    clock: Clock = time.monotonic,
    summary_every: float = 10.0,
    concurrency: int | None = None,
    verbose: bool = False,
) -> Iterator[ProgressDisplay]:
    """The display for a batch of ``total`` items, closed on exit.

    ``auto``: rich on ``err`` when it is a terminal and rich is installed, else plain lines
    on ``out``; ``none`` shows nothing. ``concurrency``: the bound on requests in flight
    (shown next to them); ``verbose``: a line for every item, with its details.
    """
    state = ProgressState(total, clock, concurrency=concurrency)
    display: ProgressDisplay
    if mode == "auto":
        mode = "rich" if _isatty(err) and _rich_available() else "plain"
    if mode == "rich":
        display = RichProgress(state, err, verbose=verbose)
    elif mode == "plain":
        display = PlainProgress(state, out, summary_every=summary_every, verbose=verbose)
    else:
        display = NullProgress(state)
    try:
        yield display
    finally:
        display.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
