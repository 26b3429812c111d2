"""One way to read an image: every stage that looks at pixels (`images`, `caption`, the edit
stages and their scores) decodes files here, so a photo means the same pixels to all of them.

Whatever Pillow opens comes out as 8-bit RGB in its display orientation:

* EXIF orientation applied (phones store photos sideways);
* 16-bit, 32-bit integer and float grayscale scaled from their range to 0-255 (Pillow's own
  conversion clips instead, which turns a 16-bit PNG all white);
* palette, 1-bit, CMYK, YCbCr, LAB and HSV converted by Pillow;
* transparency (alpha, premultiplied alpha, a palette's or PNG's transparent colour)
  composited on white.

A file that cannot be used raises `ImageFailure` with one of `REASONS` and a detail message.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

REASONS = (
    "missing_file",
    "empty_file",
    "not_an_image",
    "unsupported_format",
    "too_many_pixels",
    "corrupt_image",
)
# Modes whose values do not fit 0-255: scaled by `_to_8bit`, never clipped.
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
EXIF_ORIENTATION = 0x0112


class ImageFailure(Exception):
    """An image that cannot be used; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    """A decoded image (`image`: 8-bit RGB, upright) and what the file held."""

    image: Image.Image
    format: str | None
    mode: str
    size: tuple[int, int]  # as stored, before the EXIF orientation
    orientation: int
    transparent: bool

    @property
    def display_size(self) -> tuple[int, int]:
        return self.size[::-1] if self.orientation in (5, 6, 7, 8) else self.size

    @property
    def as_stored(self) -> bool:
        """True when `image` holds the file's own pixels (no rotation, depth or alpha change)."""
        return self.orientation == 1 and self.mode in ("RGB", "L") and not self.transparent


def decode(
    source: str | Path | bytes,
    *,
    max_pixels: int | None = None,
    formats: Collection[str] | None = None,
    draft_side: int | None = None,
    limit_name: str = "max_pixels",
) -> Decoded:
    """Check and decode `source` (a path or the file's bytes); see the module docstring.

    `max_pixels`: width x height above it fails (`too_many_pixels`, named `limit_name`), read
    from the header before any pixel is decoded. `formats`: Pillow format names accepted.
    `draft_side`: a JPEG may be decoded at a reduced scale whose longer side stays >= this
    (fast: a 1600x1200 photo for a 640 side decodes at 800x600, not in full).
    """
    with _opened(source, max_pixels, formats, limit_name) as img:
        size = img.size
        if _family(img.format) == "JPEG" and draft_side:
            # The box is the image scaled to `draft_side` on its longer side (either orientation:
            # a 90-degree EXIF turn keeps the longer side); `draft` keeps both sides >= the box.
            longer = max(size)
            img.draft("RGB", tuple(-(-draft_side * side // longer) for side in size))
        img.load()
        orientation = _orientation(img)
        transparent = img.mode in ALPHA_MODES or "transparency" in img.info
        upright = _upright(img, orientation)
        rgb = to_rgb(upright)
        return Decoded(rgb, img.format, img.mode, size, orientation, transparent)


def load_rgb(
    source: str | Path | bytes,
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    limit_name: str = "max_pixels",
) -> Image.Image:
    """The image as 8-bit upright RGB, shrunk to `max_side` on its longer side if given."""
    image = decode(source, max_pixels=max_pixels, draft_side=max_side, limit_name=limit_name).image
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: high bit depths scaled, transparency on white."""
    if img.mode in HIGH_DEPTH_MODES:
        img = _to_8bit(img)
    if img.mode == "La":  # premultiplied: Pillow only converts it to LA
        img = img.convert("LA")
    if img.mode not in ALPHA_MODES and "transparency" in img.info:
        img = img.convert("RGBA")  # a palette's or PNG's transparent colour becomes alpha
    if img.mode in ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / int32 / float grayscale to 8 bits by scaling the type's range (no clipping)."""
    arr = np.asarray(img)
    if img.mode == "F":
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(arr, nan=lo) - lo) / (hi - lo or 1.0) * 255.0
    elif img.mode == "I" and arr.max(initial=0) > 65535:
        scaled = arr / (arr.max() / 255.0)
    else:
        scaled = arr.astype(np.float64) / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except (ValueError, TypeError, SyntaxError, OSError):  # unreadable EXIF: pixels still good
        return 1
    return value if 1 <= value <= 8 else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    if orientation == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except (ValueError, TypeError, SyntaxError, OSError) as exc:
        log.debug("EXIF orientation not applied: %s", exc)
        return img


# Formats that are another's container: a phone's MPO (Multi-Picture Object: the photo as a
# JPEG, then a preview or depth map) is accepted and drafted as a JPEG. `Decoded.format` keeps
# the real name, so the stored copy is re-encoded as a plain JPEG of the first picture.
FORMAT_FAMILY = {"MPO": "JPEG"}


def _family(fmt: str | None) -> str | None:
    return FORMAT_FAMILY.get(fmt, fmt) if fmt else fmt


@contextmanager
def _opened(
    source: str | Path | bytes,
    max_pixels: int | None,
    formats: Collection[str] | None,
    limit_name: str,
) -> Iterator[Image.Image]:
    """The opened image after the header checks; decoding errors become `ImageFailure`."""
    if isinstance(source, bytes):
        if not source:
            raise ImageFailure("empty_file", "0 bytes")
        fp: Path | io.BytesIO = io.BytesIO(source)
    else:
        fp = Path(source)
        if not fp.is_file():
            raise ImageFailure("missing_file", f"no file at {fp}")
        if fp.stat().st_size == 0:
            raise ImageFailure("empty_file", f"{fp} has 0 bytes")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels is the guard; Pillow still raises its bomb error at 2x its limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if formats is not None and _family(img.format) not in formats:
                    raise ImageFailure(
                        "unsupported_format", f"{img.format} (accepted: {', '.join(formats)})"
                    )
                width, height = img.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageFailure("too_many_pixels", f"{width}x{height} exceeds {limit_name}")
                yield img
    except ImageFailure:
        raise
    except UnidentifiedImageError as exc:
        raise ImageFailure("not_an_image", str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise ImageFailure("too_many_pixels", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
        raise ImageFailure("corrupt_image", f"{type(exc).__name__}: {exc}") from None
