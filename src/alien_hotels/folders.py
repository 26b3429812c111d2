"""`data.format=folder`: your own photos, one folder per hotel (as torchvision's ImageFolder).

The tree at `data.path`:

    <path>/<hotel>/<image>                      the hotel is the first-level folder's name
    <path>/<hotel>/<room type>/<image>          the room type the second-level folder's name
    <path>/<hotel>/<room type>/<more>/<image>   deeper folders: kept, room type = second level

An image is a file whose suffix, in any case (`.JPG`, `.Jpeg`, `.webp`, ...), is one Pillow
registered for a format it can open (video and undecodable stubs aside). Hidden files and
folders (a name starting with `.`, such as
`.DS_Store` or macOS' `._IMG_1.jpg`; a hidden folder is not entered), other files, files
directly under `data.path` (they belong to no hotel) and hotel folders without an image are
skipped and counted in `metrics/sample.json`; none of them is an error. Whether an image decodes
is the images stage's question: a corrupt file becomes a `failed` row with a reason there.

Ids are stable in any process and on any machine (no Python `hash()`): `hotel_id` is the first
52 bits of the SHA-1 of the hotel folder's name, `image_id` of the SHA-1 of the file's path in the
tree and of its content, so a replaced photo gets a new id (and is resized and captioned again).
Names are Unicode NFC-normalised first (macOS writes NFD), so a tree copied between systems keeps
its ids. 52 bits keep every id exact as int64 and as a float64 (pandas turns an integer column
with a gap into floats), and below JavaScript's safe-integer limit.

Only the chosen hotels' files are read (to hash them), after the hotels are sampled on counts.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections import Counter
from functools import cache
from pathlib import Path, PurePosixPath

import pandas as pd

from alien_hotels.common import StageError

ID_BITS = 52
# Room type column of the sample (read by `room_types.source=folder`); empty without that level.
ROOM_TYPE_COLUMN = "room_type_folder"
PATH_COLUMN = "image_path"  # the image's path in the tree, relative to data.path (POSIX)
SOURCE = "folder"  # the sample's `source`: keeps data/images paths free of folder names
# Suffixes the images stage keeps for the stored copy; any other format is stored as JPEG.
STORED_SUFFIXES = {"jpg", "jpeg", "png", "webp"}


# Formats Pillow opens that are no photos: MPEG (a room video would be taken for an image).
NOT_PHOTO_FORMATS = {"MPEG"}


@cache
def image_suffixes() -> frozenset[str]:
    """Lower-case suffixes (`.jpg`, `.png`, ...) Pillow has registered for formats it can open,
    less video and the stub formats it identifies but cannot decode (BUFR, GRIB, HDF5, WMF)."""
    from PIL import Image, ImageFile

    Image.init()

    def photo(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
        return factory is not None and not stub and fmt not in NOT_PHOTO_FORMATS

    return frozenset(
        ext.lower() for ext, fmt in Image.registered_extensions().items() if photo(fmt)
    )


def _nfc(text: str) -> bytes:
    return unicodedata.normalize("NFC", text).encode("utf-8", "surrogateescape")


def _id(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big") >> (64 - ID_BITS)


def hotel_id(name: str) -> int:
    """The id of the hotel whose folder is called `name` (stable, < 2**52)."""
    return _id(hashlib.sha1(b"hotel\0" + _nfc(name)).digest())


def image_id(rel_path: str, content_sha1: bytes) -> int:
    """The id of the image at `rel_path` (in the tree, POSIX) with this content's SHA-1."""
    return _id(hashlib.sha1(b"image\0" + _nfc(rel_path) + b"\0" + content_sha1).digest())


