"""`caption.*`: how captions are produced and which models produced them (docs/captioning.md;
values in conf/caption/). No torch here: params.yaml validates without the model stack."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alien_hotels.common import Section

# The caption models CLIP Interrogator knows (its `CAPTION_MODELS`: importing the library means
# importing torch, which validating params.yaml must not; tests/test_captioning.py compares them).
CAPTION_MODELS = {
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
    "blip2-2.7b": "Salesforce/blip2-opt-2.7b",
    "blip2-flan-t5-xl": "Salesforce/blip2-flan-t5-xl",
    "git-large-coco": "microsoft/git-large-coco",
}
CaptionModelName = Literal[tuple(CAPTION_MODELS)]  # the keys, one list


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
