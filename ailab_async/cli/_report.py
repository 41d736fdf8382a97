"""``report OUT``: rebuild a batch's ``report.html`` from what is on disk.

The page is built by :func:`ailab_async.batch._report.build_report` from ``manifest.jsonl``
and ``report-timeline.json`` in OUT (every batch writes it at its end already); this command
only turns the answer into lines and an exit status: 0 written, 1 the disk failed, 2 OUT
holds no batch (nothing written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..batch._report import REPORT_NAME, build_report
from ._output import CliError, guarded, warn
from ._parser import Subparsers
from ._progress import display_text, plural

__all__ = ["add_report"]


def add_report(subparsers: Subparsers) -> None:
    """Register ``report``."""
    parser = subparsers.add_parser(
        "report",
        allow_abbrev=False,
        help="rebuild the report.html of a batch output folder",
        description=f"Rebuild {REPORT_NAME} in OUT from its manifest.jsonl (every batch "
        "writes it at its end): before/after thumbnails (made locally, with Pillow), failures "
        "with what to do next, and the last run's charts. Nothing is sent anywhere.",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="a batch's --out folder")
    parser.add_argument(
        "--no-thumbnails",
        dest="thumbnails",
        action="store_false",
        help="leave the pictures out (faster; the page still lists every photo)",
    )
    parser.set_defaults(handler=lambda args: guarded(args, lambda: _report_command(args)))


def _report_command(args: argparse.Namespace) -> int:
    out: Path = args.out
    if not (out / "manifest.jsonl").is_file():
        raise CliError(
            f"no manifest.jsonl in {display_text(str(out))}: give the --out folder of a batch"
        )
    summary = build_report(out, thumbnails=args.thumbnails)
    for note in summary.notes:
        warn(args.command, note)
    print(
        f"report: {display_text(str(summary.path))} ({plural(summary.photos, 'photo')}, "
        f"{summary.failed} not done, {plural(summary.thumbnails, 'thumbnail')})",
        flush=True,
    )
    return 0
