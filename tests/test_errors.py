"""Every AILabError, wherever it is defined, survives pickling with its attributes.

Errors cross process boundaries: a ``ProcessPoolExecutor`` running the batch, Dask workers
returning a failed partition. Their constructors take keyword-only (or non-message)
arguments, which the default ``Exception`` pickling cannot replay.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import io
import multiprocessing
import pickle
import pkgutil
import traceback
from types import ModuleType

import pytest

import ailab_async
from ailab_async import (
    AILabError,
    DeadlineExceededError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
)
from ailab_async.batch.journal import IllegalTransitionError, ItemState


def _import_all() -> list[ModuleType]:
    modules = []
    for info in pkgutil.walk_packages(ailab_async.__path__, "ailab_async."):
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError:  # an optional dependency is not installed here
            continue
    return modules


def _all_error_classes() -> list[type[AILabError]]:
    _import_all()
    seen: list[type[AILabError]] = []
    todo: list[type[AILabError]] = [AILabError]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(
        (c for c in seen if c.__module__.startswith("ailab_async")),
        key=lambda c: (c.__module__, c.__qualname__),
    )


#: A value for every constructor argument any error takes; a new error class with an
#: argument missing here fails the test below, which says what to add.
ARGUMENTS: dict[str, object] = {
    "message": "it went wrong",
    "input": "face.jpg",
    "rule": "format",
    "endpoint": "smart-skin",
    "ambiguous": True,
    "attempts": 3,
    "status": 503,
    "code": "ERROR_INSUFFICIENT_RESOURCES",
    "request_id": "req-7",
    "log_id": "log-7",
    "retry_after": 2.5,
    "retryable": True,
    "task_id": "task-42",
    "item_id": 7,
    "current": ItemState.SUBMITTED,
    "target": ItemState.PENDING,
}


def build(cls: type[AILabError]) -> AILabError:
    """An instance of ``cls`` with every argument given a non-default value."""
    args: list[object] = []
    kwargs: dict[str, object] = {}
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # no self
    if all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return cls(ARGUMENTS["message"])  # Exception's own constructor
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.name not in ARGUMENTS:
            assert parameter.default is not parameter.empty, (
                f"{cls.__qualname__}({parameter.name}=...): add a value to ARGUMENTS"
            )
            continue
        value = ARGUMENTS[parameter.name]
        if parameter.kind is parameter.KEYWORD_ONLY:
            kwargs[parameter.name] = value
        else:
            args.append(value)
    return cls(*args, **kwargs)


def public_state(error: BaseException) -> dict[str, object]:
    """The error's public data attributes (OSError's ``characters_written`` is a property
    that raises unless set: skipped like any attribute that cannot be read)."""
    state: dict[str, object] = {}
    for name in sorted(dir(error)):
        if name.startswith("_") or name == "args":
            continue
        try:
            value = getattr(error, name)
        except AttributeError:
            continue
        if not callable(value):
            state[name] = value
    return state


def round_trip(error: BaseException, protocol: int = pickle.HIGHEST_PROTOCOL) -> BaseException:
    """Pickle and unpickle with the errors' own reduction.

    Importing ``distributed`` (the Dask recipe) registers tblib's exception pickler in
    ``copyreg`` for every exception class then defined; a private, empty dispatch table
    keeps this test about ailab-async's own mechanism, whatever was imported before.
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol)
    pickler.dispatch_table = {}
    pickler.dump(error)
    copy: BaseException = pickle.loads(buffer.getvalue())
    return copy


ERROR_CLASSES = _all_error_classes()


