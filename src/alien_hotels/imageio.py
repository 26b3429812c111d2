"""One way to read an image: every stage that looks at pixels (`images`, `caption`, the edit
stages and their scores) decodes files here, so a photo means the same pixels to all of them.

Whatever Pillow opens comes out as 8-bit RGB in its display orientation:

* EXIF orientation applied (phones store photos sideways);
* 16-bit, 32-bit integer and float grayscale scaled from their range to 0-255 (Pillow's own
  conversion clips instead, which turns a 16-bit PNG all white);
* palette, 1-bit, CMYK, YCbCr, LAB and HSV converted by Pillow;
* transparency (alpha, premultiplied alpha, a palette's or PNG's transparent colour)
  composited on white.

Memory: the conversions work in strips of about a million pixels with integer arithmetic (no
float64 copy of a whole image), and `max_decode_bytes` refuses an image whose decoding would
take more (`decode_bytes`, estimated from the header) before any pixel is decoded.

Formats: whatever Pillow reads, plus HEIC/HEIF (an iPhone's default) through pillow-heif's
opener, registered on import (`register_plugins`). AVIF is Pillow's own (since 11.2). For HEIF,
libheif applies the file's rotation and mirroring (`irot`/`imir`, which the format makes the
display orientation) and pillow-heif resets the EXIF orientation to 1, so it is not turned twice.

A file that cannot be used raises `ImageFailure` with one of `REASONS` and a detail message.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


@cache
def register_plugins() -> None:
    """Pillow openers beyond its own: HEIC/HEIF (pillow-heif). Every module that opens photos or
    lists their suffixes (`folders.image_suffixes`) calls it, so both agree."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


register_plugins()