def file_sha1(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha1").digest()


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _bad_name(name: str) -> bool:
    """A name that is not valid UTF-8 (possible on Linux): it could not be written to the CSVs."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def scan(root: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every image of the tree (`hotel_id`, `hotel_name`, `image_path`, `room_type_folder`) in
    a stable order, and the counts of what was skipped. Reads names only, no file content."""
    root = Path(root)
    if not root.is_dir():
        raise StageError(
            f"data.format=folder: data.path={root} is not a directory; it must hold one folder "
            "per hotel with its photos (see docs/folder.md)"
        )
    suffixes = image_suffixes()
    counts: Counter[str] = Counter()
    rows: list[tuple[str, str, str]] = []
    hotels = 0
    with os.scandir(root) as it:
        top = sorted(it, key=lambda e: e.name)
    for entry in top:
        if _hidden(entry.name):
            counts["skipped_hidden"] += 1
        elif _bad_name(entry.name):
            counts["skipped_bad_name"] += 1
        elif entry.is_dir():
            hotels += 1
            found = _scan_hotel(Path(entry.path), entry.name, suffixes, counts, rows)
            if not found:
                counts["hotels_without_images"] += 1
        else:
            counts["skipped_top_level_files"] += 1  # no hotel folder to belong to
    frame = pd.DataFrame(rows, columns=["hotel_name", PATH_COLUMN, ROOM_TYPE_COLUMN])
    frame.insert(0, "hotel_id", frame["hotel_name"].map(hotel_id).astype("int64"))
    _check_unique(frame, root)
    stats = {
        "folder_hotel_folders": hotels,
        "folder_images": len(frame),
        "folder_images_below_room_type": counts["below_room_type"],
        "folder_hotels_without_images": counts["hotels_without_images"],
        "folder_skipped_empty_folders": counts["empty_folders"],
        "folder_skipped_hidden": counts["skipped_hidden"],
        "folder_skipped_not_image": counts["skipped_not_image"],
        "folder_skipped_top_level_files": counts["skipped_top_level_files"],
        "folder_skipped_bad_name": counts["skipped_bad_name"],
    }
    return frame, stats


def _scan_hotel(
    hotel_dir: Path,
    hotel: str,
    suffixes: frozenset[str],
    counts: Counter[str],
    rows: list[tuple[str, str, str]],
) -> int:
    found = 0
    folders: list[PurePosixPath] = []  # below the hotel folder
    with_images: set[PurePosixPath] = set()
    for dirpath, dirnames, filenames in os.walk(hotel_dir):
        hidden = [d for d in dirnames if _hidden(d)]
        counts["skipped_hidden"] += len(hidden) + sum(map(_hidden, filenames))
        bad = [d for d in dirnames if _bad_name(d) and not _hidden(d)]
        counts["skipped_bad_name"] += len(bad)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and d not in bad)  # not entered
        rel_dir = PurePosixPath(hotel, *Path(dirpath).relative_to(hotel_dir).parts)
        depth = len(rel_dir.parts)  # 1: the hotel folder, 2: a room type, 3+: below
        room_type = rel_dir.parts[1] if depth >= 2 else ""
        if depth >= 2:
            folders.append(rel_dir)
        for name in sorted(filenames):
            if _hidden(name):
                continue
            if _bad_name(name):
                counts["skipped_bad_name"] += 1
                continue
            if os.path.splitext(name)[1].lower() not in suffixes:
                counts["skipped_not_image"] += 1
                continue
            if depth > 2:
                counts["below_room_type"] += 1
            rows.append((hotel, (rel_dir / name).as_posix(), room_type))
            with_images.update((rel_dir, *rel_dir.parents))
            found += 1
    counts["empty_folders"] += sum(folder not in with_images for folder in folders)
    return found


def _check_unique(frame: pd.DataFrame, root: Path) -> None:
    names = frame.drop_duplicates("hotel_name")
    clash = names["hotel_id"].duplicated(keep=False)
    if clash.any():  # two names within 2**-52: practically never, but never silently merged
        raise StageError(
            f"hotel folders {sorted(names.loc[clash, 'hotel_name'])} of {root} get the same "
            "hotel_id: rename one of them"
        )


def identify(rows: pd.DataFrame, root: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """The chosen rows with `image_id` (hashing each file) and the sample's columns.

    A file that cannot be read (permissions, removed since the scan) is dropped and counted."""
    root = Path(root)
    ids: list[int | None] = []
    unreadable = 0
    for rel in rows[PATH_COLUMN]:
        try:
            ids.append(image_id(rel, file_sha1(root / rel)))
        except OSError:
            ids.append(None)
            unreadable += 1
    out = rows.assign(image_id=pd.array(ids, dtype="Int64")).dropna(subset=["image_id"])
    out = out.astype({"image_id": "int64"})
    repeated = out["image_id"].duplicated(keep=False)
    if repeated.any():
        raise StageError(
            f"files of {root} get the same image_id: {sorted(out.loc[repeated, PATH_COLUMN])}"
        )
    suffix = out[PATH_COLUMN].map(lambda p: PurePosixPath(p).suffix.lower().lstrip("."))
    stored = suffix.where(suffix.isin(STORED_SUFFIXES), "jpg")
    out = out.assign(
        url="",
        source=SOURCE,
        timestamp="",
        chain_id=pd.NA,
        latitude=float("nan"),
        longitude=float("nan"),
        chain_name="",
        downloaded=pd.NA,  # unknown until the images stage has read the file
        image_name=out["image_id"].astype(str) + "." + stored,
        image_folder=out[PATH_COLUMN].map(lambda p: PurePosixPath(p).parent.as_posix()),
    )
    return out, {"folder_skipped_unreadable": unreadable}
