"""The image work of the simulator, done for real with Pillow (deterministically).

Pillow is an optional dependency (``pip install 'ailab-async[simulator]'``); it is imported on
first use so that the rest of the package works without it.  Every function here blocks:
callers run them off the event loop.
"""

from __future__ import annotations

import io
import random
import warnings
from types import ModuleType
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DecodedImage",
    "SimulatorDependencyError",
    "beautify",
    "decode_image",
    "looks_blank",
    "probe_size",
    "sample_image",
]

# Below this standard deviation of luminance (0-255) an image is "blank": no face in it.
_BLANK_STDDEV = 2.0
# Smoothing radius at full retouch strength, and the share of the way to white at full
# whitening strength.  Chosen so the effect is plainly visible on small test images.
_SMOOTH_RADIUS = 2.0
_MAX_LIGHTEN = 0.3


class SimulatorDependencyError(ImportError):
    """Pillow is missing: install ``ailab-async[simulator]``."""


def _pil() -> ModuleType:
    try:
        import PIL.Image  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SimulatorDependencyError(
            "the ailab-async simulator processes images with Pillow; "
            "install it with: pip install 'ailab-async[simulator]'"
        ) from exc
    return PIL.Image


@attrs.frozen
class DecodedImage:
    """A fully decoded upload, converted to RGB."""

    image: Image.Image
    source_format: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.image.size


def probe_size(data: bytes) -> tuple[int, int] | None:
    """Read only the header: ``(width, height)``, or ``None`` when it is unreadable."""
    pil = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decompression-bomb warnings: sizes are checked
            with pil.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Exception:
        return None
    return int(width), int(height)


def decode_image(data: bytes) -> DecodedImage | None:
    """Decode every pixel (so truncated or corrupt files fail here), or ``None``."""
    pil = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pil.open(io.BytesIO(data)) as img:
                fmt = str(img.format)
                img.load()
                rgb = img.convert("RGB")
    except Exception:
        return None
    return DecodedImage(rgb, fmt)


def looks_blank(decoded: DecodedImage) -> bool:
    """Whether the image is (nearly) uniform: the simulator's deterministic "no face"."""
    from PIL import ImageStat  # noqa: PLC0415

    stddev = ImageStat.Stat(decoded.image.convert("L")).stddev[0]
    return bool(stddev < _BLANK_STDDEV)


def beautify(decoded: DecodedImage, retouch_degree: float, whitening_degree: float) -> bytes:
    """Smooth by ``retouch_degree`` and lighten by ``whitening_degree`` (both in [0, 1.5]).

    Returns PNG bytes; the same input and degrees always give the same bytes.  Resolution is
    kept.  Smoothing blends a Gaussian blur into the image (weight ``retouch_degree / 1.5``);
    whitening moves every channel ``0.3 * whitening_degree / 1.5`` of the way to white.
    """
    pil = _pil()
    from PIL import ImageFilter  # noqa: PLC0415

    img = decoded.image
    smooth = min(max(retouch_degree / 1.5, 0.0), 1.0)
    if smooth > 0:
        blurred = img.filter(ImageFilter.GaussianBlur(_SMOOTH_RADIUS))
        img = pil.blend(img, blurred, smooth)
    lighten = min(max(whitening_degree / 1.5, 0.0), 1.0) * _MAX_LIGHTEN
    if lighten > 0:
        table = [round(v + (255 - v) * lighten) for v in range(256)] * 3
        img = img.point(table)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def sample_image(width: int = 512, height: int = 512, *, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A deterministic synthetic portrait: a skin-toned face with eyes, mouth and skin texture.

    ``fmt`` is a Pillow format name (``JPEG``, ``PNG``, ``BMP``, ...).  The same arguments
    always give the same bytes.

    >>> from ailab_async.testing.simulator import sample_image
    >>> sample_image(256, 256, seed=1)[:3] == b"\\xff\\xd8\\xff"
    True
    """
    pil = _pil()
    from PIL import ImageDraw, ImageFilter  # noqa: PLC0415

    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    rng = random.Random(seed)  # noqa: S311 - test imagery, not security
    background = tuple(rng.randrange(40, 200) for _ in range(3))
    skin_tones = [(241, 194, 167), (224, 172, 135), (198, 134, 97), (141, 85, 56)]
    skin = skin_tones[rng.randrange(len(skin_tones))]

    img = pil.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    cx, cy = width / 2, height / 2
    fw, fh = width * rng.uniform(0.28, 0.34), height * rng.uniform(0.36, 0.42)
    draw.ellipse((cx - fw, cy - fh, cx + fw, cy + fh), fill=skin)
    eye_y, eye_dx = cy - fh * 0.25, fw * 0.4
    eye_r = max(1.0, min(width, height) * 0.03)
    for ex in (cx - eye_dx, cx + eye_dx):
        draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=(40, 30, 30))
    mouth_y = cy + fh * 0.45
    draw.ellipse(
        (cx - fw * 0.35, mouth_y - fh * 0.06, cx + fw * 0.35, mouth_y + fh * 0.06),
        fill=(170, 70, 70),
    )
    # Skin texture: seeded noise, slightly blurred, overlaid (Pillow's own noise is unseeded).
    noise = pil.frombytes("L", (width, height), rng.randbytes(width * height))
    noise = noise.filter(ImageFilter.GaussianBlur(0.6)).convert("RGB")
    img = pil.blend(img, noise, 0.18)

    out = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        img.save(out, format="JPEG", quality=92)
    else:
        img.save(out, format=fmt.upper())
    return out.getvalue()
