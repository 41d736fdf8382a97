"""The driver side: discover the photos, deal them into partitions, submit one task each, and
write their lines into one ``manifest.jsonl`` as they complete.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import distributed

from ...batch import BatchItem, BatchSpec, How, ManifestLine, Operation, discover_inputs
from ...batch._manifest import json_line
from ...batch._report import build_report
from ...errors import ValidationError
from ...models import converter
from ._config import DEFAULT_PLUGIN_NAME, PartitionJob, WorkerClientConfig
from ._shards import JOURNAL_SHARDS, partition_of
from ._worker import AILabWorkerPlugin, OutcomeLine, process_partition

logger = logging.getLogger("ailab_async")

__all__ = ["run_on_cluster"]


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
    report: bool = True,
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
    at the end. Then, unless ``report=False``, ``report.html`` beside it, as a batch writes
    it (before/after thumbnails and failures; no charts: the workers' clients are not
    sampled).

    >>> manifest = run_on_cluster(dask_client, ["photos/"], out_dir="out",
    ...                           params={"retouch_degree": 0.6})  # doctest: +SKIP
    """
    if partition_size < 1 or (partitions is not None and not 1 <= partitions <= JOURNAL_SHARDS):
        raise ValidationError(
            f"partition_size must be at least 1 and partitions between 1 and {JOURNAL_SHARDS}",
            input="partitions",
            rule="range",
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
        manifest = _write_manifest(job, submitted)
    finally:
        dask_client.unregister_worker_plugin(plugin_name)  # type: ignore[no-untyped-call]
    if report:
        try:
            build_report(job.out_dir)
        except OSError as exc:  # the photos are done and journaled; only the page is missing
            logger.warning("report.html not written: %s", exc)
    return manifest


def _write_manifest(
    job: PartitionJob,
    submitted: dict[distributed.Future[list[OutcomeLine]], list[BatchItem]],
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
                        converter.unstructure(
                            attrs.evolve(
                                ManifestLine.for_error(item, spec, error),
                                how=How.FAILED,
                            )
                        )
                        for item in bucket
                    ]
                future.release()  # free the result on the worker at once
                for line in lines:
                    stream.write(json_line(line) + "\n")
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target
