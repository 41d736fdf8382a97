"""Which photos a batch processes: the inputs as given, checked, walked and filtered.

:func:`plan_inputs` decides, before anything is sent: results already in the output folder
are never inputs (``out_dir`` may lie inside an input folder), each file counts once, names
that are not valid UTF-8 cannot be journaled and are set aside, files in input folders that
are not photos (:func:`~ailab_async.batch._paths.is_photo`) are set aside and named so the
caller can report them, and two inputs that would write the same output refuse the batch
rather than overwrite each other. It answers with
data (:class:`InputPlan`); printing, and wording for a terminal, is the caller's job.

It reads the file system (``stat``, directory walks) but sends nothing and writes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..errors import ValidationError
from ._paths import BatchItem, safe_output_path, scan_inputs

__all__ = ["InputPlan", "InputProblem", "Refusal", "plan_inputs"]

#: The output suffix the collision check assumes before any result is served. Collisions
#: that only a served type reveals (``a.png`` and ``a_png.jpg`` when the API answers JPEG)
#: are settled later by the journal's output reservations, without refusing the batch.
_CHECKED_SUFFIX = ".png"


class Refusal(enum.Enum):
    """Why a set of inputs cannot make a batch."""

    #: An input does not exist.
    MISSING = "missing"
    #: An input is neither a regular file nor a directory (a FIFO, a device).
    NOT_FILE_OR_DIRECTORY = "not_file_or_directory"
    #: No image file among the inputs.
    NO_IMAGES = "no_images"
    #: An input's output would land outside the output folder (a link inside it).
    OUTPUT_ESCAPES = "output_escapes"
    #: Two inputs would write the same output.
    SAME_OUTPUT = "same_output"


@attrs.frozen
class InputProblem:
    """One reason to refuse the batch, with the inputs it is about (as given, or the
    discovered paths for ``SAME_OUTPUT``: the one that claimed the output first, then the
    other) and, for ``OUTPUT_ESCAPES``, the validation message."""

    refusal: Refusal
    inputs: tuple[str, ...]
    detail: str = ""


@attrs.frozen
class InputPlan:
    """What :func:`plan_inputs` decided.

    ``items`` are processed, in order; ``unusable`` are set aside (a name that is not valid
    UTF-8); ``not_photos`` are the other files found in input folders, skipped (results
    and files of the output folder are neither); a non-empty ``problems`` refuses the whole
    batch, most telling first (``not_photos`` is filled in then too, to explain a
    ``NO_IMAGES``).
    """

    items: tuple[BatchItem, ...] = ()
    unusable: tuple[Path, ...] = ()
    problems: tuple[InputProblem, ...] = ()
    not_photos: tuple[Path, ...] = ()

    @property
    def refused(self) -> bool:
        """Whether the batch must not start."""
        return bool(self.problems)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate-escaped byte of a non-UTF-8 name
        return False
    return True


def _missing_or_odd(inputs: Sequence[str]) -> list[InputProblem]:
    problems = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            problems.append(InputProblem(Refusal.MISSING, (raw,)))
        elif not (path.is_dir() or path.is_file()):
            problems.append(InputProblem(Refusal.NOT_FILE_OR_DIRECTORY, (raw,)))
    return problems


def _output_problems(items: Sequence[BatchItem], out_dir: Path) -> list[InputProblem]:
    """Items whose outputs escape ``out_dir`` or collide, in item order."""
    problems = []
    claimed: dict[Path, str] = {}
    for item in items:
        source = str(item.path)
        try:
            target = safe_output_path(out_dir, item.relative, _CHECKED_SUFFIX)
        except ValidationError as exc:
            problems.append(InputProblem(Refusal.OUTPUT_ESCAPES, (source,), str(exc)))
            continue
        first = claimed.setdefault(target, source)
        if first != source:
            problems.append(InputProblem(Refusal.SAME_OUTPUT, (first, source)))
    return problems


def plan_inputs(inputs: Sequence[str], out_dir: Path) -> InputPlan:
    """The photos of a batch over ``inputs`` (files, and folders searched recursively)
    whose results go to ``out_dir``.

    Inputs that do not exist stop the plan before any folder is walked.

    >>> plan_inputs(["/no/such/photo.jpg"], Path("out")).problems[0].refusal
    <Refusal.MISSING: 'missing'>
    """
    problems = _missing_or_odd(inputs)
    if problems:
        return InputPlan(problems=tuple(problems))
    out_root = out_dir.resolve()
    seen: set[Path] = set()
    items: list[BatchItem] = []
    unusable: list[Path] = []
    not_photos: list[Path] = []
    for item, photo in scan_inputs(inputs):
        resolved = item.path.resolve()
        if resolved == out_root or out_root in resolved.parents or resolved in seen:
            continue  # an earlier result (or the journal, the manifest), or a file given twice
        seen.add(resolved)
        if not photo:
            not_photos.append(item.path)
        elif not (_utf8(str(resolved)) and _utf8(item.relative)):
            unusable.append(item.path)
        else:
            items.append(item)
    if not items and not unusable:
        return InputPlan(
            problems=(InputProblem(Refusal.NO_IMAGES, tuple(inputs)),),
            not_photos=tuple(not_photos),
        )
    problems = _output_problems(items, out_dir)
    return InputPlan(tuple(items), tuple(unusable), tuple(problems), tuple(not_photos))
