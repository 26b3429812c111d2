"""Issue 23, "Paths": hostile metadata and folder entries never make a stage write or read
outside its roots.

Every case runs the real `sample` and `images` stages in a temporary root that holds the project
folder (`proj/`, the data inside it) and, beside it, a "secret" photo. After the run the whole
root is listed again: only the stages' output folders may differ, the secret is nowhere under the
project (neither copied nor recorded `ok`), and each hostile row is a failure `unsafe_path`.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image
from pydantic import BaseModel

import alien_hotels
from alien_hotels.config import Params, compose_params, validate_params
from alien_hotels.images.collect import collect_images
from alien_hotels.stages import images as images_stage
from alien_hotels.stages import sample as sample_stage
from alien_hotels.stages.paths import StagePaths
from alien_hotels.testing.imageserver import ImageServer, make_image
from conftest import ROOT, run

# What the two stages may change in the temporary root: their outputs, nothing else.
OUTPUTS = ("proj/data/images/", "proj/data/interim/", "proj/metrics/", "proj/reports/skipped.csv/")
SECRET_SIZE = (37, 23)  # no photo of the tests has it: a copy is recognised even if re-encoded


@dataclass
class Root:
    top: Path  # the temporary root
    proj: Path  # the project: its data, and the stages' outputs
    secret: Path  # beside the project: must stay unread
    paths: StagePaths
    before: dict[str, tuple] | None = None

    def snapshot(self) -> None:
        self.before = _listing(self.top)

    def check_untouched(self) -> None:
        """Nothing outside the outputs changed; no copy of the secret inside the project."""
        after = _listing(self.top)
        changed = {
            k for k in self.before.keys() | after.keys() if self.before.get(k) != after.get(k)
        }
        assert sorted(k for k in changed if not f"{k}/".startswith(OUTPUTS)) == []
        secret = self.secret.read_bytes()
        for path in self.proj.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.suffix in (".jpg", ".png"):
                assert path.read_bytes() != secret, path
                with Image.open(path) as img:
                    assert img.size != SECRET_SIZE, path


def _listing(top: Path) -> dict[str, tuple]:
    """Every entry below `top` (links not followed): folders by existence, the rest by mode,
    size and modification time."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            key = os.path.relpath(path, top)
            is_dir = stat.S_ISDIR(info.st_mode)
            entries[key] = ("dir",) if is_dir else (info.st_mode, info.st_size, info.st_mtime_ns)
    return entries


@pytest.fixture
def root(tmp_path: Path) -> Root:
    top = tmp_path / "root"
    proj = top / "proj"
    (proj / "data" / "raw").mkdir(parents=True)
    (proj / "reports").mkdir()  # the project's other folders, as in a checkout
    secret = top / "secret.jpg"
    secret.write_bytes(make_image(999, size=SECRET_SIZE))
    return Root(top, proj, secret, StagePaths().under(proj))


def _photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_image(seed, size=(64, 48)))


@functools.cache
def _compose(data_group: str) -> Params:
    """`conf/` composed with `data=<group>`, less keys the imported code does not know, so that
    these tests also run (and fail for the right reason) on an older tree's code."""
    return validate_params(_known(Params, compose_params([f"data={data_group}"], ROOT / "conf")))


def _known(model: type[BaseModel], raw: dict) -> dict:
    known = {}
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel) and isinstance(value, dict):
            value = _known(nested, value)
        known[key] = value
    return known


def _params(data_group: str, download: bool = False, **data) -> Params:
    params = _compose(data_group)
    # longer_side=null keeps photos as they are, so a copy of the secret would be byte-identical
    shown = params.images.updated(
        download=download, allow_private_addresses=True, longer_side=None, workers=2, retries=0
    )
    return params.model_copy(update={"data": params.data.updated(**data), "images": shown})


def _manifest(root: Root) -> dict[int, tuple[str, str]]:
    manifest = pd.read_csv(root.paths.images_manifest, keep_default_na=False)
    for path in manifest.loc[manifest["status"] == "ok", "path"]:
        assert Path(path).resolve().is_relative_to(root.paths.images_dir.resolve())
    return {row.image_id: (row.status, row.reason) for row in manifest.itertuples()}


# --- row 1: Hotels-50K `image_source` ----------------------------------------------------------

SOURCES = {
    "dotdot-reports": "../../../../reports",  # the project's reports folder
    "absolute": "{top}/abs",
    "to-the-root": "../" * 40 + "{top}/deep",  # up to / and down again
    "dotdot": "..",
    "nested": "a/b",
    "hidden": ".dvc",
}


