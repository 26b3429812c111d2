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
skipped, counted in `metrics/sample.json` and named with a reason (`Skipped`, for
reports/skipped.csv); none of them is an error. HEIC/HEIF count as images through pillow-heif's
opener (`imageio.register_plugins`). Whether an image decodes
is the images stage's question: a corrupt file becomes a `failed` row with a reason there.

Ids are stable in any process and on any machine (no Python `hash()`): `hotel_id` is the first
52 bits of the SHA-1 of the hotel folder's name, `image_id` of the SHA-1 of the file's path in the
tree and of its content, so a replaced photo gets a new id (and is resized and captioned again).
Names are Unicode NFC-normalised first (macOS writes NFD), so a tree copied between systems keeps
its ids. 52 bits keep every id exact as int64 and as a float64 (pandas turns an integer column
with a gap into floats), and below JavaScript's safe-integer limit.

Symlinked folders and photos inside the tree are followed (as ImageFolder's
`os.walk(followlinks=True)`), each real folder entered once per hotel: a link back to a folder
above it (a loop) or a second link to a folder already entered is not followed, and counted. A
link leading out of the tree (its real path not below `data.path`'s) is neither entered nor read
unless `follow_external_symlinks` (`data.follow_external_symlinks`): counted, and named in the log.

Only the chosen hotels' files are read (to hash them), after the hotels are sampled on counts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

import pandas as pd

from alien_hotels.common import StageError
from alien_hotels.datasets.config import DataConfig
from alien_hotels.datasets.dataset import SET_ASIDE, Dataset, no_drops
from alien_hotels.imageio import register_plugins
from alien_hotels.tables import PATH_COLUMN, ROOM_TYPE_FOLDER, SAMPLE_COLUMNS

log = logging.getLogger(__name__)
ID_BITS = 52
SOURCE = "folder"  # the sample's `source`: keeps data/images paths free of folder names
# Suffixes the images stage keeps for the stored copy; any other format is stored as JPEG.
STORED_SUFFIXES = {"jpg", "jpeg", "png", "webp"}


# Formats Pillow opens that are no photos of a hotel, or that it decodes only with external tools:
# MPEG and FLI/FLC (video, animation: a room video would be taken for an image), EPS/PS (logos
# and brochures; Pillow needs Ghostscript to draw them), ICO, ICNS and CUR (icons: favicons,
# app icons and cursors found beside downloaded photos). PSD stays: Pillow reads its flattened
# image without external tools.
NOT_PHOTO_FORMATS = {"MPEG", "FLI", "EPS", "ICO", "ICNS", "CUR"}


@cache
def image_suffixes() -> frozenset[str]:
    """Lower-case suffixes (`.jpg`, `.png`, ...) Pillow has registered for formats it can open,
    less NOT_PHOTO_FORMATS and the stub formats it identifies but cannot decode (BUFR, GRIB,
    HDF5, WMF)."""
    from PIL import Image, ImageFile

    register_plugins()  # HEIC/HEIF through pillow-heif: an iPhone's default format
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


# One entry per file or folder the tree held that is not in the sample: (path relative to
# data.path, reason, detail), all named in reports/skipped.csv after the images stage; the counts
# in metrics/sample.json alone left a user guessing which of their files were left out.
Skipped = list[tuple[str, str, str]]


def shown(name: str) -> str:
    """A name as text that can be written anywhere: bytes that are no UTF-8 as `\\xff`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _not_image_detail(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    if not suffix:
        return "no file suffix"
    fmt = _registered_format(suffix)
    if fmt in NOT_PHOTO_FORMATS:
        return f"{suffix}: {fmt}, not a photo"
    return f"{suffix}: not an image format Pillow reads" if fmt is None else f"{suffix}: {fmt}"


def _registered_format(suffix: str) -> str | None:
    from PIL import Image

    return Image.registered_extensions().get(suffix)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _bad_name(name: str) -> bool:
    """A name that is not valid UTF-8 (possible on Linux): it could not be written to the CSVs."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass
class _Fence:
    """Where the tree's symlinks may lead: below `real` (data.path's real path), anywhere when
    `real` is None (`follow_external_symlinks`); `refused` collects the links that lead out."""

    real: str | None
    refused: list[str] = field(default_factory=list)

    def shuts_out(self, real_path: str) -> bool:
        return self.real is not None and not _holds(self.real, real_path)

    def leads_out(self, path: str) -> bool:
        """Whether the file at `path` resolves to outside the fence (one whose link target is
        gone does not: it is unreadable, never read)."""
        return (
            self.real is not None
            and os.path.exists(path)
            and self.shuts_out(os.path.realpath(path))
        )


def scan(
    root: str | Path, follow_external_symlinks: bool = False, skipped: Skipped | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every image of the tree (`hotel_id`, `hotel_name`, `image_path`, `room_type_folder`) in
    a stable order, and the counts of what was skipped (each also appended to `skipped`, when
    given, with its path and reason). Reads names only, no file content.

    Symlinks leading out of the tree are skipped (counted, named in the log) unless
    `follow_external_symlinks`. A tree without any image is an error saying what was found
    instead."""
    root = Path(root)
    if not root.is_dir():
        raise StageError(
            f"data.format=folder: data.path={root} is not a directory; it must hold one folder "
            "per hotel with its photos (see docs/folder.md)"
        )
    suffixes = image_suffixes()
    counts: Counter[str] = Counter()
    rows: list[tuple[str, str, str]] = []
    named: Skipped = [] if skipped is None else skipped
    with os.scandir(root) as it:
        top = sorted(it, key=lambda e: e.name)
    root_real = os.path.realpath(root)
    fence = _Fence(None if follow_external_symlinks else root_real)
    for entry in top:
        folder = entry.is_dir()
        shown_name = shown(entry.name) + ("/" if folder else "")
        if _hidden(entry.name):
            counts["skipped_hidden"] += 1
            named.append((shown_name, "hidden", _HIDDEN_DETAIL[folder]))
        elif _bad_name(entry.name):
            counts["skipped_bad_name"] += 1
            named.append((shown_name, "bad_name", BAD_NAME_DETAIL))
        elif folder and _holds(os.path.realpath(entry.path), root_real):
            counts["symlink_loops"] += 1  # a link to data.path or above: no hotel of its own
            named.append((shown_name, "symlink_loop", "a link to data.path or above it"))
        elif folder and fence.shuts_out(os.path.realpath(entry.path)):
            fence.refused.append(entry.name)
        elif folder:
            counts["hotel_folders"] += 1
            found = _scan_hotel(Path(entry.path), entry.name, suffixes, counts, rows, fence, named)
            if not found:
                counts["hotels_without_images"] += 1
                named.append((shown_name, "hotel_without_images", "a hotel folder without photos"))
        else:
            counts["skipped_top_level_files"] += 1  # no hotel folder to belong to
            counts["top_level_images"] += _is_image(entry.name, suffixes)
            named.append((shown_name, "top_level_file", "not in a hotel folder"))
    named.extend((path, "external_symlink", EXTERNAL_DETAIL) for path in fence.refused)
    frame = pd.DataFrame(rows, columns=["hotel_name", PATH_COLUMN, ROOM_TYPE_FOLDER])
    frame.insert(0, "hotel_id", frame["hotel_name"].map(hotel_id).astype("int64"))
    stats = {
        "folder_hotel_folders": counts["hotel_folders"],
        "folder_images": len(frame),
        "folder_images_below_room_type": counts["below_room_type"],
        "folder_hotels_without_images": counts["hotels_without_images"],
        "folder_skipped_empty_folders": counts["empty_folders"],
        "folder_skipped_hidden": counts["skipped_hidden"],
        "folder_skipped_not_image": counts["skipped_not_image"],
        "folder_skipped_top_level_files": counts["skipped_top_level_files"],
        "folder_skipped_bad_name": counts["skipped_bad_name"],
        "folder_skipped_symlink_loops": counts["symlink_loops"],
        "folder_skipped_external_symlinks": len(fence.refused),
    }
    if fence.refused:
        log.warning(
            "%s: %d symlink(s) leading out of the tree not followed "
            "(data.follow_external_symlinks=false): %s",
            root,
            len(fence.refused),
            ", ".join(repr(name) for name in fence.refused[:10])
            + (", ..." if len(fence.refused) > 10 else ""),
        )
    if frame.empty:
        raise StageError(_no_images_message(root, stats, counts["top_level_images"]))
    _check_unique(frame, root)
    return frame, stats


_HIDDEN_DETAIL = {False: "hidden file (name starts with .)", True: "hidden folder, not entered"}
BAD_NAME_DETAIL = "the name is not valid UTF-8; rename it"
EXTERNAL_DETAIL = "symlink leading out of data.path (data.follow_external_symlinks=false)"


def _is_image(name: str, suffixes: frozenset[str]) -> bool:
    return os.path.splitext(name)[1].lower() in suffixes


def _holds(folder: str, path: str) -> bool:
    """Whether the real folder `folder` is `path` or one of its parents (both real paths)."""
    return Path(path).is_relative_to(folder)


def _no_images_message(root: Path, stats: dict[str, int], top_level_images: int) -> str:
    if top_level_images:  # the commonest slip: the photos of one hotel put in data.path itself
        return (
            f"data.format=folder: no images in {root}: photos must sit in a folder per hotel "
            f"(`<path>/<hotel>/<image>`), but {top_level_images} image file(s) were found "
            "directly under data.path; move them into a folder named after their hotel"
        )
    skipped = [
        f"{key}={n}"
        for key, n in stats.items()
        if n and (key.startswith("folder_skipped_") or key == "folder_hotels_without_images")
    ]
    return (
        f"data.format=folder: no images in {root} (a folder per hotel holding its photos is "
        "expected" + (f"; skipped: {', '.join(skipped)}" if skipped else "") + ")"
    )


def _scan_hotel(
    hotel_dir: Path,
    hotel: str,
    suffixes: frozenset[str],
    counts: Counter[str],
    rows: list[tuple[str, str, str]],
    fence: _Fence,
    named: Skipped,
) -> int:
    found = 0
    folders: list[PurePosixPath] = []  # below the hotel folder
    with_images: set[PurePosixPath] = set()
    entered = {os.path.realpath(hotel_dir)}  # real paths: each real folder is walked once
    for dirpath, dirnames, filenames in os.walk(hotel_dir, followlinks=True):
        rel_dir = PurePosixPath(hotel, *Path(dirpath).relative_to(hotel_dir).parts)
        dirnames[:] = _folders_to_enter(dirpath, dirnames, entered, counts, fence, rel_dir, named)
        depth = len(rel_dir.parts)  # 1: the hotel folder, 2: a room type, 3+: below
        room_type = rel_dir.parts[1] if depth >= 2 else ""
        if depth >= 2:
            folders.append(rel_dir)
        for name in sorted(filenames):  # a broken symlink is a file here: unreadable later
            where = shown((rel_dir / name).as_posix())
            if _hidden(name):
                counts["skipped_hidden"] += 1
                named.append((where, "hidden", _HIDDEN_DETAIL[False]))
            elif _bad_name(name):
                counts["skipped_bad_name"] += 1
                named.append((where, "bad_name", BAD_NAME_DETAIL))
            elif not _is_image(name, suffixes):
                counts["skipped_not_image"] += 1
                named.append((where, "not_image", _not_image_detail(name)))
            elif os.path.islink(path := os.path.join(dirpath, name)) and fence.leads_out(path):
                # (the folders walked are inside: only a link can lead a file out)
                fence.refused.append((rel_dir / name).as_posix())
            else:
                counts["below_room_type"] += int(depth > 2)
                rows.append((hotel, (rel_dir / name).as_posix(), room_type))
                with_images.update((rel_dir, *rel_dir.parents))
                found += 1
    empty = [folder for folder in folders if folder not in with_images]
    counts["empty_folders"] += len(empty)
    named.extend((f"{shown(f.as_posix())}/", "empty_folder", "no photos inside") for f in empty)
    return found


def _folders_to_enter(
    dirpath: str,
    dirnames: list[str],
    entered: set[str],
    counts: Counter[str],
    fence: _Fence,
    rel_dir: PurePosixPath,
    named: Skipped,
) -> list[str]:
    """The sub-folders of `dirpath` to walk, in name order: not hidden, valid names, not a
    (symlinked) folder already entered in this hotel or holding `dirpath` (a loop), not a link out
    of the tree (unless the fence is open).

    Real folders claim their real path before links at the same level do, so a link beside the
    folder it points to is the one skipped."""
    here = os.path.realpath(dirpath)
    keep = []
    for name in sorted(dirnames, key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d)):
        real = os.path.realpath(os.path.join(dirpath, name))
        where = f"{shown((rel_dir / name).as_posix())}/"
        if _hidden(name):
            counts["skipped_hidden"] += 1  # not entered
            named.append((where, "hidden", _HIDDEN_DETAIL[True]))
        elif _bad_name(name):
            counts["skipped_bad_name"] += 1
            named.append((where, "bad_name", BAD_NAME_DETAIL))
        elif real in entered or _holds(real, here):
            counts["symlink_loops"] += 1
            named.append((where, "symlink_loop", "a folder already entered, or one above it"))
        elif fence.shuts_out(real):
            fence.refused.append((rel_dir / name).as_posix())
        else:
            entered.add(real)
            keep.append(name)
    return sorted(keep)


def _check_unique(frame: pd.DataFrame, root: Path) -> None:
    names = frame.drop_duplicates("hotel_name")
    clash = names["hotel_id"].duplicated(keep=False)
    if not clash.any():
        return
    first = names.loc[clash, "hotel_id"].iloc[0]
    same = sorted(names.loc[names["hotel_id"] == first, "hotel_name"])
    if _differ_in_normalisation(same):  # the usual cause: a folder copied from macOS
        raise StageError(
            f"hotel folders {_with_forms(same)} of {root} differ only in Unicode normalisation "
            f"{NORMALISATION_WHY} and get the same hotel_id: keep one folder, move the photos of "
            "the one that is not NFC into the NFC one and remove it"
        )
    # two names within 2**-52: practically never, but never silently merged
    raise StageError(
        f"hotel folders {sorted(names.loc[clash, 'hotel_name'])} of {root} get the same "
        "hotel_id: rename one of them"
    )


NORMALISATION_WHY = "(NFC vs NFD: macOS writes names as NFD, so one was likely copied from a Mac)"


def _differ_in_normalisation(names: list[str]) -> bool:
    return len({unicodedata.normalize("NFC", n) for n in names}) == 1


def _with_forms(names: list[str]) -> str:
    """The names with their normal form, so that two names that print alike can be told apart."""

    def form(name: str) -> str:
        for nf in ("NFC", "NFD"):
            if unicodedata.is_normalized(nf, name):
                return nf
        return "neither NFC nor NFD"

    return ", ".join(f"{name!r} ({form(name)})" for name in names)


def identify(
    rows: pd.DataFrame,
    root: str | Path,
    follow_external_symlinks: bool = False,
    skipped: Skipped | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The chosen rows with `image_id` (hashing each file) and the sample's columns.

    A file that cannot be read (permissions, removed since the scan) is dropped and counted; so
    is one that became a link out of the tree since the scan (not read). Both are appended to
    `skipped` when given."""
    root = Path(root)
    fence = _Fence(None if follow_external_symlinks else os.path.realpath(root))
    ids: list[int | None] = []
    unreadable = 0
    for rel in rows[PATH_COLUMN]:
        if fence.leads_out(str(root / rel)):
            fence.refused.append(rel)
            ids.append(None)
            if skipped is not None:
                skipped.append((rel, "external_symlink", EXTERNAL_DETAIL))
            continue
        try:
            ids.append(image_id(rel, file_sha1(root / rel)))
        except OSError as exc:
            ids.append(None)
            unreadable += 1
            if skipped is not None:
                why = exc.strerror or type(exc).__name__
                skipped.append((rel, "unreadable", f"{why} (a broken link, permissions)"))
    if fence.refused:  # became links out since the scan
        log.warning("%s: not read, they lead out of the tree: %s", root, fence.refused[:10])
    out = rows.assign(image_id=pd.array(ids, dtype="Int64")).dropna(subset=["image_id"])
    out = out.astype({"image_id": "int64"})
    _check_unique_images(out, root)
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
    return out, {
        "folder_skipped_unreadable": unreadable,
        "folder_skipped_external_symlinks": len(fence.refused),
    }


def _check_unique_images(rows: pd.DataFrame, root: Path) -> None:
    repeated = rows["image_id"].duplicated(keep=False)
    if not repeated.any():
        return
    first = rows.loc[repeated, "image_id"].iloc[0]
    same = sorted(rows.loc[rows["image_id"] == first, PATH_COLUMN])
    if _differ_in_normalisation(same):  # same content, paths alike but for the normal form
        raise StageError(
            f"files {_with_forms(same)} of {root} differ only in Unicode normalisation "
            f"{NORMALISATION_WHY} and have the same content, so the same image_id: it is one "
            "photo twice; remove the one that is not NFC"
        )
    raise StageError(
        f"files of {root} get the same image_id: {sorted(rows.loc[repeated, PATH_COLUMN])}"
    )


def load(cfg: DataConfig) -> Dataset:
    """The image files of the tree `cfg.path` (names only); ids are made for the chosen hotels."""
    follow = cfg.follow_external_symlinks
    skipped: Skipped = []
    rows, counts = scan(cfg.path, follow, skipped)  # an error when the tree has no image

    def finish(sample: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
        out, extra = identify(sample, cfg.path, follow, skipped)
        columns = [*SAMPLE_COLUMNS, PATH_COLUMN, ROOM_TYPE_FOLDER]
        return out[columns], extra

    dropped = {
        **no_drops(),
        "rows_read": len(rows),
        **counts,
        "folder_skipped_unreadable": 0,
        SET_ASIDE: 0,
    }
    return Dataset(rows, dropped, what=cfg.path, finish=finish, skipped=skipped)
