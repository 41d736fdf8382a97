"""The endpoint table: everything the SDK knows about each API operation, in one place.

Per endpoint: its name, HTTP method and path, whether a call is billed, what kind of call it
is (synchronous, a task submit, or a query), the multipart field that carries the image and
the image rules, and its parameters — name, kind, range, default, and how a value goes on
the wire (:meth:`Param.encode`, which validates). A parameter the caller did not give is
not sent: the API applies its own default (the ``default`` stated here), and two fewer
multipart parts is a cheaper request. Pure: no I/O, no clock.

Adding an endpoint is one entry here plus its public method on ``AILabClient`` (whose
signature mirrors the entry's parameters and defaults; ``tests/test_endpoints.py`` checks
that they agree). The simulator keeps its own copy of these facts on purpose: it stands for
the server we did not write, so it must not learn the API from our table.

>>> SMART_SKIN.fields(retouch_degree=0.5)
[('retouch_degree', '0.5')]
"""

from __future__ import annotations

import decimal
import enum
import math
import numbers
import reprlib
import types
from collections.abc import Mapping

import attrs

from . import errors

__all__ = [
    "ENDPOINTS",
    "QUERY_CREDITS",
    "QUERY_TASK",
    "SMART_BEAUTY",
    "SMART_BEAUTY_RULES",
    "SMART_SKIN",
    "SMART_SKIN_RULES",
    "CallKind",
    "Endpoint",
    "ImageRules",
    "Param",
    "ParamKind",
    "check_degree",
    "check_flag",
    "check_task_id",
]

_MB = 1024 * 1024

#: Longest task id accepted (the API's are ~40 characters).
MAX_TASK_ID_LENGTH = 256


# --- parameter values: validation and wire form ----------------------------------------------


def check_degree(name: str, value: object, low: float, high: float) -> str:
    """Validate one float parameter against its documented range; return its form value.

    Any real number that converts cleanly to a float is accepted (``int``, ``float``,
    ``Fraction``, ``Decimal``, numpy scalars); ``bool``, strings, complex numbers and the
    like are refused (``rule="type"``), and NaN, infinities, numbers too large for a float
    and values outside ``[low, high]`` too (``rule="range"``).

    >>> check_degree("beauty_level", 0.5, 0.0, 1.0)
    '0.5'
    """
    if _is_boolean(value) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise errors.ValidationError(
            f"{name} must be a number in [{low}, {high}], got {type(value).__name__}",
            input=name,
            rule="type",
        )
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError, ArithmeticError):
        number = math.nan  # too large for a float, or a signalling NaN
    if not (math.isfinite(number) and low <= number <= high):
        raise errors.ValidationError(
            f"{name} must be in [{low}, {high}], got {reprlib.repr(value)}",
            input=name,
            rule="range",
        )
    return repr(number)


def _is_boolean(value: object) -> bool:
    """``bool`` or a numpy boolean scalar (neither is a number here)."""
    if isinstance(value, bool):
        return True
    dtype = getattr(value, "dtype", None)
    return getattr(dtype, "kind", None) == "b" and getattr(value, "shape", None) == ()


def check_flag(name: str, value: object) -> bool:
    """A yes/no parameter: ``True``/``False``, ``1``/``0`` (or numpy booleans), ``None``.

    Anything else is refused rather than guessed at: the string ``"false"`` is truthy, and
    sending ``multi_face=1`` for it would silently change (and bill) a different operation.

    >>> check_flag("multi_face", 1)
    True
    """
    if value is None:
        return False
    if _is_boolean(value):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise errors.ValidationError(
        f"{name} must be True or False, got {type(value).__name__} {reprlib.repr(value)}",
        input=name,
        rule="type",
    )


def check_task_id(task_id: object, name: str = "task_id") -> str:
    """A task id as the API issues them: 1 to 256 printable characters, no white space.

    >>> check_task_id("a1b2c3")
    'a1b2c3'
    """
    if not isinstance(task_id, str):
        raise errors.ValidationError(
            f"{name} must be a string, got {type(task_id).__name__}", input=name, rule="type"
        )
    if not task_id or len(task_id) > MAX_TASK_ID_LENGTH:
        raise errors.ValidationError(
            f"{name} must be 1 to {MAX_TASK_ID_LENGTH} characters, got {len(task_id)}",
            input=name,
            rule="length",
        )
    if not task_id.isprintable() or any(char.isspace() for char in task_id):
        # Ids come from the API and have none; one with spaces or control characters is a
        # mangled copy (a stray newline from a file), and would be sent as it is.
        raise errors.ValidationError(
            f"{name} {task_id!r} contains white space or control characters",
            input=name,
            rule="format",
        )
    return task_id


