"""Delivering events to hooks: which hooks a client accepts, and calling them safely.

The parts that do the work (the dispatcher, the tracker, downloads) hold a :class:`Hooks`
or ``None``; ``None`` when no hook is installed, so each place that could report something
pays one ``is not None`` test and builds no event. :meth:`Hooks.emit` calls every hook in
turn; one that raises is logged (its exception type only: a message could quote anything)
and skipped, so a broken hook never changes what a call returns or raises. Whether a
limiter's new rate is worth an event (:func:`rate_moved`) is decided here too, purely.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable

from .errors import ConfigurationError
from .events import Event, EventHook

__all__ = ["RATE_CHANGE", "Hooks", "checked_hooks", "hooks_or_none", "rate_moved"]

logger = logging.getLogger("ailab_async")

#: The relative move of the limiter's rate that is reported as a ``RateChanged``.
RATE_CHANGE = 0.05


class Hooks:
    """The hooks of one client, called in the order given."""

    __slots__ = ("_failed", "hooks")

    def __init__(self, hooks: Iterable[EventHook]) -> None:
        self.hooks = tuple(hooks)
        self._failed: set[tuple[int, str]] = set()

    def emit(self, event: Event) -> None:
        """Give ``event`` to every hook; a hook that raises is logged and skipped."""
        for hook in self.hooks:
            try:
                hook(event)
            except Exception as exc:  # a user's hook must never break a call
                self._report(hook, exc, event)

    def _report(self, hook: EventHook, exc: Exception, event: Event) -> None:
        # The first failure of each kind per hook is a warning; repeats go to debug, so a
        # hook that fails on every event does not flood the log.
        key = (id(hook), type(exc).__name__)
        level = logging.DEBUG if key in self._failed else logging.WARNING
        self._failed.add(key)
        logger.log(
            level,
            "an on_event hook (%s) raised %s on %s; ignored",
            getattr(hook, "__qualname__", type(hook).__name__),
            type(exc).__name__,
            type(event).__name__,
        )


def checked_hooks(on_event: object) -> list[EventHook]:
    """``on_event`` as a list of hooks: ``None``, one callable, or an iterable of them.

    A coroutine function is refused: hooks are called synchronously, so its coroutine would
    never run.

    >>> checked_hooks(None), len(checked_hooks([print, print]))
    ([], 2)
    """
    if on_event is None:
        return []
    candidates: list[object] = (
        [on_event] if callable(on_event) or not isinstance(on_event, Iterable) else [*on_event]
    )
    for hook in candidates:
        if not callable(hook):
            raise ConfigurationError(
                "on_event must be a function of one event, or a sequence of them; got "
                f"{type(hook).__name__}"
            )
        if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
            getattr(hook, "__call__", None)  # noqa: B004 - an object whose __call__ is async
        ):
            raise ConfigurationError(
                "on_event hooks are called synchronously and must not be coroutine "
                "functions; hand the event to a queue (queue.put_nowait) instead"
            )
    return candidates  # type: ignore[return-value]


def rate_moved(reported: float | None, now: float | None) -> bool:
    """Whether the limiter's rate moved enough since ``reported`` to be reported again: any
    cut (a 429 answered), and growth once it adds :data:`RATE_CHANGE` (growth is gradual,
    and an event for each small step would only be noise).

    >>> rate_moved(10.0, 10.4), rate_moved(10.0, 10.5), rate_moved(10.0, 9.9), rate_moved(None, 5.0)
    (False, True, True, True)
    """
    if reported is None or now is None:
        return reported is not now
    return now < reported or now >= reported * (1 + RATE_CHANGE)


def hooks_or_none(hooks: Iterable[EventHook]) -> Hooks | None:
    """A :class:`Hooks` for ``hooks``, or ``None`` if there are none (nothing to build)."""
    listed = list(hooks)
    return Hooks(listed) if listed else None
