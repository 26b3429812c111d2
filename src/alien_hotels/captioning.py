"""Stage 2, `caption`: one caption per sampled image.

`caption.method=precomputed` takes the captions that ship with the dataset (the bundled sample
was captioned by the study with CLIP Interrogator, `blip-large` + `ViT-L-14/openai`, mode
`best`). Every method writes the same table, so the text half does not care where captions
come from.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

from alien_hotels.common import Section, StageError

CAPTION_COLUMNS = ["image_id", "caption", "caption_mode", "caption_model", "clip_model"]


class CaptionConfig(Section):
    """`caption.*`: how captions are produced and which models produced them."""

    method: Literal["precomputed"] = "precomputed"
    mode: Literal["best", "classic", "fast", "negative"] = "best"
    caption_model_name: str = "blip-large"
    clip_model_name: str = "ViT-L-14/openai"


def precomputed_captions(
    sample: pd.DataFrame, caption_column: str | None, cfg: CaptionConfig
) -> pd.DataFrame:
    """Captions taken from `caption_column` of the sample table."""
    if not caption_column:
        raise StageError(
            "caption.method=precomputed needs data.caption_column naming the caption column"
        )
    if caption_column not in sample.columns:
        raise StageError(
            f"caption.method=precomputed: the sample has no column {caption_column!r} "
            f"(data.caption_column); columns: {', '.join(sample.columns)}"
        )
    captions = sample[caption_column].astype("string").str.strip()
    keep = captions.notna() & (captions != "")
    return pd.DataFrame(
        {
            "image_id": sample.loc[keep, "image_id"].to_numpy(),
            "caption": captions[keep].to_numpy(),
            "caption_mode": cfg.mode,
            "caption_model": cfg.caption_model_name,
            "clip_model": cfg.clip_model_name,
        },
        columns=CAPTION_COLUMNS,
    )