class ParamKind(enum.Enum):
    """What a parameter holds, which says how it is checked and put on the wire."""

    #: A real number in ``[low, high]``, sent as the float's ``repr`` (``"1.0"``) when the
    #: caller gives one; left out otherwise (the API then applies ``default``).
    NUMBER = "number"
    #: Yes or no: ``"1"`` is sent for yes; for no the field is left out.
    FLAG = "flag"
    #: An id the API issued (a task id), sent as it is.
    TASK_ID = "task_id"
    #: Not the caller's choice: ``default`` is always sent (``task_type=async``).
    FIXED = "fixed"


@attrs.frozen
class Param:
    """One request parameter: what it holds, its range and default, and its wire form."""

    name: str
    kind: ParamKind
    #: What the API applies when the field is not sent (the caller gave no value); for
    #: ``FIXED``, the value always sent.
    default: object = None
    #: Inclusive bounds of a ``NUMBER``.
    low: float | None = None
    high: float | None = None
    #: What it does, in the provider's words (for help texts).
    summary: str = ""

    @property
    def settable(self) -> bool:
        """Whether callers choose this parameter (every kind but ``FIXED``)."""
        return self.kind is not ParamKind.FIXED

    @property
    def optional(self) -> bool:
        """Whether the API has a default for it, so it is sent only when the caller gives it."""
        return self.kind in (ParamKind.NUMBER, ParamKind.FLAG)

    def encode(self, value: object) -> str | None:
        """Validate ``value`` and give its form value; ``None``: the field is not sent.

        Raises :class:`~ailab_async.errors.ValidationError` naming the parameter
        (``input``) and the broken rule (``rule``: ``type``, ``range``, ...).

        >>> SMART_BEAUTY.param("multi_face").encode(False) is None
        True
        """
        if self.kind is ParamKind.NUMBER:
            assert self.low is not None
            assert self.high is not None
            return check_degree(self.name, value, self.low, self.high)
        if self.kind is ParamKind.FLAG:
            return "1" if check_flag(self.name, value) else None
        if self.kind is ParamKind.TASK_ID:
            return check_task_id(value, self.name)
        return str(self.default)


class CallKind(enum.Enum):
    """How an endpoint answers."""

    #: The answer carries the result (``data.image_url``).
    SYNC = "sync"
    #: The answer carries a ``task_id``; the result comes from polling ``QUERY_TASK``.
    TASK_SUBMIT = "task_submit"
    #: Reads state (a task's progress, the credits); free, and safe to repeat.
    QUERY = "query"


@attrs.frozen
class ImageRules:
    """What one endpoint accepts as an image (checked by ``_images.prepare_image``).

    Resolution bounds are exclusive, as the API states them ("larger than 128x128 and
    smaller than 5000x5000"); ``None`` means no lower bound (a side of 0 is never valid).
    """

    endpoint: str
    formats: frozenset[str]
    max_bytes: int
    min_side_exclusive: int | None
    max_side_exclusive: int


