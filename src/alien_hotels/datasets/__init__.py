"""The dataset readers, one module per `data.format`, each `load(cfg: DataConfig) -> Dataset`.

- `config`: the `data.*` section.
- `dataset`: `Dataset`, what every reader returns (image rows, what loading dropped, and how the
  drawn rows become the sample's columns).
- `csv`: `sample_csv`, one table with the study's columns (the bundled, captioned sample).
- `hotels50k`: the Hotels-50K metadata directory as published (docs/hotels50k.md).
- `folder`: your own photos, one folder per hotel (docs/folder.md).

The draw itself (hotels with `min_images..max_images` rows, seeded, filters) is
`alien_hotels.sampling`; the sample table's columns are `tables.SAMPLE_COLUMNS`.
"""

from __future__ import annotations

from alien_hotels.datasets import csv, folder, hotels50k
from alien_hotels.datasets.config import DataConfig
from alien_hotels.datasets.dataset import Dataset

READERS = {"sample_csv": csv.load, "hotels50k": hotels50k.load, "folder": folder.load}


def read_dataset(cfg: DataConfig) -> Dataset:
    """The dataset's image rows with what loading dropped (and, for Hotels-50K, the hotels)."""
    return READERS[cfg.format](cfg)
