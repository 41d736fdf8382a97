"""The blocking facade (ailab_async.sync) against the simulator, from plain threads.

The simulator runs in an event loop of its own thread (an anyio blocking portal), so the
test's thread can block in the facade while the facade's loop talks to the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

import ailab_async
from ailab_async import (
    AILabError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    ImageResult,
    InsufficientCreditsError,
    PollingConfig,
    RateLimitedError,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    ValidationError,
)
from ailab_async.events import RequestSent
from ailab_async.sync import AILabClient, TaskHandle
from ailab_async.testing.simulator import (
    Credits,
    Faults,
    Fixed,
    RateLimit,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    sample_image,
)

StartSimulator = Callable[..., Simulator]

#: Tasks that finish quickly, polled quickly: real calls, kept short.
QUICK_TASKS = TaskBehaviour(duration=Fixed(0.05))
QUICK_POLLS = PollingConfig(fallback_interval=0.05, min_interval=0.01)
FACE = sample_image(256, 256)
#: smart-skin answers only when the simulator stops (it releases stalled answers then).
STALLED_SKIN = SimulatorConfig(
    faults=Faults(stall=1.0, stall_seconds=3600, endpoints=frozenset({"smart-skin"}))
)


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test() -> Iterator[None]:
    """Every thread a test starts (loops, workers) has ended once it is torn down."""
    before = set(threading.enumerate())
    yield
    gc.collect()
    left = [t for t in threading.enumerate() if t not in before]
    for thread in left:
        thread.join(timeout=10)  # ending, not yet ended: a stop was sent, nothing waits
    assert [t.name for t in left if t.is_alive()] == []


@pytest.fixture
def start_simulator() -> Iterator[StartSimulator]:
    """Start simulators in an event loop of their own thread; all stopped afterwards."""
    with start_blocking_portal() as portal, contextlib.ExitStack() as stack:

        def start(config: SimulatorConfig | None = None) -> Simulator:
            simulator = Simulator(config or SimulatorConfig(tasks=QUICK_TASKS))
            return stack.enter_context(portal.wrap_async_context_manager(simulator))

        yield start


@pytest.fixture
def sim(start_simulator: StartSimulator) -> Simulator:
    return start_simulator()


def client_for(sim: Simulator, **options: object) -> AILabClient:
    options.setdefault("polling", QUICK_POLLS)
    return AILabClient(api_key=sim.api_key, base_url=sim.url, **options)  # type: ignore[arg-type]


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait (briefly, for a real call to get somewhere) until ``condition()`` holds."""
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.005)
    pytest.fail("the condition never held")


# -- every call ------------------------------------------------------------------------------


def test_every_call_blocks_until_its_result(sim: Simulator, tmp_path: Path) -> None:
    with client_for(sim) as client:
        result = client.smart_skin(FACE, retouch_degree=0.6, whitening_degree=0.2)
        assert isinstance(result, ImageResult)
        assert client.download(result).startswith(b"\x89PNG")
        written = client.download(result, tmp_path / "out" / "face.png")
        assert written == tmp_path / "out" / "face.png"
        assert written.read_bytes().startswith(b"\x89PNG")
        assert client.credits().balance == sim.balance()

        task = client.submit_smart_beauty(FACE, beauty_level=0.5)
        assert isinstance(task, TaskHandle)
        assert task.status.name in ("QUEUED", "PROCESSING")
        beautified = task.result()
        assert beautified.task_id == task.task_id
        assert task.done()
        assert task.status is TaskStatus.SUCCEEDED
        assert repr(task) == f"TaskHandle(task_id={task.task_id!r}, status=succeeded)"
        assert client.track(task.task_id).result() == beautified  # the same task

        assert client.smart_beauty(FACE, beauty_level=0.3).task_id is not None
        assert client.stats.requests >= 6
        assert client.tracker.pending == 0
    assert sim.stats.count("smart-skin", "OK") == 1
    assert sim.stats.count("smart-beauty", "OK") == 2


def test_the_constructor_and_methods_mirror_the_async_client() -> None:
    async_init = inspect.signature(ailab_async.AILabClient.__init__).parameters
    sync_init = inspect.signature(AILabClient.__init__).parameters
    expected = [p for name, p in async_init.items() if name != "session"]  # loop-bound
    assert list(sync_init.values()) == expected
    for name in (
        "smart_skin",
        "submit_smart_beauty",
        "smart_beauty",
        "track",
        "credits",
        "download",
        "call",
        "submit_task",
        "track_task",
    ):
        async_params = inspect.signature(getattr(ailab_async.AILabClient, name)).parameters
        assert inspect.signature(getattr(AILabClient, name)).parameters == async_params, name


