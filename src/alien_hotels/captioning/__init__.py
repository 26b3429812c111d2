"""Stage 2, `caption`: one caption per sampled image.

`caption.method=precomputed` takes the captions that ship with the dataset (the bundled sample
was captioned by the study with CLIP Interrogator, `blip-large` + `ViT-L-14/openai`, mode
`best`). `caption.method=clip_interrogator` runs CLIP Interrogator on the images of the images
manifest (`data/interim/images.csv`): batched, resumable, offline-safe (see docs/captioning.md).
`caption.method=file` takes captions made elsewhere from the CSV `caption.file`, keyed by the
photo's path in the tree or its id (`captioning.fromfile`): no model, no network.
Every method writes the same table, so the text half does not care where captions come from.

This module stays light (no torch import); the model code lives in the submodules.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from alien_hotels.common import Section, StageError

CAPTION_COLUMNS = ["image_id", "caption", "caption_mode", "caption_model", "clip_model"]
FAILURE_COLUMNS = ["image_id", "path", "reason", "detail"]

# clip_interrogator.CAPTION_MODELS, repeated here so configs validate without importing torch
# (a test checks both stay equal).
CAPTION_MODELS = {
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
    "blip2-2.7b": "Salesforce/blip2-opt-2.7b",
    "blip2-flan-t5-xl": "Salesforce/blip2-flan-t5-xl",
    "git-large-coco": "microsoft/git-large-coco",
}
CaptionModelName = Literal[
    "blip-base", "blip-large", "blip2-2.7b", "blip2-flan-t5-xl", "git-large-coco"
]


class CaptionConfig(Section):
    """`caption.*`: how captions are produced and which models produced them."""

    method: Literal["precomputed", "clip_interrogator", "file"]
    # caption=file: a CSV of `image_path` (relative to data.path) or `image_id`, and `caption`.
    # A dependency of the caption stage in every mode, so the other modes name a stand-in.
    file: str = Field(min_length=1)
    # Where clip_interrogator runs: this process, or a pool of Ray actors (`ray.*`).
    executor: Literal["local", "ray"]
    mode: Literal["best", "classic", "fast", "negative"]
    # Models: a CLIP Interrogator caption model key and an open_clip `arch/pretrained` name.
    caption_model_name: CaptionModelName
    clip_model_name: str = Field(pattern=r"^[^/]+/.+$")
    # Local weights instead of the hub: a `save_pretrained` folder for the caption model; an
    # open_clip folder (open_clip_config.json + weights) or a checkpoint file for CLIP.
    caption_model_path: str | None
    clip_model_path: str | None
    # Interrogator settings (clip_interrogator.Config).
    min_flavors: int = Field(ge=0)
    max_flavors: int = Field(ge=1)
    chunk_size: int = Field(ge=1)
    flavor_intermediate_count: int = Field(ge=1)
    caption_max_length: int = Field(ge=1)
    caption_offload: bool
    clip_offload: bool
    # `fast`: our prefix-cached flavor chain (same strings, far less compute); `library`:
    # clip_interrogator's own chain.
    chain: Literal["fast", "library"]
    device: Literal["auto", "cuda", "mps", "cpu"]
    dtype: Literal["auto", "float32", "float16"]
    # torch intra-op threads (torch.set_num_threads), like the text stages' n_jobs.
    n_jobs: int = Field(ge=1, le=1024)
    # Label phrase lists (artists.txt, flavors.txt, ...); null: the ones clip-interrogator ships.
    labels_path: str | None
    # Where label embeddings are cached per CLIP model; null: $XDG_CACHE_HOME/alien-hotels/labels.
    label_cache_dir: str | None
    # Fetch precomputed label embeddings at run time (off: computed once locally, or fetched by
    # `alien-hotels models download`).
    download_label_cache: bool
    # Let the stage download missing model weights itself (off: fail fast, naming the model).
    allow_download: bool
    # Throughput and robustness.
    batch_size: int = Field(ge=1)
    loader_workers: int = Field(ge=0)
    max_image_side: int = Field(ge=64)
    max_image_pixels: int = Field(ge=1)
    checkpoint_dir: str
    resume: bool
    progress: bool

    @model_validator(mode="after")
    def _check_flavors(self) -> CaptionConfig:
        if self.min_flavors > self.max_flavors:
            raise ValueError(
                f"caption.min_flavors ({self.min_flavors}) must not exceed "
                f"caption.max_flavors ({self.max_flavors})"
            )
        return self


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
