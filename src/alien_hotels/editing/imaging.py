"""Pixel plumbing around the models: sizing, masks, compositing, contact sheets.

Nothing here needs torch: images are PIL images (read by the one loader, `alien_hotels.imageio`),
masks are boolean numpy arrays at the source image's size (True = edit this pixel).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from alien_hotels.common import atomic_path
from alien_hotels.imageio import ImageFailure

KEY_FIELD = "alien_hotels_key"


def model_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """Scale (w, h) so the longer side is `resolution`, both sides multiples of 8 (>= 8)."""
    w, h = size
    scale = resolution / max(w, h)
    return (max(8, round(w * scale) // 8 * 8), max(8, round(h * scale) // 8 * 8))


def prepare(img: Image.Image, resolution: int) -> Image.Image:
    size = model_size(img.size, resolution)
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


def restore(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    img = img.convert("RGB")
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean mask by a disk of radius `pixels` (exact Euclidean distance)."""
    if pixels <= 0 or not mask.any() or mask.all():
        return mask
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~mask) <= pixels


def mask_from_probs(
    probs: np.ndarray, size: tuple[int, int], threshold: float, pixels: int
) -> np.ndarray:
    """Segmentation probabilities (any resolution) -> boolean mask at `size` = (w, h)."""
    prob_img = Image.fromarray(np.asarray(probs, dtype=np.float32), mode="F")
    resized = np.asarray(prob_img.resize(size, Image.Resampling.BILINEAR))
    return dilate(resized > threshold, pixels)


def mask_from_file(path: Path, size: tuple[int, int], pixels: int) -> np.ndarray:
    """A user mask file (non-zero = edit), resized to `size` with nearest neighbour.

    Not the RGB loader: scaling would turn small 16-bit values to 0; Pillow's clipping keeps
    every non-zero value non-zero. An unreadable file raises `imageio.ImageFailure`.
    """
    try:
        with Image.open(path) as img:
            gray = img.convert("L")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageFailure("corrupt_image", f"mask {path}: {type(exc).__name__}: {exc}") from None
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.NEAREST)
    return dilate(np.asarray(gray) > 0, pixels)


def mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")


def composite(source: Image.Image, edited: Image.Image, mask: np.ndarray) -> Image.Image:
    """Edited pixels inside the mask, the exact source pixels outside it."""
    src = np.asarray(source.convert("RGB"))
    out = np.asarray(edited.convert("RGB"))
    return Image.fromarray(np.where(mask[..., None], out, src))


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def saved_key(path: Path) -> str | None:
    """The resume key stored in an edited PNG, or None if absent or unreadable."""
    try:
        with Image.open(path) as img:
            return img.info.get(KEY_FIELD)
    except (OSError, ValueError):
        return None


def save_png(img: Image.Image, path: Path, key: str) -> None:
    """Write atomically, with the resume key in a PNG text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(KEY_FIELD, key)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=info)


def contact_sheet(
    rows: list[tuple[str, Image.Image, Image.Image | None, Image.Image]],
    height: int = 192,
    title: str = "",
) -> Image.Image:
    """One row per image: original | mask (grey when none) | edited, with the image id."""
    pad, label_h = 6, 16
    if not rows:
        sheet = Image.new("RGB", (480, 60), "white")
        ImageDraw.Draw(sheet).text((pad, pad), f"{title}\nno images to edit", fill="black")
        return sheet
    thumbs = []
    for image_id, original, mask, edited in rows:
        width = max(8, round(original.width * height / original.height))
        size = (width, height)
        mask_thumb = (
            mask.convert("RGB").resize(size, Image.Resampling.NEAREST)
            if mask is not None
            else Image.new("RGB", size, (128, 128, 128))
        )
        thumbs.append(
            (
                image_id,
                [
                    original.resize(size, Image.Resampling.LANCZOS),
                    mask_thumb,
                    edited.resize(size, Image.Resampling.LANCZOS),
                ],
            )
        )
    row_w = max(sum(t.width for t in imgs) + pad * 4 for _, imgs in thumbs)
    sheet = Image.new(
        "RGB", (max(row_w, 480), label_h + len(thumbs) * (height + label_h + pad)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), f"{title}   original | mask | edited", fill="black")
    y = label_h
    for image_id, imgs in thumbs:
        draw.text((pad, y), str(image_id), fill="black")
        x = pad
        for thumb in imgs:
            sheet.paste(thumb, (x, y + label_h))
            draw.rectangle(
                (x - 1, y + label_h - 1, x + thumb.width, y + label_h + thumb.height),
                outline=(160, 160, 160),
            )
            x += thumb.width + pad
        y += height + label_h + pad
    return sheet
