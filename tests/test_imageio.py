"""The one image loader (`alien_hotels.imageio`) on every mode Pillow opens, built here: each
image has a left and a right half of known colour, and the decoded RGB must match both."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alien_hotels.imageio import ImageFailure, decode, load_rgb, to_rgb

SIZE = (8, 4)
WHITE = (255, 255, 255)
RED, GREEN = (200, 30, 60), (10, 220, 90)


def halves(mode: str, left, right, **info) -> Image.Image:
    img = Image.new(mode, SIZE, left)
    img.paste(right, (SIZE[0] // 2, 0, SIZE[0], SIZE[1]))
    img.info.update(info)
    return img


def palette(mode: str, left, right, **info) -> Image.Image:
    img = halves(mode, left, right, **info)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    return img


def converted(mode: str, left=RED, right=GREEN) -> Image.Image:
    return halves("RGB", left, right).convert(mode)


def grey(v: int) -> tuple[int, int, int]:
    return (v, v, v)


# name -> (image in that mode, expected RGB of the left half, of the right half)
MODES = {
    "1": (halves("1", 0, 1), grey(0), WHITE),
    "L": (halves("L", 40, 200), grey(40), grey(200)),
    "P": (palette("P", 0, 1), (255, 0, 0), (0, 255, 0)),
    "P_transparent": (palette("P", 0, 1, transparency=1), (255, 0, 0), WHITE),
    "PA": (palette("PA", (0, 255), (1, 0)), (255, 0, 0), WHITE),
    "RGB": (halves("RGB", RED, GREEN), RED, GREEN),
    "RGB_transparent": (halves("RGB", RED, GREEN, transparency=GREEN), RED, WHITE),
    "RGBA": (halves("RGBA", (*RED, 255), (*GREEN, 0)), RED, WHITE),
    "RGBA_half": (halves("RGBA", (0, 0, 0, 255), (0, 0, 0, 128)), grey(0), grey(127)),
    "RGBa": (halves("RGBa", (*RED, 255), (0, 0, 0, 0)), RED, WHITE),
    "CMYK": (halves("CMYK", (0, 255, 255, 0), (255, 0, 255, 0)), (255, 0, 0), (0, 255, 0)),
    "YCbCr": (converted("YCbCr"), RED, GREEN),
    # LAB's 8-bit a/b axes miss saturated green: a colour inside its gamut
    "LAB": (converted("LAB", RED, (60, 160, 100)), RED, (60, 160, 100)),
    "HSV": (converted("HSV"), RED, GREEN),
    "LA": (halves("LA", (40, 255), (0, 0)), grey(40), WHITE),
    "La": (halves("La", (40, 255), (0, 0)), grey(40), WHITE),
    # 16 bits: 16448 / 257 = 64, 65535 -> 255 (Pillow's own convert would clip both to 255)
    "I;16": (halves("I;16", 16448, 65535), grey(64), WHITE),
    "I;16B": (halves("I;16B", 16448, 65535), grey(64), WHITE),
    "I;16L": (halves("I;16L", 16448, 65535), grey(64), WHITE),
    "I;16N": (halves("I;16N", 16448, 65535), grey(64), WHITE),
    "I": (halves("I", 16448, 65535), grey(64), WHITE),  # within 16 bits: the 16-bit scale
    "I_32bit": (halves("I", 50000, 200000), grey(64), WHITE),  # above: scaled by its maximum
    "F": (halves("F", -1.0, 3.0), grey(0), WHITE),  # float: its range
}

# (case, file format, mode the file reopens in): every mode a format can store
FILES = [
    ("1", "PNG", "1"),
    ("1", "TIFF", "1"),
    ("1", "BMP", "1"),
    ("L", "PNG", "L"),
    ("L", "TIFF", "L"),
    ("L", "JPEG", "L"),
    ("L", "BMP", "L"),
    ("P", "PNG", "P"),
    ("P", "TIFF", "P"),
    ("P", "GIF", "P"),
    ("P_transparent", "PNG", "P"),
    ("P_transparent", "GIF", "P"),
    ("PA", "TIFF", "PA"),
    ("RGB", "PNG", "RGB"),
    ("RGB", "TIFF", "RGB"),
    ("RGB", "JPEG", "RGB"),
    ("RGB", "WEBP", "RGB"),
    ("RGB", "BMP", "RGB"),
    ("RGB_transparent", "PNG", "RGB"),
    ("RGBA", "PNG", "RGBA"),
    ("RGBA", "TIFF", "RGBA"),
    ("RGBA", "WEBP", "RGBA"),
    ("RGBA_half", "PNG", "RGBA"),
    ("CMYK", "TIFF", "CMYK"),
    ("CMYK", "JPEG", "CMYK"),
    ("YCbCr", "TIFF", "YCbCr"),
    ("LAB", "TIFF", "LAB"),
    ("LA", "PNG", "LA"),
    ("LA", "TIFF", "LA"),
    ("I;16", "PNG", "I;16"),
    ("I;16", "TIFF", "I;16"),
    ("I;16B", "PNG", "I;16"),
    ("I;16B", "TIFF", "I;16B"),
    ("I;16L", "TIFF", "I;16"),
    ("I", "TIFF", "I"),
    ("I_32bit", "TIFF", "I"),
    ("F", "TIFF", "F"),
]
LOSSY = {"JPEG": 12, "WEBP": 12}
SLACK = {"YCbCr": 3, "LAB": 6, "HSV": 3, "RGBA_half": 1}


def assert_halves(image: Image.Image, left, right, tolerance: int) -> None:
    assert image.mode == "RGB" and image.size == SIZE
    arr = np.asarray(image, dtype=int)
    w = SIZE[0] // 2
    # one pixel in from the seam: lossy codecs blur it
    assert np.abs(arr[:, : w - 1] - left).max() <= tolerance, arr[0]
    assert np.abs(arr[:, w + 1 :] - right).max() <= tolerance, arr[0]


@pytest.mark.parametrize(("case", "fmt", "reopened"), FILES, ids=[f"{c}-{f}" for c, f, _ in FILES])
def test_every_saveable_mode_loads_as_rgb(tmp_path: Path, case: str, fmt: str, reopened: str):
    img, left, right = MODES[case]
    path = tmp_path / f"image.{fmt.lower()}"
    img.save(path, format=fmt, **({"quality": 100} if fmt in LOSSY else {}))
    with Image.open(path) as check:
        assert check.mode == reopened  # the file really holds that mode
    tolerance = LOSSY.get(fmt, SLACK.get(case, 0))
    assert_halves(load_rgb(path), left, right, tolerance)
    assert_halves(load_rgb(path.read_bytes()), left, right, tolerance)  # bytes: same pixels


@pytest.mark.parametrize("case", list(MODES))
def test_every_mode_converts_in_memory(case: str):
    img, left, right = MODES[case]
    assert img.mode == case.split("_")[0]
    assert_halves(to_rgb(img), left, right, SLACK.get(case, 0))


def test_a_16bit_png_is_not_white(tmp_path: Path):
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")  # a 16-bit grayscale PNG
    out = np.asarray(load_rgb(tmp_path / "ramp.png"))
    assert np.array_equal(out[..., 0].ravel(), np.arange(256))


def marked(size=(16, 8)) -> Image.Image:
    """Blue, with a red top-left quarter."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
    return img


