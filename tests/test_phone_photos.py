"""Photos as phones make them (issue 24 §4): HEIC (an iPhone's default) and AVIF read, turned
upright and stored as JPEG; every file left out or failed named with its path in
reports/skipped.csv and the first few in the log."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alien_hotels.datasets import folder as folders
from alien_hotels.stages import images as images_stage
from alien_hotels.stages import sample as sample_stage
from alien_hotels.stages.paths import StagePaths
from conftest import compose

ORIENTATION = 0x0112
RED, BLUE = (255, 0, 0), (0, 0, 255)


def sideways(path: Path, fmt: str, size=(64, 48)) -> None:
    """A photo stored sideways as a phone does (EXIF orientation 6: turn 90 degrees clockwise to
    show it), with a red corner at the stored top left: upright, that corner is the top right."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = BLUE
    pixels[: height // 3, : width // 4] = RED
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "HEIF":  # written with the plugin itself, as the issue asks
        import pillow_heif

        heif = pillow_heif.from_pillow(Image.fromarray(pixels))
        heif.save(path, quality=95, exif=exif.tobytes())
    else:
        Image.fromarray(pixels).save(path, format=fmt, exif=exif.tobytes(), quality=95)


def plain(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


@pytest.fixture
def phone(tmp_path: Path) -> Path:
    """What a phone's photo folder holds: HEIC (upper-case suffix, as iPhones write it), AVIF,
    JPEGs, a 0-byte JPEG (an interrupted copy), macOS litter and notes."""
    root = tmp_path / "photos"
    sideways(root / "Grand Hôtel/Chambre/IMG_0001.HEIC", "HEIF")
    sideways(root / "Grand Hôtel/Chambre/IMG_0002.avif", "AVIF")
    plain(root / "Grand Hôtel/Chambre/IMG_0003.JPG", 1)
    plain(root / "Sea View Inn/lobby.jpg", 2)
    (root / "Sea View Inn/empty.jpg").write_bytes(b"")
    (root / "Sea View Inn/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Sea View Inn/notes.txt").write_text("check-in 14:00")
    (root / "Grand Hôtel/clip.MOV").write_bytes(b"\0\0\0\x14ftypqt  ")
    return root


def run_stages(root: Path, tmp_path: Path) -> tuple[StagePaths, dict]:
    params = compose("data=folder")
    params = params.model_copy(
        update={"data": params.data.updated(path=str(root), images_dir=str(root))}
    )
    paths = StagePaths().under(tmp_path / "project")
    sample_stage.run(params, paths)
    return paths, images_stage.run(params, paths)


def test_heic_and_avif_are_photos():
    suffixes = folders.image_suffixes()
    assert {".heic", ".heif", ".avif"} <= suffixes  # suffixes compare lower-cased


def test_heic_and_avif_are_stored_upright_as_jpeg(phone: Path, tmp_path: Path):
    paths, metrics = run_stages(phone, tmp_path)
    manifest = pd.read_csv(paths.images_manifest, keep_default_na=False)
    by_path = manifest.set_index("image_path")
    assert metrics["ok"] == 4 and metrics["failed"] == 1
    for name in ("IMG_0001.HEIC", "IMG_0002.avif"):
        row = by_path.loc[f"Grand Hôtel/Chambre/{name}"]
        assert row["status"] == "ok", row.to_dict()
        stored = Path(row["path"])
        assert stored.suffix == ".jpg"
        with Image.open(stored) as img:
            assert img.format == "JPEG" and img.getexif().get(ORIENTATION, 1) == 1
            assert img.size == (480, 640)  # upright (portrait), longer side 640
            pixels = np.asarray(img.convert("RGB")).astype(int)
        top_right, top_left = pixels[40, -40], pixels[40, 40]
        assert np.abs(top_right - RED).max() < 40, name  # the red corner turned to the right
        assert np.abs(top_left - BLUE).max() < 40, name


def test_every_file_left_out_is_named_with_its_path(phone: Path, tmp_path: Path, caplog):
    with caplog.at_level(logging.INFO, logger="alien_hotels"):
        paths, _ = run_stages(phone, tmp_path)
    sample_metrics = json.loads(paths.sample_metrics.read_text())
    assert sample_metrics["folder_skipped_not_image"] == 2  # notes.txt, clip.MOV: not .HEIC
    with open(paths.skipped_report, newline="", encoding="utf-8") as fh:
        report = list(csv.DictReader(fh))
    rows = {r["path"]: r for r in report}
    assert list(report[0]) == ["path", "reason", "detail", "stage", "image_id", "url"]
    assert rows["Sea View Inn/.DS_Store"]["reason"] == "hidden"
    assert rows["Sea View Inn/notes.txt"]["reason"] == "not_image"
    assert rows["Sea View Inn/notes.txt"]["detail"].startswith(".txt")
    assert rows["Grand Hôtel/clip.MOV"]["reason"] == "not_image"
    empty = rows["Sea View Inn/empty.jpg"]
    assert (empty["reason"], empty["stage"], empty["detail"]) == (
        "local_empty_file",
        "images",
        "0 bytes",
    )
    assert empty["image_id"].isdigit()
    assert not any("HEIC" in path or "avif" in path for path in rows)
    # the manifest's failed row names the file too, not only an id
    manifest = pd.read_csv(paths.images_manifest, keep_default_na=False)
    failed = manifest[manifest["status"] == "failed"]
    assert failed["image_path"].tolist() == ["Sea View Inn/empty.jpg"]
    log = caplog.text
    assert "Sea View Inn/.DS_Store (hidden)" in log and "Sea View Inn/notes.txt (not_image)" in log
    assert "Sea View Inn/empty.jpg local_empty_file" in log


def test_every_kind_of_skip_has_a_row(tmp_path: Path):
    """Each count of metrics/sample.json has as many rows in the skipped list."""
    root = tmp_path / "photos"
    plain(root / "Inn/a.jpg", 1)
    (root / "Inn/Suite").mkdir(parents=True)  # empty room-type folder
    (root / "Empty Hotel").mkdir()
    (root / "index.csv").write_text("x\n")  # beside the hotel folders
    plain(root / ".thumbnails/Inn/x.jpg", 2)  # a hidden folder
    (root / "Inn/up").symlink_to("..")  # a loop
    skipped: folders.Skipped = []
    _, counts = folders.scan(root, skipped=skipped)
    got = {(path, reason) for path, reason, _ in skipped}
    assert got == {
        ("Inn/Suite/", "empty_folder"),
        ("Empty Hotel/", "hotel_without_images"),
        ("index.csv", "top_level_file"),
        (".thumbnails/", "hidden"),
        ("Inn/up/", "symlink_loop"),
    }
    assert counts["folder_skipped_empty_folders"] == 1
    assert counts["folder_skipped_symlink_loops"] == 1


def test_a_name_that_is_no_utf8_is_named_escaped(tmp_path: Path):
    import os

    root = tmp_path / "photos"
    plain(root / "Inn/a.jpg", 1)
    with open(os.fsencode(root / "Inn") + b"/room \xff.jpg", "wb") as fh:
        fh.write(b"\xff\xd8")
    skipped: folders.Skipped = []
    folders.scan(root, skipped=skipped)
    assert skipped == [("Inn/room \\xff.jpg", "bad_name", folders.BAD_NAME_DETAIL)]


def test_the_report_is_spreadsheet_safe(tmp_path: Path):
    root = tmp_path / "photos"
    plain(root / "Inn/a.jpg", 1)
    (root / "=1+1").mkdir()  # a hotel folder name a spreadsheet would run as a formula
    (root / "=1+1/notes.txt").write_text("")
    paths, _ = run_stages(root, tmp_path)
    text = paths.skipped_report.read_text(encoding="utf-8")
    assert '\n"\'=1+1/notes.txt",' in text
    assert "\n=" not in text and '\n"=' not in text


def test_bundled_demo_report_is_empty(tmp_path: Path):
    """The demo skips nothing: reports/skipped.csv (git-tracked) is its header alone."""
    from conftest import ROOT

    params = compose()
    params = params.model_copy(
        update={"data": params.data.updated(path=str(ROOT / "data/bundled/hotels_sample.csv"))}
    )
    paths = StagePaths().under(tmp_path)
    sample_stage.run(params, paths)
    images_stage.run(params, paths)
    header = '"path","reason","detail","stage","image_id","url"\n'
    assert paths.skipped_report.read_text() == header
