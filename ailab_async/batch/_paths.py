"""Where batch inputs come from and where their outputs go: file-system names, decided here.

:func:`scan_inputs` and :func:`discover_inputs` walk the inputs (lazily, I/O), and
:func:`is_photo` says which files found in folders are photos; :func:`safe_output_path` and
:func:`output_family` are pure string work on the input's relative path (the one ``resolve``
in :func:`safe_output_path` checks the result stays inside the output directory). Every rule
about output names lives here: sanitising components, the input's extension joining the stem
when the served type differs, shortening names to the byte limit, and which inputs could
meet on one output (resolved by the journal's reservations).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import attrs

from ..errors import ValidationError

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchItem",
    "discover_inputs",
    "is_photo",
    "output_family",
    "safe_output_path",
    "scan_inputs",
]

#: Files picked up from input directories.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


@attrs.frozen
class BatchItem:
    """One input photo: where it is, and its path relative to the input it came from."""

    path: Path
    relative: str


def is_photo(path: Path) -> bool:
    """Whether a file found in an input folder is taken as a photo: a regular file (or a
    link to one) whose extension is one of :data:`IMAGE_EXTENSIONS`, in any case. Files
    given by name are taken whatever they are (the API's checks then answer for them)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def scan_inputs(inputs: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[BatchItem, bool]]:
    """Every file as given, and every file found recursively under directories, lazily,
    each with whether it is taken as a photo (:func:`is_photo`; a file given by name
    always is). Directory links are not followed.

    A file's relative path is its name; a directory's files keep their path below it,
    prefixed with the directory's own name (so two input folders cannot collide).
    """
    for raw in inputs:
        root = Path(raw)
        if root.is_dir():
            base = root.resolve().name or "input"
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    relative = PurePosixPath(base, *path.relative_to(root).parts)
                    yield BatchItem(path, str(relative)), is_photo(path)
        else:
            yield BatchItem(root, root.name), True


def discover_inputs(inputs: Iterable[str | os.PathLike[str]]) -> Iterator[BatchItem]:
    """Files as given, and photos (:func:`is_photo`) found recursively under directories,
    lazily; see :func:`scan_inputs` for the files that are not photos."""
    return (item for item, photo in scan_inputs(inputs) if photo)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f<>:\"|?*\\/]")


_MAX_NAME_BYTES = 180  # leaves room for the download's temporary prefix and suffix


def _safe_component(part: str) -> str:
    return _fit(_clean_component(part))


def _clean_component(part: str) -> str:
    part = unicodedata.normalize("NFC", part)
    part = _UNSAFE.sub("_", part).strip().rstrip(".")
    if not part or set(part) <= {"."}:
        return "_"
    if part.startswith("."):
        part = "_" + part[1:]
    return part


def _fit(name: str) -> str:
    """``name`` within the file-name byte limit: a prefix, a digest of the whole so two long
    names sharing a prefix stay apart, and the extension."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 8:
        stem, dot, ext = name, "", ""
    tail = f"~{hashlib.sha256(raw).hexdigest()[:8]}{dot}{ext}"
    budget = _MAX_NAME_BYTES - len(tail.encode("utf-8"))
    return stem.encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "ignore") + tail


def safe_output_path(out_dir: Path, relative: str, suffix: str) -> Path:
    """Where the result of the input at ``relative`` goes: always inside ``out_dir``.

    Every component is sanitised (no ``..``, no absolute paths, no control or reserved
    characters, no hidden files); the input's extension becomes part of the stem when the
    output's differs (``a.jpg`` → ``a_jpg.png``) so ``a.jpg`` and ``a.png`` cannot collide.

    >>> safe_output_path(Path("/out"), "../../etc/passwd", ".png")
    PosixPath('/out/_/_/etc/passwd.png')
    """
    parts = [p for p in re.split(r"[\\/]+", relative) if p not in ("",)]
    clean = [_safe_component(p) for p in parts] or ["item"]
    name = clean[-1]
    stem, dot, ext = name.rpartition(".")
    if dot and stem:
        name = stem if f".{ext.lower()}" == suffix else f"{stem}_{ext}"
    clean[-1] = _fit(name + suffix)
    target = out_dir.joinpath(*clean)
    root = out_dir.resolve()
    resolved = target.resolve()
    if root != resolved and root not in resolved.parents:
        raise ValidationError(
            f"output for {relative!r} would escape the output directory",
            input=relative,
            rule="output_path",
        )
    return target


_FAMILY_BREAK = re.compile(r"[._~]")


def output_family(relative: str) -> str:
    """A key shared by every input whose output could collide with this one's.

    Outputs are the sanitised path with the name's stem, perhaps ``_`` and the input's
    extension, perhaps ``~N``, then the served extension. Two inputs can only want one
    output when their sanitised directories match and one sanitised name starts with the
    other's stem; both then share the part of the name before its first ``.``, ``_`` or
    ``~``. Compared without case, as case-insensitive file systems do. Journals sharded by
    this key (the Dask recipe) keep every possible collision inside one journal, where
    :meth:`~ailab_async.batch.journal.Journal.reserve_output` resolves it.

    >>> output_family("Holiday/a.png") == output_family("holiday/A_png.jpg")
    True
    """
    # Before shortening (``_fit``): a shortened name keeps a digest of the whole, so two
    # shortened names can only collide when the whole names do.
    parts = [_clean_component(p) for p in re.split(r"[\\/]+", relative) if p] or ["item"]
    head = _FAMILY_BREAK.split(parts[-1], maxsplit=1)[0]
    return "/".join([*parts[:-1], head[:64]]).casefold()
