"""`caption=file` (issue 24 §5): captions made elsewhere, from a CSV keyed by the photo's path in
the tree or its id, through the rest of the pipeline offline; bad files are errors naming rows."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from alien_hotels.common import StageError
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths
from conftest import ROOT, compose, run
from test_phone_photos import sideways

ROOMS = {
    "Chambre": "a bedroom with a large bed, white pillows and a wooden nightstand",
    "Salle de bain": "a bathroom with a white bathtub, a sink and a mirror on tiles",
    "Lobby": "a hotel lobby with a reception desk, armchairs and a chandelier",
}
HOTELS = ["Grand Hôtel", "Sea View Inn", "Hotel Alpina"]
TEXT_HALF = ["sample", "images", "caption", "preprocess", "room_types", "features", "cluster"]


def make_tree(root: Path) -> dict[str, str]:
    """Three hotels, a room-type folder each per room, two photos each: path -> caption."""
    captions = {}
    n = 0
    for hotel in HOTELS:
        for room, text in ROOMS.items():
            for i in range(2):
                rel = f"{hotel}/{room}/IMG_{n:04d}.jpg"
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.random.default_rng(n).integers(0, 256, (24, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, format="JPEG")
                captions[rel] = f"{text}, view {i} of {hotel.lower()}"
                n += 1
    return captions


def params_for(root: Path, captions: Path, *overrides: str) -> Params:
    params = compose(
        "data=folder",
        "caption=file",
        "features.n_components=4",  # 18 short captions: few terms
        "cluster.k=3",
        *overrides,
    )
    return params.model_copy(
        update={
            "data": params.data.updated(path=str(root), images_dir=str(root)),
            "caption": params.caption.updated(file=str(captions)),
        }
    )


def run_stages(params: Params, paths: StagePaths, names=TEXT_HALF) -> None:
    for name in names:
        importlib.import_module(f"alien_hotels.stages.{name}").run(params, paths)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "photos"
    return root, make_tree(root)


def write_captions(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_compose_file_mode():
    cfg = compose("caption=file").caption
    assert (cfg.method, cfg.file) == ("file", "data/captions/captions.csv")
    # the other modes name a stand-in that exists: the caption stage depends on caption.file
    for mode in ("precomputed", "clip_interrogator"):
        assert (ROOT / compose(f"caption={mode}").caption.file).is_file()


def test_caption_stage_depends_on_the_file():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["caption"]
    assert "${caption.file}" in stage["deps"]
    assert "data.path" in stage["params"]


def test_captions_by_path_run_through_to_clusters(tree, tmp_path: Path):
    root, captions = tree
    # NFD (as macOS tools write), `./` and Windows separators in the user's file: still found
    rows = [
        {"image_path": "./" + path.replace("/", "\\") if i == 0 else path, "caption": text}
        for i, (path, text) in enumerate(captions.items())
    ]
    rows[1]["image_path"] = rows[1]["image_path"].replace("ô", "o\u0302")
    file = write_captions(tmp_path / "captions.csv", rows)
    paths = StagePaths().under(tmp_path / "project")
    run_stages(params_for(root, file), paths)

    sample = pd.read_csv(paths.sample, keep_default_na=False)
    got = pd.read_csv(paths.captions, keep_default_na=False)
    assert list(got.columns) == [
        "image_id",
        "caption",
        "caption_mode",
        "caption_model",
        "clip_model",
    ]
    assert set(got["caption_mode"]) == {"file"} and set(got["caption_model"]) == {str(file)}
    by_path = sample.set_index("image_id")["image_path"]
    assert {by_path[i]: c for i, c in zip(got["image_id"], got["caption"], strict=True)} == captions
    metrics = json.loads(paths.caption_metrics.read_text())
    assert (metrics["method"], metrics["ok"], metrics["failed"], metrics["key"]) == (
        "file",
        18,
        0,
        "image_path",
    )
    # the rest works as with any caption source: room types from the captions and the folders
    room_types = pd.read_csv(paths.room_types, keep_default_na=False)
    assert len(room_types) == 18
    labels = pd.read_csv(paths.labels)
    assert len(labels) == 18 and labels["cluster"].nunique() == 3
    assert paths.clusters_report.is_file()


def test_captions_by_id_and_photos_without_one_are_failures(tree, tmp_path: Path, caplog):
    root, captions = tree
    paths = StagePaths().under(tmp_path / "project")
    placeholder = write_captions(tmp_path / "none.csv", [{"image_id": 1, "caption": "x"}])
    params = params_for(root, placeholder)
    run_stages(params, paths, ["sample", "images"])
    sample = pd.read_csv(paths.sample, keep_default_na=False)
    ids = sample.set_index("image_path")["image_id"]
    rows = [{"image_id": ids[p], "caption": c} for p, c in list(captions.items())[:-2]]
    rows.append({"image_id": 12345, "caption": "a photo not drawn this run"})
    file = write_captions(tmp_path / "by_id.csv", rows)
    run_stages(params_for(root, file), paths, TEXT_HALF[2:])
    got = pd.read_csv(paths.captions)
    assert len(got) == 16
    failures = pd.read_csv(paths.caption_failures, keep_default_na=False)
    assert sorted(failures["path"]) == sorted(list(captions)[-2:])  # named by path in the tree
    assert set(failures["reason"]) == {"no_caption_in_file"}
    metrics = json.loads(paths.caption_metrics.read_text())
    assert (metrics["not_in_sample"], metrics["failed"]) == (1, 2)
    assert "12345" in caplog.text
    assert len(pd.read_csv(paths.labels)) == 16


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (  # a typo: no such file under data.path
            [{"image_path": "Grand Hôtel/Chambre/IMG_9999.jpg", "caption": "a bed"}],
            r"1 image_path\(s\) are no file under data.path=.* \(line 2: "
            r"'Grand Hôtel/Chambre/IMG_9999.jpg'\)",
        ),
        (  # a path relative to the repository instead of data.path
            [{"image_path": "data/raw/photos/Grand Hôtel/Chambre/IMG_0000.jpg", "caption": "a"}],
            r"are no file under data.path",
        ),
        (  # the same photo twice
            [
                {"image_path": "Grand Hôtel/Chambre/IMG_0000.jpg", "caption": "a bed"},
                {"image_path": "Sea View Inn/Lobby/IMG_0010.jpg", "caption": "a desk"},
                {"image_path": "Grand Hôtel/Chambre/IMG_0000.jpg", "caption": "a bed again"},
            ],
            r"1 photo\(s\) have more than one row \(line 2: .*IMG_0000.jpg'; line 4: ",
        ),
        (  # an empty caption
            [
                {"image_path": "Grand Hôtel/Chambre/IMG_0000.jpg", "caption": "a bed"},
                {"image_path": "Grand Hôtel/Chambre/IMG_0001.jpg", "caption": "  "},
            ],
            r"1 empty caption\(s\) \(line 3: 'Grand Hôtel/Chambre/IMG_0001.jpg'\)",
        ),
        ([{"image_id": "12x", "caption": "a bed"}], r"image_id\(s\) are no integer \(line 2"),
        ([{"path": "a.jpg", "caption": "a bed"}], r"needs the columns caption and image_path"),
    ],
)
def test_bad_caption_files_are_errors_naming_the_rows(tree, tmp_path: Path, rows, message):
    root, _ = tree
    file = write_captions(tmp_path / "captions.csv", rows)
    paths = StagePaths().under(tmp_path / "project")
    params = params_for(root, file)
    run_stages(params, paths, ["sample", "images"])
    with pytest.raises(StageError, match=message):
        run_stages(params, paths, ["caption"])
    assert not paths.captions.exists()  # nothing written


def test_a_missing_or_semicolon_file_says_what_is_expected(tree, tmp_path: Path):
    root, _ = tree
    paths = StagePaths().under(tmp_path / "project")
    params = params_for(root, tmp_path / "nowhere.csv")
    run_stages(params, paths, ["sample", "images"])
    with pytest.raises(StageError, match=r"caption.file=.*nowhere.csv not found; a CSV with"):
        run_stages(params, paths, ["caption"])
    semicolons = tmp_path / "excel.csv"
    semicolons.write_text("image_path;caption\nGrand Hôtel/Chambre/IMG_0000.jpg;a bed\n")
    with pytest.raises(StageError, match="separated by ';'"):
        run_stages(params_for(root, semicolons), paths, ["caption"])


def test_image_path_keys_need_a_folder_dataset(tmp_path: Path):
    file = write_captions(tmp_path / "c.csv", [{"image_path": "a/b.jpg", "caption": "a bed"}])
    params = compose("caption=file")
    params = params.model_copy(update={"caption": params.caption.updated(file=str(file))})
    params = params.model_copy(
        update={"data": params.data.updated(path=str(ROOT / "data/bundled/hotels_sample.csv"))}
    )
    paths = StagePaths().under(tmp_path)
    run_stages(params, paths, ["sample"])
    with pytest.raises(
        StageError,
        match=r"no image_path \(only data=folder has one\); key the captions by image_id",
    ):
        run_stages(params, paths, ["caption"])


@pytest.mark.slow
def test_dvc_exp_run_with_phone_photos_and_a_captions_file(project: Path):
    """Through DVC, as a user runs it: a tree with a HEIC, litter and a 0-byte photo, captions
    from a CSV; no model, no network. reports/skipped.csv names what was left out."""
    tree = project / "data/raw/my photos"
    captions = make_tree(tree)
    sideways(tree / "Grand Hôtel/Chambre/IMG_0100.HEIC", "HEIF")
    captions["Grand Hôtel/Chambre/IMG_0100.HEIC"] = "a bedroom with a bed seen from the door"
    (tree / "Sea View Inn/.DS_Store").write_bytes(b"\0")
    (tree / "Sea View Inn/notes.txt").write_text("x")
    (tree / "Sea View Inn/Lobby/empty.jpg").write_bytes(b"")
    rows = [{"image_path": path, "caption": text} for path, text in captions.items()]
    write_captions(project / "data/captions/captions.csv", rows)
    run(["dvc", "commit", "-f", "-q", "data.dvc"], project)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    run([*git, "add", "-A"], project)
    run([*git, "commit", "-qm", "my photos and captions"], project)
    overrides = [
        "data=folder",
        "data.path=data/raw/my photos",
        "caption=file",
        "features.n_components=4",
        "cluster.k=3",
    ]
    exp = ["dvc", "exp", "run", *[a for o in overrides for a in ("-S", o)], "cluster"]
    out = run(exp, project).stdout
    assert "Running stage 'caption'" in out and "Running stage 'cluster'" in out

    got = pd.read_csv(project / "data/processed/captions.csv")
    assert len(got) == 19 and set(got["caption_mode"]) == {"file"}
    failures = pd.read_csv(project / "data/processed/caption_failures.csv", keep_default_na=False)
    assert failures["path"].tolist() == ["Sea View Inn/Lobby/empty.jpg"]  # no caption for it
    report = pd.read_csv(project / "reports/skipped.csv", keep_default_na=False)
    assert set(zip(report["path"], report["reason"], strict=True)) == {
        ("Sea View Inn/.DS_Store", "hidden"),
        ("Sea View Inn/notes.txt", "not_image"),
        ("Sea View Inn/Lobby/empty.jpg", "local_empty_file"),
    }
    manifest = pd.read_csv(project / "data/interim/images.csv", keep_default_na=False)
    heic = manifest.set_index("image_path").loc["Grand Hôtel/Chambre/IMG_0100.HEIC"]
    assert heic["status"] == "ok" and heic["path"].endswith(".jpg")
    # the captions file is a dependency: editing it makes the caption stage stale
    status = run(["dvc", "status", "caption"], project).stdout
    assert "changed" not in status
    with open(project / "data/captions/captions.csv", "a", encoding="utf-8") as fh:
        fh.write("Sea View Inn/Lobby/empty.jpg,an empty photo\n")
    status = run(["dvc", "status", "caption"], project).stdout
    assert "data/captions/captions.csv" in status