def _hotels50k(root: Root, server: ImageServer, source: str) -> Path:
    meta = root.proj / "data/raw/hotels50k/dataset"
    meta.mkdir(parents=True)
    (meta / "chain_info.csv").write_text("chain_id,chain_name\n3,Chain\n")
    (meta / "hotel_info.csv").write_text(
        "hotel_id,hotel_name,chain_id,latitude,longitude\n"
        "7,Good Inn,3,1.0,2.0\n8,Bad Inn,3,1.0,2.0\n"
    )
    rows = [(100, 7, "traffickcam"), (101, 8, source), (102, 8, source)]
    table = pd.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "hotel_id": [r[1] for r in rows],
            "image_url": [server.url(f"/good/{r[0]}.jpg") for r in rows],
            "image_source": [r[2] for r in rows],
            "upload_timestamp": "1/27/18 20:55",
        }
    )
    table.to_csv(meta / "train_set.csv", index=False)
    table.head(0).to_csv(meta / "test_set.csv", index=False)
    return meta


@pytest.mark.parametrize("source", SOURCES.values(), ids=SOURCES.keys())
def test_hotels50k_image_source_cannot_place_files_outside_data_images(root: Root, source: str):
    source = source.format(top=root.top.as_posix().lstrip("/") if "../" in source else root.top)
    with ImageServer() as server:
        meta = _hotels50k(root, server, source)
        params = _params(
            "hotels50k",
            download=True,
            path=str(meta),
            images_dir=str(root.proj / "data/raw/hotels50k/images/train"),
            n_hotels=None,
            min_images=1,
        )
        root.snapshot()
        sample_stage.run(params, root.paths)
        images_stage.run(params, root.paths)
        hits = dict(server.hits)
    root.check_untouched()
    assert _manifest(root) == {
        100: ("ok", ""),
        101: ("failed", "unsafe_path"),
        102: ("failed", "unsafe_path"),
    }
    assert (root.paths.images_dir / "3/7/traffickcam/100.jpg").is_file()
    assert hits.get("/good/101.jpg", 0) == hits.get("/good/102.jpg", 0) == 0  # not even fetched


# --- row 2: a single-CSV dataset's `image_path` and `image_name` ------------------------------

# (column, value): `{secret}` is the secret's absolute path
HOSTILE_ROWS = {
    "image_path-dotdot": ("image_path", "../../../../../secret.jpg"),  # from data/raw/mine/photos
    "image_path-absolute": ("image_path", "{secret}"),
    "image_name-absolute": ("image_name", "{secret}"),  # was "already there": ok
    "image_name-dotdot": ("image_name", "../../../../../../secret.jpg"),  # from images/3/7/mine
    "image_name-system-file": ("image_name", "/etc/passwd"),
    "image_path-link-out": ("image_path", "link.jpg"),  # photos/link.jpg -> the secret
    "tree-link-out": ("image_name", "6.jpg"),  # photos/3/7/mine/6.jpg -> the secret
}


def _single_csv(root: Root, rows: list[dict]) -> Params:
    mine = root.proj / "data/raw/mine"
    photos = mine / "photos"
    _photo(photos / "ok.jpg", seed=1)
    _photo(photos / "3/7/mine/2.jpg", seed=2)  # the dataset's tree layout
    (photos / "inner.jpg").symlink_to("3/7/mine/2.jpg")  # a link inside the tree: fine
    (photos / "link.jpg").symlink_to(root.secret)
    (photos / "3/7/mine/6.jpg").symlink_to(root.secret)
    pd.DataFrame(rows).assign(hotel_id=7, chain_id=3, source="mine", url="").to_csv(
        mine / "sample.csv", index=False
    )
    return _params(
        "bundled",
        path=str(mine / "sample.csv"),
        images_dir=str(photos),
        n_hotels=None,
        min_images=1,
        caption_column=None,
    )


@pytest.mark.parametrize("case", HOSTILE_ROWS.values(), ids=HOSTILE_ROWS.keys())
def test_single_csv_fields_cannot_read_or_claim_files_outside(root: Root, case):
    column, value = case
    rows = [
        {"image_id": 1, "image_path": "ok.jpg"},
        {"image_id": 2},  # from the tree: <chain>/<hotel>/<source>/<id>.jpg
        {"image_id": 3, "image_path": "inner.jpg"},
        {"image_id": 6, column: value.format(secret=root.secret)},
    ]
    params = _single_csv(root, rows)
    root.snapshot()
    sample_stage.run(params, root.paths)
    images_stage.run(params, root.paths)
    root.check_untouched()
    assert _manifest(root) == {
        1: ("ok", ""),
        2: ("ok", ""),
        3: ("ok", ""),
        6: ("failed", "unsafe_path"),
    }


