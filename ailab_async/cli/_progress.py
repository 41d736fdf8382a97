"""Progress of a batch on the command line: a live ``rich`` display, or plain lines.

:class:`ProgressState` decides (counts, rate, ETA) and reads no clock of its own; the displays
only show it. Feed any display with :func:`run_batch`'s ``on_event(kind, outcome)`` callback::

    with open_progress(len(items), out=sys.stdout, err=sys.stderr) as progress:
        report = await run_batch(client, items, spec, on_event=progress.on_event)

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
    "NullProgress",
    "PlainProgress",
    "ProgressDisplay",
    "ProgressState",
    "describe_outcome",
    "display_text",
    "format_duration",
    "open_progress",
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


@attrs.define
class ProgressState:
    """Counts of a running batch, and the rate and ETA derived from them.

    ``record`` takes :func:`run_batch` events. Items settled without remote work (already
    done, or failed for good in an earlier run) count as settled but not towards the rate,
    so a rerun that skips most items does not promise an ETA it cannot keep.
    """

    total: int
    clock: Clock = time.monotonic
    settled: int = 0
    downloaded: int = 0
    failed: int = 0
    skipped: int = 0
    started: int = 0
    worked: int = 0
    first_start: float | None = None

    @property
    def in_flight(self) -> int:
        return self.started - self.worked

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

    def summary(self) -> str:
        """One line: ``12/24 settled, 1 failed, 8 in flight, 1.5/s, ETA 8s``."""
        rate, eta = self.rate(), self.eta()
        return (
            f"{self.settled}/{self.total} settled, {self.failed} failed, "
            f"{self.in_flight} in flight, "
            f"{'-' if rate is None else f'{rate:.1f}'}/s, "
            f"ETA {'-' if eta is None else format_duration(eta)}"
        )


def describe_outcome(outcome: ItemOutcome) -> str:
    """One item's fate as a line: what it was, what became of it (never a URL)."""
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


class ProgressDisplay(Protocol):
    """What the CLI needs of a display: batch events in, a periodic ``tick``, close at exit."""

    state: ProgressState

    def on_event(self, kind: str, outcome: ItemOutcome | None) -> None: ...

    def tick(self) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Keeps the state, shows nothing (``--quiet``)."""

    def __init__(self, state: ProgressState) -> None:
        self.state = state

    def on_event(self, kind: str, outcome: ItemOutcome | None) -> None:
        self.state.record(kind, outcome)

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """Line output for logs and pipes: a line per item that did work or failed, and a
    summary line at most every ``summary_every`` seconds (on events or ``tick``)."""

    def __init__(self, state: ProgressState, stream: TextIO, *, summary_every: float = 10.0):
        self.state = state
        self._stream = stream
        self._summary_every = summary_every
        self._last_summary = state.clock()
        self._width = len(str(state.total))

    def on_event(self, kind: str, outcome: ItemOutcome | None) -> None:
        self.state.record(kind, outcome)
        # Items already done in an earlier run are counted, not listed: a rerun of a big
        # batch would otherwise print thousands of lines that say nothing.
        if (
            kind == "finished"
            and outcome is not None
            and not (outcome.how == How.SKIPPED and outcome.state is ItemState.DOWNLOADED)
        ):
            count = f"[{self.state.settled:>{self._width}}/{self.state.total}]"
            self._print(f"{count} {describe_outcome(outcome)}")
        self.tick()

    def tick(self) -> None:
        now = self.state.clock()
        if now - self._last_summary >= self._summary_every and self.state.settled < (
            self.state.total
        ):
            self._last_summary = now
            self._print(f"progress: {self.state.summary()}")

    def close(self) -> None:
        self._stream.flush()

    def _print(self, line: str) -> None:
        print(line, file=self._stream, flush=True)


class RichProgress:
    """A live bar with done, failed, in flight, rate and ETA (``rich``, on a terminal).

    The rate and ETA come from :class:`ProgressState` rather than rich's own speed estimate,
    which would count skipped items of a rerun as work done in no time.
    """

    def __init__(
        self,
        state: ProgressState,
        stream: TextIO,
        *,
        description: str = "photos",
        force_terminal: bool = False,
    ):
        from rich.console import Console  # noqa: PLC0415 - optional dependency
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text  # noqa: PLC0415

        self.state = state
        self._text = Text

        class StatsColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                rate, eta = state.rate(), state.eta()
                return Text(
                    f"{state.failed} failed · {state.in_flight} in flight · "
                    f"{'-' if rate is None else f'{rate:.1f}'}/s · "
                    f"ETA {'-' if eta is None else format_duration(eta)}"
                )

        console = Console(file=stream, force_terminal=force_terminal or None)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=16),  # leaves the counts room on an 80-column terminal
            MofNCompleteColumn(),
            StatsColumn(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task(description, total=state.total)
        self._progress.start()

    def on_event(self, kind: str, outcome: ItemOutcome | None) -> None:
        self.state.record(kind, outcome)
        if kind == "finished" and outcome is not None:
            self._progress.update(self._task, completed=self.state.settled)
            if outcome.state is not ItemState.DOWNLOADED:
                # Text, not a markup string: a file named "[bold]x.jpg" stays as it is.
                self._progress.console.print(self._text(describe_outcome(outcome)))

    def tick(self) -> None:
        pass  # rich refreshes on its own thread

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
    description: str = "photos",
) -> Iterator[ProgressDisplay]:
    """The display for a batch of ``total`` items, closed on exit.

    ``auto``: rich on ``err`` when it is a terminal and rich is installed, else plain lines
    on ``out``; ``none`` shows nothing.
    """
    state = ProgressState(total, clock)
    display: ProgressDisplay
    if mode == "auto":
        mode = "rich" if _isatty(err) and _rich_available() else "plain"
    if mode == "rich":
        display = RichProgress(state, err, description=description)
    elif mode == "plain":
        display = PlainProgress(state, out, summary_every=summary_every)
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