def test_a_refused_setting_starts_no_thread() -> None:
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        AILabClient(api_key="k", base_url="http://127.0.0.1:9", max_concurrency=0)
    with pytest.raises(ConfigurationError, match="plain HTTP"):
        AILabClient(api_key="k", base_url="http://example.com")
    # no_thread_outlives_the_test: nothing was started


def test_repr_never_shows_the_key(sim: Simulator) -> None:
    with client_for(sim) as client:
        shown = repr(client)
    assert sim.api_key not in shown
    assert shown.startswith("ailab_async.sync.AILabClient(")


# -- errors ----------------------------------------------------------------------------------


def test_errors_are_the_async_clients_typed_errors(start_simulator: StartSimulator) -> None:
    sim = start_simulator(
        SimulatorConfig(
            credits=Credits(balance=1), tasks=TaskBehaviour(duration=Fixed(0.05), failure_share=1)
        )
    )
    with AILabClient(api_key="not-the-key", base_url=sim.url) as stranger:
        with pytest.raises(AuthenticationError) as denied:
            stranger.credits()
        assert denied.value.status == 401
    with client_for(sim) as client:
        with pytest.raises(ValidationError) as refused:
            client.smart_skin(sample_image(64, 64))  # too small: refused before upload
        assert refused.value.rule == "resolution"
        with pytest.raises(ValidationError, match="retouch_degree"):
            client.smart_skin(FACE, retouch_degree=9)
        assert sim.stats.count("smart-skin") == 0

        with pytest.raises(TaskFailedError) as failed:
            client.smart_beauty(FACE)  # the one credit: the task fails
        assert failed.value.code == "ERROR_NO_FACE_IN_FILE"
        with pytest.raises(InsufficientCreditsError) as broke:
            client.smart_skin(FACE)
        assert broke.value.status == 429
        assert isinstance(broke.value, AILabError)


def test_a_rate_limit_beyond_the_deadline_ends_the_call_with_the_429(
    start_simulator: StartSimulator,
) -> None:
    # One request per 1000 s: the second is refused with a Retry-After far past its deadline.
    sim = start_simulator(SimulatorConfig(rate_limit=RateLimit(0.001, instant_429=True)))
    with client_for(sim) as client:
        client.credits()
        with pytest.raises(DeadlineExceededError) as late:
            client.credits(deadline=5)
    assert isinstance(late.value.__cause__, RateLimitedError)
    assert late.value.__cause__.status == 429


def test_a_task_wait_that_gives_up_leaves_the_task_to_finish(
    start_simulator: StartSimulator,
) -> None:
    sim = start_simulator(SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(0.3))))
    with client_for(sim) as client:
        task = client.submit_smart_beauty(FACE)
        with pytest.raises(TaskTimeoutError) as gave_up:
            task.result(timeout=0)  # check without waiting
        assert gave_up.value.task_id == task.task_id
        assert task.result().task_id == task.task_id  # the task went on


# -- threads ---------------------------------------------------------------------------------


def test_eight_threads_share_one_client(sim: Simulator) -> None:
    results: dict[int, list[str]] = {}

    def work(worker: int) -> None:
        image = sample_image(256, 256, seed=worker)
        results[worker] = [
            type(client.smart_skin(image)).__name__,
            type(client.credits()).__name__,
            type(client.smart_beauty(image)).__name__,
        ]

    with client_for(sim, max_concurrency=4) as client:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.stats.max_in_flight <= 4
    assert results == {n: ["ImageResult", "Credits", "ImageResult"] for n in range(8)}
    assert sim.stats.count("smart-skin", "OK") == 8
    assert sim.stats.count("smart-beauty", "OK") == 8


