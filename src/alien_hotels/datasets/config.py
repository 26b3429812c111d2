"""`data.*`: which dataset to read and how to sample hotels from it (values in conf/data/)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alien_hotels.common import Section, Seed


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
