"""Pre-flight image validation: format by magic bytes, size, resolution from the header."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from ailab_async._endpoints import SMART_BEAUTY_RULES, SMART_SKIN_RULES
from ailab_async._images import (
    READ_WHOLE_LIMIT,
    prepare_image,
    sniff_dimensions,
    sniff_format,
)
from ailab_async.errors import ValidationError

from .conftest import jpeg_header, png_bytes


def bmp_header(width: int, height: int) -> bytes:
    dib = struct.pack("<IiiHH", 40, width, height, 1, 24) + b"\x00" * 24
    return b"BM" + struct.pack("<IHHI", 14 + len(dib), 0, 0, 14 + len(dib)) + dib


@pytest.mark.parametrize(
    ("data", "fmt", "dims"),
    [
        (png_bytes(300, 200), "png", (300, 200)),
        (jpeg_header(640, 480), "jpeg", (640, 480)),
        # A large APP segment before the frame header must be skipped by length.
        (jpeg_header(1024, 768, app_padding=70_000 % 65_000), "jpeg", (1024, 768)),
        (bmp_header(512, -300), "bmp", (512, 300)),
    ],
)
def test_header_sniffing(data: bytes, fmt: str, dims: tuple[int, int]) -> None:
    assert sniff_format(data) == fmt
    assert sniff_dimensions(fmt, lambda off, n: data[off : off + n]) == dims


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        pytest.param(b"BM" + b"\x00" * 60, "bmp", id="bmp-dib-size-0"),
        pytest.param(
            bmp_header(512, 300)[:14] + b"\x29" + bmp_header(512, 300)[15:], "bmp", id="bmp-dib-41"
        ),
        pytest.param(bmp_header(-512, 300), "bmp", id="bmp-negative-width"),
        pytest.param(
            png_bytes(300, 200)[:11] + b"\x0c" + png_bytes(300, 200)[12:],
            "png",
            id="png-ihdr-len-12",
        ),
    ],
)
def test_headers_no_decoder_accepts_have_no_dimensions(data: bytes, fmt: str) -> None:
    assert sniff_format(data) == fmt
    assert sniff_dimensions(fmt, lambda off, n: data[off : off + n]) is None


def test_jpeg_with_fill_bytes_and_restart_markers() -> None:
    data = jpeg_header(800, 600)
    data = data[:2] + b"\xff\xff" + data[2:]  # fill bytes before a marker are legal
    assert sniff_dimensions("jpeg", lambda off, n: data[off : off + n]) == (800, 600)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\x00" * 40, "format"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 40, "format"),
        (b"hello, not an image", "format"),
        (png_bytes(128, 500), "resolution"),  # bounds are exclusive: 128 is too small
        (png_bytes(5000, 300), "resolution"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "decodable"),  # cut before the frame header
        (bmp_header(300, 300), "format"),  # BMP is fine for smart-beauty, not smart-skin
    ],
)
def test_skin_rejections_name_the_rule_and_input(data: bytes, rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        prepare_image(data, SMART_SKIN_RULES)
    assert info.value.rule == rule
    assert info.value.input == "<bytes>"
    assert "smart-skin" in str(info.value)


def test_skin_size_limit_counts_bytes_not_pixels() -> None:
    data = png_bytes(300, 300)
    big = data + b"\x00" * (6 * 1024 * 1024 - len(data) + 1)
    with pytest.raises(ValidationError) as info:
        prepare_image(big, SMART_SKIN_RULES)
    assert info.value.rule == "max_bytes"
    exact = data + b"\x00" * (6 * 1024 * 1024 - len(data))
    assert prepare_image(exact, SMART_SKIN_RULES).size == 6 * 1024 * 1024


def test_beauty_rules_differ() -> None:
    assert prepare_image(bmp_header(300, 300), SMART_BEAUTY_RULES).format == "bmp"
    assert prepare_image(png_bytes(64, 64), SMART_BEAUTY_RULES).width == 64  # no lower bound
    with pytest.raises(ValidationError, match="4096"):
        prepare_image(png_bytes(4096, 10), SMART_BEAUTY_RULES)
    over = png_bytes(200, 200) + b"\x00" * (5 * 1024 * 1024)
    with pytest.raises(ValidationError) as info:
        prepare_image(over, SMART_BEAUTY_RULES)
    assert info.value.rule == "max_bytes"


def test_format_is_read_from_content_not_filename(tmp_path: Path) -> None:
    lying = tmp_path / "face.jpg"
    lying.write_bytes(png_bytes(300, 300))
    prepared = prepare_image(lying, SMART_SKIN_RULES)
    assert prepared.format == "png"
    assert prepared.content_type == "image/png"
    text = tmp_path / "face.png"
    text.write_text("not an image")
    with pytest.raises(ValidationError) as info:
        prepare_image(str(text), SMART_SKIN_RULES)
    assert info.value.input == str(text)


def test_missing_and_directory_paths(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        prepare_image(tmp_path / "absent.png", SMART_SKIN_RULES)
    with pytest.raises(ValidationError, match="directory"):
        prepare_image(tmp_path, SMART_SKIN_RULES)


def test_large_path_input_is_not_loaded_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(png_bytes(300, 300) + bytes(READ_WHOLE_LIMIT))
    prepared = prepare_image(path, SMART_SKIN_RULES)
    assert prepared.data is None
    with prepared.open() as body:
        assert isinstance(body, io.BufferedReader)  # a handle on the file, not its bytes
        assert body.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("padding", [0, READ_WHOLE_LIMIT - len(png_bytes(300, 300))])
def test_small_path_input_is_read_once_for_its_first_attempt(tmp_path: Path, padding: int) -> None:
    # Up to the limit, the check and the read are one worker-thread hop: the first attempt
    # sends what was checked; a retry reads the file afresh (and sees any change).
    path = tmp_path / "p.png"
    content = png_bytes(300, 300) + bytes(padding)
    path.write_bytes(content)
    prepared = prepare_image(path, SMART_SKIN_RULES)
    assert (prepared.size, prepared.width, prepared.height) == (len(content), 300, 300)
    assert prepared.data is None
    path.write_bytes(content[::-1])
    assert prepared.take_first_attempt() == content
    assert prepared.take_first_attempt() is None
    with prepared.open() as body:
        assert body.read() == content[::-1]


def test_small_path_input_is_checked_like_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ValidationError) as info:
        prepare_image(path, SMART_SKIN_RULES)
    assert info.value.rule == "empty"
    assert info.value.input == str(path)


def test_file_object_is_sent_from_its_start_on_every_attempt() -> None:
    payload = png_bytes(300, 300)
    handle = io.BytesIO(b"prefix" + payload)
    handle.seek(6)
    prepared = prepare_image(handle, SMART_SKIN_RULES)
    assert prepared.size == len(payload)
    assert prepared.data == payload  # read once; every attempt sends these bytes
    with pytest.raises(TypeError, match="in memory"), prepared.open():
        pass


def test_bytes_input_is_kept_as_it_is_not_copied() -> None:
    payload = png_bytes(300, 300)
    assert prepare_image(payload, SMART_SKIN_RULES).data is payload


def test_unseekable_stream_is_buffered_once() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            chunk = self._data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    prepared = prepare_image(Pipe(png_bytes(300, 300)), SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert prepared.data == png_bytes(300, 300)


def test_text_mode_file_and_other_types_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        prepare_image(12345, SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert info.value.rule == "type"
    path = tmp_path / "t.png"
    path.write_bytes(png_bytes(300, 300))
    with path.open("r", encoding="latin-1") as text, pytest.raises(ValidationError) as info2:
        prepare_image(text, SMART_SKIN_RULES)  # type: ignore[arg-type]
    assert info2.value.rule == "type"
