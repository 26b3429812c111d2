"""Stage 1, `sample`: choose hotels and their images from the dataset.

The study drew 10 Hotels-50K hotels having 30-60 images each. Hotels are counted on the dataset's
rows (as the study did, before knowing which images download), then rows without an image or a
caption are dropped and counted, so the metric says how much of the sample is usable.

Three inputs are understood (`data.format`):

* `sample_csv`: one table with the study's columns (the bundled, already captioned sample);
* `hotels50k`: the Hotels-50K metadata as published, a directory holding `chain_info.csv`,
  `hotel_info.csv`, `train_set.csv` and `test_set.csv`. The image table of `data.split` is read
  once with typed columns (1.1M rows in a few seconds), filtered and counted; only the chosen
  hotels' rows are joined with hotel and chain info and turned into the study's columns;
* `folder`: your own photos, a directory with one folder per hotel (room-type folders inside
  optional), as torchvision's ImageFolder reads it (`alien_hotels.folders`, docs/folder.md).

Bad metadata never yields a silently wrong sample: missing files or columns, unparsable ids,
image ids repeated with different content and repeated hotel or chain ids are errors naming the
file; rows of hotels absent from `hotel_info.csv` and exact duplicate rows are dropped and
counted in `metrics/sample.json`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from alien_hotels import folders
from alien_hotels.common import Section, Seed, StageError, read_csv

log = logging.getLogger(__name__)

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

# Hotels-50K metadata files and the columns each must have (the published headers).
HOTELS50K_FILES = {
    "chain_info": ["chain_id", "chain_name"],
    "hotel_info": ["hotel_id", "hotel_name", "chain_id", "latitude", "longitude"],
    "images": ["image_id", "hotel_id", "image_url", "image_source", "upload_timestamp"],
}
ID_COLUMNS = ("image_id", "hotel_id", "chain_id")  # integers in every dataset
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "gif", "bmp"}


class DataConfig(Section):
    """`data.*`: which dataset to read and how to sample hotels from it."""

    format: Literal["sample_csv", "hotels50k", "folder"]
    # sample_csv: the CSV file; hotels50k: the directory with the four metadata CSVs; folder:
    # the photo tree `<hotel>/[<room type>/]<image>`.
    path: str
    # hotels50k: which image table to sample from (`train_set.csv` or `test_set.csv`).
    split: Literal["train", "test"]
    # The dataset's local image tree `<chain_id>/<hotel_id>/<source>/<image_id>.<ext>`, if any
    # (read by the images stage; it need not exist); for `folder`, the photo tree itself.
    images_dir: str | None
    # Follow symlinks that lead out of data.path / data.images_dir (off: refused and counted).
    follow_external_symlinks: bool
    n_hotels: int | None = Field(ge=1)  # null: every hotel with min..max images
    min_images: int = Field(ge=1)
    max_images: int = Field(ge=1)
    seed: Seed
    # Optional filters, applied before images are counted; empty means no filter.
    image_sources: list[str]
    chains: list[int | str]  # chain ids (numbers) or exact chain names (text)
    hotel_ids: list[int]
    # Column holding captions that ship with the dataset (used by `caption=precomputed`).
    caption_column: str | None

    @model_validator(mode="after")
    def _check_range(self) -> DataConfig:
        if self.min_images > self.max_images:
            raise ValueError(
                f"data.min_images ({self.min_images}) must not exceed "
                f"data.max_images ({self.max_images})"
            )
        return self

    @model_validator(mode="after")
    def _check_folder_filters(self) -> DataConfig:
        # A photo tree has hotels and files only: a filter on its absent columns would fail
        # later with a puzzling "needs a column" message.
        if self.format != "folder":
            return self
        for key, what in (("chains", "chains"), ("image_sources", "image sources")):
            if getattr(self, key):
                raise ValueError(
                    f"data.{key} does not apply to data.format=folder (a photo tree has no "
                    f"{what}); use data.hotel_ids or data.n_hotels"
                )
        return self


@dataclass(frozen=True)
class SampleStats:
    hotels_eligible: int
    hotels_sampled: int
    rows_sampled: int
    dropped_no_image: int
    dropped_no_caption: int
    rows_kept: int
    load: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in self.__dict__.items() if k != "load"}
        return {**out, **self.load}


@dataclass
class Dataset:
    """Image rows (`image_id`, `hotel_id`, `source`, `chain_id`, ...) plus what loading dropped."""

    rows: pd.DataFrame
    dropped: dict[str, int]
    hotels: pd.DataFrame | None = None  # hotels50k: hotel_info joined with chain_info
    what: str = ""
    # The sampled rows to the sample's columns, adding its counts to `dropped` (folder: reads
    # the chosen hotels' files for their ids); None: the rows are the sample's already.
    finish: Callable[[pd.DataFrame], tuple[pd.DataFrame, dict[str, int]]] | None = None
    # folder: every file of the tree left out, with its path and reason (folders.Skipped)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)


def read_dataset(cfg: DataConfig) -> Dataset:
    """The dataset's image rows with what loading dropped (and, for Hotels-50K, the hotels)."""
    if cfg.format == "hotels50k":
        return load_hotels50k(cfg)
    if cfg.format == "folder":
        return load_folder(cfg)
    rows = _read_sample_csv(cfg)
    return Dataset(rows, {**_no_drops(), "rows_read": len(rows)}, what=cfg.path)


