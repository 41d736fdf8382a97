"""The worker side: one client per worker process, on its own event loop, and the task that
runs a partition's photos through the batch runner.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import attrs
import distributed

from ..._threads import to_thread
from ...batch import BatchItem, BatchRunner, BatchSpec, ManifestLine
from ...batch.journal import Journal, JournalAccount
from ...client import AILabClient
from ...errors import ConfigurationError
from ...models import converter
from ._config import PartitionJob, WorkerClientConfig, aclose_limiter
from ._shards import shard_of

__all__ = ["AILabWorkerPlugin", "OutcomeLine", "process_items", "process_partition"]

_T = TypeVar("_T")

#: A manifest line as a dict: an unstructured :class:`~ailab_async.batch.ManifestLine` (the
#: ``manifest.jsonl`` fields, plus ``how``, ``partition``, ``worker`` and ``pid``). Dicts, so
#: results travel from workers and reach callers as they always have.
OutcomeLine = dict[str, Any]


class _LoopThread:
    """An event loop on its own thread, holding one client for the whole process."""

    def __init__(self, config: WorkerClientConfig) -> None:
        self._config = config
        self._ready: concurrent.futures.Future[AILabClient] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()),
            name="ailab-worker-loop",
            daemon=True,
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
            await aclose_limiter(limiter)

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
    lines = runtime.run(_settle(runtime.client, items, job, account=runtime.account))
    address, pid = str(worker.address), os.getpid()
    return [
        converter.unstructure(attrs.evolve(line, partition=partition, worker=address, pid=pid))
        for line in lines
    ]


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
    return [converter.unstructure(line) for line in await _settle(client, items, job, account)]


async def _settle(
    client: AILabClient,
    items: Sequence[BatchItem],
    job: PartitionJob,
    account: JournalAccount | None,
) -> list[ManifestLine]:
    """:func:`process_items`, typed: one :class:`ManifestLine` per item."""
    spec = BatchSpec(
        operation=job.operation,
        params=job.params,
        out_dir=job.out_dir,
        retry_failed=job.retry_failed,
        concurrency=job.concurrency,
    )
    await to_thread(lambda: spec.out_dir.mkdir(parents=True, exist_ok=True))
    shards = sorted({shard_of(item.relative) for item in items})
    async with contextlib.AsyncExitStack() as stack:
        # run_batch would also write out_dir/manifest.jsonl, which every partition shares;
        # its runner, without the manifest, is what one shard needs.
        runners: dict[int, BatchRunner] = {}
        for shard in shards:
            journal = await Journal.open(job.journal_file(shard), account=account)
            stack.push_async_callback(journal.aclose)
            runners[shard] = BatchRunner(
                client,
                journal,
                attrs.evolve(spec, journal_path=job.journal_file(shard)),
                None,
            )

        async def process(item: BatchItem) -> ManifestLine:
            outcome = await runners[shard_of(item.relative)].process(item)
            return ManifestLine.for_outcome(outcome, spec)

        lines: list[ManifestLine] = []
        outcomes = client.map(
            process, items, concurrency=spec.item_concurrency(client.max_concurrency)
        )
        async with contextlib.aclosing(outcomes):
            async for outcome in outcomes:
                if outcome.error is not None:  # pragma: no cover - process() keeps errors
                    raise outcome.error
                assert outcome.result is not None
                lines.append(outcome.result)
        return lines
