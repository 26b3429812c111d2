"""`data=folder`: your own photos as a `<hotel>/[<room type>/]<image>` tree (issue 18 §1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alien_hotels.common import StageError
from alien_hotels.config import ConfigError, Params
from alien_hotels.datasets import folder as folders
from alien_hotels.datasets import read_dataset
from alien_hotels.sampling import sample_hotels
from alien_hotels.stages import images as images_stage
from alien_hotels.stages import sample as sample_stage
from alien_hotels.stages.paths import StagePaths
from conftest import compose, run, subprocess_env

# hotel folder -> its images (paths below the hotel folder); CORRUPT is no image
HOTELS = {
    "Hôtel Étoile": [
        "Chambre double/photo 1.JPG",
        "Chambre double/vue mer.Jpeg",
        "Chambre double/2019/été.jpg",  # below the room-type level: room type "Chambre double"
        "Salle de bain/bain.PNG",
        "hall.webp",  # no room-type folder
    ],
    "Sea View Inn": ["room 1.jpg", "room 2.jpeg", "room 3.png", "broken.jpg"],
    "東京ホテル": ["客室/a.jpg", "客室/b.jpg", "ロビー/c.png"],
}
CORRUPT = "Sea View Inn/broken.jpg"


def _photo(path: Path, seed: int, fmt: str | None = None, size=(24, 32)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    suffix = path.suffix.lower()
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[suffix]
    Image.fromarray(pixels).save(path, format=fmt)


def make_tree(root: Path, hotels: dict[str, list[str]] = HOTELS) -> Path:
    """The photo tree, with everything a real folder of photos holds besides photos."""
    n = 0
    for hotel, files in hotels.items():
        for rel in files:
            path = root / hotel / rel
            if f"{hotel}/{rel}" == CORRUPT:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
            else:
                _photo(path, seed=n)
            n += 1
    (root / "Empty Hotel").mkdir()  # a hotel folder without images
    (root / "Sea View Inn/Suite").mkdir()  # a room-type folder without images
    (root / "Sea View Inn/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Sea View Inn/._room 1.jpg").write_bytes(b"\0\5\26\7")  # macOS AppleDouble
    (root / "Sea View Inn/notes.txt").write_text("check-in 14:00")
    (root / "Hôtel Étoile/Thumbs.db").write_bytes(b"\0")
    _photo(root / ".thumbnails/Sea View Inn/x.jpg", seed=99)  # a hidden folder
    (root / "index.csv").write_text("not a hotel\n")  # a file beside the hotel folders
    # a name that is no UTF-8 (Linux allows any bytes): it could not go into the CSVs
    with open(os.fsencode(root / "Sea View Inn") + b"/room \xff.jpg", "wb") as fh:
        fh.write(b"\xff\xd8")
    return root


def folder_cfg(root: Path, **changes):
    return compose("data=folder").data.updated(path=str(root), images_dir=str(root), **changes)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "photos")


def test_compose_points_images_dir_at_the_tree():
    data = compose("data=folder", "data.path=/srv/photos").data
    assert (data.format, data.path, data.images_dir) == ("folder", "/srv/photos", "/srv/photos")
    assert data.n_hotels is None and data.caption_column is None


def test_scan_finds_every_image_and_counts_the_rest(tree: Path):
    rows, counts = folders.scan(tree)
    expected = sorted(f"{h}/{f}" for h, files in HOTELS.items() for f in files)
    assert sorted(rows["image_path"]) == expected
    room = dict(zip(rows["image_path"], rows["room_type_folder"], strict=True))
    assert room["Hôtel Étoile/Chambre double/2019/été.jpg"] == "Chambre double"
    assert room["Hôtel Étoile/Salle de bain/bain.PNG"] == "Salle de bain"
    assert room["Hôtel Étoile/hall.webp"] == "" and room["Sea View Inn/room 1.jpg"] == ""
    assert room["東京ホテル/ロビー/c.png"] == "ロビー"
    assert set(rows["hotel_name"]) == set(HOTELS)
    assert counts == {
        "folder_hotel_folders": 4,
        "folder_images": 12,
        "folder_images_below_room_type": 1,
        "folder_hotels_without_images": 1,
        "folder_skipped_empty_folders": 1,
        "folder_skipped_hidden": 3,  # .DS_Store, ._room 1.jpg, .thumbnails/
        "folder_skipped_not_image": 2,  # notes.txt, Thumbs.db
        "folder_skipped_top_level_files": 1,
        "folder_skipped_bad_name": 1,
        "folder_skipped_symlink_loops": 0,
        "folder_skipped_external_symlinks": 0,
    }


def test_every_suffix_pillow_opens_in_any_case(tmp_path: Path):
    suffixes = folders.image_suffixes()
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} <= suffixes
    assert ".pdf" not in suffixes  # Pillow writes PDFs but cannot open them
    assert not {".mpg", ".mpeg", ".h5", ".grib", ".wmf"} & suffixes  # video, stubs
    # no photos, or not decodable without Ghostscript: animations, icons, PostScript
    assert not {".fli", ".flc", ".eps", ".ps", ".ico", ".icns", ".cur"} & suffixes
    assert ".psd" in suffixes  # Pillow reads the flattened image
    for i, name in enumerate(["a.TIF", "b.Bmp", "c.GIF", "d.jpE"]):
        fmt = {"TIF": "TIFF", "Bmp": "BMP", "GIF": "GIF", "jpE": "JPEG"}[name.split(".")[1]]
        _photo(tmp_path / "H" / name, seed=i, fmt=fmt)
    (tmp_path / "H/e.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "H/tour.MPG").write_bytes(b"\0\0\1\xba")
    _photo(tmp_path / "H/favicon.ICO", seed=5, fmt="ICO")
    (tmp_path / "H/logo.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    (tmp_path / "H/app.icns").write_bytes(b"icns\0\0\0\x08")
    rows, counts = folders.scan(tmp_path)
    assert sorted(rows["image_path"]) == ["H/a.TIF", "H/b.Bmp", "H/c.GIF", "H/d.jpE"]
    assert counts["folder_skipped_not_image"] == 5


def test_ids_are_fixed_values_in_any_process():
    # Fixed numbers: a change of the recipe would silently re-key every user's images.
    assert folders.hotel_id("Sea View Inn") == 2824415344222044
    assert folders.image_id("Sea View Inn/room 1.jpg", b"\0" * 20) == 1226324170635883
    code = (
        "from alien_hotels.datasets.folder import hotel_id; import unicodedata as u; "
        "print(hotel_id('東京ホテル'), hotel_id(u.normalize('NFD', 'Hôtel Étoile')))"
    )
    outs = set()
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=subprocess_env(PYTHONHASHSEED=seed),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        outs.add(tuple(out))
    # the same in processes with different hash seeds, and macOS' NFD names equal NFC ones
    assert outs == {(str(folders.hotel_id("東京ホテル")), str(folders.hotel_id("Hôtel Étoile")))}


def test_ids_survive_csv_round_trips_even_as_floats(tree: Path, tmp_path: Path):
    cfg = folder_cfg(tree)
    sample, _ = sample_hotels(read_dataset(cfg), cfg)
    assert sample["image_id"].is_unique and sample["image_id"].dtype == "int64"
    ids = pd.concat([sample["image_id"], sample["hotel_id"]])
    assert (ids > 0).all() and (ids < 2**52).all()
    # a gap in the column makes pandas read floats: still every id exact
    with_gap = pd.concat([sample[["image_id", "hotel_id"]], pd.DataFrame([{}])])
    with_gap.to_csv(tmp_path / "gap.csv", index=False)
    back = pd.read_csv(tmp_path / "gap.csv").dropna()
    assert back["image_id"].dtype == "float64"
    assert back.astype("int64")["image_id"].tolist() == sample["image_id"].tolist()
    assert back.astype("int64")["hotel_id"].tolist() == sample["hotel_id"].tolist()


def test_sample_has_the_study_columns_and_folder_ones(tree: Path):
    cfg = folder_cfg(tree)
    sample, stats = sample_hotels(read_dataset(cfg), cfg)
    assert stats.hotels_eligible == stats.hotels_sampled == 3  # n_hotels: null -> all
    assert stats.rows_kept == len(sample) == 12
    assert stats.load["folder_skipped_hidden"] == 3
    by_path = sample.set_index("image_path")
    row = by_path.loc["Hôtel Étoile/Chambre double/vue mer.Jpeg"]
    assert row["hotel_name"] == "Hôtel Étoile"
    assert row["hotel_id"] == folders.hotel_id("Hôtel Étoile")
    assert row["room_type_folder"] == "Chambre double"
    assert row["source"] == "folder" and row["url"] == ""
    assert row["image_name"] == f"{row['image_id']}.jpeg"
    assert by_path.loc["Hôtel Étoile/Salle de bain/bain.PNG", "image_name"].endswith(".png")
    sha = folders.file_sha1(tree / "Hôtel Étoile/Chambre double/vue mer.Jpeg")
    assert row["image_id"] == folders.image_id("Hôtel Étoile/Chambre double/vue mer.Jpeg", sha)


def test_sampling_knobs_and_hotel_ids(tree: Path):
    cfg = folder_cfg(tree, n_hotels=1, min_images=4, max_images=4)
    data = read_dataset(cfg)
    sample, stats = sample_hotels(data, cfg)
    assert stats.hotels_eligible == 1 and set(sample["hotel_name"]) == {"Sea View Inn"}
    two = folder_cfg(tree, n_hotels=2, seed=3)
    first, _ = sample_hotels(read_dataset(two), two)
    again, _ = sample_hotels(read_dataset(two), two)
    pd.testing.assert_frame_equal(first, again)
    assert first["hotel_id"].nunique() == 2
    tokyo = folders.hotel_id("東京ホテル")
    only = folder_cfg(tree, hotel_ids=[tokyo])
    sample, _ = sample_hotels(read_dataset(only), only)
    assert set(sample["hotel_name"]) == {"東京ホテル"} and len(sample) == 3
    with pytest.raises(StageError, match="data.n_hotels=4 but only 3 hotels"):
        sample_hotels(read_dataset(folder_cfg(tree, n_hotels=4)), folder_cfg(tree, n_hotels=4))
    with pytest.raises(StageError, match="no hotel has between data.min_images=6"):
        none = folder_cfg(tree, min_images=6, max_images=9)
        sample_hotels(read_dataset(none), none)


def test_only_the_chosen_hotels_files_are_read(tree: Path, monkeypatch):
    read: list[Path] = []
    real = folders.file_sha1
    monkeypatch.setattr(folders, "file_sha1", lambda p: read.append(p) or real(p))
    cfg = folder_cfg(tree, n_hotels=1, min_images=3, max_images=3)
    sample, _ = sample_hotels(read_dataset(cfg), cfg)
    assert {p.parent.relative_to(tree).parts[0] for p in read} == {"東京ホテル"}
    assert len(read) == len(sample) == 3


def test_bad_trees_are_clear_errors(tmp_path: Path):
    with pytest.raises(StageError, match="is not a directory"):
        read_dataset(folder_cfg(tmp_path / "nope"))
    (tmp_path / "empty/Hotel A").mkdir(parents=True)
    (tmp_path / "empty/Hotel A/notes.txt").write_text("x")
    with pytest.raises(StageError, match="no images in .*skipped: .*not_image=1") as err:
        read_dataset(folder_cfg(tmp_path / "empty"))
    # only what was skipped, and only what is not zero
    assert str(err.value).endswith(
        "skipped: folder_hotels_without_images=1, folder_skipped_not_image=1)"
    )


def test_an_empty_tree_lists_nothing_skipped(tmp_path: Path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(StageError, match="no images in") as err:
        read_dataset(folder_cfg(tmp_path / "photos"))
    assert "skipped" not in str(err.value)
    assert str(err.value).endswith("(a folder per hotel holding its photos is expected)")


def test_photos_directly_under_data_path_are_named(tmp_path: Path):
    root = tmp_path / "photos"
    for i, (name, fmt) in enumerate([("IMG_1.JPG", "JPEG"), ("b.jpeg", "JPEG"), ("c.png", "PNG")]):
        _photo(root / name, seed=i, fmt=fmt)
    (root / "notes.txt").write_text("x")
    with pytest.raises(StageError) as err:
        read_dataset(folder_cfg(root))
    message = str(err.value)
    assert "photos must sit in a folder per hotel (`<path>/<hotel>/<image>`)" in message
    assert "3 image file(s) were found directly under data.path" in message


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [("chains", "[1]", "chains"), ("image_sources", "[travel_website]", "image sources")],
)
def test_chains_and_image_sources_do_not_apply_to_a_folder(key: str, value: str, what: str):
    with pytest.raises(ConfigError) as err:
        compose("data=folder", f"data.{key}={value}")
    assert (
        f"data.{key} does not apply to data.format=folder (a photo tree has no {what}); "
        "use data.hotel_ids or data.n_hotels"
    ) in str(err.value)
    assert compose("data=folder").data.chains == []  # conf/data/folder.yaml's empty lists pass
    assert compose(f"data.{key}={value}").data  # other formats keep the filter


def _nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_hotel_folders_differing_only_in_normalisation_are_named(tmp_path: Path):
    root = tmp_path / "photos"
    _photo(root / "Hôtel Étoile/a.jpg", seed=1)
    _photo(root / _nfd("Hôtel Étoile") / "b.jpg", seed=2)  # the same hotel, copied from a Mac
    with pytest.raises(StageError) as err:
        folders.scan(root)
    message = str(err.value)
    assert "differ only in Unicode normalisation" in message
    assert "'Hôtel Étoile' (NFC)" in message and "(NFD)" in message
    assert "move the photos of the one that is not NFC into the NFC one" in message


def test_files_differing_only_in_normalisation_are_named(tmp_path: Path):
    root = tmp_path / "photos"
    _photo(root / "Inn/été.jpg", seed=1)
    (root / "Inn" / _nfd("été.jpg")).write_bytes((root / "Inn/été.jpg").read_bytes())
    cfg = folder_cfg(root)
    with pytest.raises(StageError) as err:
        sample_hotels(read_dataset(cfg), cfg)
    message = str(err.value)
    assert "'Inn/été.jpg' (NFC)" in message and "(NFD)" in message
    assert "differ only in Unicode normalisation" in message
    assert "one photo twice; remove the one that is not NFC" in message


def test_unreadable_file_is_dropped_and_counted(tree: Path, monkeypatch):
    real = folders.file_sha1

    def flaky(path: Path) -> bytes:
        if path.name == "a.jpg":
            raise PermissionError(path)
        return real(path)

    monkeypatch.setattr(folders, "file_sha1", flaky)
    cfg = folder_cfg(tree)
    sample, stats = sample_hotels(read_dataset(cfg), cfg)
    assert len(sample) == 11 and stats.load["folder_skipped_unreadable"] == 1
    assert "東京ホテル/客室/a.jpg" not in set(sample["image_path"])


def _unreadable(monkeypatch, *names: str) -> None:
    real = folders.file_sha1

    def flaky(path: Path) -> bytes:
        if path.name in names:
            raise PermissionError(path)
        return real(path)

    monkeypatch.setattr(folders, "file_sha1", flaky)


def test_unreadable_files_never_leave_a_hotel_below_min_images(tree: Path, monkeypatch, caplog):
    _unreadable(monkeypatch, "a.jpg")  # 東京ホテル: 3 files counted, 2 readable
    cfg = folder_cfg(tree, n_hotels=2, min_images=3, seed=0)
    sample, stats = sample_hotels(read_dataset(cfg), cfg)
    # the first draw takes Tokyo (seed 0); it is replaced by the hotel left
    assert "'東京ホテル': 1 of its 3 files could not be read" in caplog.text
    assert "another hotel is drawn instead" in caplog.text
    assert set(sample["hotel_name"]) == {"Hôtel Étoile", "Sea View Inn"}
    assert stats.hotels_sampled == 2 and stats.rows_kept == len(sample) == 9
    assert stats.load["folder_hotels_below_min_after_unreadable"] == 1
    assert stats.load["folder_skipped_unreadable"] == 1
    again, _ = sample_hotels(read_dataset(cfg), cfg)
    pd.testing.assert_frame_equal(sample, again)  # deterministic

    every = folder_cfg(tree, min_images=3)  # n_hotels: null, nothing to draw instead
    sample, stats = sample_hotels(read_dataset(every), every)
    assert set(sample["hotel_name"]) == {"Hôtel Étoile", "Sea View Inn"}
    assert stats.hotels_eligible == 3 and stats.hotels_sampled == 2
    assert "it is left out of the sample" in caplog.text

    three = folder_cfg(tree, n_hotels=3, min_images=3)
    with pytest.raises(StageError, match="data.n_hotels=3 but too few hotels keep"):
        sample_hotels(read_dataset(three), three)


def test_the_draw_is_unchanged_when_every_file_reads(tree: Path):
    cfg = folder_cfg(tree, n_hotels=2, min_images=3)
    sample, stats = sample_hotels(read_dataset(cfg), cfg)
    eligible = np.sort([folders.hotel_id(h) for h in HOTELS])
    expected = np.random.default_rng(42).choice(eligible, size=2, replace=False)
    assert set(sample["hotel_id"]) == set(expected)
    assert stats.load["folder_hotels_below_min_after_unreadable"] == 0


# --- symlinks: followed as ImageFolder does, loops guarded -----------------------------------


def test_a_symlinked_room_type_folder_is_followed(tmp_path: Path):
    root = tmp_path / "photos"
    _photo(root / "Inn/lobby.jpg", seed=1)
    _photo(tmp_path / "elsewhere/Suite/s1.jpg", seed=2)
    _photo(tmp_path / "elsewhere/Suite/2020/s2.png", seed=3)
    (root / "Inn/Suite").symlink_to(tmp_path / "elsewhere/Suite", target_is_directory=True)
    (root / "Annex").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a hotel
    # links out of the tree: followed only when asked (tests/test_hostile_paths.py: the default)
    rows, counts = folders.scan(root, follow_external_symlinks=True)
    room = dict(zip(rows["image_path"], rows["room_type_folder"], strict=True))
    assert room == {
        "Annex/Suite/2020/s2.png": "Suite",
        "Annex/Suite/s1.jpg": "Suite",
        "Inn/Suite/2020/s2.png": "Suite",
        "Inn/Suite/s1.jpg": "Suite",
        "Inn/lobby.jpg": "",
    }
    assert counts["folder_hotel_folders"] == 2 and counts["folder_skipped_symlink_loops"] == 0


def test_symlink_loops_are_not_entered_and_counted(tmp_path: Path):
    root = tmp_path / "photos"
    _photo(root / "Inn/Room/r.jpg", seed=1)
    (root / "Inn/Room/back").symlink_to("..", target_is_directory=True)  # loop: its hotel
    (root / "Inn/Room/top").symlink_to(root, target_is_directory=True)  # loop: data.path
    (root / "Inn/A Room").symlink_to("Room", target_is_directory=True)  # a second way in
    (root / "all").symlink_to(".", target_is_directory=True)  # data.path as a hotel
    rows, counts = folders.scan(root)
    assert rows["image_path"].tolist() == ["Inn/Room/r.jpg"]
    assert counts["folder_skipped_symlink_loops"] == 4
    assert counts["folder_hotel_folders"] == 1 and counts["folder_skipped_empty_folders"] == 0


def test_a_broken_symlinked_photo_is_unreadable(tmp_path: Path):
    root = tmp_path / "photos"
    _photo(root / "Inn/a.jpg", seed=1)
    (root / "Inn/gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (root / "Inn/Gone Room").symlink_to(tmp_path / "deleted", target_is_directory=True)
    cfg = folder_cfg(root)
    sample, stats = sample_hotels(read_dataset(cfg), cfg)
    assert sample["image_path"].tolist() == ["Inn/a.jpg"]
    assert stats.load["folder_images"] == 2 and stats.load["folder_skipped_unreadable"] == 1
    assert stats.load["folder_skipped_not_image"] == 1  # the broken folder link: a file


def _params(tree: Path) -> Params:
    params = compose("data=folder")
    return params.model_copy(update={"data": folder_cfg(tree)})


def test_images_stage_takes_the_tree_and_a_replaced_photo_is_redone(tree: Path, tmp_path: Path):
    paths = StagePaths(
        sample=tmp_path / "sample.csv",
        sample_metrics=tmp_path / "sample.json",
        images_dir=tmp_path / "images",
        images_manifest=tmp_path / "images.csv",
        images_metrics=tmp_path / "images.json",
        skipped_report=tmp_path / "skipped.csv",
    )
    params = _params(tree)
    sample_stage.run(params, paths)
    assert json.loads(paths.sample_metrics.read_text())["folder_skipped_not_image"] == 2
    metrics = images_stage.run(params, paths)
    manifest = pd.read_csv(paths.images_manifest, keep_default_na=False)
    sample = pd.read_csv(paths.sample)
    assert metrics["ok_local"] == 11 and metrics["failed"] == 1
    failed = manifest[manifest["status"] == "failed"]
    corrupt = sample.loc[sample["image_path"] == CORRUPT, "image_id"].item()
    assert failed["image_id"].tolist() == [corrupt]
    assert failed["reason"].item().startswith("local_")
    for row in manifest[manifest["status"] == "ok"].itertuples():
        stored = Path(row.path)
        assert stored.is_file() and stored.name.split(".")[0] == str(row.image_id)
        assert stored.relative_to(paths.images_dir).as_posix().isascii()  # ids, not folder names
        with Image.open(stored) as img:
            assert max(img.size) == 640  # the dataset's resizing (longer side 640)

    # Replace one photo: it gets a new id and is taken again; the rest are already there.
    replaced = "Hôtel Étoile/Chambre double/photo 1.JPG"
    old_id = sample.loc[sample["image_path"] == replaced, "image_id"].item()
    _photo(tree / replaced, seed=1234, fmt="JPEG")
    sample_stage.run(params, paths)
    again = pd.read_csv(paths.sample)
    new_id = again.loc[again["image_path"] == replaced, "image_id"].item()
    assert new_id != old_id
    assert set(again["image_id"]) - {new_id} == set(sample["image_id"]) - {old_id}
    metrics = images_stage.run(params, paths)
    assert (metrics["ok_cached"], metrics["ok_local"], metrics["failed"]) == (10, 1, 1)
    stored = {p.name.split(".")[0] for p in paths.images_dir.rglob("*.*")}
    assert str(new_id) in stored and str(old_id) not in stored  # the old copy is pruned


# --- end to end: dvc exp run on a generated photo tree, tiny models -------------------------


E2E_HOTELS = {
    "Grand Hôtel": [f"Chambre/{i} photo.JPG" for i in range(4)]
    + [f"Salle de bain/b{i}.png" for i in range(3)],
    "Sea View Inn": [f"Lobby/l{i}.Jpeg" for i in range(3)] + [f"Pool/p{i}.webp" for i in range(3)],
    "東京ホテル": [f"客室/{i}.jpg" for i in range(5)] + ["broken.jpg"],
}


@pytest.mark.slow
@pytest.mark.ml
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_exp_run_data_folder_to_map_and_edits(project: Path, tmp_path: Path):
    import torch

    from alien_hotels.testing import diffusion, interrogator

    torch.set_num_threads(1)
    caption_models = interrogator.save_tiny_models(tmp_path / "caption_models", seed=0)
    edit_models = diffusion.save_tiny_models(tmp_path / "edit_models")
    tree = project / "data/raw/hotel photos"
    n = 0
    for hotel, files in E2E_HOTELS.items():
        for rel in files:
            if rel == "broken.jpg":
                (tree / hotel).mkdir(parents=True, exist_ok=True)
                (tree / hotel / rel).write_bytes(b"\xff\xd8\xff garbage")
                continue
            _photo(tree / hotel / rel, seed=n, size=(48, 64))
            n += 1
    (tree / "Sea View Inn/.DS_Store").write_bytes(b"\0")
    (tree / "Sea View Inn/readme.txt").write_text("x")
    # DVC tracks no empty folders (a checkout drops them): a hotel folder without images
    (tree / "No Photos Yet").mkdir()
    (tree / "No Photos Yet/contract.pdf").write_bytes(b"%PDF-1.4")
    run(["dvc", "commit", "-f", "-q", "data.dvc"], project)  # the tree is tracked in data/raw
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    run([*git, "commit", "-qam", "my photos"], project)

    overrides = [
        "data=folder",
        "data.path=data/raw/hotel photos",
        *interrogator.tiny_overrides(caption_models),
        "caption.flavor_intermediate_count=48",
        "caption.max_flavors=6",
        "caption.min_flavors=2",
        "caption.progress=false",
        "caption.loader_workers=1",
        "features.n_components=2",
        "cluster.k_min=1",
        "cluster.k_max=4",
        "map.perplexity=2",
        *diffusion.tiny_edit_overrides(edit_models, steps=3, resolution=64),
        "edit.max_images=2",
        "edit.sweep.max_images=1",
        "edit.sweep.grid={strength: [0.5], guidance_scale: [1.0]}",
        "edit.imagic.max_images=0",
    ]
    exp = ["dvc", "exp", "run", *[arg for o in overrides for arg in ("-S", o)]]
    out = run(exp, project).stdout
    assert "Running stage 'sample'" in out and "Running stage 'edit@neon'" in out

    composed = (project / "params.yaml").read_text()
    assert "images_dir: data/raw/hotel photos" in composed
    sample = pd.read_csv(project / "data/interim/sample.csv")
    assert set(sample["hotel_name"]) == set(E2E_HOTELS)
    assert len(sample) == sum(map(len, E2E_HOTELS.values()))
    assert set(sample["room_type_folder"].dropna()) == {
        "Chambre",
        "Salle de bain",
        "Lobby",
        "Pool",
        "客室",
    }
    metrics = json.loads((project / "metrics/sample.json").read_text())
    assert metrics["folder_hotels_without_images"] == 1
    assert metrics["folder_skipped_hidden"] == 1 and metrics["folder_skipped_not_image"] == 2

    manifest = pd.read_csv(project / "data/interim/images.csv", keep_default_na=False)
    broken = sample.loc[sample["image_path"] == "東京ホテル/broken.jpg", "image_id"].item()
    assert manifest.set_index("image_id").loc[broken, "status"] == "failed"
    ok = manifest.loc[manifest["status"] == "ok", "image_id"]
    assert len(ok) == len(sample) - 1

    captions = pd.read_csv(project / "data/processed/captions.csv")
    assert sorted(captions["image_id"]) == sorted(ok)
    clusters = pd.read_csv(project / "data/processed/clusters.csv")
    assert set(clusters["image_id"]) == set(ok)
    assert set(clusters["hotel_name"]) == set(E2E_HOTELS)
    assert (project / "reports/cluster_map.html").stat().st_size > 0
    # the room types the clusters are scored against are the folders (room_types.source=auto)
    clustering = json.loads((project / "metrics/clustering.json").read_text())
    assert clustering["room_type_source"] == "folder" and "nmi_room_type_folder" in clustering
    # the finding with its uncertainty, retrieval, duplicates and cards exist for a folder run
    for yardstick in ("hotel", "room_type_folder", "room_type_captions"):
        measured = clustering["uncertainty"][yardstick]
        assert measured["ami_low"] <= clustering[f"ami_{yardstick}"] <= measured["ami_high"]
        assert measured["nmi_chance"] is not None and measured["ami_seed_sd"] is not None
    assert clustering["retrieval"]["hotel"]["queries"] == len(ok)
    duplicates = json.loads((project / "metrics/duplicates.json").read_text())
    assert duplicates["perceptual"]["n_images"] == len(ok)
    cards = sorted((project / "reports/clusters").glob("*.jpg"))
    assert [c.stem for c in cards] == [str(c) for c in sorted(set(clusters["cluster"]))]
    index = (project / "reports/cluster_cards.md").read_text()
    assert all(f"(clusters/{c.name})" in index for c in cards)
    room_types = pd.read_csv(project / "data/processed/room_types.csv").set_index("image_id")
    pool = sample.loc[sample["image_path"] == "Sea View Inn/Pool/p1.webp", "image_id"].item()
    assert room_types.loc[pool, "room_type"] == "Pool"
    editing = json.loads((project / "metrics/editing.json").read_text())
    for name, m in editing["recipes"].items():
        assert m["n_images"] == 2 and m["n_failed"] == 0, name
        assert len(list((project / f"data/edited/{name}").glob("*.png"))) == 2, name

    # The tree is the sample stage's dependency: a replaced photo reruns it, and only that photo
    # is taken from the tree and captioned again (a new image_id).
    replaced = "Sea View Inn/Pool/p0.webp"
    old_id = sample.loc[sample["image_path"] == replaced, "image_id"].item()
    _photo(tree / replaced, seed=777, size=(48, 64))
    status = run(["dvc", "status", "sample"], project).stdout
    assert "hotel photos" in status and "modified" in status
    again = run([*exp, "caption"], project).stdout
    assert "Running stage 'sample'" in again and "Running stage 'images'" in again
    images_metrics = json.loads((project / "metrics/images.json").read_text())
    assert images_metrics["ok_local"] == 1 and images_metrics["ok_cached"] == len(ok) - 1
    resampled = pd.read_csv(project / "data/interim/sample.csv")
    new_id = resampled.loc[resampled["image_path"] == replaced, "image_id"].item()
    captions = pd.read_csv(project / "data/processed/captions.csv")
    assert new_id != old_id and new_id in set(captions["image_id"])
    assert old_id not in set(captions["image_id"])
    captioning = json.loads((project / "metrics/captioning.json").read_text())
    assert captioning["resumed_from_checkpoint"] == len(ok) - 1