def _read_sample_csv(cfg: DataConfig) -> pd.DataFrame:
    """The rows of a `sample_csv` dataset, checked."""
    required = ["image_id", "hotel_id"]
    if cfg.caption_column:
        required.append(cfg.caption_column)
    df = read_csv(cfg.path, required, what=f"dataset (data.path={cfg.path})")
    if df.empty:
        raise StageError(f"dataset (data.path={cfg.path}) has no rows")
    df = _integer_ids(df, cfg.path)
    duplicated = df["image_id"].duplicated()
    if duplicated.any():
        ids = df.loc[duplicated, "image_id"].head(5).tolist()
        raise StageError(f"dataset {cfg.path} repeats image_id values, e.g. {ids}")
    return df


def _integer_ids(df: pd.DataFrame, path: str) -> pd.DataFrame:
    """`df` with its id columns checked: integers (int64; `chain_id` may be empty), named with
    the first bad values if not. Ids become folder and file names and array keys later."""
    for column in ID_COLUMNS:
        if column not in df.columns or pd.api.types.is_integer_dtype(df[column]):
            continue
        values = df[column]
        number = pd.Series(np.nan, index=df.index)
        if not pd.api.types.is_bool_dtype(values):
            number = pd.to_numeric(values, errors="coerce").astype("float64")
        whole = number.notna() & (number % 1 == 0) & (number.abs() < 2**63)
        empty_allowed = values.isna() if column == "chain_id" else False
        bad = ~(whole | empty_allowed)
        if bad.any():
            shown = ", ".join(repr(v) for v in values[bad].head(5).tolist())
            raise StageError(
                f"dataset {path}: column {column} must hold integers (ids), but {int(bad.sum())} "
                f"row(s) do not, e.g. {shown}"
            )
        if not pd.api.types.is_float_dtype(values):  # integers written as text: as numbers
            exact = pd.to_numeric(values).astype("Int64" if column == "chain_id" else "int64")
            df = df.assign(**{column: exact})
    return df


def sample_hotels(data: Dataset, cfg: DataConfig) -> tuple[pd.DataFrame, SampleStats]:
    """Pick `cfg.n_hotels` hotels with `min_images..max_images` rows, seeded; keep usable rows."""
    df = _apply_filters(data.rows, cfg, data)
    counts = df["hotel_id"].value_counts(sort=False)
    eligible = np.sort(counts[(counts >= cfg.min_images) & (counts <= cfg.max_images)].index)
    n_hotels = len(eligible) if cfg.n_hotels is None else cfg.n_hotels
    if cfg.n_hotels is None and not n_hotels:
        raise StageError(
            f"no hotel has between data.min_images={cfg.min_images} and "
            f"data.max_images={cfg.max_images} images"
            + (" after the filters" if _has_filters(cfg) else "")
        )
    if len(eligible) < n_hotels:
        raise StageError(
            f"data.n_hotels={cfg.n_hotels} but only {len(eligible)} hotels have between "
            f"data.min_images={cfg.min_images} and data.max_images={cfg.max_images} images"
            + (" after the filters" if _has_filters(cfg) else "")
        )
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(eligible, size=n_hotels, replace=False)
    sample = df[df["hotel_id"].isin(chosen)]
    if data.hotels is not None:
        sample = _hotels50k_columns(sample, data.hotels, cfg)
    if data.finish is not None:
        sample = _finish(sample, eligible[~np.isin(eligible, chosen)], rng, df, data, cfg)
        n_hotels = sample["hotel_id"].nunique()

    has_image = _truthy(sample["downloaded"]) if "downloaded" in sample else True
    if cfg.format in ("hotels50k", "folder"):  # the images stage decides; nothing is known yet
        has_image = True
    no_image = ~pd.Series(has_image, index=sample.index)
    if cfg.caption_column and cfg.caption_column in sample:
        captions = sample[cfg.caption_column].astype("string").str.strip()
        no_caption = ~no_image & (captions.isna() | (captions == ""))
    elif cfg.caption_column:
        raise StageError(
            f"data.caption_column={cfg.caption_column!r} is not a column of {data.what}; "
            "set data.caption_column=null when the dataset has no captions"
        )
    else:
        no_caption = pd.Series(False, index=sample.index)
    kept = sample[~no_image & ~no_caption].sort_values(["hotel_id", "image_id"])
    stats = SampleStats(
        hotels_eligible=len(eligible),
        hotels_sampled=n_hotels,
        rows_sampled=len(sample),
        dropped_no_image=int(no_image.sum()),
        dropped_no_caption=int(no_caption.sum()),
        rows_kept=len(kept),
        load={**data.dropped, "rows_after_filters": len(df)},
    )
    if kept.empty:
        raise StageError(
            f"none of the {len(sample)} sampled rows of {cfg.path} has an image and a caption"
        )
    return kept.reset_index(drop=True), stats


