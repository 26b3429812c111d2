"""Checking and resizing one image: `prepare_image(bytes, extension, cfg)` returns what to
store or raises `FetchError(reason)`.

Every image, local or downloaded: a real image in an allowed format, its declared pixel count
under `images.max_pixels` (from the header, before decoding), decodable by the one loader
(`imageio`) within `images.max_decode_bytes`; then resized as the dataset's download script did
(longer side `images.longer_side`). docs/images.md, "Checks on every image".
"""

from __future__ import annotations

import io

from alien_hotels import imageio
from alien_hotels.images.config import ImagesConfig
from alien_hotels.images.fetch import FetchError

EXTENSION_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def prepare_image(data: bytes, extension: str, cfg: ImagesConfig) -> bytes:
    """Validate image bytes and return what to store (the input itself when nothing changes).

    Decoded by the one loader (`imageio`), so what is stored is what every later stage sees:
    upright 8-bit RGB, 16-bit images scaled, transparency on white.
    """
    from PIL import Image

    target_format = EXTENSION_FORMAT.get(extension.lower(), "JPEG")
    try:
        decoded = imageio.decode(
            data,
            max_pixels=cfg.max_pixels,
            formats=cfg.formats,
            draft_side=cfg.longer_side,  # big JPEGs decode at a reduced scale: fast
            limit_name="images.max_pixels",
            max_decode_bytes=cfg.max_decode_bytes,  # refused from the header: memory bounded
            budget_name="images.max_decode_bytes",
        )
    except imageio.ImageFailure as exc:
        raise FetchError(exc.reason, exc.detail) from None
    new_size = _resized(*decoded.display_size, cfg)
    if new_size is None and decoded.as_stored and decoded.format == target_format:
        return data
    out = decoded.image
    if new_size is not None and new_size != out.size:
        # Shrinking (what is left after the JPEG draft, under 2x): Pillow's antialiased
        # bilinear (a triangle filter over the scaled support), 2.3x faster than Lanczos here,
        # less aliasing than img2dataset's area averaging and as close to a full Lanczos; enlarging:
        # Lanczos, as img2dataset does. docs/design/images.md, "Fetching", has the measurements.
        if max(new_size) < max(out.size):
            out = out.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        else:
            out = out.resize(new_size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    options = {"quality": cfg.jpeg_quality} if target_format == "JPEG" else {}
    out.save(buffer, format=target_format, **options)
    return buffer.getvalue()


def _resized(width: int, height: int, cfg: ImagesConfig) -> tuple[int, int] | None:
    side = cfg.longer_side
    longer = max(width, height)
    if side is None or longer == side or (longer < side and not cfg.upscale):
        return None
    if width >= height:
        return side, max(1, round(side * height / width))
    return max(1, round(side * width / height)), side
