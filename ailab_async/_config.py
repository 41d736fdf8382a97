"""Client options: their defaults and the rules that accept or refuse them.

Everything here decides; nothing does I/O or reads a clock (the current time and the
running loop are arguments). A refused client setting is a
:class:`~ailab_async.errors.ConfigurationError`; a refused per-call argument a
:class:`~ailab_async.errors.ValidationError` naming the input and the rule. No message ever
quotes the API key, and no frame here holds it in a plain local (a traceback rendered with
its frames' locals must not show it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._polling import PollingConfig
from .errors import ConfigurationError, ValidationError
from .models import Secret

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_DEADLINE",
    "DEFAULT_TASK_TIMEOUT",
    "ClientSettings",
    "LoopBinding",
    "check_call_seconds",
    "check_max_bytes",
    "check_setting_seconds",
    "checked_api_key",
    "checked_base_url",
    "checked_submitted_at",
    "is_loopback",
]

API_KEY_ENV = "AILAB_API_KEY"
BASE_URL_ENV = "AILAB_BASE_URL"
DEFAULT_DEADLINE = 300.0
DEFAULT_TASK_TIMEOUT = 600.0


# --- the key and the base URL ----------------------------------------------------------------


def checked_api_key(secret: Secret[object]) -> Secret[str]:
    """The stripped key, or ConfigurationError; no local here ever holds the raw key."""
    defect = _api_key_defect(secret.reveal())
    if defect is not None:
        raise ConfigurationError(defect)
    return Secret(str(secret.reveal()).strip())


def _api_key_defect(key: object) -> str | None:
    """What is wrong with ``key``, in words that never quote it; ``None`` if usable.

    (Its frame is gone by the time :func:`checked_api_key` raises.)
    """
    if key is None or (isinstance(key, str) and not key.strip()):
        return f"no API key: pass api_key= or set the {API_KEY_ENV} environment variable"
    if not isinstance(key, str):
        return f"the API key must be a string, got {type(key).__name__}"
    for position, char in enumerate(key.strip(), start=1):
        if not " " <= char <= "~":
            kind = "a control character" if char.isascii() else "a non-ASCII character"
            # It would break the header (or inject one); say where, never what.
            return (
                f"the API key contains {kind} at position {position}, which cannot be sent "
                "in an HTTP header; copy the key again"
            )
    return None


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine (plain HTTP there exposes the key to no one)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_base_url(url: object, *, allow_plain_http: object) -> str:
    """``url`` without its trailing slash, if it is an http(s) URL the key may go to.

    Plain ``http://`` is refused unless the host is loopback or ``allow_plain_http`` is
    ``True``. A password in a refused URL is never echoed.

    >>> checked_base_url("http://127.0.0.1:8080/", allow_plain_http=False)
    'http://127.0.0.1:8080'
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"base_url must be a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    else:
        if parts.scheme in ("http", "https") and host:
            if parts.scheme == "http" and not is_loopback(host) and allow_plain_http is not True:
                raise ConfigurationError(
                    f"refusing to send the API key over plain HTTP to {host}; use "
                    "https, or pass dangerously_allow_plain_http=True if you really mean it"
                )
            return url.rstrip("/")
    raise ConfigurationError(
        f"base_url must be an http(s) URL with a host, got {_shown_url(url)!r}"
    )


def _shown_url(url: str) -> str:
    """``url`` without user info (it may hold a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{scheme}{sep}{netloc}{slash}{path}"


# --- durations -------------------------------------------------------------------------------


def _seconds_problem(value: object, name: str) -> tuple[str, str] | None:
    """Why ``value`` is not a positive, finite number of seconds, and the rule's name.

    Infinity is refused: a call or a wait without any limit is how a stuck connection turns
    into a stuck program; pass a large number to mean "very long".
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number of seconds, got {type(value).__name__}", "type"
    if not 0 < value < math.inf:
        return f"{name} must be a positive, finite number of seconds, got {value!r}", "range"
    return None


def check_setting_seconds(value: object, name: str) -> None:
    """A client setting: :class:`ConfigurationError` if it is not a usable duration."""
    problem = _seconds_problem(value, name)
    if problem is not None:
        raise ConfigurationError(problem[0])


def check_call_seconds(value: object, name: str) -> None:
    """A per-call argument (``None``: the default): :class:`ValidationError` if unusable.

    >>> check_call_seconds(None, "deadline")
    """
    problem = None if value is None else _seconds_problem(value, name)
    if problem is not None:
        raise ValidationError(problem[0], input=name, rule=problem[1])


# --- client settings -------------------------------------------------------------------------

# attrs validators: each refuses one setting with the message the client always gave.


def _seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_setting_seconds(value, attribute.name)


