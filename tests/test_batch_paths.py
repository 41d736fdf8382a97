"""Input discovery and output names (``ailab_async.batch._paths``): pure path rules, no API."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ailab_async._download import EXTENSIONS
from ailab_async.batch import discover_inputs, output_family, safe_output_path
from ailab_async.errors import ValidationError
from ailab_async.testing.simulator import sample_image

_SUFFIXES = sorted(set(EXTENSIONS.values()) | {".img"})


def make_photos(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"p{i:03d}.jpg").write_bytes(sample_image(32, 32, seed=i))


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a.jpg", "a_jpg.png"),
        ("a.png", "a.png"),
        ("dir/sub/a.JPG", "dir/sub/a_JPG.png"),
        ("../../etc/passwd", "_/_/etc/passwd.png"),
        ("/abs/path.jpg", "abs/path_jpg.png"),
        ("..\\..\\win.jpg", "_/_/win_jpg.png"),
        (".hidden.png", "_hidden.png"),
        ("we\x00ird:na<me>.png", "we_ird_na_me_.png"),
        ("", "item.png"),
        ("...", "_.png"),
    ],
)
def test_output_paths_never_escape(tmp_path: Path, relative: str, expected: str) -> None:
    path = safe_output_path(tmp_path, relative, ".png")
    assert path == tmp_path / expected
    assert tmp_path.resolve() in path.resolve().parents


def test_output_path_through_a_symlink_out_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside)
    with pytest.raises(ValidationError, match="escape"):
        safe_output_path(out, "link/a.png", ".png")


def test_discover_inputs_prefixes_directory_names_and_sorts(tmp_path: Path) -> None:
    make_photos(tmp_path / "a" / "x", 2)
    make_photos(tmp_path / "b", 1)
    (tmp_path / "b" / "skip.gif").write_bytes(b"GIF89a")
    single = tmp_path / "single.jpg"
    single.write_bytes(b"x")
    found = [item.relative for item in discover_inputs([tmp_path / "a", tmp_path / "b", single])]
    assert found == ["a/x/p000.jpg", "a/x/p001.jpg", "b/p000.jpg", "single.jpg"]


def test_over_long_names_are_shortened_by_bytes_and_stay_distinct(tmp_path: Path) -> None:
    first = "写真" * 60 + "A.jpg"  # 360+ bytes in UTF-8
    second = "写真" * 60 + "B.jpg"
    a = safe_output_path(tmp_path, first, ".png")
    b = safe_output_path(tmp_path, second, ".png")
    assert a != b
    for path in (a, b):
        assert len(path.name.encode("utf-8")) <= 180
        assert path.suffix == ".png"


_NAME_PARTS = st.text(alphabet="aA._~-/:2", min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(
    first=_NAME_PARTS, second=_NAME_PARTS, served=st.sampled_from(_SUFFIXES), n=st.integers(1, 3)
)
def test_inputs_whose_outputs_can_meet_share_an_output_family(
    first: str, second: str, served: str, n: int
) -> None:
    """What lets the Dask recipe shard journals by output family: every output one input
    can get (its path, or a ``~N`` variant of it) that another input also wants lies in a
    family they share, so one journal sees both and keeps them apart."""
    out = Path("/out")
    wanted = safe_output_path(out, first, served)
    variant = wanted if n == 1 else wanted.with_name(f"{wanted.stem}~{n}{wanted.suffix}")
    other = safe_output_path(out, second, served)
    if str(variant).casefold() == str(other).casefold():
        assert output_family(first) == output_family(second)
