"""The stage hand-offs: what one stage writes and another reads, defined once.

The sample table's columns, the images manifest (`data/interim/images.csv`: its columns, its
reader and which rows are usable), the room-type sources and the learned embedding's path. A
stage that reads another stage's output imports its format from here, not from the module that
writes it, so changing how a stage works (e.g. the downloader) does not make its readers stale
in `dvc status`. pandas only, no heavy imports. Formats: README "Pipeline and outputs",
docs/images.md "Outputs".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from alien_hotels.common import read_csv

# --- the sample table, `data/interim/sample.csv` (stage `sample`) ------------------------------

SAMPLE_COLUMNS = [
    "image_id",
    "hotel_id",
    "url",
    "source",
    "timestamp",
    "hotel_name",
    "chain_id",
    "latitude",
    "longitude",
    "chain_name",
    "downloaded",
    "image_name",
    "image_folder",
]
# data=folder adds these two: the image's path in the tree, relative to data.path (POSIX), and
# its room-type folder (empty without that level; read by `room_types.source=folder`).
PATH_COLUMN = "image_path"
ROOM_TYPE_FOLDER = "room_type_folder"

# --- the images manifest, `data/interim/images.csv` (stage `images`) ----------------------------

# What the images stage writes, and what the stages reading images (caption, room_types, edit,
# imagic) need of it. Only `ok` rows have a file, at `path` (repo-relative). `image_path`:
# data=folder, the file's place in the photo tree (every row, failed ones too, so a failure
# names the user's file, not only an id); empty for the other datasets. `detail`: what went
# wrong beyond the reason (`0 bytes`, the decoder's message).
MANIFEST_COLUMNS = ["image_id", "path", "status", "reason", "url", "image_path", "detail"]
MANIFEST_REQUIRED = ["image_id", "path", "status"]


@dataclass(frozen=True)
class ManifestSelection:
    rows: pd.DataFrame  # usable rows, manifest order, `path` stripped
    skipped: dict[str, int]  # the other rows by status (`ok_without_path` when ok lacks a path)


def read_manifest(path: str | Path) -> pd.DataFrame:
    return read_csv(path, MANIFEST_REQUIRED, what="images manifest")


def usable_images(manifest: pd.DataFrame, limit: int | None = None) -> ManifestSelection:
    """The rows with status `ok` and a path (the first per image id), at most `limit`."""
    status = manifest["status"].astype("string").fillna("").str.strip()
    path = manifest["path"].astype("string").fillna("").str.strip()
    usable = (status == "ok") & (path != "")
    skipped = Counter(status[~usable].replace("ok", "ok_without_path").replace("", "unknown"))
    rows = manifest.loc[usable].assign(path=path[usable]).drop_duplicates("image_id")
    rows = rows if limit is None else rows.head(limit)
    return ManifestSelection(rows.reset_index(drop=True), dict(sorted(skipped.items())))


# --- room types (stages `preprocess`, `room_types`, `cluster`) ----------------------------------

# Where a room type comes from, in report order: keyword rules on the captions, CLIP zero-shot
# on the photo, the dataset's room-type folder (docs/room_types.md).
ROOM_TYPE_SOURCES = ("captions", "image", "folder")

# --- the learned token (stage `textual_inversion`, read by the edit stages) ---------------------

EMBEDDING_FILE = "learned_embeds.safetensors"
EMBEDDING_PATH = Path("data/textual_inversion") / EMBEDDING_FILE