@pytest.mark.parametrize(
    ("orientation", "size", "red_at", "blue_at"),
    [
        (1, (16, 8), (1, 1), (14, 6)),
        (2, (16, 8), (14, 1), (1, 1)),  # mirrored
        (3, (16, 8), (14, 6), (1, 1)),  # upside down
        (6, (8, 16), (6, 1), (1, 1)),  # stored a quarter turn anticlockwise
        (8, (8, 16), (1, 14), (1, 1)),  # stored a quarter turn clockwise
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation, size, red_at, blue_at):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    marked().save(path, quality=100, exif=exif.tobytes())
    decoded = decode(path)
    assert decoded.image.size == decoded.display_size == size
    assert decoded.as_stored is (orientation == 1)
    red = np.asarray(decoded.image.getpixel(red_at))
    blue = np.asarray(decoded.image.getpixel(blue_at))
    assert np.abs(red - (255, 0, 0)).max() < 20 and np.abs(blue - (0, 0, 255)).max() < 20


def test_large_jpegs_shrink_to_max_side(tmp_path: Path):
    marked((1200, 600)).save(tmp_path / "big.jpg")
    assert load_rgb(tmp_path / "big.jpg", max_side=300).size == (300, 150)
    assert load_rgb(tmp_path / "big.jpg").size == (1200, 600)


def test_mpo_is_accepted_and_drafted_as_a_jpeg():
    buffer = io.BytesIO()
    marked((1200, 600)).save(
        buffer, format="MPO", save_all=True, append_images=[Image.new("RGB", (1200, 600))]
    )
    decoded = decode(buffer.getvalue(), formats=["JPEG"], draft_side=300)
    assert decoded.format == "MPO" and decoded.image.size == (300, 150)  # JPEG draft: 1/4
    with pytest.raises(ImageFailure, match="MPO"):
        decode(buffer.getvalue(), formats=["PNG"])


def _png_bytes(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "kwargs", "reason", "detail"),
    [
        (None, {}, "missing_file", "no file at"),
        (b"", {}, "empty_file", "0 bytes"),
        (b"<html>not an image</html>", {}, "not_an_image", ""),
        (_png_bytes((40, 30))[:-30], {}, "corrupt_image", ""),
        (_png_bytes((40, 30)), {"max_pixels": 999, "limit_name": "a.b"}, "too_many_pixels", "a.b"),
        (_png_bytes((4, 3)), {"formats": ["JPEG"]}, "unsupported_format", "PNG"),
    ],
)
def test_unusable_files_fail_with_a_reason(tmp_path: Path, content, kwargs, reason, detail):
    path = tmp_path / "image.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageFailure) as err:
        decode(path, **kwargs)
    assert err.value.reason == reason
    assert detail in err.value.detail