def _seconds_or_none(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:  # None: no limit
        check_setting_seconds(value, attribute.name)


def _count(minimum: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not (isinstance(value, int) and value >= minimum):
            raise ConfigurationError(f"{attribute.name} must be an integer >= {minimum}")

    return check


def _backoff_max(settings: ClientSettings, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_setting_seconds(value, attribute.name)
    if not settings.backoff_initial <= value:
        raise ConfigurationError("backoff must satisfy 0 < backoff_initial <= backoff_max")


def _flag(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{attribute.name} must be True or False")


def _hook(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{attribute.name} must be callable")


def _polling_config(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, PollingConfig):
        raise ConfigurationError("polling must be a PollingConfig")


def _rate(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
    ):
        raise ConfigurationError(
            "rate_limit must be a positive, finite number of requests/second (None: no "
            "limit) or a RateLimiter"
        )


@attrs.frozen
class ClientSettings:
    """The client's numeric, yes/no and hook options, each checked on construction.

    Fields are checked in this order; the first refused one is a
    :class:`ConfigurationError` naming it. No defaults here: they are the client's
    (``AILabClient``'s signature is where users read them). The key and the base URL have
    their own checks above; the session and a ``RateLimiter`` object are checked by the
    client itself, so ``rate_limit`` here is the number, if one was given.
    """

    max_concurrency: int = attrs.field(validator=_count(1))
    timeout: float = attrs.field(validator=_seconds)
    deadline: float = attrs.field(validator=_seconds)
    task_timeout: float | None = attrs.field(validator=_seconds_or_none)
    max_retries: int = attrs.field(validator=_count(0))
    backoff_initial: float = attrs.field(validator=_seconds)
    backoff_max: float = attrs.field(validator=_backoff_max)
    retry_ambiguous: bool = attrs.field(validator=_flag)
    dangerously_allow_plain_http: bool = attrs.field(validator=_flag)
    trust_env: bool = attrs.field(validator=_flag)
    clock: Callable[[], float] | None = attrs.field(validator=_hook)
    sleep: Callable[[float], Awaitable[None]] | None = attrs.field(validator=_hook)
    random: Callable[[], float] | None = attrs.field(validator=_hook)
    polling: PollingConfig | None = attrs.field(validator=_polling_config)
    rate_limit: float | None = attrs.field(validator=_rate)


# --- per-call arguments ----------------------------------------------------------------------


def check_max_bytes(max_bytes: object) -> None:
    """A download's size cap: a positive ``int`` (``ValidationError`` otherwise)."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValidationError(
            f"max_bytes must be a positive integer number of bytes, got {max_bytes!r}",
            input="max_bytes",
            rule="range",
        )


def checked_submitted_at(submitted_at: object, now: dt.datetime) -> dt.datetime:
    """When a tracked task was submitted: timezone-aware, and never later than ``now``.

    A time later than ``now`` (another machine's clock ran ahead) counts as "just
    submitted": refusing it would strand a task that is already paid for.
    """
    if not isinstance(submitted_at, dt.datetime):
        raise ValidationError(
            f"submitted_at must be a datetime, got {type(submitted_at).__name__}",
            input="submitted_at",
            rule="type",
        )
    if submitted_at.utcoffset() is None:
        raise ValidationError(
            "submitted_at must be timezone-aware UTC (for example "
            "datetime.now(timezone.utc)); a naive datetime is ambiguous",
            input="submitted_at",
            rule="timezone",
        )
    return min(submitted_at, now)


# --- the event loop a client belongs to ------------------------------------------------------

_FOREIGN_LOOP = (
    "this AILabClient was first used in another event loop; one AILabClient per event "
    "loop: create the client inside the loop that uses it (for example inside the "
    "coroutine given to asyncio.run)"
)


class LoopBinding:
    """The event loop a client's sessions, locks and futures belong to: its first one.

    The running loop is an argument (``None``: called outside any loop), so the rules are
    tested without running one.
    """

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def enter(self, running: asyncio.AbstractEventLoop | None) -> None:
        """Accept a call from ``running``, binding it if it is the first; else refuse."""
        if running is None:
            raise ConfigurationError(
                "AILabClient must be used from inside a running event loop (async code); "
                "create it and call it in the loop that uses it"
            )
        if self._loop is None:
            self._loop = weakref.ref(running)
        elif self._loop() is not running:
            raise ConfigurationError(_FOREIGN_LOOP)

    def owner_gone(self, running: asyncio.AbstractEventLoop | None) -> bool:
        """For closing from ``running``: whether the owning loop has ended elsewhere.

        ``False``: close normally (never bound, or bound to ``running``). ``True``: the
        owner ended (``asyncio.run`` twice), so close what can be closed without it.
        While the owner still runs elsewhere, :class:`ConfigurationError`.
        """
        if self._loop is None:
            return False
        bound = self._loop()
        if bound is running:
            return False
        if bound is not None and not bound.is_closed():
            raise ConfigurationError(_FOREIGN_LOOP)
        return True
