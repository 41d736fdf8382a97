"""The exception tree of ailab-async.

Every error the SDK raises is an :class:`AILabError`::

    AILabError
    ├── ConfigurationError          bad client set-up (no API key, bad base URL, bad limits)
    ├── ClientClosedError           a call on a client that was closed (``ambiguous``:
    │                               closed mid-request, the call may have been billed)
    ├── ValidationError             client-side: bad image or parameter, no request was made
    ├── TransportError              no usable HTTP response (retryable)
    │   ├── ConnectionFailedError   could not connect, or the connection broke
    │   └── RequestTimeoutError     one attempt took longer than ``timeout``
    ├── DeadlineExceededError       the call's overall deadline passed (retries included)
    ├── DownloadError               fetching a result image failed or was refused
    ├── APIError                    the API answered with an error (or an unreadable body)
    │   ├── AuthenticationError     401: bad API key
    │   │   └── PermissionDeniedError   403: account locked
    │   ├── InvalidRequestError     400/404: bad parameters, capability unavailable
    │   ├── ImageRejectedError      413/415/422: size, format, content, no face
    │   ├── RateLimitedError        429 EXCEEDING_LIMITS (retryable)
    │   ├── InsufficientCreditsError 429 ERROR_NOT_ENOUGH_CREDITS (never retried)
    │   ├── ServerError             5xx and PROCESSING_FAILURE (retryable)
    │   └── MalformedResponseError  non-JSON, truncated or shapeless body
    └── TaskError                   an asynchronous task did not give a result
        ├── TaskFailedError         the task ended in failure (also an APIError)
        └── TaskTimeoutError        waiting gave up; the task may still finish: keep task_id

``error.retryable`` says whether trying the same call again could help.  Messages never
contain the API key, image bytes or result URLs.
"""

from __future__ import annotations

__all__ = [
    "AILabError",
    "APIError",
    "AuthenticationError",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "DownloadError",
    "ImageRejectedError",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "MalformedResponseError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "TaskError",
    "TaskFailedError",
    "TaskTimeoutError",
    "TransportError",
    "ValidationError",
]


class AILabError(Exception):
    """Base class of every error raised by ailab-async.

    Every subclass, here or elsewhere, pickles: errors cross process boundaries (a
    ``ProcessPoolExecutor``, Dask workers), and their constructors take keyword-only or
    non-message arguments that the default ``Exception`` pickling cannot replay.
    """

    #: Whether repeating the same call could succeed.
    retryable: bool = False

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuild without calling the subclass's __init__: the message args and the
        # attribute dict are the whole state. The chained cause and traceback are not kept
        # (like any pickled exception); neither is needed to act on the error.
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


def _rebuild_error(
    cls: type[AILabError], args: tuple[object, ...], state: dict[str, object]
) -> AILabError:
    error = cls.__new__(cls)
    BaseException.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigurationError(AILabError):
    """The client is set up wrongly (for example no API key); nothing was sent."""


class ClientClosedError(AILabError):
    """The client was closed; create a new one.

    ``ambiguous`` is true when the client was closed while this call's billed request was
    in flight: the API may have processed (and billed) it.
    """

    #: Whether a billed request of this call may have been processed before the close.
    ambiguous: bool = False


class ValidationError(AILabError, ValueError):
    """Client-side validation failed before any request was made.

    ``input`` names what was checked (a path, ``<bytes>``, a parameter name) and ``rule``
    is the short name of the violated rule (``format``, ``max_bytes``, ``resolution``,
    ``range``, ...).
    """

    def __init__(self, message: str, *, input: str, rule: str) -> None:
        super().__init__(message)
        self.input = input
        self.rule = rule


class TransportError(AILabError):
    """No usable HTTP response arrived (connection failure or timeout).

    ``ambiguous`` is true when the request may have reached the server (and been billed)
    before the failure: retrying such a call can cost twice.
    """

    retryable = True

    def __init__(self, message: str, *, endpoint: str, ambiguous: bool) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.ambiguous = ambiguous


class ConnectionFailedError(TransportError):
    """Connecting failed, or the connection broke before a full response arrived."""


class RequestTimeoutError(TransportError):
    """One attempt exceeded the per-attempt ``timeout``."""


class DeadlineExceededError(AILabError, TimeoutError):
    """The overall deadline of a call passed, retries and backoff included."""

    def __init__(self, message: str, *, endpoint: str, attempts: int) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.attempts = attempts


class DownloadError(AILabError):
    """Downloading a result image failed, or the URL/response was refused.

    ``status`` is the result host's HTTP status, if it answered. ``code`` names local
    failures: ``DISK_FULL`` (no space or quota left) or ``LOCAL_WRITE_FAILED`` (the
    destination could not be written); the result URL is still valid then, so download
    again once the destination is fixed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        code: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.code = code


class APIError(AILabError):
    """The API answered with an error envelope (or a body that could not be read).

    Carries everything support needs: HTTP ``status``, the API's ``code`` (for example
    ``ERROR_NO_FACE_IN_FILE``), its ``message``, ``request_id`` and ``log_id``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str = "",
        request_id: str | None = None,
        log_id: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.log_id = log_id
        #: Seconds the server asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        head = " ".join(parts)
        ids = ", ".join(
            f"{name}={value}"
            for name, value in (("request_id", self.request_id), ("log_id", self.log_id))
            if value
        )
        return f"{head}: {self.message}" + (f" ({ids})" if ids else "")


class AuthenticationError(APIError):
    """401: the API key is missing, wrong, or its application does not exist."""


class PermissionDeniedError(AuthenticationError):
    """403: the account is locked."""


class InvalidRequestError(APIError):
    """400/404: the request's parameters were refused, or the capability is unavailable."""


class ImageRejectedError(APIError):
    """413/415/422: the image is too large, of the wrong format, or has unusable content."""


class RateLimitedError(APIError):
    """429 ``EXCEEDING_LIMITS``: slow down and retry (the client does this by itself)."""

    retryable = True


class InsufficientCreditsError(APIError):
    """429 ``ERROR_NOT_ENOUGH_CREDITS``: top up; retrying cannot help."""


class ServerError(APIError):
    """5xx or ``PROCESSING_FAILURE``: a transient server-side failure."""

    retryable = True


class MalformedResponseError(APIError):
    """The body was not the JSON envelope the API documents (HTML page, truncated, ...)."""


class TaskError(AILabError):
    """An asynchronous task did not produce a result. ``task_id`` says which."""

    task_id: str


class TaskFailedError(TaskError, APIError):
    """The task ended in failure; ``code`` says why (for example ``ERROR_NO_FACE_IN_FILE``)."""

    def __init__(
        self,
        message: str,
        *,
        task_id: str,
        status: int,
        code: str = "",
        request_id: str | None = None,
        log_id: str | None = None,
        retryable: bool = False,
    ) -> None:
        APIError.__init__(
            self,
            message,
            status=status,
            code=code,
            request_id=request_id,
            log_id=log_id,
            retryable=retryable,
        )
        self.task_id = task_id

    def __str__(self) -> str:
        return f"task {self.task_id}: {APIError.__str__(self)}"


class TaskTimeoutError(TaskError, TimeoutError):
    """Waiting for a task gave up; the task may still finish. Track it again by ``task_id``."""

    retryable = True

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id
