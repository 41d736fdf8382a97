"""The batch engine: photos in, processed photos out, every paid step journaled.

- :func:`run_batch`, the :class:`BatchRunner` it drives and :func:`planned_actions` (what a
  run would do, for a pre-flight) in ``_runner``: the doing;
- what a batch is and what became of each item (:class:`BatchSpec`, :class:`Operation`,
  :class:`BatchCall` for any other endpoint, :class:`ItemOutcome`, :class:`How`,
  :class:`BatchReport`) in ``_model``: pure values and decisions;
- input discovery and output names (:func:`discover_inputs`, :func:`safe_output_path`,
  :func:`output_family`) in ``_paths``;
- the manifest, one typed line (:class:`ManifestLine`) for every runner, in ``_manifest``;
- the page of a batch, ``report.html`` (thumbnails, failures, the run's charts), in
  ``_report`` (what it says, and the doing) and ``_report_page`` (its HTML, drawn pure);
- :mod:`ailab_async.batch.journal`, the durable SQLite record that makes a rerun resume
  without paying twice.

The command line (:mod:`ailab_async.cli`) and the Dask recipe
(:mod:`ailab_async.contrib.dask`) are two front ends of this one engine.
"""

from __future__ import annotations

from ._manifest import ManifestLine, error_line, manifest_line, outcome_line, write_manifest
from ._model import (
    BatchCall,
    BatchReport,
    BatchSpec,
    How,
    ItemOutcome,
    Operation,
    normalized_params,
)
from ._paths import IMAGE_EXTENSIONS, BatchItem, discover_inputs, output_family, safe_output_path
from ._runner import BatchRunner, planned_actions, run_batch

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchCall",
    "BatchItem",
    "BatchReport",
    "BatchRunner",
    "BatchSpec",
    "How",
    "ItemOutcome",
    "ManifestLine",
    "Operation",
    "discover_inputs",
    "error_line",
    "manifest_line",
    "normalized_params",
    "outcome_line",
    "output_family",
    "planned_actions",
    "run_batch",
    "safe_output_path",
    "write_manifest",
]
