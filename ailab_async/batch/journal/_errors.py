"""The journal's exceptions: closed or unknown, busy, another account's, an illegal move.

Tree (all under :class:`~ailab_async.errors.AILabError`)::

    JournalError
    ├── JournalBusyError         another run holds the journal's lock
    ├── JournalAccountError      written for another account or base URL
    └── IllegalTransitionError   a move ALLOWED_TRANSITIONS forbids (also a ValueError)
"""

from __future__ import annotations

from ...errors import AILabError
from ._states import ALLOWED_TRANSITIONS, ItemState

__all__ = [
    "IllegalTransitionError",
    "JournalAccountError",
    "JournalBusyError",
    "JournalError",
]


class JournalError(AILabError):
    """The journal cannot do what was asked: closed, unknown item, or a newer schema."""


class JournalBusyError(JournalError):
    """Another run (this process or another) has the journal open: two runs would pay twice."""


class JournalAccountError(JournalError):
    """The journal was written for another account or API base URL: its tasks are not ours."""


class IllegalTransitionError(JournalError, ValueError):
    """An item was asked to move between two states that :data:`ALLOWED_TRANSITIONS` forbids."""

    def __init__(self, item_id: int, current: ItemState, target: ItemState) -> None:
        order = list(ItemState)
        allowed = sorted(ALLOWED_TRANSITIONS[current], key=order.index)
        allowed_text = ", ".join(s.value for s in allowed) or "none (final)"
        super().__init__(
            f"journal item {item_id}: cannot go from {current.value} to {target.value} "
            f"(allowed from {current.value}: {allowed_text})"
        )
        self.item_id = item_id
        self.current = current
        self.target = target