# Hotels set aside after the draw because `finish` left them below data.min_images.
SET_ASIDE = "folder_hotels_below_min_after_unreadable"


def _finish(
    sample: pd.DataFrame,
    left: np.ndarray,
    rng: np.random.Generator,
    df: pd.DataFrame,
    data: Dataset,
    cfg: DataConfig,
) -> pd.DataFrame:
    """`data.finish` applied to the drawn rows, keeping `data.min_images` per hotel.

    `finish` may drop rows (folder: files unreadable when hashed, after the draw counted them).
    A hotel left with fewer than `min_images` rows is set aside (a warning, a count); with
    `data.n_hotels` set, another is drawn in its place from the eligible hotels not drawn yet
    (`left`), by the same generator: deterministic, and the draw is unchanged when nothing drops.
    """
    parts = []
    while not sample.empty:
        done, counts = data.finish(sample)
        for key, n in counts.items():  # summed over the rounds
            data.dropped[key] = data.dropped.get(key, 0) + n
        short = _below_min(sample, done, cfg, replace=cfg.n_hotels is not None)
        data.dropped[SET_ASIDE] = data.dropped.get(SET_ASIDE, 0) + len(short)
        for name in sample.loc[sample["hotel_id"].isin(short), "hotel_name"].unique():
            data.skipped.append(
                (f"{name}/", "hotel_below_min_after_unreadable", "see data.min_images")
            )
        parts.append(done[~done["hotel_id"].isin(short)])
        more = len(short) if cfg.n_hotels is not None else 0
        if more > len(left):
            raise StageError(
                f"data.n_hotels={cfg.n_hotels} but too few hotels keep data.min_images="
                f"{cfg.min_images} images once unreadable files are left out "
                f"({data.dropped[SET_ASIDE]} set aside, see the warnings above)"
            )
        redrawn = rng.choice(left, size=more, replace=False)
        left = left[~np.isin(left, redrawn)]
        sample = df[df["hotel_id"].isin(redrawn)]
    out = pd.concat(parts)
    if out.empty:
        raise StageError(
            f"no hotel keeps data.min_images={cfg.min_images} images once unreadable files are "
            "left out (see the warnings above)"
        )
    return out


def _below_min(
    before: pd.DataFrame, after: pd.DataFrame, cfg: DataConfig, replace: bool
) -> list[int]:
    """The hotels `finish` left with fewer than `cfg.min_images` rows, each with a warning."""
    had = before["hotel_id"].value_counts()
    kept = after["hotel_id"].value_counts().reindex(had.index, fill_value=0)
    short = sorted(had.index[kept < cfg.min_images])
    names = before.drop_duplicates("hotel_id").set_index("hotel_id").get("hotel_name")
    for hotel in short:
        name = names[hotel] if names is not None else hotel
        log.warning(
            "hotel %r: %d of its %d files could not be read, fewer than data.min_images=%d "
            "remain; %s",
            name,
            had[hotel] - kept[hotel],
            had[hotel],
            cfg.min_images,
            "another hotel is drawn instead" if replace else "it is left out of the sample",
        )
    return short


# --- Hotels-50K metadata ---------------------------------------------------------------------


