"""Stage `preprocess`: truncate and lemmatize captions (text.*). Room types are the room_types
stage's: it owns the caption keyword rules."""

from __future__ import annotations

import pandas as pd

from alien_hotels import text
from alien_hotels.common import StageError, read_csv, write_csv, write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths

TEXT_COLUMNS = ["image_id", "hotel_id", "hotel_name", "caption", "text"]


def run(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    sample = read_csv(
        paths.sample, ["image_id", "hotel_id"], what="sample table", usecols=["hotel_name"]
    )
    captions = read_csv(paths.captions, ["image_id", "caption"], what="captions table", usecols=[])
    if "hotel_name" not in sample.columns:
        sample = sample.assign(hotel_name=sample["hotel_id"].astype(str))
    table = captions[["image_id", "caption"]].merge(
        sample[["image_id", "hotel_id", "hotel_name"]], on="image_id", how="inner"
    )
    table = table[table["caption"].astype("string").str.strip().fillna("") != ""]
    if table.empty:
        raise StageError("preprocess: no captioned images (captions and sample share no image_id)")
    preprocessor = text.CaptionPreprocessor(params.text)
    table = table.assign(text=preprocessor.transform(table["caption"].astype(str)))
    empty = table["text"].str.strip() == ""
    out = table.loc[~empty, TEXT_COLUMNS].reset_index(drop=True)
    if out.empty:
        raise StageError("preprocess: every text is empty after truncation and stopword removal")
    write_csv(out, paths.texts)
    write_json(
        {
            "n_docs": len(out),
            "dropped_empty": int(empty.sum()),
            "distinct_words": preprocessor.distinct_words,
        },
        paths.preprocess_metrics,
    )
    return out
