"""Retouch a folder of photos from a plain script (no async), with the blocking client.

    AILAB_API_KEY=... python examples/sync_script.py PHOTO_DIR OUT_DIR [--retouch 0.6]

``ailab_async.sync.AILabClient`` runs the SDK's event loop in a background thread. ``map``
keeps up to ``--concurrency`` photos in progress, each retouched and downloaded by a plain
function in a worker thread; a photo that fails is reported with its error code and the
others go on. Ctrl-C stops the run: leaving the ``with`` block cancels what is in progress.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ailab_async import APIError
from ailab_async.sync import AILabClient

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


def photos_in(folder: Path) -> list[Path]:
    """The photos under ``folder`` (recursively), in name order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)


def retouch_all(
    client: AILabClient,
    photos: Sequence[Path],
    out_dir: Path,
    *,
    retouch: float = 0.6,
    concurrency: int = 16,
) -> dict[str, int]:
    """Retouch every photo into ``out_dir`` as ``<stem>.png``; counts by outcome."""

    def retouch_one(photo: Path) -> Path:
        result = client.smart_skin(photo, retouch_degree=retouch)
        return client.download(result, out_dir / f"{photo.stem}.png")

    counts = {"done": 0, "failed": 0}
    for outcome in client.map(retouch_one, photos, concurrency=concurrency):
        if outcome.error is None:
            counts["done"] += 1
            print(f"done: {outcome.item.name} -> {outcome.result}")
        else:
            code = outcome.error.code if isinstance(outcome.error, APIError) else ""
            print(f"failed: {outcome.item.name}: {type(outcome.error).__name__} {code}".rstrip())
            counts["failed"] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; exit status 1 if any photo failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("photo_dir", type=Path, help="folder of JPEG/PNG photos")
    parser.add_argument("out_dir", type=Path, help="where the retouched photos go")
    parser.add_argument("--retouch", type=float, default=0.6, help="0 to 1.5 (default 0.6)")
    parser.add_argument("--concurrency", type=int, default=16, help="photos in progress")
    args = parser.parse_args(argv)
    photos = photos_in(args.photo_dir)
    with AILabClient() as client:  # the key from AILAB_API_KEY
        counts = retouch_all(
            client, photos, args.out_dir, retouch=args.retouch, concurrency=args.concurrency
        )
    print(f"{counts['done']} done, {counts['failed']} failed, of {len(photos)} photos")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
