"""Fan a very large photo set out over a Dask ``distributed`` cluster.

::

    from distributed import Client, LocalCluster
    from ailab_async.batch import Operation
    from ailab_async.contrib.dask import RedisLimiterFactory, WorkerClientConfig, run_on_cluster

    # The workers read AILAB_API_KEY from their environment (a LocalCluster inherits ours).
    cluster = LocalCluster(n_workers=4, processes=True, dashboard_address="127.0.0.1:0")
    with cluster, Client(cluster) as dask_client:
        manifest = run_on_cluster(
            dask_client, ["photos/"], out_dir="out/", operation=Operation.SKIN,
            params={"retouch_degree": 0.6, "whitening_degree": 0.5}, partition_size=200,
            config=WorkerClientConfig(
                limiter_factory=RedisLimiterFactory("redis://127.0.0.1:6379/0", rate=20),
            ),
        )

How the work is cut:

* **Journal shards** are fixed: :data:`JOURNAL_SHARDS` (64) SQLite journals,
  ``out_dir/.journals/shard-SS-of-64.sqlite3``, and a photo's shard is a stable hash of its
  *output family* (:func:`ailab_async.batch.output_family`: its sanitised output directory
  and the start of its name). The shard depends on nothing else: not on the input order,
  not on how many photos there are, not on the partitioning. So a rerun finds every photo's
  earlier work in the same journal whatever changed around it: 100 photos, then 101, pays
  for 101 (with shards per partition, growing the set would change the partition count,
  move every photo to a new journal and pay for all of them again). Keying by output family
  also keeps every pair of inputs that could want one output file (``a.png`` and
  ``a_png.jpg``, ``A.png`` and ``a.png``) in one journal, which reserves distinct outputs.
* **Partitions** are the Dask tasks: each is a contiguous range of shards (about
  ``partition_size`` photos each, at most :data:`JOURNAL_SHARDS` partitions), so one shard,
  and its journal, belongs to exactly one task. Each journal is locked while open (see
  :mod:`ailab_async.batch.journal`): should two tasks ever reach one shard, the second stops with
  ``JournalBusyError`` instead of paying twice. 64 tasks at once is far more than an API
  account's rate limit can feed; the parallelism that matters is the requests each worker
  keeps in flight. A rerun skips downloaded photos and never pays twice for a finished one
  (see :mod:`ailab_async.batch`).
* **One** :class:`~ailab_async.AILabClient` **per worker process**, owned by
  :class:`AILabWorkerPlugin`: one connection pool, one task tracker, one rate limiter for every
  partition the process runs. Dask runs tasks in a thread pool, and an asyncio client is bound
  to the event loop it was created on, so the plugin keeps a dedicated event-loop thread per
  process, creates the client on it, and each task hands its partition to that loop
  (``asyncio.run_coroutine_threadsafe``) and blocks until it is done. ``asyncio.run`` per
  partition would instead need a new client (pool, limiter, tracker) per partition. The plugin
  closes the client when the worker shuts down or the plugin is unregistered.
* **The rate budget**: ``WorkerClientConfig.limiter_factory`` is called once per worker
  process, on that loop, to build the client's limiter; :class:`RedisLimiterFactory` builds a
  ``RedisRateLimiter`` so every process draws on one shared budget. Without a factory each
  process has its own ``rate_limit``: divide the account's rate by the number of processes.
* **The API key never travels in the task graph**: each worker reads it from its own
  environment (``AILAB_API_KEY``, or the variable ``WorkerClientConfig.api_key_env`` names).
  A ``LocalCluster`` inherits the environment of the process that starts it (or pass
  ``LocalCluster(env={...})``); on a real cluster set it in the worker's deployment.
* **Outcomes**: every partition returns one manifest-shaped dict per photo (the fields of
  ``manifest.jsonl`` from :mod:`ailab_async.batch`, plus ``how``, ``partition``, ``worker``
  and ``pid``); the driver writes them, as partitions complete, into one ``manifest.jsonl``
  in ``out_dir``, replaced atomically at the end. A partition that fails as a whole (its
  worker lost too often, a missing API key) gives its photos ``state: "failed"`` lines.

``out_dir`` (and ``journal_dir``) must be filesystems every worker sees; for a
``LocalCluster`` they are local. The journals use SQLite's WAL mode, which needs a local
filesystem, not NFS: this recipe suits one host (however many worker processes), or a
cluster filesystem with working locks and shared memory. Inputs are file paths; photos in an
object store can be processed through a mount (s3fs, gcsfuse), whose paths, sizes and
modification times are stable, so reruns recognise them.

Requires the ``dask`` extra: ``pip install 'ailab-async[dask]'``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import attrs

try:
    import distributed
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "ailab_async.contrib.dask needs Dask's distributed scheduler: "
        "pip install 'ailab-async[dask]'"
    ) from exc

from .. import batch
from .._ratelimit import RateLimiter
from ..batch import BatchItem, BatchSpec, Operation, discover_inputs
from ..batch.journal import Journal, JournalAccount
from ..client import API_KEY_ENV, AILabClient
from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_PLUGIN_NAME",
    "JOURNAL_SHARDS",
    "AILabWorkerPlugin",
    "OutcomeLine",
    "PartitionJob",
    "RedisLimiterFactory",
    "WorkerClientConfig",
    "partition_of",
    "process_items",
    "process_partition",
    "run_on_cluster",
    "shard_of",
]

_T = TypeVar("_T")

#: The name :func:`run_on_cluster` registers its :class:`AILabWorkerPlugin` under.
DEFAULT_PLUGIN_NAME = "ailab-async"

#: How many journals a run's photos are spread over, whatever their number and however they
#: are partitioned. Changing it orphans existing journals (their photos would be paid for
#: again), so it is fixed.
JOURNAL_SHARDS = 64

#: A manifest line: the ``manifest.jsonl`` fields of :mod:`ailab_async.batch`, plus
#: ``how``, ``partition``, ``worker`` and ``pid``.
OutcomeLine = dict[str, Any]


# --- configuration (travels in the task graph: never a secret) ---------------------------


@attrs.frozen
class RedisLimiterFactory:
    """Builds a ``RedisRateLimiter``: one request budget shared by every worker process.

    A plain, picklable value (unlike a lambda it compares equal after a trip to a worker).
    The URL travels to the workers in the task graph: if it holds a password, pass
    ``url=None`` instead and set ``AILAB_REDIS_URL`` (or the variable ``url_env`` names) in
    the workers' environment.

    >>> factory = RedisLimiterFactory("redis://127.0.0.1:6379/0", rate=20.0, name="photos")
    >>> limiter = factory()  # on a worker, on the client's loop  # doctest: +SKIP
    """

    url: str | None
    #: The account's limit, in requests per second, shared by every worker process.
    rate: float
    #: Processes sharing the budget; while Redis is unreachable each one falls back to
    #: ``rate / expected_processes`` on its own.
    expected_processes: int = 4
    #: The budget's name in Redis: one per API key.
    name: str = "ailab-async"
    #: Where a worker finds the URL when ``url`` is ``None``.
    url_env: str = "AILAB_REDIS_URL"

    def __call__(self) -> RateLimiter:
        # Imported here: only the processes that build a limiter need the ``redis`` extra.
        from .redis import RedisRateLimiter  # noqa: PLC0415

        url = self.url or os.environ.get(self.url_env)
        if not url:
            raise ConfigurationError(
                f"no Redis URL on this worker: pass url= or set {self.url_env} in its environment"
            )
        return RedisRateLimiter(
            url, name=self.name, rate=self.rate, expected_processes=self.expected_processes
        )


@attrs.frozen
class WorkerClientConfig:
    """How every worker process builds its one :class:`~ailab_async.AILabClient`.

    Arguments:
        base_url: The API (default: ``AILAB_BASE_URL`` on the worker, then the real API).
        api_key_env: The environment variable the worker reads its API key from. The key
            itself is never part of this object, so it never enters the task graph.
        max_concurrency: Requests in flight at once per worker process.
        rate_limit: Requests per second per worker process, when there is no
            ``limiter_factory`` (divide the account's rate by the number of processes).
        limiter_factory: Called once per worker process, on the client's event loop, to
            build a shared limiter (see :class:`RedisLimiterFactory`). Must be picklable.
        client_options: Further keyword arguments for ``AILabClient`` (``timeout``, ...).
    """

    base_url: str | None = None
    api_key_env: str = API_KEY_ENV
    max_concurrency: int = 8
    rate_limit: float | None = None
    limiter_factory: Callable[[], RateLimiter] | None = None
    client_options: Mapping[str, Any] = attrs.field(factory=dict)

    async def open_client(self) -> tuple[AILabClient, RateLimiter | None]:
        """Build the client (and the shared limiter, if any) on the running loop."""
        api_key = os.environ.get(self.api_key_env)
        if not api_key:
            raise ConfigurationError(
                f"no API key on this worker: set {self.api_key_env} in the worker's environment"
            )
        limiter = self.limiter_factory() if self.limiter_factory is not None else None
        try:
            client = AILabClient(
                api_key=api_key,
                base_url=self.base_url,
                max_concurrency=self.max_concurrency,
                rate_limit=limiter if limiter is not None else self.rate_limit,
                **self.client_options,
            )
        except BaseException:
            await _aclose_limiter(limiter)
            raise
        return client, limiter


@attrs.frozen
class PartitionJob:
    """What to do with every photo of a partition, and where results go."""

    operation: Operation
    params: Mapping[str, Any]
    #: Shared by every worker; outputs mirror the inputs' relative paths inside it.
    out_dir: Path = attrs.field(converter=Path)
    #: The :data:`JOURNAL_SHARDS` SQLite journals are kept here (default
    #: ``out_dir/.journals``).
    journal_dir: Path | None = None
    retry_failed: bool = False
    #: Photos of one partition in progress at once (default: as ``run_batch`` chooses).
    concurrency: int | None = None
    #: The :class:`AILabWorkerPlugin` that owns the worker's client.
    plugin_name: str = DEFAULT_PLUGIN_NAME

    def journal_file(self, shard: int) -> Path:
        """The journal of one shard (see :func:`shard_of`)."""
        name = f"shard-{shard:02d}-of-{JOURNAL_SHARDS:02d}.sqlite3"
        return (self.journal_dir or self.out_dir / ".journals") / name


# --- the worker side ----------------------------------------------------------------------


async def _aclose_limiter(limiter: RateLimiter | None) -> None:
    # Clients never close the limiter they were given; a Redis one holds a connection pool.
    aclose = getattr(limiter, "aclose", None)
    if aclose is not None:
        await aclose()


class _LoopThread:
    """An event loop on its own thread, holding one client for the whole process."""

    def __init__(self, config: WorkerClientConfig) -> None:
        self._config = config
        self._ready: concurrent.futures.Future[AILabClient] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="ailab-worker-loop", daemon=True
        )
        self._thread.start()
        self.client = self._ready.result()  # raises what building the client raised
        # Whose journals these are: recorded in each, so that a journal of another account
        # is refused. Only a fingerprint of the key, computed here: the key stays here.
        self.account = JournalAccount.for_key(
            self.client.base_url, os.environ.get(config.api_key_env, "")
        )

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            client, limiter = await self._config.open_client()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(client)
        try:
            await self._stop.wait()
        finally:
            await client.aclose()
            await _aclose_limiter(limiter)

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the loop; block the calling thread until it is done."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()


class AILabWorkerPlugin(distributed.WorkerPlugin):
    """Gives each Dask worker one :class:`~ailab_async.AILabClient`, made on first use.

    :func:`run_on_cluster` registers it (and unregisters it afterwards); to call
    :func:`process_partition` from your own graph, register it yourself::

        dask_client.register_plugin(AILabWorkerPlugin(WorkerClientConfig()), name="ailab-async")
    """

    def __init__(self, config: WorkerClientConfig) -> None:
        self.config = config
        self._runtime: _LoopThread | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}  # a lock and a running loop do not travel

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._runtime = None
        self._lock = threading.Lock()

    def runtime(self) -> _LoopThread:
        """The process's loop thread and client, started by the first task that asks."""
        with self._lock:  # tasks run on several threads of one worker
            if self._runtime is None:
                self._runtime = _LoopThread(self.config)
            return self._runtime

    def teardown(self, worker: Any) -> None:
        with self._lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()


def process_partition(
    partition: str, items: Sequence[BatchItem], job: PartitionJob
) -> list[OutcomeLine]:
    """The Dask task: run one partition's photos on this worker's client; one line each.

    Uses the client of the :class:`AILabWorkerPlugin` named ``job.plugin_name`` and the
    journals of the photos' shards (``job.journal_file(shard_of(item.relative))``). A
    photo's failure is its line (``state: "failed"``); it never fails the task.
    """
    worker = distributed.get_worker()
    plugin = worker.plugins.get(job.plugin_name)
    if not isinstance(plugin, AILabWorkerPlugin):
        raise ConfigurationError(
            f"no AILabWorkerPlugin named {job.plugin_name!r} on this worker; "
            "register one with dask_client.register_plugin(...) (run_on_cluster does)"
        )
    runtime = plugin.runtime()
    lines = runtime.run(
        process_items(runtime.client, partition, items, job, account=runtime.account)
    )
    extra = {"partition": partition, "worker": worker.address, "pid": os.getpid()}
    return [{**line, **extra} for line in lines]


async def process_items(
    client: AILabClient,
    partition: str,
    items: Sequence[BatchItem],
    job: PartitionJob,
    *,
    account: JournalAccount | None = None,
) -> list[OutcomeLine]:
    """Process ``items`` with ``client`` through the batch runner, each photo journaled in
    its shard's journal (opened for the duration; ``partition`` only names the work).
    ``account`` is checked against (or recorded in) each journal, as ``run_batch`` does.

    The asyncio core of :func:`process_partition`, usable without Dask.
    """
    spec = BatchSpec(
        operation=job.operation,
        params=job.params,
        out_dir=job.out_dir,
        retry_failed=job.retry_failed,
        concurrency=job.concurrency,
    )
    await anyio.to_thread.run_sync(lambda: spec.out_dir.mkdir(parents=True, exist_ok=True))
    shards = sorted({shard_of(item.relative) for item in items})
    async with contextlib.AsyncExitStack() as stack:
        # run_batch would also write out_dir/manifest.jsonl, which every partition shares;
        # its runner, without the manifest, is what one shard needs.
        runners: dict[int, batch.BatchRunner] = {}
        for shard in shards:
            journal = await Journal.open(job.journal_file(shard), account=account)
            stack.push_async_callback(journal.aclose)
            runners[shard] = batch.BatchRunner(
                client, journal, attrs.evolve(spec, journal_path=job.journal_file(shard)), None
            )

        async def process(item: BatchItem) -> OutcomeLine:
            outcome = await runners[shard_of(item.relative)].process(item)
            return batch.outcome_line(outcome, spec)

        concurrency = job.concurrency
        if concurrency is None and job.operation is Operation.BEAUTY:
            concurrency = 8 * client.max_concurrency  # items mostly wait on remote tasks
        lines: list[OutcomeLine] = []
        outcomes = client.map(process, items, concurrency=concurrency)
        async with contextlib.aclosing(outcomes):
            async for outcome in outcomes:
                if outcome.error is not None:  # pragma: no cover - process() keeps errors
                    raise outcome.error
                assert outcome.result is not None
                lines.append(outcome.result)
        return lines


# --- the driver side ----------------------------------------------------------------------


def shard_of(relative: str) -> int:
    """The journal shard of a photo: a stable hash of its output family, in
    ``range(JOURNAL_SHARDS)``.

    Independent of input order, of the input count and of the Python process (unlike
    ``hash()``); inputs that could want one output file share a shard.

    >>> shard_of("holiday/a.png") == shard_of("Holiday/A_png.jpg")
    True
    """
    family = batch.output_family(relative)
    digest = hashlib.sha256(family.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % JOURNAL_SHARDS


def partition_of(relative: str, partitions: int) -> int:
    """The partition (Dask task) a photo belongs to: its shard's, shards being dealt out
    in contiguous ranges. ``partitions`` must be at most :data:`JOURNAL_SHARDS`.

    >>> partition_of("holiday/a.jpg", 1)
    0
    """
    if not 1 <= partitions <= JOURNAL_SHARDS:
        raise ValueError(f"partitions must be between 1 and {JOURNAL_SHARDS}")
    return shard_of(relative) * partitions // JOURNAL_SHARDS


def run_on_cluster(
    dask_client: distributed.Client,
    inputs: Iterable[str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str],
    operation: Operation = Operation.SKIN,
    params: Mapping[str, Any] | None = None,
    partition_size: int = 100,
    partitions: int | None = None,
    config: WorkerClientConfig | None = None,
    retry_failed: bool = False,
    concurrency: int | None = None,
    retries: int = 1,
    journal_dir: str | os.PathLike[str] | None = None,
    plugin_name: str = DEFAULT_PLUGIN_NAME,
) -> Path:
    """Process every photo under ``inputs`` on the cluster; return ``out_dir/manifest.jsonl``.

    Files are taken as given, directories searched recursively (as ``run_batch`` does). The
    photos are split into ``partitions`` (default: about ``partition_size`` photos each, at
    most :data:`JOURNAL_SHARDS`) by :func:`partition_of`; each partition is one task,
    ``retries`` times retried if it fails as a whole. However the photos are partitioned,
    each is journaled in its fixed shard, so reruns find earlier work. Each worker builds
    one client from ``config`` and reads its API key from its own environment. Journals go
    to ``journal_dir`` (default ``out_dir/.journals``). The manifest has one line per photo,
    written as partitions complete (so in completion order) and moved into place atomically
    at the end.

    >>> manifest = run_on_cluster(dask_client, ["photos/"], out_dir="out",
    ...                           params={"retouch_degree": 0.6})  # doctest: +SKIP
    """
    if partition_size < 1 or (partitions is not None and not 1 <= partitions <= JOURNAL_SHARDS):
        raise ValueError(
            f"partition_size must be at least 1 and partitions between 1 and {JOURNAL_SHARDS}"
        )
    job = PartitionJob(
        operation=operation,
        params=dict(params or {}),
        out_dir=Path(out_dir),
        journal_dir=None if journal_dir is None else Path(journal_dir),
        retry_failed=retry_failed,
        concurrency=concurrency,
        plugin_name=plugin_name,
    )
    items = list(discover_inputs(inputs))
    count = partitions or min(JOURNAL_SHARDS, max(1, math.ceil(len(items) / partition_size)))
    buckets: dict[int, list[BatchItem]] = {}
    for item in items:
        buckets.setdefault(partition_of(item.relative, count), []).append(item)
    job.out_dir.mkdir(parents=True, exist_ok=True)

    dask_client.register_plugin(AILabWorkerPlugin(config or WorkerClientConfig()), name=plugin_name)
    try:
        submitted = {
            dask_client.submit(
                process_partition,
                name,
                bucket,
                job,
                key=f"ailab-{name}-{os.urandom(4).hex()}",
                retries=retries,
                pure=False,
            ): bucket
            for name, bucket in (
                (f"part-{index:04d}-of-{count:04d}", bucket)
                for index, bucket in sorted(buckets.items())
            )
        }
        return _write_manifest(job, submitted)
    finally:
        dask_client.unregister_worker_plugin(plugin_name)  # type: ignore[no-untyped-call]


def _write_manifest(
    job: PartitionJob, submitted: dict[distributed.Future[list[OutcomeLine]], list[BatchItem]]
) -> Path:
    target = job.out_dir / "manifest.jsonl"
    spec = BatchSpec(operation=job.operation, params=job.params, out_dir=job.out_dir)
    handle, temporary = tempfile.mkstemp(dir=job.out_dir, prefix=".manifest.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            completed = distributed.as_completed(list(submitted), raise_errors=False)  # type: ignore[no-untyped-call]
            for future in completed:
                bucket = submitted.pop(future)
                if future.status == "finished":
                    lines: list[OutcomeLine] = future.result()
                else:  # the whole partition failed (or was cancelled): every photo in it did
                    error = (
                        future.exception()
                        if future.status == "error"
                        else RuntimeError(f"the partition's task was {future.status}")
                    )
                    lines = [
                        {**batch.error_line(item, spec, error), "how": "failed"} for item in bucket
                    ]
                future.release()  # free the result on the worker at once
                for line in lines:
                    stream.write(json.dumps(line, sort_keys=True) + "\n")
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target
