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
* **Outcomes**: every partition returns one manifest line per photo, as a dict (an
  unstructured :class:`ailab_async.batch.ManifestLine`, the one line type of every runner,
  with ``how``, ``partition``, ``worker`` and ``pid`` set); the driver writes them, as
  partitions complete, into one ``manifest.jsonl`` in ``out_dir``, replaced atomically at
  the end. A partition that fails as a whole (its worker lost too often, a missing API key)
  gives its photos ``state: "failed"``, ``how: "failed"`` lines.

``out_dir`` (and ``journal_dir``) must be filesystems every worker sees; for a
``LocalCluster`` they are local. The journals use SQLite's WAL mode, which needs a local
filesystem, not NFS: this recipe suits one host (however many worker processes), or a
cluster filesystem with working locks and shared memory. Inputs are file paths; photos in an
object store can be processed through a mount (s3fs, gcsfuse), whose paths, sizes and
modification times are stable, so reruns recognise them.

Requires the ``dask`` extra: ``pip install 'ailab-async[dask]'``.

Where each part lives: ``_config`` (what travels in the task graph), ``_shards`` (which
journal and task a photo belongs to, pure), ``_worker`` (the per-process client and the
partition task), ``_driver`` (:func:`run_on_cluster` and the manifest).
"""

from __future__ import annotations

try:
    import distributed  # noqa: F401 - checked first, for the message below
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "ailab_async.contrib.dask needs Dask's distributed scheduler: "
        "pip install 'ailab-async[dask]'"
    ) from exc

from ._config import (
    DEFAULT_PLUGIN_NAME,
    PartitionJob,
    RedisLimiterFactory,
    WorkerClientConfig,
)
from ._driver import run_on_cluster
from ._shards import JOURNAL_SHARDS, partition_of, shard_of
from ._worker import AILabWorkerPlugin, OutcomeLine, process_items, process_partition

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
