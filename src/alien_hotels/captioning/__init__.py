"""Stage 2, `caption`: one caption per sampled image.

`caption.method=precomputed` takes the captions that ship with the dataset (the bundled sample
was captioned by the study with CLIP Interrogator, `blip-large` + `ViT-L-14/openai`, mode
`best`). `caption.method=clip_interrogator` runs CLIP Interrogator on the images of the images
manifest (`data/interim/images.csv`): batched, resumable, offline-safe (see docs/captioning.md).
`caption.method=file` takes captions made elsewhere from the CSV `caption.file`, keyed by the
photo's path in the tree or its id (`captioning.fromfile`): no model, no network.
Every method writes the same table, so the text half does not care where captions come from.

This module stays light (no torch import): the output columns and `precomputed_captions`; the
`caption.*` section is in `config`, the model code in the other submodules.
"""

from __future__ import annotations

import pandas as pd

from alien_hotels.captioning.config import CaptionConfig
from alien_hotels.common import StageError

CAPTION_COLUMNS = ["image_id", "caption", "caption_mode", "caption_model", "clip_model"]
FAILURE_COLUMNS = ["image_id", "path", "reason", "detail"]


def precomputed_captions(
    sample: pd.DataFrame, caption_column: str | None, cfg: CaptionConfig
) -> pd.DataFrame:
    """Captions taken from `caption_column` of the sample table."""
    if not caption_column:  # data=folder, hotels50k: photos without captions
        raise StageError(
            "caption.method=precomputed needs data.caption_column naming the caption column, "
            "and this dataset has none: caption the photos with the model instead, "
            "`alien-hotels models download --only caption` once (online), then "
            "`dvc exp run -S caption=clip_interrogator`, or bring captions made elsewhere as a "
            "CSV with `-S caption=file` (see docs/folder.md)"
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