REASONS = (
    "missing_file",
    "empty_file",
    "not_an_image",
    "unsupported_format",
    "too_many_pixels",
    "too_large",  # decoding would take more memory than allowed (`max_decode_bytes`)
    "corrupt_image",
)
# Modes whose values do not fit 0-255: scaled by `_to_8bit`, never clipped.
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
EXIF_ORIENTATION = 0x0112
# Pillow keeps 1, L and P in one byte a pixel, I;16* in two, every other mode in four (RGB too).
STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
STRIP_PIXELS = 1 << 20  # conversions go strip by strip: a few MB of temporaries at a time
# What `_upright` does for each EXIF orientation (as `ImageOps.exif_transpose`).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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
    max_decode_bytes: int | None = None,
    budget_name: str = "max_decode_bytes",
) -> Decoded:
    """Check and decode `source` (a path or the file's bytes); see the module docstring.

    `max_pixels`: width x height above it fails (`too_many_pixels`, named `limit_name`), read
    from the header before any pixel is decoded. `formats`: Pillow format names accepted.
    `draft_side`: a JPEG may be decoded at a reduced scale whose longer side stays >= this
    (fast: a 1600x1200 photo for a 640 side decodes at 800x600, not in full).
    `max_decode_bytes`: the memory decoding may take (`decode_bytes`, from the header, after
    the draft) or `too_large`, named `budget_name`, before any pixel is decoded.
    """
    with _opened(source, max_pixels, formats, limit_name) as img:
        size = img.size
        if _family(img.format) == "JPEG" and draft_side:
            # The box is the image scaled to `draft_side` on its longer side (either orientation:
            # a 90-degree EXIF turn keeps the longer side); `draft` keeps both sides >= the box.
            longer = max(size)
            img.draft("RGB", tuple(-(-draft_side * side // longer) for side in size))
        if max_decode_bytes is not None:
            need = decode_bytes(img.mode, img.size, _may_turn(img))
            if need > max_decode_bytes:
                width, height = img.size
                raise ImageFailure(
                    "too_large",
                    f"decoding {width}x{height} {img.mode} takes ~{need >> 20} MiB, over "
                    f"{budget_name} ({max_decode_bytes >> 20} MiB)",
                )
        img.load()
        orientation = _orientation(img)
        transparent = img.mode in ALPHA_MODES or "transparency" in img.info
        fmt, mode = img.format, img.mode
        # 8 bits, then RGB, then turned: the same pixels as turning first (a turn only moves
        # them), but each step frees the one before (a 16-bit image's pixels before its RGB).
        eight = _to_8bit(img) if mode in HIGH_DEPTH_MODES else img
        if eight is not img:
            img.close()
        rgb = to_rgb(eight)
        if rgb is not eight:
            eight.close()
        upright = _upright(rgb, orientation)
        return Decoded(upright, fmt, mode, size, orientation, transparent)


def decode_bytes(mode: str, size: tuple[int, int], turned: bool = False) -> int:
    """The most memory `decode` holds for an image of this mode and size, in bytes: the file's
    pixels, an RGBA copy (premultiplied `La`; alpha and a transparent colour are composited in
    strips), the RGB result (four bytes a pixel in Pillow); a high-depth image is first reduced
    to an 8-bit copy (its pixels are freed before the RGB is made); a `turned` image needs the
    RGB twice. Strip temporaries (a few MB) are left out."""
    per_pixel = STORED_BYTES.get(mode, 4)
    if mode in HIGH_DEPTH_MODES:  # the file's pixels and the 8-bit copy, then that copy and RGB
        per_pixel = max(per_pixel + 1, 1 + 4)
        return max(per_pixel, 8 if turned else 0) * size[0] * size[1]
    if mode == "La":
        per_pixel += 4
    if mode != "RGB":
        per_pixel += 4
    if turned:
        per_pixel = max(per_pixel, 8)
    return per_pixel * size[0] * size[1]


def _may_turn(img: Image.Image) -> bool:
    """Whether the EXIF orientation may turn the image, from what the header holds. Not
    `getexif()`: a PNG's decodes the whole image to look for an `eXIf` chunk after the pixels,
    so a PNG without one before them counts as turned."""
    data = img.info.get("exif")
    if not data:
        return img.format == "PNG"
    try:
        exif = Image.Exif()
        exif.load(data)
        return int(exif.get(EXIF_ORIENTATION, 1)) in TRANSPOSE
    except (ValueError, TypeError, SyntaxError, OSError):  # unreadable: no turn (`_orientation`)
        return False


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
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        return _on_white(img)  # a palette's or PNG's transparent colour is alpha too
    return img if img.mode == "RGB" else img.convert("RGB")


def _strips(size: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    """Boxes of whole rows, about `STRIP_PIXELS` each, top to bottom."""
    width, height = size
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield 0, top, width, min(height, top + rows)


def _on_white(img: Image.Image) -> Image.Image:
    """Composited on white, strip by strip: no full-size RGBA copy or background."""
    out = Image.new("RGB", img.size)
    for box in _strips(img.size):
        part = img.crop(box).convert("RGBA")  # the crop keeps a palette and its transparency
        background = Image.new("RGBA", part.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(background, part).convert("RGB"), box[:2])
    return out


# 16-bit value -> 8 bits, rounded: (v + 128) // 257 == round(v / 257) (v / 257 is never x.5).
_BY_257 = ((np.arange(1 << 16) + 128) // 257).astype(np.uint8)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / int32 / float grayscale to 8 bits by scaling the type's range (no clipping).

    In strips, integers through a table (float only for `F`, in its own float32): a 7999x7999
    16-bit PNG took 1.8 GB as one float64 array."""
    mode = img.mode
    if mode == "F":
        lo, hi = np.inf, -np.inf
        for box in _strips(img.size):
            part = np.asarray(img.crop(box))
            finite = part[np.isfinite(part)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        if lo > hi:  # nothing finite
            lo, hi = 0.0, 1.0
    elif mode == "I":
        lo, hi = img.getextrema()
    out = Image.new("L", img.size)
    for box in _strips(img.size):
        part = np.asarray(img.crop(box))
        if mode == "F":
            scaled = (np.nan_to_num(part, nan=lo) - lo) / (hi - lo or 1.0) * 255.0
            eight = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        elif mode == "I" and hi > 65535:  # scaled by its maximum, rounded half up
            wide = np.clip(part.astype(np.int64), 0, None)
            eight = ((wide * 510 + hi) // (2 * hi)).astype(np.uint8)
        else:  # 0..65535 -> 0..255 (`I` within 16 bits too; negatives are 0)
            eight = _BY_257[np.clip(part, 0, 65535)]
        out.paste(Image.fromarray(eight), box[:2])
    return out


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except (ValueError, TypeError, SyntaxError, OSError):  # unreadable EXIF: pixels still good
        return 1
    return value if 1 <= value <= 8 else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    method = TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


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