@pytest.fixture
def interruptible() -> Iterator[None]:
    """Python's own SIGINT handler for the test, even where the suite runs with SIGINT
    ignored (a shell's background job): there the signal would be dropped, and the call
    would wait out its deadline."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    # A signal blocked in this thread would stay pending: say so rather than hang.
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("interruptible")
def test_an_interrupted_caller_cancels_its_call(start_simulator: StartSimulator) -> None:
    sim = start_simulator(STALLED_SKIN)
    main = threading.main_thread()
    assert threading.current_thread() is main  # signals reach the main thread only
    sent = threading.Event()
    # A deadline of a minute, not the default five: an interruption that is lost fails the
    # test (DeadlineExceededError, not KeyboardInterrupt) within it.
    with client_for(sim, on_event=_setting_on(RequestSent, sent), deadline=60) as client:

        def interrupt_once_sent() -> None:
            sent.wait(60)  # bounded: a call that never sends fails below, not here
            signal.pthread_kill(main.ident or 0, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_once_sent)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            client.smart_skin(FACE)  # would wait for an hour
        interrupter.join()
        assert sent.is_set()
        wait_until(lambda: client.stats.in_flight == 0)  # cancelled, not left running
        assert client.credits().balance > 0  # and the client goes on


def test_an_interruption_while_the_call_is_being_started_cancels_it(
    start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interruption lands while the waiting thread still waits for the loop to start
    the call, which is already sending (on a busy machine, a signal often does)."""
    sim = start_simulator(STALLED_SKIN)
    sent = threading.Event()
    with client_for(sim, on_event=_setting_on(RequestSent, sent)) as client:
        portal = client._loop._portal
        start_task_soon = portal.start_task_soon

        def start_then_interrupted(*args: Any, **kwargs: Any) -> object:
            start_task_soon(*args, **kwargs)
            assert sent.wait(60)
            raise KeyboardInterrupt

        monkeypatch.setattr(portal, "start_task_soon", start_then_interrupted)
        with pytest.raises(KeyboardInterrupt):
            client.smart_skin(FACE)
        monkeypatch.undo()
        wait_until(lambda: client.stats.in_flight == 0)  # cancelled, not left running
        assert client.credits().balance > 0  # and the client goes on


def _setting_on(kind: type[object], event: threading.Event) -> Callable[[object], None]:
    """An ``on_event`` hook that sets ``event`` when the client emits a ``kind``."""

    def hook(emitted: object) -> None:
        if isinstance(emitted, kind):
            event.set()

    return hook


# -- closing ---------------------------------------------------------------------------------


def test_close_is_idempotent_and_every_call_after_it_is_refused(sim: Simulator) -> None:
    client = client_for(sim)
    with client:
        result = client.smart_skin(FACE)
        task = client.submit_smart_beauty(FACE)
    assert client.closed
    client.close()  # again: nothing happens
    calls: list[Callable[[], object]] = [
        lambda: client.smart_skin(FACE),
        lambda: client.submit_smart_beauty(FACE),
        lambda: client.smart_beauty(FACE),
        lambda: client.track("task-1"),
        client.credits,
        lambda: client.download(result),
        lambda: client.map(client.smart_skin, [FACE]),
        task.result,
        client.__enter__,
    ]
    for call in calls:
        with pytest.raises(ClientClosedError, match="closed"):
            call()
    assert task.task_id  # kept: track it with a new client
    assert client.stats.requests >= 2  # still readable


def test_close_from_another_thread_ends_calls_in_progress(
    start_simulator: StartSimulator,
) -> None:
    sim = start_simulator(STALLED_SKIN)
    client = client_for(sim, timeout=120.0)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.smart_skin(FACE)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: client.stats.in_flight == 1)
    client.close()
    caller.join()
    assert len(errors) == 1
    assert isinstance(errors[0], ClientClosedError)
    assert errors[0].ambiguous  # the upload may have been processed


def test_a_forgotten_client_warns_and_stops_its_thread(sim: Simulator) -> None:
    client = client_for(sim)
    client.credits()
    with pytest.warns(ResourceWarning, match="never closed"):
        del client  # the last reference: CPython collects it here
    # no_thread_outlives_the_test: its loop thread has ended


def test_a_script_that_never_closes_its_client_still_exits(sim: Simulator, tmp_path: Path) -> None:
    # A path, not bytes: reading it takes a worker thread, and those are not daemons.
    photo = tmp_path / "face.jpg"
    photo.write_bytes(FACE)
    script = (
        "import sys\n"
        "from ailab_async.sync import AILabClient\n"
        "client = AILabClient()\n"
        "print(type(client.smart_skin(sys.argv[1])).__name__)\n"
    )
    env = {**os.environ, "AILAB_API_KEY": sim.api_key, "AILAB_BASE_URL": sim.url}
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script, str(photo)],  # dev: warnings shown
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard: it exits in about a second
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ImageResult"), done.stderr
    assert done.stderr == ""  # nothing reported as leaked either


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_client_inherited_through_fork_says_create_one_per_process(sim: Simulator) -> None:
    # A web server preloading the app, then forking its workers: the loop thread stays behind.
    with client_for(sim) as client:
        client.credits()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            pid = os.fork()
        if pid == 0:  # the child: report by exit status only, never return into pytest
            signal.alarm(60)  # a hang guard: a call nobody answers would wait forever
            status = 3
            try:
                client.credits()
            except ConfigurationError as exc:
                status = 0 if "create the client in each process" in str(exc) else 2
            except BaseException:
                status = 1
            client.close()  # the parent's loop: left alone
            os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0
        assert client.credits().balance > 0  # the parent's client is unaffected


# -- map -------------------------------------------------------------------------------------


