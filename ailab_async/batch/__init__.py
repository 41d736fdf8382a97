"""The batch engine: photos in, processed photos out, every paid step journaled.

- :func:`run_batch` and the :class:`BatchRunner` it drives (``_runner``);
- :mod:`ailab_async.batch.journal`, the durable SQLite record that makes a rerun resume
  without paying twice.

The command line (:mod:`ailab_async.cli`) and the Dask recipe
(:mod:`ailab_async.contrib.dask`) are two front ends of this one engine.
"""

from __future__ import annotations

from ._runner import (
    IMAGE_EXTENSIONS,
    BatchItem,
    BatchReport,
    BatchRunner,
    BatchSpec,
    ItemOutcome,
    Operation,
    discover_inputs,
    error_line,
    manifest_line,
    normalized_params,
    outcome_line,
    output_family,
    run_batch,
    safe_output_path,
    write_manifest,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchItem",
    "BatchReport",
    "BatchRunner",
    "BatchSpec",
    "ItemOutcome",
    "Operation",
    "discover_inputs",
    "error_line",
    "manifest_line",
    "normalized_params",
    "outcome_line",
    "output_family",
    "run_batch",
    "safe_output_path",
    "write_manifest",
]