# --- row 9 (ids): non-integer ids of a single-CSV dataset are a named error -------------------


@pytest.mark.parametrize(
    ("column", "bad"),
    [("image_id", "12abc"), ("image_id", "../x"), ("hotel_id", "7.5"), ("chain_id", "../../etc")],
)
def test_non_integer_ids_are_a_named_error_before_any_output(root: Root, column: str, bad: str):
    rows = [{"image_id": 1, "hotel_id": 7, "chain_id": 3}, {"image_id": 2, "hotel_id": 7}]
    rows[1][column] = bad
    mine = root.proj / "data/raw/mine"
    mine.mkdir()
    pd.DataFrame(rows).to_csv(mine / "sample.csv", index=False)
    params = _params(
        "bundled", path="data/raw/mine/sample.csv", n_hotels=None, min_images=1, caption_column=None
    )
    (root.proj / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    root.snapshot()
    # The CLI as DVC runs it, on the code this test imported (so an old tree can be checked too).
    code = str(Path(alien_hotels.__file__).parents[1])
    result = run(
        [sys.executable, "-m", "alien_hotels", "sample"], root.proj, check=False, PYTHONPATH=code
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"column {column}" in result.stderr and bad in result.stderr
    assert "Traceback" not in result.stderr
    assert not root.paths.sample.exists()
    root.check_untouched()


# --- folder entries: symlinks that leave the tree ---------------------------------------------


def _folder_tree(root: Root) -> Path:
    photos = root.proj / "data/raw/photos"
    _photo(photos / "Inn/a.jpg", seed=1)
    _photo(photos / "Lodge/Suite/s.jpg", seed=2)
    (photos / "Inn/Suite").symlink_to("../Lodge/Suite", target_is_directory=True)  # inside
    (photos / "Inn/b.jpg").symlink_to("a.jpg")  # inside
    elsewhere = root.top / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "e.jpg").write_bytes(root.secret.read_bytes())
    (photos / "Inn/leak.jpg").symlink_to(root.secret)
    (photos / "Inn/Far").symlink_to(elsewhere, target_is_directory=True)
    (photos / "Annex").symlink_to(elsewhere, target_is_directory=True)
    return photos


INSIDE = ["Inn/Suite/s.jpg", "Inn/a.jpg", "Inn/b.jpg", "Lodge/Suite/s.jpg"]
OUTSIDE = ["Annex/e.jpg", "Inn/Far/e.jpg", "Inn/leak.jpg"]


def test_folder_symlinks_out_of_the_tree_are_not_followed(root: Root, caplog):
    photos = _folder_tree(root)
    params = _params("folder", path=str(photos), images_dir=str(photos))
    root.snapshot()
    with caplog.at_level(logging.WARNING):
        stats = sample_stage.run(params, root.paths)
    metrics = images_stage.run(params, root.paths)
    root.check_untouched()
    sample = pd.read_csv(root.paths.sample)
    assert sorted(sample["image_path"]) == INSIDE  # links inside the tree still work
    assert stats.load["folder_skipped_external_symlinks"] == 3
    assert all(name in caplog.text for name in ("'Annex'", "'Inn/Far'", "'Inn/leak.jpg'"))
    assert metrics["ok"] == len(INSIDE) and metrics["failed"] == 0


def test_folder_symlinks_out_are_followed_only_when_asked(root: Root):
    photos = _folder_tree(root)
    params = _params("folder", path=str(photos), images_dir=str(photos))
    params = params.model_copy(update={"data": params.data.updated(follow_external_symlinks=True)})
    stats = sample_stage.run(params, root.paths)
    sample = pd.read_csv(root.paths.sample)
    assert sorted(sample["image_path"]) == sorted(INSIDE + OUTSIDE)
    assert stats.load["folder_skipped_external_symlinks"] == 0
    # What the images stage does with the flag (stages/images.py passes data's).
    _, metrics = collect_images(
        sample,
        params.images,
        photos,
        root.paths.images_dir,
        progress=False,
        follow_external_symlinks=True,
    )
    assert metrics["ok"] == len(INSIDE + OUTSIDE)
    # ... and without it the images stage refuses them itself, whatever the sample says.
    _, metrics = collect_images(
        sample, params.images, photos, root.paths.images_dir / "strict", progress=False
    )
    assert metrics["ok"] == len(INSIDE) and metrics["failed_by_reason"] == {"unsafe_path": 3}