def test_map_pulls_items_lazily_and_stops_when_left(sim: Simulator) -> None:
    pulled: list[int] = []

    def endless() -> Iterator[bytes]:
        for n in itertools.count():
            pulled.append(n)
            yield FACE

    with client_for(sim) as client:
        outcomes = client.map(client.smart_skin, endless(), concurrency=2)
        assert pulled == []  # nothing before the first next()
        taken = [next(outcomes) for _ in range(5)]
        assert all(outcome.ok for outcome in taken)
        assert len(pulled) <= 5 + 2  # at most `concurrency` ahead of what was taken
        outcomes.close()  # what leaving a for loop does in CPython
        assert client.stats.in_flight == 0  # the work in progress was cancelled
        attempts = client.stats.attempts  # every request the client began
        client.credits()
        assert client.stats.attempts == attempts + 1  # nothing more was sent
        # A request cancelled after it left may still reach the server, late on a busy
        # machine: the server sees at most what was begun, never more than was pulled.
        wait_until(lambda: sim.stats.in_flight == 0)
        assert sim.stats.count("smart-skin") <= min(attempts, len(pulled))


def test_map_keeps_input_order_and_reports_failures_as_outcomes(sim: Simulator) -> None:
    images = [sample_image(256, 256, seed=n) for n in range(6)]
    images[2] = sample_image(64, 64)  # refused before upload
    with client_for(sim) as client:
        outcomes = list(
            client.map(client.smart_skin, images, ordered=True, concurrency=3, retouch_degree=0.4)
        )
    assert [o.index for o in outcomes] == list(range(6))
    assert [o.ok for o in outcomes] == [True, True, False, True, True, True]
    assert isinstance(outcomes[2].error, ValidationError)
    with client_for(sim) as client, pytest.raises(ValidationError, match="map needs a function"):
        client.map("smart_skin", images)  # type: ignore[call-overload]


def test_map_runs_plain_functions_in_threads_that_may_call_the_client(
    sim: Simulator, tmp_path: Path
) -> None:
    with client_for(sim) as client:

        def retouch(seed: int, *, folder: Path) -> Path:
            result = client.smart_skin(sample_image(256, 256, seed=seed))
            return client.download(result, folder / f"{seed}.png")

        def seeds() -> Iterator[int]:
            client.credits()  # a source may block, even on the client: it runs in a thread
            yield from range(4)

        written = {o.result for o in client.map(retouch, seeds(), folder=tmp_path)}
    assert written == {tmp_path / f"{n}.png" for n in range(4)}


def test_map_runs_more_plain_functions_at_once_than_anyios_thread_limit(
    sim: Simulator, tmp_path: Path
) -> None:
    # 48 functions in threads, each waiting for a call that reads its photo in a worker
    # thread too: on anyio's shared limit of 40 threads this would wait forever.
    photo = tmp_path / "face.jpg"
    photo.write_bytes(FACE)
    with client_for(sim) as client:
        results: list[bool] = []

        def consume() -> None:
            outcomes = client.map(lambda _: client.smart_skin(photo), range(48), concurrency=48)
            results.extend(outcome.ok for outcome in outcomes)

        consumer = threading.Thread(target=consume)
        consumer.start()
        consumer.join(timeout=120)  # a hang guard: it takes about a second
        stuck = consumer.is_alive()
    consumer.join()  # closing ended whatever was stuck
    assert not stuck
    assert results == [True] * 48


def test_map_runs_coroutine_functions_in_the_loop(sim: Simulator) -> None:
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    with client_for(sim) as client:
        assert [o.result for o in client.map(double, range(5), ordered=True)] == [0, 2, 4, 6, 8]

        async def blocking_inside_the_loop(n: int) -> object:
            return client.credits()  # would wait for its own loop

        (outcome,) = client.map(blocking_inside_the_loop, [1])
    assert isinstance(outcome.error, ConfigurationError)
    assert "its own event loop" in str(outcome.error)


# -- one async client per event loop ---------------------------------------------------------


def test_an_async_client_used_from_a_second_loop_says_one_client_per_loop(
    sim: Simulator,
) -> None:
    own = ailab_async.AILabClient(api_key=sim.api_key, base_url=sim.url)
    with start_blocking_portal() as own_loop:
        own_loop.call(own.credits)  # binds it to that loop
        with client_for(sim) as client:
            # Its coroutine function, run in the facade's loop: a second loop.
            (outcome,) = client.map(own.smart_skin, [FACE])
        assert isinstance(outcome.error, ConfigurationError)
        assert isinstance(outcome.error, AILabError)
        assert "one AILabClient per event loop" in str(outcome.error)
        own_loop.call(own.aclose)  # closed in its own loop
    assert own.closed
