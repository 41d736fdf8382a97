"""Which photos a batch processes (``ailab_async.batch._inputs.plan_inputs``): inputs checked,
walked and filtered, and the refusals answered as data. The CLI tests check the wording."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ailab_async.batch._inputs import InputPlan, InputProblem, Refusal, plan_inputs


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"photo")
    return path


def names(plan: InputPlan) -> list[str]:
    return [item.relative for item in plan.items]


def test_files_and_folders_become_items_in_order(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "b.jpg")
    touch(tmp_path / "in" / "sub" / "a.PNG")
    touch(tmp_path / "in" / "notes.txt")
    single = touch(tmp_path / "single.bmp")
    plan = plan_inputs([str(tmp_path / "in"), str(single)], tmp_path / "out")
    assert not plan.refused
    assert names(plan) == ["in/b.jpg", "in/sub/a.PNG", "single.bmp"]
    assert plan.unusable == ()


def test_results_in_the_output_folder_and_repeats_are_not_inputs(tmp_path: Path) -> None:
    photo = touch(tmp_path / "in" / "a.jpg")
    touch(tmp_path / "in" / "out" / "in" / "a_jpg.jpg")  # an earlier run's result
    plan = plan_inputs([str(tmp_path / "in"), str(photo)], tmp_path / "in" / "out")
    assert names(plan) == ["in/a.jpg"]


@pytest.mark.parametrize(
    ("make", "refusal"),
    [
        (lambda root: root / "missing.jpg", Refusal.MISSING),
        (lambda root: root, Refusal.NO_IMAGES),  # an empty folder
    ],
)
def test_inputs_that_make_no_batch_are_refused(
    tmp_path: Path, make: object, refusal: Refusal
) -> None:
    given = str(make(tmp_path))  # type: ignore[operator]
    plan = plan_inputs([given], tmp_path / "out")
    assert plan.refused
    assert plan.problems == (InputProblem(refusal, (given,)),)
    assert plan.items == ()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_before_any_folder_is_walked(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    touch(tmp_path / "in" / "a.jpg")
    plan = plan_inputs([str(tmp_path / "in"), str(fifo), str(tmp_path / "gone")], tmp_path / "o")
    assert [problem.refusal for problem in plan.problems] == [
        Refusal.NOT_FILE_OR_DIRECTORY,
        Refusal.MISSING,
    ]
    assert plan.items == ()


def test_two_inputs_that_would_write_one_output_refuse_the_batch(tmp_path: Path) -> None:
    first = touch(tmp_path / "a" / "p.jpg")
    second = touch(tmp_path / "b" / "p.jpg")
    third = touch(tmp_path / "c" / "q.jpg")
    plan = plan_inputs([str(first), str(second), str(third)], tmp_path / "out")
    assert plan.problems == (InputProblem(Refusal.SAME_OUTPUT, (str(first), str(second))),)
    # Their folders keep them apart.
    plan = plan_inputs([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "out")
    assert not plan.refused


def test_an_output_that_would_escape_through_a_link_refuses_the_batch(tmp_path: Path) -> None:
    photo = touch(tmp_path / "in" / "a.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "in").symlink_to(tmp_path / "elsewhere")
    plan = plan_inputs([str(tmp_path / "in")], tmp_path / "out")
    [problem] = plan.problems
    assert (problem.refusal, problem.inputs) == (Refusal.OUTPUT_ESCAPES, (str(photo),))
    assert "escape" in problem.detail


def test_names_that_are_not_utf8_are_set_aside(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "good.jpg")
    bad = touch(tmp_path / "in" / os.fsdecode(b"bad\xff.jpg"))
    plan = plan_inputs([str(tmp_path / "in")], tmp_path / "out")
    assert names(plan) == ["in/good.jpg"]
    assert plan.unusable == (bad,)
    assert not plan.refused
    # Only unusable names: not refused for want of images, every one is reported.
    (tmp_path / "in" / "good.jpg").unlink()
    plan = plan_inputs([str(tmp_path / "in")], tmp_path / "out")
    assert (plan.items, plan.unusable, plan.refused) == ((), (bad,), False)


def test_files_in_folders_that_are_not_photos_are_named_not_dropped(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.JPEG")
    notes = touch(tmp_path / "in" / "notes.txt")
    raw = touch(tmp_path / "in" / "sub" / "b.cr2")
    no_suffix = touch(tmp_path / "in" / "README")
    (tmp_path / "in" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # not a regular file
    given = touch(tmp_path / "given.txt")  # given by name: taken as it is
    out = tmp_path / "in" / "out"
    touch(out / "manifest.jsonl")  # the output folder's own files are neither
    plan = plan_inputs([str(tmp_path / "in"), str(given), str(tmp_path / "in")], out)
    assert names(plan) == ["in/a.JPEG", "given.txt"]
    assert plan.not_photos == (
        tmp_path / "in" / "README",
        tmp_path / "in" / "gone.jpg",
        notes,
        raw,
    )  # each once, although the folder was given twice
    assert no_suffix in plan.not_photos


def test_a_folder_of_other_files_is_refused_and_its_files_named(tmp_path: Path) -> None:
    notes = touch(tmp_path / "in" / "notes.txt")
    plan = plan_inputs([str(tmp_path / "in")], tmp_path / "out")
    assert [problem.refusal for problem in plan.problems] == [Refusal.NO_IMAGES]
    assert plan.not_photos == (notes,)
