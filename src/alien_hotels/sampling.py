"""Stage 1, `sample`: choose hotels and their images from the dataset.

The study drew 10 Hotels-50K hotels having 30-60 images each. Hotels are counted on the dataset's
rows (as the study did, before knowing which images download), then rows without an image or a
caption are dropped and counted, so the metric says how much of the sample is usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from alien_hotels.common import Section, StageError, read_csv

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


class DataConfig(Section):
    """`data.*`: which dataset to read and how to sample hotels from it."""

    name: str = "bundled"
    format: Literal["sample_csv"] = "sample_csv"
    path: str = "data/bundled/hotels_sample.csv"
    n_hotels: int = Field(10, ge=1)
    min_images: int = Field(30, ge=1)
    max_images: int = Field(60, ge=1)
    seed: int = 42
    # Column holding captions that ship with the dataset (used by `caption=precomputed`).
    caption_column: str | None = "description"

    @model_validator(mode="after")
    def _check_range(self) -> DataConfig:
        if self.min_images > self.max_images:
            raise ValueError(
                f"data.min_images ({self.min_images}) must not exceed "
                f"data.max_images ({self.max_images})"
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

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def load_dataset(cfg: DataConfig) -> pd.DataFrame:
    required = ["image_id", "hotel_id"]
    if cfg.caption_column:
        required.append(cfg.caption_column)
    df = read_csv(cfg.path, required, what=f"dataset (data.path={cfg.path})")
    if df.empty:
        raise StageError(f"dataset (data.path={cfg.path}) has no rows")
    duplicated = df["image_id"].duplicated()
    if duplicated.any():
        ids = df.loc[duplicated, "image_id"].head(5).tolist()
        raise StageError(f"dataset {cfg.path} repeats image_id values, e.g. {ids}")
    return df


def sample_hotels(df: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, SampleStats]:
    """Pick `cfg.n_hotels` hotels with `min_images..max_images` rows, seeded; keep usable rows."""
    counts = df.groupby("hotel_id").size()
    eligible = np.sort(counts[(counts >= cfg.min_images) & (counts <= cfg.max_images)].index)
    if len(eligible) < cfg.n_hotels:
        raise StageError(
            f"data.n_hotels={cfg.n_hotels} but only {len(eligible)} hotels have between "
            f"data.min_images={cfg.min_images} and data.max_images={cfg.max_images} images"
        )
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(eligible, size=cfg.n_hotels, replace=False)
    sample = df[df["hotel_id"].isin(chosen)]

    has_image = _truthy(sample["downloaded"]) if "downloaded" in sample else True
    no_image = ~pd.Series(has_image, index=sample.index)
    if cfg.caption_column:
        captions = sample[cfg.caption_column].astype("string").str.strip()
        no_caption = ~no_image & (captions.isna() | (captions == ""))
    else:
        no_caption = pd.Series(False, index=sample.index)
    kept = sample[~no_image & ~no_caption].sort_values(["hotel_id", "image_id"])
    stats = SampleStats(
        hotels_eligible=len(eligible),
        hotels_sampled=cfg.n_hotels,
        rows_sampled=len(sample),
        dropped_no_image=int(no_image.sum()),
        dropped_no_caption=int(no_caption.sum()),
        rows_kept=len(kept),
    )
    if kept.empty:
        raise StageError(
            f"none of the {len(sample)} sampled rows of {cfg.path} has an image and a caption"
        )
    return kept.reset_index(drop=True), stats


def _truthy(values: pd.Series) -> np.ndarray:
    text = values.astype("string").str.strip().str.lower()
    return text.isin(["true", "1", "yes"]).to_numpy()
