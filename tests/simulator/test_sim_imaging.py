"""The simulator really processes images: higher degrees change them more, deterministically."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, ImageFilter, ImageStat

from ailab_async.testing.simulator import sample_image
from ailab_async.testing.simulator._imaging import beautify, decode_image
from tests.simulator._helpers import SimFactory


def high_frequency_energy(png: bytes) -> float:
    """Mean edge strength: how much fine texture is left."""
    with Image.open(io.BytesIO(png)) as img:
        edges = img.convert("L").filter(ImageFilter.FIND_EDGES)
        return float(ImageStat.Stat(edges).mean[0])


def mean_luminance(png: bytes) -> float:
    with Image.open(io.BytesIO(png)) as img:
        return float(ImageStat.Stat(img.convert("L")).mean[0])


def process(retouch: float, whitening: float, source: bytes | None = None) -> bytes:
    decoded = decode_image(source or sample_image(200, 200, seed=4))
    assert decoded is not None
    return beautify(decoded, retouch, whitening)


def test_sample_image_is_deterministic_and_in_the_asked_format() -> None:
    assert sample_image(300, 200, seed=9) == sample_image(300, 200, seed=9)
    assert sample_image(300, 200, seed=9) != sample_image(300, 200, seed=10)
    for fmt in ("JPEG", "PNG", "BMP"):
        with Image.open(io.BytesIO(sample_image(300, 200, fmt=fmt))) as img:
            assert img.format == fmt
            assert img.size == (300, 200)


def test_more_retouch_leaves_less_texture() -> None:
    energies = [high_frequency_energy(process(r, 0.0)) for r in (0.0, 0.5, 1.0, 1.5)]
    assert energies == sorted(energies, reverse=True)
    assert energies[-1] < energies[0] * 0.7


def test_more_whitening_is_brighter() -> None:
    levels = [mean_luminance(process(0.0, w)) for w in (0.0, 0.5, 1.0, 1.5)]
    assert levels == sorted(levels)
    assert levels[-1] > levels[0] + 20


def test_processing_is_deterministic_and_keeps_resolution() -> None:
    assert process(0.7, 0.3) == process(0.7, 0.3)
    with Image.open(io.BytesIO(process(0.7, 0.3))) as img:
        assert img.size == (200, 200)


async def test_smart_skin_result_reflects_the_degrees(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    results = {}
    for degree in (0.0, 1.5):
        url = (await api.skin(face, retouch_degree=degree, whitening_degree=degree)).json["data"][
            "image_url"
        ]
        results[degree] = (await api.fetch(url)).raw
    assert high_frequency_energy(results[1.5]) < high_frequency_energy(results[0.0])
    assert mean_luminance(results[1.5]) > mean_luminance(results[0.0])


async def test_beauty_level_scales_the_effect(make_sim: SimFactory, face: bytes) -> None:
    api = await make_sim()
    images = {}
    for level in (0.0, 0.5, 1.0):
        answer = await api.beauty(face, task_type="sync", beauty_level=level)
        images[level] = base64.b64decode(answer.json["data"]["image"])
    energy = [high_frequency_energy(images[level]) for level in (0.0, 0.5, 1.0)]
    light = [mean_luminance(images[level]) for level in (0.0, 0.5, 1.0)]
    assert energy == sorted(energy, reverse=True)
    assert light == sorted(light)


async def test_same_upload_and_degrees_give_the_same_result_bytes(
    make_sim: SimFactory, face: bytes
) -> None:
    api = await make_sim()
    first = (await api.skin(face, retouch_degree=0.4)).json["data"]["image_url"]
    second = (await api.skin(face, retouch_degree=0.4)).json["data"]["image_url"]
    assert first != second  # distinct result URLs
    assert (await api.fetch(first)).raw == (await api.fetch(second)).raw


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_colour_mode_is_processed(mode: str) -> None:
    with Image.open(io.BytesIO(sample_image(150, 150, fmt="PNG"))) as img:
        converted = img.convert(mode)
    out = io.BytesIO()
    converted.save(out, format="JPEG" if mode == "CMYK" else "PNG")
    assert process(1.0, 1.0, out.getvalue()).startswith(b"\x89PNG")