def test_the_walk_finds_the_errors_defined_outside_errors_py() -> None:
    names = {c.__qualname__ for c in ERROR_CLASSES}
    assert {"AILabError", "TaskFailedError", "JournalError", "IllegalTransitionError"} <= names
    assert len(ERROR_CLASSES) >= 23


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__qualname__)
def test_every_error_survives_a_pickle_round_trip(cls: type[AILabError]) -> None:
    error = build(cls)
    error.add_note("while processing face.jpg")  # type: ignore[attr-defined,unused-ignore]
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        copy = round_trip(error, protocol)
        assert type(copy) is cls
        assert str(copy) == str(error)
        assert copy.args == error.args
        assert public_state(copy) == public_state(error)
        assert getattr(copy, "__notes__", None) == ["while processing face.jpg"]
        assert isinstance(copy, AILabError)


def test_attributes_that_matter_come_back() -> None:
    failed = round_trip(build(TaskFailedError))
    assert isinstance(failed, TaskFailedError)
    assert (failed.task_id, failed.status, failed.code) == (
        "task-42",
        503,
        "ERROR_INSUFFICIENT_RESOURCES",
    )
    assert (failed.request_id, failed.log_id, failed.retryable) == ("req-7", "log-7", True)
    assert str(failed).startswith("task task-42: HTTP 503 ERROR_INSUFFICIENT_RESOURCES")
    deadline = round_trip(build(DeadlineExceededError))
    assert isinstance(deadline, TimeoutError)
    assert isinstance(deadline, DeadlineExceededError)
    assert (deadline.endpoint, deadline.attempts) == ("smart-skin", 3)
    transition = round_trip(IllegalTransitionError(3, ItemState.FAILED, ItemState.SENDING))
    assert isinstance(transition, ValueError)
    assert isinstance(transition, IllegalTransitionError)
    assert (transition.item_id, transition.current, transition.target) == (
        3,
        ItemState.FAILED,
        ItemState.SENDING,
    )
    # A class attribute overridden per instance (retryable=False on a retryable class).
    server = round_trip(ServerError("x", status=500, retryable=False))
    assert isinstance(server, ServerError)
    assert server.retryable is False
    assert ServerError.retryable is True


# -- across a real process boundary ---------------------------------------------------------


#: Run by ``exec`` in the worker: a builtin is pickled by name, so the worker imports no
#: test module (importing this one would import Dask, whose tblib hook changes pickling).
RAISE_IN_CHILD = {
    "task": "from ailab_async.errors import TaskFailedError as E\n"
    "raise E('no face', task_id='t-9', status=422, code='ERROR_NO_FACE_IN_FILE')",
    "timeout": "from ailab_async.errors import TaskTimeoutError as E\n"
    "raise E('not done', task_id='t-10')",
    "validation": "from ailab_async.errors import ValidationError as E\n"
    "raise E('too small', input='face.jpg', rule='resolution')",
    "journal": "from ailab_async.batch.journal import IllegalTransitionError as E, ItemState as S\n"
    "raise E(5, S.DOWNLOADED, S.PENDING)",
}


def test_errors_raised_in_a_worker_process_arrive_typed() -> None:
    # spawn: the same start method on every platform, and no fork of a threaded process.
    context = multiprocessing.get_context("spawn")
    caught: dict[str, BaseException] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        futures = {kind: pool.submit(exec, code) for kind, code in RAISE_IN_CHILD.items()}
        for kind, future in futures.items():
            caught[kind] = future.exception(timeout=120)  # type: ignore[assignment]
    task = caught["task"]
    assert isinstance(task, TaskFailedError)
    assert (task.task_id, task.status, task.code) == ("t-9", 422, "ERROR_NO_FACE_IN_FILE")
    timeout = caught["timeout"]
    assert isinstance(timeout, TaskTimeoutError)
    assert timeout.task_id == "t-10"
    assert timeout.retryable is True
    validation = caught["validation"]
    assert isinstance(validation, ValidationError)
    assert (validation.input, validation.rule) == ("face.jpg", "resolution")
    journal = caught["journal"]
    assert isinstance(journal, IllegalTransitionError)
    assert journal.item_id == 5
    # The child's traceback text travels along as the cause, as concurrent.futures does.
    assert "no face" in "".join(traceback.format_exception(task))
