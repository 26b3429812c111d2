"""`data.format=hotels50k`: the Hotels-50K metadata as published, a directory holding
`chain_info.csv`, `hotel_info.csv`, `train_set.csv` and `test_set.csv`.

The image table of `data.split` is read once with typed columns (1.1M rows in a few seconds);
only the drawn hotels' rows are joined with hotel and chain info (`sample_columns`). Bad metadata
never yields a silently wrong sample: missing files or columns, unparsable ids, image ids
repeated with different content and repeated hotel or chain ids are errors naming the file; rows
of hotels absent from `hotel_info.csv` and exact duplicate rows are dropped and counted.
docs/hotels50k.md.
"""

from __future__ import annotations

import functools
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pandas as pd

from alien_hotels.common import StageError
from alien_hotels.datasets.config import DataConfig
from alien_hotels.datasets.dataset import Dataset, no_drops
from alien_hotels.tables import SAMPLE_COLUMNS

# Hotels-50K metadata files and the columns each must have (the published headers).
HOTELS50K_FILES = {
    "chain_info": ["chain_id", "chain_name"],
    "hotel_info": ["hotel_id", "hotel_name", "chain_id", "latitude", "longitude"],
    "images": ["image_id", "hotel_id", "image_url", "image_source", "upload_timestamp"],
}
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "gif", "bmp"}


def load(cfg: DataConfig) -> Dataset:
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
        **no_drops(),
        "rows_read": int(len(rows) + unknown_hotel + dropped_duplicates),
        "dropped_duplicate_rows": dropped_duplicates,
        "dropped_unknown_hotel": unknown_hotel,
        "hotels_unknown_chain": int(hotels["chain_name"].isna().sum()),
    }
    if rows.empty:
        raise StageError(f"{images_path} has no rows of hotels listed in hotel_info.csv")
    return Dataset(
        rows.reset_index(drop=True),
        dropped,
        hotels=hotels,
        what=str(images_path),
        columns=functools.partial(sample_columns, hotels=hotels, cfg=cfg),
    )


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


def sample_columns(sample: pd.DataFrame, hotels: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
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