@attrs.frozen
class Endpoint:
    """One API operation: how to call it, whether a call is billed, what it takes."""

    name: str
    method: str
    path: str
    #: Billed operations cost credits per accepted call, so a blind retry may cost twice.
    billed: bool
    #: The multipart field that carries the image, for upload endpoints.
    image_field: str | None = None
    kind: CallKind = CallKind.SYNC
    image_rules: ImageRules | None = None
    #: In the order they go on the wire.
    params: tuple[Param, ...] = ()

    def __attrs_post_init__(self) -> None:
        if (self.image_field is None) != (self.image_rules is None):
            raise ValueError(f"{self.name}: an image field goes with image rules")
        if self.image_rules is not None and self.image_rules.endpoint != self.name:
            raise ValueError(f"{self.name}: its image rules name another endpoint")

    def param(self, name: str) -> Param:
        """The parameter called ``name`` (``KeyError`` if there is none)."""
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)

    @property
    def settable(self) -> tuple[Param, ...]:
        """The parameters a caller chooses (the public method's keyword arguments)."""
        return tuple(param for param in self.params if param.settable)

    def fields(self, **values: object) -> list[tuple[str, str]]:
        """The form (or query) fields of a call, every value validated.

        Only what the caller gave is sent (and ``FIXED`` values): a parameter left out is
        left to the API's default, which is the one stated in the table.

        >>> SMART_BEAUTY.fields(beauty_level=0.7, multi_face=True)
        [('task_type', 'async'), ('beauty_level', '0.7'), ('multi_face', '1')]
        >>> SMART_BEAUTY.fields()
        [('task_type', 'async')]
        """
        return self.encode(values)

    def encode(self, values: Mapping[str, object]) -> list[tuple[str, str]]:
        """:meth:`fields` from a mapping (a batch's stored parameters, say).

        Values are checked in wire order; an unknown name is refused (``rule="unknown"``)
        rather than silently dropped.
        """
        known = [param.name for param in self.settable]
        for name in values:
            if name not in known:
                raise errors.ValidationError(
                    f"{self.name} takes no parameter {name!r} "
                    f"(it takes: {', '.join(known) or 'none'})",
                    input=name,
                    rule="unknown",
                )
        fields: list[tuple[str, str]] = []
        for param in self.params:
            if param.name in values:
                encoded = param.encode(values[param.name])
            elif param.optional:
                continue  # not given: the API applies its default (``param.default``)
            else:
                encoded = param.encode(param.default)  # fixed, or missing (refused)
            if encoded is not None:
                fields.append((param.name, encoded))
        return fields


# --- the table -----------------------------------------------------------------------------

SMART_SKIN_RULES = ImageRules(
    endpoint="smart-skin",
    formats=frozenset({"jpeg", "png"}),
    max_bytes=6 * _MB,
    min_side_exclusive=128,
    max_side_exclusive=5000,
)
SMART_BEAUTY_RULES = ImageRules(
    endpoint="smart-beauty",
    formats=frozenset({"jpeg", "png", "bmp"}),
    max_bytes=5 * _MB,
    min_side_exclusive=None,
    max_side_exclusive=4096,
)

SMART_SKIN = Endpoint(
    "smart-skin",
    "POST",
    "/api/portrait/effects/smart-skin",
    billed=True,
    kind=CallKind.SYNC,
    image_field="image",
    image_rules=SMART_SKIN_RULES,
    params=(
        Param(
            "retouch_degree",
            ParamKind.NUMBER,
            default=1.0,
            low=0.0,
            high=1.5,
            summary="smoothing; higher hides more skin texture",
        ),
        Param(
            "whitening_degree",
            ParamKind.NUMBER,
            default=1.0,
            low=0.0,
            high=1.5,
            summary="whitening strength",
        ),
    ),
)
SMART_BEAUTY = Endpoint(
    "smart-beauty",
    "POST",
    "/api/portrait/effects/smart-beauty",
    billed=True,
    kind=CallKind.TASK_SUBMIT,
    image_field="image_target",
    image_rules=SMART_BEAUTY_RULES,
    params=(
        Param("task_type", ParamKind.FIXED, default="async"),
        Param(
            "beauty_level",
            ParamKind.NUMBER,
            default=1.0,
            low=0.0,
            high=1.0,
            summary="strength",
        ),
        Param(
            "multi_face",
            ParamKind.FLAG,
            default=False,
            summary="beautify every face (fewer than 18 recommended), not only the largest",
        ),
    ),
)
QUERY_TASK = Endpoint(
    "query-async-task-result",
    "GET",
    "/api/common/query-async-task-result",
    billed=False,
    kind=CallKind.QUERY,
    params=(Param("task_id", ParamKind.TASK_ID, summary="the id a task submit answered"),),
)
QUERY_CREDITS = Endpoint(
    "query-credits", "GET", "/api/common/query-credits", billed=False, kind=CallKind.QUERY
)

#: Every endpoint, by name.
ENDPOINTS: Mapping[str, Endpoint] = types.MappingProxyType(
    {e.name: e for e in (SMART_SKIN, SMART_BEAUTY, QUERY_TASK, QUERY_CREDITS)}
)
