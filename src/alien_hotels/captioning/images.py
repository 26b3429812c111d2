"""Decode and normalise images for captioning; bad files become failure reasons, not crashes.

Every image comes out as an 8-bit RGB `PIL.Image` in its display orientation (EXIF applied),
no larger than `max_side` on its longer side: CMYK, palette, grayscale, 16-bit and float images
are converted, alpha is composited on white. What cannot be decoded is reported with one of the
`REASONS` and a detail message.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

REASONS = ("missing_file", "empty_file", "not_an_image", "corrupt", "too_large")


@dataclass(frozen=True)
class Loaded:
    """One manifest row after decoding: `image` or a failure `reason` (+ `detail`)."""

    image_id: str
    path: str
    image: Image.Image | None = None
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.image is not None


def load_image(path: Path, max_side: int, max_pixels: int) -> Image.Image:
    """Decode `path` into a normalised RGB image; raise `ImageFailure` with a reason if not."""
    if not path.is_file():
        raise ImageFailure("missing_file", f"no file at {path}")
    if path.stat().st_size == 0:
        raise ImageFailure("empty_file", f"{path} has 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageFailure(
                        "too_large", f"{width}x{height} exceeds caption.max_image_pixels"
                    )
                if img.format == "JPEG":  # decode at reduced scale: fast, little memory
                    img.draft("RGB", (max_side, max_side))
                img.load()
                img = ImageOps.exif_transpose(img)
                return _normalise(img, max_side)
    except ImageFailure:
        raise
    except UnidentifiedImageError as exc:
        raise ImageFailure("not_an_image", str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise ImageFailure("too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageFailure("corrupt", f"{type(exc).__name__}: {exc}") from None


class ImageFailure(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _normalise(img: Image.Image, max_side: int) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / int32 / float grayscale to 8 bits by scaling the type's range (no clipping)."""
    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo or 1.0) * 255.0
    elif img.mode == "I" and arr.max(initial=0) > 65535:
        scaled = arr / (arr.max() / 255.0)
    else:
        scaled = arr.astype(np.float64) / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def load_row(root: Path, image_id: str, path: str, max_side: int, max_pixels: int) -> Loaded:
    try:
        image = load_image(root / path, max_side, max_pixels)
    except ImageFailure as exc:  # details name the manifest path, not where the repo lives
        detail = exc.detail.replace(str(root / path), path)
        return Loaded(image_id, path, reason=exc.reason, detail=detail)
    except Exception as exc:  # a decoder bug must not stop the run either
        return Loaded(image_id, path, reason="corrupt", detail=f"{type(exc).__name__}: {exc}")
    return Loaded(image_id, path, image=image)


def prefetch(
    items: Iterable, load: Callable[..., Loaded], workers: int, ahead: int
) -> Iterator[Loaded]:
    """`load(*item)` for each item in order, decoded by `workers` background threads at most
    `ahead` items in advance (workers=0: in the calling thread)."""
    if workers <= 0:
        for item in items:
            yield load(*item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-loader") as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(load, *item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
