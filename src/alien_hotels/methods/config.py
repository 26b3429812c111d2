"""`edit.textual_inversion.*` and `edit.imagic.*`: the two trained edit methods (no torch here).

Values live in `conf/edit/textual_inversion/default.yaml` and `conf/edit/imagic/default.yaml`;
these models only validate them (types, ranges, choices), naming the parameter in every message.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import Field, field_validator

from alien_hotels.common import Section, Seed

# Reference folders live under this tracked folder, so the stage's `deps:` in dvc.yaml covers them.
REFERENCES_ROOT = "data/references"
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
# The score an edit is meant to raise (shared with the recipes in editing/config.py).
Goal = Literal["neon", "green", "no_towels", "alien"]


class TextualInversionConfig(Section):
    """Learn one new token's embedding from a folder of reference images (everything frozen)."""

    # null: nothing to learn (the stage writes empty outputs without loading a model).
    reference_dir: str | None
    placeholder_token: str = Field(pattern=r"^\S+$")
    # An existing single-token word whose embedding starts the new one.
    initializer_token: str = Field(pattern=r"^\S+$")
    model_id: str
    # Prompts used in training; `{}` is replaced by the placeholder token.
    templates: list[str] = Field(min_length=1)
    steps: int = Field(ge=1, le=1_000_000)
    learning_rate: float = Field(gt=0.0, le=1.0)
    batch_size: int = Field(ge=1, le=256)
    gradient_accumulation: int = Field(ge=1, le=256)
    resolution: int = Field(ge=64, le=2048, multiple_of=8)
    seed: Seed
    # auto: fp16 on CUDA, full precision elsewhere (fp16 needs a GPU; bf16 works on CPUs too).
    mixed_precision: MixedPrecision
    # Optimizer steps between checkpoints (a killed run resumes from the last one).
    checkpoint_interval: int = Field(ge=1)

    @field_validator("reference_dir")
    @classmethod
    def _under_references(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or path.parts[:2] != ("data", "references"):
            raise ValueError(
                f"must be a folder inside {REFERENCES_ROOT}/ (the stage's tracked dependency), "
                f"e.g. {REFERENCES_ROOT}/alien_style"
            )
        return value

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, templates: list[str]) -> list[str]:
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise ValueError(f"every template needs a {{}} slot for the token; missing in {bad}")
        return templates


class ImagicConfig(Section):
    """Imagic (Kawar et al. 2023, arXiv 2210.09276) on each selected image of the manifest."""

    model_id: str
    target_text: str = Field(min_length=1)
    # Edit at most this many manifest images (manifest order); null: all.
    max_images: int | None = Field(ge=0)
    resolution: int = Field(ge=64, le=2048, multiple_of=8)
    seed: Seed
    # Phase 1: optimise the target text embedding to reconstruct the image (model frozen).
    embedding_steps: int = Field(ge=1, le=100_000)
    embedding_lr: float = Field(gt=0.0, le=1.0)
    # Phase 2: fine-tune the UNet on the optimised embedding: LoRA (small per-image state) or full.
    finetune: Literal["lora", "full"]
    lora_rank: int = Field(ge=1, le=256)
    lora_alpha: float = Field(gt=0.0)
    unet_steps: int = Field(ge=1, le=100_000)
    unet_lr: float = Field(gt=0.0, le=1.0)
    mixed_precision: MixedPrecision
    # Phase 3: generate with e = alpha * e_target + (1 - alpha) * e_optimised for every alpha.
    alphas: list[float] = Field(min_length=1)
    guidance_scale: float = Field(ge=0.0, le=50.0)
    inference_steps: int = Field(ge=1, le=1000)
    # The score whose rise counts as edit success (as a recipe's goal).
    goal: Goal

    @field_validator("alphas")
    @classmethod
    def _alphas_in_range(cls, alphas: list[float]) -> list[float]:
        bad = [a for a in alphas if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(
                "alpha must lie in [0, 1] (0: the optimised embedding, 1: the target text); "
                f"got {bad}"
            )
        if len(set(alphas)) != len(alphas):
            raise ValueError(f"alphas must be distinct; got {alphas}")
        return alphas
