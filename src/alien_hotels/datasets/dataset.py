"""What every dataset reader returns (`Dataset`) and the counts they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

ID_COLUMNS = ("image_id", "hotel_id", "chain_id")  # integers in every dataset
# Hotels set aside after the draw because `finish` left them below data.min_images.
SET_ASIDE = "folder_hotels_below_min_after_unreadable"


@dataclass
class Dataset:
    """Image rows (`image_id`, `hotel_id`, `source`, `chain_id`, ...) plus what loading dropped."""

    rows: pd.DataFrame
    dropped: dict[str, int]
    hotels: pd.DataFrame | None = None  # hotels50k: hotel_info joined with chain_info
    what: str = ""
    # hotels50k: the drawn rows to the sample's columns (joined with the hotels); None: the rows
    # have them already, or `finish` makes them.
    columns: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    # The sampled rows to the sample's columns, adding its counts to `dropped` (folder: reads
    # the chosen hotels' files for their ids); None: the rows are the sample's already.
    finish: Callable[[pd.DataFrame], tuple[pd.DataFrame, dict[str, int]]] | None = None
    # folder: every file of the tree left out, with its path and reason (folder.Skipped)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)


def no_drops() -> dict[str, int]:
    return {
        "rows_read": 0,
        "dropped_duplicate_rows": 0,
        "dropped_unknown_hotel": 0,
        "hotels_unknown_chain": 0,
    }
