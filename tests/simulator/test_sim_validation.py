"""Every documented server-side rule answers with its documented status and code."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from ailab_async.testing.simulator import SMART_SKIN_RULES, Credits, SimulatorConfig, sample_image
from ailab_async.testing.simulator._validation import Rejection, parse_degree, sniff_format
from tests.simulator._helpers import SimFactory


def encode(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def portrait(width: int, height: int, fmt: str = "JPEG") -> bytes:
    return sample_image(width, height, seed=3, fmt=fmt)


# --------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0rest", "JPEG"),
        (b"\x89PNG\r\n\x1a\nrest", "PNG"),
        (b"BM" + b"\x00" * 30, "BMP"),
        (b"GIF89a....", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"hello", None),
        (b"", None),
    ],
)
def test_format_is_sniffed_from_content(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


@pytest.mark.parametrize("raw", ["1.6", "-0.1", "abc", "nan", "inf"])
def test_degree_out_of_range_is_invalid_parameter(raw: str) -> None:
    result = parse_degree("retouch_degree", raw, 1.0, 1.5)
    assert isinstance(result, Rejection)
    assert (result.status, result.code) == (400, "ERROR_INVALID_PARAMETER")


@pytest.mark.parametrize(("raw", "value"), [(None, 1.0), ("", 1.0), ("0", 0.0), ("1.5", 1.5)])
def test_degree_bounds_are_inclusive(raw: str | None, value: float) -> None:
    assert parse_degree("retouch_degree", raw, 1.0, 1.5) == value


# --------------------------------------------------------------------------- over HTTP


async def test_missing_or_bad_key_is_user_not_exists(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    for key in (None, "", "sim-key-999"):
        answer = await api.skin(face, key=key)
        assert (answer.status, answer.code) == (401, "ERROR_USER_NOT_EXISTS")
    answer = await api.credits(key=None)
    assert (answer.status, answer.code) == (401, "ERROR_USER_NOT_EXISTS")


async def test_configured_and_extra_keys_authenticate(make_sim: SimFactory) -> None:
    api = await make_sim(SimulatorConfig(api_key="k-one", extra_api_keys=("k-two",)))
    assert (await api.credits(key="k-one")).status == 200
    assert (await api.credits(key="k-two")).status == 200
    assert (await api.credits(key="sim-key-000")).status == 401


async def test_missing_fields_are_missing_parameters(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    assert (await api.skin(None)).code == "MISSING_PARAMETERS"
    assert (await api.beauty(None)).code == "MISSING_PARAMETERS"
    no_type = await api.beauty(face, task_type=None)
    assert (no_type.status, no_type.code) == (400, "MISSING_PARAMETERS")
    async with api.session.post(
        api.sim.url + "/api/portrait/effects/smart-skin",
        json={"image": "x"},
        headers={"ailabapi-api-key": api.sim.api_key},
    ) as response:
        assert response.status == 400


async def test_wrong_task_type_is_invalid_parameter(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    answer = await api.beauty(face, task_type="later")
    assert (answer.status, answer.code) == (400, "ERROR_INVALID_PARAMETER")


@pytest.mark.parametrize(
    ("field", "value"),
    [("retouch_degree", 1.51), ("whitening_degree", -0.5), ("retouch_degree", "lots")],
)
async def test_skin_degree_range(
    make_sim: SimFactory, face: bytes, field: str, value: object
) -> None:
    api = await make_sim()
    fields: dict[str, Any] = {field: value}
    answer = await api.skin(face, **fields)
    assert (answer.status, answer.code) == (400, "ERROR_INVALID_PARAMETER")


async def test_beauty_level_range(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    assert (await api.beauty(face, beauty_level=1.0)).status == 200
    answer = await api.beauty(face, beauty_level=1.01)
    assert (answer.status, answer.code) == (400, "ERROR_INVALID_PARAMETER")


async def test_format_is_judged_by_content_not_filename(make_sim: SimFactory) -> None:
    api = await make_sim()
    png = portrait(200, 200, "PNG")
    assert (await api.skin(png, filename="face.gif")).status == 200
    gif = encode(Image.open(io.BytesIO(png)).convert("P"), "GIF")
    answer = await api.skin(gif, filename="face.jpg")
    assert (answer.status, answer.code) == (415, "UNSUPPORTED_FILE_TYPES")
    text = await api.skin(b"just some text, no image", filename="face.png")
    assert (text.status, text.code) == (415, "UNSUPPORTED_FILE_TYPES")


async def test_bmp_is_for_smart_beauty_only(make_sim: SimFactory) -> None:
    api = await make_sim()
    bmp = portrait(200, 200, "BMP")
    assert (await api.skin(bmp)).code == "UNSUPPORTED_FILE_TYPES"
    assert (await api.beauty(bmp)).status == 200


async def test_byte_size_limits(make_sim: SimFactory) -> None:
    api = await make_sim()
    jpeg = portrait(200, 200)
    # A valid JPEG padded after its end marker: decodable, but too many bytes.
    over_6mb = jpeg + b"\x00" * (6 * 1024 * 1024 + 1 - len(jpeg))
    answer = await api.skin(over_6mb)
    assert (answer.status, answer.code) == (413, "FILE_SIZE_EXCEEDS_LIMIT")
    over_5mb = jpeg + b"\x00" * (5 * 1024 * 1024 + 1 - len(jpeg))
    assert (await api.skin(over_5mb)).status == 200  # smart-skin allows 6 MiB
    answer = await api.beauty(over_5mb)
    assert (answer.status, answer.code) == (413, "FILE_SIZE_EXCEEDS_LIMIT")


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ((129, 129), True),
        ((128, 300), False),
        ((300, 128), False),
        ((4999, 140), True),
        ((5000, 140), False),
    ],
)
async def test_smart_skin_resolution_bounds(
    make_sim: SimFactory, size: tuple[int, int], ok: bool
) -> None:
    api = await make_sim()
    answer = await api.skin(portrait(*size))
    if ok:
        assert answer.status == 200
    else:
        assert (answer.status, answer.code) == (413, "FILE_RESOLUTION_EXCEEDS_LIMITS")


@pytest.mark.parametrize(
    ("size", "ok"), [((4095, 64), True), ((64, 4096), False), ((16, 16), True)]
)
async def test_smart_beauty_resolution_bounds(
    make_sim: SimFactory, size: tuple[int, int], ok: bool
) -> None:
    api = await make_sim()
    answer = await api.beauty(portrait(*size))
    if ok:
        assert answer.status == 200
    else:
        assert (answer.status, answer.code) == (413, "FILE_RESOLUTION_EXCEEDS_LIMITS")


async def test_undecodable_images(make_sim: SimFactory) -> None:
    api = await make_sim()
    jpeg = portrait(300, 300)
    truncated = jpeg[: len(jpeg) // 3]
    answer = await api.skin(truncated)
    assert (answer.status, answer.code) == (422, "FILE_DECODING_FAILURE")
    garbage_png = b"\x89PNG\r\n\x1a\n" + b"\x13" * 500
    answer = await api.skin(garbage_png)
    assert (answer.status, answer.code) == (422, "FILE_DECODING_FAILURE")


async def test_blank_image_has_no_face(make_sim: SimFactory) -> None:
    api = await make_sim()
    blank = encode(Image.new("RGB", (300, 300), (200, 170, 150)), "PNG")
    answer = await api.skin(blank)
    assert (answer.status, answer.code) == (422, "ERROR_NO_FACE_IN_FILE")
    assert (await api.beauty(blank)).code == "ERROR_NO_FACE_IN_FILE"


async def test_blank_detection_can_be_switched_off(make_sim: SimFactory) -> None:
    api = await make_sim(SimulatorConfig(blank_is_no_face=False))
    blank = encode(Image.new("RGB", (300, 300), (200, 170, 150)), "PNG")
    assert (await api.skin(blank)).status == 200


async def test_rejected_uploads_are_not_billed(make_sim: SimFactory) -> None:
    api = await make_sim(SimulatorConfig(credits=Credits(5)))
    await api.skin(b"not an image")
    await api.skin(portrait(100, 100))
    await api.beauty(portrait(64, 64), beauty_level=3)
    assert api.sim.balance() == 5
    assert api.stats.credits_spent == 0
    assert not api.stats.submits_per_image


def test_documented_skin_rules() -> None:
    assert SMART_SKIN_RULES.formats == {"JPEG", "PNG"}
    assert SMART_SKIN_RULES.max_bytes == 6 * 1024 * 1024


async def test_malformed_multipart_is_error_parameters(make_sim: SimFactory) -> None:
    api = await make_sim()
    async with api.session.post(
        api.sim.url + "/api/portrait/effects/smart-skin",
        data=b"garbage without any boundary",
        headers={
            "Content-Type": "multipart/form-data; boundary=XYZ",
            "ailabapi-api-key": api.sim.api_key,
        },
    ) as response:
        assert response.status == 400
        assert (await response.json())["error_detail"]["code"] == "ERROR_PARAMETERS"
