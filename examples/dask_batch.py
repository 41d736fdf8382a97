"""Retouch a photo folder on a Dask cluster: partitions per worker, one manifest at the end.

    python examples/dask_batch.py --simulate --samples 40 PHOTO_DIR OUT_DIR
    python examples/dask_batch.py --simulate --redis-url redis://127.0.0.1:6379/0 PHOTO_DIR OUT_DIR
    AILAB_API_KEY=... python examples/dask_batch.py --rate 10 PHOTO_DIR OUT_DIR

It starts a ``LocalCluster`` of ``--workers`` processes on 127.0.0.1 (swap in your own
cluster's ``Client`` for a real deployment) and runs
:func:`ailab_async.contrib.dask.run_on_cluster`. Every worker process holds one client and
reads the API key from its environment, inherited from this process; the key is never in the
task graph. ``--simulate`` starts ``ailab-async simulate`` in a subprocess with a rate limit
of ``--rate`` requests/second and points the workers at it; ``--samples N`` first writes N
synthetic portraits into PHOTO_DIR. With ``--redis-url`` the workers share one budget of 80 %
of ``--rate`` through Redis; without it each worker gets an equal share of that budget.
Run it again with the same arguments: finished photos are skipped, nothing is paid twice.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from ailab_async.batch import Operation
from ailab_async.contrib.dask import RedisLimiterFactory, WorkerClientConfig, run_on_cluster

#: The share of the account's rate the workers aim for: headroom for clock skew and retries.
RATE_HEADROOM = 0.8


@contextlib.contextmanager
def simulator(rate: float) -> Iterator[tuple[str, str]]:
    """``ailab-async simulate`` in a subprocess on 127.0.0.1: yields its URL and API key."""
    command = [sys.executable, "-m", "ailab_async.cli", "simulate", "--port", "0"]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [*command, "--rate-limit", str(rate)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().rpartition(" ")[2]
        api_key = process.stdout.readline().strip().rpartition(" ")[2]
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError("the simulator did not start")
        yield url, api_key
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def write_samples(photo_dir: Path, count: int) -> None:
    """Write ``count`` synthetic portraits into ``photo_dir`` (needs the simulator extra)."""
    from ailab_async.testing.simulator import sample_image  # noqa: PLC0415 - needs [simulator]

    photo_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (photo_dir / f"portrait-{index:04d}.jpg").write_bytes(sample_image(256, 256, seed=index))


def run(
    photo_dir: Path,
    out_dir: Path,
    *,
    workers: int,
    rate: float,
    base_url: str | None,
    redis_url: str | None,
    partition_size: int,
    retouch: float,
) -> Path:
    """Start a local cluster, process the photos on it, and return the manifest's path."""
    from distributed import Client, LocalCluster  # noqa: PLC0415 - needs [dask]

    budget = RATE_HEADROOM * rate
    if redis_url:
        factory = RedisLimiterFactory(redis_url, rate=budget, expected_processes=workers)
        config = WorkerClientConfig(base_url=base_url, limiter_factory=factory)
    else:  # no shared budget: split it evenly between the worker processes
        config = WorkerClientConfig(base_url=base_url, rate_limit=budget / workers)
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            # The scheduler serves HTTP (health, and the dashboard if bokeh is installed)
            # even when the dashboard is off; keep it on loopback, on a free port.
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as dask_client,  # type: ignore[no-untyped-call]
    ):
        return run_on_cluster(
            dask_client,
            [photo_dir],
            out_dir=out_dir,
            operation=Operation.SKIN,
            params={"retouch_degree": retouch, "whitening_degree": 0.5},
            partition_size=partition_size,
            config=config,
        )


def summarise(manifest: Path) -> dict[str, object]:
    """Counts by state and the worker processes that did the work, from the manifest."""
    lines = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    return {
        "photos": len(lines),
        "states": dict(collections.Counter(line["state"] for line in lines)),
        "how": dict(collections.Counter(line["how"] for line in lines)),
        "worker_pids": sorted({line["pid"] for line in lines if line.get("pid")}),
        "manifest": str(manifest),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--simulate", action="store_true", help="use a local simulator")
    parser.add_argument("--samples", type=int, default=0, help="write N sample photos first")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--rate", type=float, default=10.0, help="account limit, requests/s")
    parser.add_argument("--redis-url", help="share the rate budget through this Redis")
    parser.add_argument("--partition-size", type=int, default=10, help="photos per task")
    parser.add_argument("--retouch", type=float, default=0.6, help="retouch_degree")
    args = parser.parse_args(argv)
    if args.samples:
        write_samples(args.photo_dir, args.samples)

    def process(base_url: str | None) -> Path:
        return run(
            args.photo_dir,
            args.out_dir,
            workers=args.workers,
            rate=args.rate,
            base_url=base_url,
            redis_url=args.redis_url,
            partition_size=args.partition_size,
            retouch=args.retouch,
        )

    if args.simulate:
        with simulator(args.rate) as (url, api_key):
            # The workers inherit this process's environment: that is how the key reaches
            # them. (The simulator's key is a fake one.)
            os.environ["AILAB_API_KEY"] = api_key
            manifest = process(url)
    else:
        manifest = process(None)
    print(json.dumps(summarise(manifest)))


if __name__ == "__main__":  # required: the worker processes are spawned, not forked
    main()