def load_hotels50k(cfg: DataConfig) -> Dataset:
    """Read the metadata directory `cfg.path`; validate it; return image rows and hotels."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise StageError(
            f"data.format=hotels50k: data.path={cfg.path} is not a directory; it must hold "
            "chain_info.csv, hotel_info.csv, train_set.csv and test_set.csv (see docs/hotels50k.md)"
        )
    chains = _read_meta(
        root / "chain_info.csv", HOTELS50K_FILES["chain_info"], {"chain_id": "Int64"}
    )
    hotels = _read_meta(
        root / "hotel_info.csv",
        HOTELS50K_FILES["hotel_info"],
        {"hotel_id": "int64", "chain_id": "Int64", "latitude": "float64", "longitude": "float64"},
    )
    images_path = root / f"{cfg.split}_set.csv"
    columns = list(HOTELS50K_FILES["images"])
    if cfg.caption_column:  # captions made earlier and kept beside the metadata (optional)
        if images_path.is_file() and cfg.caption_column not in _header(images_path):
            raise StageError(
                f"data.caption_column={cfg.caption_column!r} is not a column of {images_path}; "
                "the published metadata has no captions: set data.caption_column=null"
            )
        columns.append(cfg.caption_column)
    rows = _read_meta(
        images_path,
        columns,
        {"image_id": "int64", "hotel_id": "int64", "image_source": "category"},
    )
    _unique(chains, "chain_id", root / "chain_info.csv")
    _unique(hotels, "hotel_id", root / "hotel_info.csv")
    rows, dropped_duplicates = _dedupe_images(rows, images_path)

    known = rows["hotel_id"].isin(hotels["hotel_id"])
    unknown_hotel = int((~known).sum())
    if unknown_hotel:
        rows = rows[known]
    rows = rows.rename(
        columns={"image_url": "url", "image_source": "source", "upload_timestamp": "timestamp"}
    )
    hotels = hotels.merge(chains, on="chain_id", how="left", validate="many_to_one")
    chain_of = pd.Series(hotels["chain_id"].to_numpy(), index=hotels["hotel_id"].to_numpy())
    rows = rows.assign(chain_id=rows["hotel_id"].map(chain_of).astype("Int64"))
    dropped = {
        **_no_drops(),
        "rows_read": int(len(rows) + unknown_hotel + dropped_duplicates),
        "dropped_duplicate_rows": dropped_duplicates,
        "dropped_unknown_hotel": unknown_hotel,
        "hotels_unknown_chain": int(hotels["chain_name"].isna().sum()),
    }
    if rows.empty:
        raise StageError(f"{images_path} has no rows of hotels listed in hotel_info.csv")
    return Dataset(rows.reset_index(drop=True), dropped, hotels=hotels, what=str(images_path))


def _read_meta(path: Path, columns: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    header = _header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise StageError(
            f"{path} lacks column(s) {', '.join(missing)}; it has: {', '.join(map(str, header))} "
            f"(expected a header line with {', '.join(columns)})"
        )
    try:
        return pd.read_csv(path, usecols=columns, dtype=dtypes)
    except (ValueError, TypeError) as exc:
        raise StageError(f"{path}: a column has values of the wrong type ({exc})") from None


def _header(path: Path) -> pd.Index:
    if not path.is_file():
        raise StageError(f"Hotels-50K metadata file not found: {path}")
    try:
        return pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise StageError(f"Hotels-50K metadata file is empty: {path}") from None


def _unique(df: pd.DataFrame, column: str, path: Path) -> None:
    repeated = df[column].duplicated(keep=False)
    if repeated.any():
        ids = df.loc[repeated, column].drop_duplicates().head(5).tolist()
        raise StageError(f"{path} repeats {column} values, e.g. {ids}")


def _dedupe_images(rows: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate rows (counted); an image id with two different rows is an error."""
    repeated = rows["image_id"].duplicated(keep=False)
    if not repeated.any():
        return rows, 0
    dups = rows[repeated]
    exact = dups.astype({"image_source": "object"}).duplicated(keep="first")
    conflicting = dups.loc[~exact, "image_id"]
    conflicting = conflicting[conflicting.duplicated()]
    if not conflicting.empty:
        ids = conflicting.drop_duplicates().head(5).tolist()
        raise StageError(
            f"{path} lists image_id values more than once with different hotels, URLs or "
            f"sources, e.g. {ids}: fix the file (which row is right cannot be guessed)"
        )
    return rows.drop(index=dups.index[exact]), int(exact.sum())


