"""The endpoint table: everything the SDK knows about each API operation, in one place.

Per endpoint: its name, HTTP method and path, whether a call is billed, what kind of call it
is (synchronous, a task submit, or a query), the multipart field that carries the image and
the image rules, and its parameters — name, kind, range, default, and how a value goes on
the wire (:meth:`Param.encode`, which validates). A parameter the caller did not give is
not sent: the API applies its own default (the ``default`` stated here), and two fewer
multipart parts is a cheaper request. Pure: no I/O, no clock.

Any other endpoint of the provider is described here too, per call
(:func:`generic_endpoint`, for ``AILabClient.call``): its path checked so the key can only
go to the API host (:func:`check_api_path`), its fields checked for the wire
(:func:`encode_free_fields`), any file checked as an image (:data:`GENERIC_FILE_RULES`).

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
import functools
import math
import numbers
import re
import reprlib
import types
from collections.abc import Mapping

import attrs

from . import errors

__all__ = [
    "ENDPOINTS",
    "GENERIC_MAX_FILE_BYTES",
    "QUERY_CREDITS",
    "QUERY_TASK",
    "SMART_BEAUTY",
    "SMART_BEAUTY_RULES",
    "SMART_SKIN",
    "SMART_SKIN_RULES",
    "CallKind",
    "Endpoint",
    "GenericCall",
    "ImageRules",
    "Param",
    "ParamKind",
    "check_api_path",
    "check_degree",
    "check_flag",
    "check_method",
    "check_task_id",
    "encode_free_fields",
    "generic_call",
    "generic_endpoint",
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
        if values:
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


# --- any other endpoint, described per call ------------------------------------------------

#: The largest file a generic call uploads. The endpoint's own limit is the server's to
#: enforce (it answers 413, a typed ``ImageRejectedError``); this one only keeps a mistake
#: (a video, a disk image) from being read and sent.
GENERIC_MAX_FILE_BYTES = 20 * _MB
#: The longest path accepted (the provider's are under 80 characters).
MAX_PATH_LENGTH = 512
#: A path under the API: ``/api/`` then segments of unreserved characters, none starting
#: with a dot (so no ``.`` or ``..``), nothing else: no query, fragment, escape or colon.
_API_PATH = re.compile(r"/api(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+")
#: A form field or query parameter name.
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,128}")
#: The longest field value sent (a field is a number, a word, an id, a URL).
MAX_FIELD_LENGTH = 8192
_METHODS = ("GET", "POST")


def _path_error(path: str, why: str) -> errors.ValidationError:
    shown = reprlib.repr(path)
    return errors.ValidationError(
        f"path {shown} {why}; give the endpoint's path under the API host, such as "
        "'/api/cutout/portrait/portrait-background-removal' (the API key is only ever sent "
        "to the client's base_url)",
        input="path",
        rule="path",
    )


def check_api_path(path: object) -> str:
    """An endpoint path the API key may be sent to: ``/api/...`` on the client's host.

    Refused, each with the reason: anything not a string; an absolute URL
    (``https://elsewhere/...``) or a scheme-relative one (``//elsewhere``); backslashes;
    white space or control characters; ``.`` and ``..`` segments; percent escapes (which
    could hide either); a query or fragment (``params=`` carries the query); anything that
    does not start with ``/api/``, or holds characters other than letters, digits and
    ``-_.~`` in its segments.

    >>> check_api_path("/api/cutout/portrait/portrait-background-removal")
    '/api/cutout/portrait/portrait-background-removal'
    >>> check_api_path("//evil.example/api/x")
    Traceback (most recent call last):
    ...
    ailab_async.errors.ValidationError: path '//evil.example/api/x' is scheme-relative ...
    """
    if not isinstance(path, str):
        raise errors.ValidationError(
            f"path must be a string such as '/api/...', got {type(path).__name__}",
            input="path",
            rule="type",
        )
    if len(path) > MAX_PATH_LENGTH:
        raise _path_error(path, f"is longer than {MAX_PATH_LENGTH} characters")
    if _API_PATH.fullmatch(path):
        return path
    lowered = path.strip().lower()
    if "://" in path or re.match(r"[a-z][a-z0-9+.-]*:", lowered):
        why = "is an absolute URL, not a path"
    elif path.startswith(("//", "/\\")):
        why = "is scheme-relative (it names another host)"
    elif "\\" in path:
        why = "contains a backslash"
    elif not path.isprintable() or any(char.isspace() for char in path):
        why = "contains white space or control characters"
    elif "%" in path:
        why = "contains a percent escape (it could hide '..' or '/')"
    elif "?" in path or "#" in path:
        why = "contains a query or fragment (pass the query as params=)"
    elif any(segment in (".", "..") for segment in path.split("/")):
        why = "contains a '.' or '..' segment"
    elif not path.startswith("/api/"):
        why = "does not start with /api/"
    else:
        why = (
            "has an empty segment, a segment starting with '.', or characters other than "
            "letters, digits and -_.~"
        )
    raise _path_error(path, why)


def check_method(method: object) -> str:
    """``GET`` or ``POST`` (any case): the methods the provider's endpoints use.

    >>> check_method("post")
    'POST'
    """
    if isinstance(method, str) and method.upper() in _METHODS:
        return method.upper()
    raise errors.ValidationError(
        f"method must be 'GET' or 'POST', got {reprlib.repr(method)}",
        input="method",
        rule="method",
    )


def _free_value(what: str, name: str, value: object) -> str:
    """One field or query value on the wire: a string, an integer or a finite float."""
    if isinstance(value, str):
        text = value
    elif _is_boolean(value):
        # str(True) is "True", which no endpoint documents: say which spelling is meant.
        raise errors.ValidationError(
            f"{what} {name!r} is a bool; give the value the endpoint documents ('1', 'true', ...)",
            input=name,
            rule="type",
        )
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    elif isinstance(value, float) and math.isfinite(value):
        text = repr(value)
    else:
        raise errors.ValidationError(
            f"{what} {name!r} must be a string, an integer or a finite float, got "
            f"{type(value).__name__}",
            input=name,
            rule="type",
        )
    problem = None
    if not text.isprintable() and not all(c.isprintable() or c in "\t\r\n" for c in text):
        problem = "must be text (no control characters but tabs and line breaks)"
    elif len(text) > MAX_FIELD_LENGTH:
        problem = f"must be at most {MAX_FIELD_LENGTH} characters"
    if problem is not None:
        raise errors.ValidationError(f"{what} {name!r} {problem}", input=name, rule="value")
    return text


def encode_free_fields(values: object, what: str = "fields") -> list[tuple[str, str]]:
    """The form fields (or query parameters) of a generic call, every name and value checked.

    ``values`` is a mapping (or ``None``) of names (letters, digits, ``_.-[]``) to strings,
    integers or finite floats; a string is any text (sent as UTF-8) without control
    characters other than tabs and line breaks, at most ``MAX_FIELD_LENGTH`` characters.

    >>> encode_free_fields({"return_form": "mask", "level": 0.5, "n": 2})
    [('return_form', 'mask'), ('level', '0.5'), ('n', '2')]
    """
    if values is None:
        return []
    if not isinstance(values, Mapping):
        raise errors.ValidationError(
            f"{what} must be a mapping of names to values, got {type(values).__name__}",
            input=what,
            rule="type",
        )
    encoded: list[tuple[str, str]] = []
    for name, value in values.items():
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            raise errors.ValidationError(
                f"{what} name {reprlib.repr(name)} must be a string of letters, digits "
                "and _.-[] (1 to 128)",
                input=what,
                rule="name",
            )
        encoded.append((name, _free_value(what[:-1] if what.endswith("s") else what, name, value)))
    return encoded


def generic_endpoint(
    method: object,
    path: object,
    *,
    billed: object,
    file_field: object = None,
    task: bool = False,
) -> Endpoint:
    """An :class:`Endpoint` for any API operation, every part checked (refused with a
    :class:`~ailab_async.errors.ValidationError` naming what is wrong).

    A file goes in the form field ``file_field`` and is checked as an image (JPEG, PNG or
    BMP by its first bytes, a readable resolution, at most :data:`GENERIC_MAX_FILE_BYTES`).

    >>> generic_endpoint("post", "/api/cutout/x", billed=True, file_field="image").image_field
    'image'
    """
    checked_method = check_method(method)
    checked_path = check_api_path(path)
    if not isinstance(billed, bool):
        raise errors.ValidationError(
            f"billed must be True or False, got {type(billed).__name__}",
            input="billed",
            rule="type",
        )
    if file_field is not None:
        encode_free_fields({file_field: ""}, "files")  # the same rules as any field name
        assert isinstance(file_field, str)
    return _generic_endpoint(checked_method, checked_path, billed, file_field, task)


@functools.lru_cache(maxsize=256)
def _generic_endpoint(
    method: str, path: str, billed: bool, file_field: str | None, task: bool
) -> Endpoint:
    """Built once per distinct call shape (a batch calls the same one thousands of times)."""
    kind = CallKind.TASK_SUBMIT if task else CallKind.SYNC if billed else CallKind.QUERY
    rules = None
    if file_field is not None:
        rules = ImageRules(
            endpoint=path,
            formats=frozenset({"jpeg", "png", "bmp"}),
            max_bytes=GENERIC_MAX_FILE_BYTES,
            min_side_exclusive=None,
            # No resolution rule of ours: the endpoint's own is the server's to enforce.
            max_side_exclusive=1 << 31,
        )
    return Endpoint(
        path, method, path, billed=billed, image_field=file_field, kind=kind, image_rules=rules
    )


@attrs.frozen
class GenericCall:
    """A generic call, checked: its endpoint, wire fields and file (not yet read)."""

    endpoint: Endpoint
    #: A GET's query, or a POST's form fields.
    fields: list[tuple[str, str]]
    #: A POST's query string.
    query: list[tuple[str, str]]
    #: The file to upload in ``endpoint.image_field`` (an image input), or ``None``.
    file: object = None


def generic_call(
    method: object,
    path: object,
    *,
    files: object = None,
    fields: object = None,
    params: object = None,
    billed: object = True,
    task: bool = False,
) -> GenericCall:
    """Check every argument of ``AILabClient.call`` (or ``submit_task``); nothing is read
    or sent here. One file at most (the body is framed around one, never copied); a GET
    carries ``params`` only.

    >>> call = generic_call("GET", "/api/common/query-credits", params={"x": 1}, billed=False)
    >>> call.endpoint.method, call.fields
    ('GET', [('x', '1')])
    """
    if files is not None and not isinstance(files, Mapping):
        raise errors.ValidationError(
            f"files must be a mapping of field name to file, got {type(files).__name__}",
            input="files",
            rule="type",
        )
    uploads = list((files or {}).items())
    if len(uploads) > 1:
        raise errors.ValidationError(
            f"one file per call is supported, got {len(uploads)}",
            input="files",
            rule="count",
        )
    file_field, file = uploads[0] if uploads else (None, None)
    endpoint = generic_endpoint(method, path, billed=billed, file_field=file_field, task=task)
    form = encode_free_fields(fields, "fields")
    query = encode_free_fields(params, "params")
    if endpoint.method == "GET":
        if form or uploads:
            raise errors.ValidationError(
                "a GET sends no body: give its parameters as params=, not fields= or files=",
                input="fields" if form else "files",
                rule="method",
            )
        return GenericCall(endpoint, query, [])
    return GenericCall(endpoint, form, query, file)
