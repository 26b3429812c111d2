"""`data.format=sample_csv`: one table with the study's columns (the bundled, already captioned
sample). Ids must be integers and `image_id` unique; anything else is an error naming the file."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alien_hotels.common import StageError, read_csv
from alien_hotels.datasets.config import DataConfig
from alien_hotels.datasets.dataset import ID_COLUMNS, Dataset, no_drops


def load(cfg: DataConfig) -> Dataset:
    """The table `cfg.path`, checked; its rows are the sample's already."""
    rows = _read(cfg)
    return Dataset(rows, {**no_drops(), "rows_read": len(rows)}, what=cfg.path)


def _read(cfg: DataConfig) -> pd.DataFrame:
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