def _hotels50k_columns(sample: pd.DataFrame, hotels: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """The study's columns for the chosen rows (cheap: a few hundred rows)."""
    info = hotels[["hotel_id", "hotel_name", "latitude", "longitude", "chain_name"]]
    out = sample.merge(info, on="hotel_id", how="left", validate="many_to_one")
    ext = out["url"].map(_url_extension)
    out["image_name"] = out["image_id"].astype(str) + "." + ext
    out["image_folder"] = (
        f"images/{cfg.split}/"
        + out["chain_id"].astype("string").fillna("unknown")
        + "/"
        + out["hotel_id"].astype(str)
        + "/"
        + out["source"].astype(str)
    )
    out["downloaded"] = pd.NA  # unknown until the images stage runs (data/interim/images.csv)
    out["source"] = out["source"].astype(str)
    extra = [cfg.caption_column] if cfg.caption_column in out.columns else []
    return out[SAMPLE_COLUMNS + extra]


def _url_extension(url: object) -> str:
    """The file extension the dataset uses for an image (`jpg` when the URL has none)."""
    suffix = PurePosixPath(urlsplit(str(url)).path).suffix.lower().lstrip(".")
    return suffix if suffix in IMAGE_EXTENSIONS else "jpg"


# --- your own photos: a folder per hotel ------------------------------------------------------


def load_folder(cfg: DataConfig) -> Dataset:
    """The image files of the tree `cfg.path` (names only); ids are made for the chosen hotels."""
    follow = cfg.follow_external_symlinks
    skipped: folders.Skipped = []
    rows, counts = folders.scan(cfg.path, follow, skipped)  # an error when the tree has no image

    def finish(sample: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
        out, extra = folders.identify(sample, cfg.path, follow, skipped)
        columns = [*SAMPLE_COLUMNS, folders.PATH_COLUMN, folders.ROOM_TYPE_COLUMN]
        return out[columns], extra

    dropped = {
        **_no_drops(),
        "rows_read": len(rows),
        **counts,
        "folder_skipped_unreadable": 0,
        SET_ASIDE: 0,
    }
    return Dataset(rows, dropped, what=cfg.path, finish=finish, skipped=skipped)


# --- filters ---------------------------------------------------------------------------------


def _has_filters(cfg: DataConfig) -> bool:
    return bool(cfg.image_sources or cfg.chains or cfg.hotel_ids)


def _apply_filters(df: pd.DataFrame, cfg: DataConfig, data: Dataset) -> pd.DataFrame:
    if not _has_filters(cfg):
        return df
    keep = pd.Series(True, index=df.index)
    if cfg.image_sources:
        _need(df, "source", "data.image_sources", data)
        known = set(df["source"].astype(str).unique())
        unknown = sorted(set(cfg.image_sources) - known)
        if unknown:
            raise StageError(
                f"data.image_sources: {unknown} not found in {data.what}; "
                f"sources there: {sorted(known)}"
            )
        keep &= df["source"].astype(str).isin(cfg.image_sources).to_numpy()
    if cfg.chains:
        chain_ids = {c for c in cfg.chains if isinstance(c, int)}
        names = {c for c in cfg.chains if isinstance(c, str)}
        if names:
            table = data.hotels if data.hotels is not None else df
            _need(table, "chain_name", "data.chains (names)", data)
            by_name = table.loc[table["chain_name"].isin(names), ["chain_id", "chain_name"]]
            missing = sorted(names - set(by_name["chain_name"]))
            if missing:
                raise StageError(f"data.chains: no chain named {missing} in {data.what}")
            chain_ids |= set(by_name["chain_id"].dropna().astype(int))
        _need(df, "chain_id", "data.chains", data)
        keep &= df["chain_id"].isin(list(chain_ids)).fillna(False).to_numpy(dtype=bool)
    if cfg.hotel_ids:
        absent = sorted(set(cfg.hotel_ids) - set(df["hotel_id"].unique()))
        if absent:
            raise StageError(f"data.hotel_ids: {absent} have no images in {data.what}")
        keep &= df["hotel_id"].isin(cfg.hotel_ids).to_numpy()
    out = df[keep.to_numpy()]
    if out.empty:
        raise StageError(f"the data filters leave no rows of {data.what}")
    return out


def _need(df: pd.DataFrame, column: str, key: str, data: Dataset) -> None:
    if column not in df.columns:
        raise StageError(f"{key} needs a column {column!r}, which {data.what} lacks")


def _no_drops() -> dict[str, int]:
    return {
        "rows_read": 0,
        "dropped_duplicate_rows": 0,
        "dropped_unknown_hotel": 0,
        "hotels_unknown_chain": 0,
    }


def _truthy(values: pd.Series) -> np.ndarray:
    text = values.astype("string").str.strip().str.lower()
    return text.isin(["true", "1", "yes"]).to_numpy()
