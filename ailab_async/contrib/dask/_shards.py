"""Which journal, and which Dask task, a photo belongs to: pure and stable.

A photo's journal shard is a hash of its output family (:func:`ailab_async.batch.output_family`),
so it depends on nothing but the photo's own relative path; partitions are contiguous ranges of
shards, so one shard (and its journal) belongs to exactly one task.
"""

from __future__ import annotations

import hashlib

from ...batch import output_family
from ...errors import ValidationError

__all__ = ["JOURNAL_SHARDS", "partition_of", "shard_of"]

#: How many journals a run's photos are spread over, whatever their number and however they
#: are partitioned. Changing it orphans existing journals (their photos would be paid for
#: again), so it is fixed.
JOURNAL_SHARDS = 64


def shard_of(relative: str) -> int:
    """The journal shard of a photo: a stable hash of its output family, in
    ``range(JOURNAL_SHARDS)``.

    Independent of input order, of the input count and of the Python process (unlike
    ``hash()``); inputs that could want one output file share a shard.

    >>> shard_of("holiday/a.png") == shard_of("Holiday/A_png.jpg")
    True
    """
    family = output_family(relative)
    digest = hashlib.sha256(family.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % JOURNAL_SHARDS


def partition_of(relative: str, partitions: int) -> int:
    """The partition (Dask task) a photo belongs to: its shard's, shards being dealt out
    in contiguous ranges. ``partitions`` must be at most :data:`JOURNAL_SHARDS`.

    >>> partition_of("holiday/a.jpg", 1)
    0
    """
    if not 1 <= partitions <= JOURNAL_SHARDS:
        raise ValidationError(
            f"partitions must be between 1 and {JOURNAL_SHARDS}", input="partitions", rule="range"
        )
    return shard_of(relative) * partitions // JOURNAL_SHARDS
