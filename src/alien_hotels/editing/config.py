"""`edit.*`: diffusion edit recipes, the scores that judge them and the trade-off sweep.

Each recipe is one file `conf/edit/recipes/<name>.yaml` composed under `edit.recipes.<name>` by
the defaults list of `conf/edit/default.yaml`; `dvc.yaml` runs one `edit@<name>` stage per key.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from alien_hotels.common import Section, Seed
from alien_hotels.methods.config import Goal, ImagicConfig, TextualInversionConfig

Pipeline = Literal["img2img", "inpaint", "instruct_pix2pix"]
Scheduler = Literal["default", "ddim", "dpm", "euler", "euler_a", "pndm", "lms", "unipc"]
# A recipe name becomes a DVC stage name (edit@<name>), folder and file names, and once went
# into a shell command (dvc.yaml now passes it through $DVC_STAGE, never a shell): lower-case
# letters, digits and _ only.
RECIPE_NAME = re.compile(r"^[a-z0-9_]+$")
# The mask.files_dir of recipes without mask files: an empty folder, because dvc.yaml makes
# files_dir a dependency of every edit@<recipe> stage and DVC cannot leave a dependency out.
NO_MASK_FILES = "data/masks/none"


def check_recipe_name(name: str) -> str:
    if not RECIPE_NAME.fullmatch(name):
        raise ValueError(
            f"recipe names must match {RECIPE_NAME.pattern} (lower-case letters, digits, _)"
        )
    return name


RecipeName = Annotated[str, AfterValidator(check_recipe_name)]


class MaskConfig(Section):
    """Where the edited region comes from; outside it the source pixels are kept exactly."""

    source: Literal["none", "text", "files"]
    # source=text: CLIPSeg probability of `prompt` above `threshold`, grown by `dilate` pixels.
    prompt: str | None
    threshold: float = Field(ge=0.0, le=1.0)
    dilate: int = Field(ge=0, le=512)
    model_id: str
    # source=files: `<files_dir>/<image_id>.png` (relative to the repo root), non-zero pixels
    # are edited (also dilated). A DVC dependency of the recipe's stage, so it always names a
    # folder: NO_MASK_FILES for recipes without mask files.
    files_dir: str | None

    @model_validator(mode="after")
    def _needs(self) -> MaskConfig:
        if self.source == "text" and not (self.prompt or "").strip():
            raise ValueError("mask.source=text needs mask.prompt (what to segment, e.g. 'towel')")
        if not (self.files_dir or "").strip():
            raise ValueError(
                "mask.files_dir is empty; it is a DVC dependency of the recipe's stage, so it "
                f"must name a folder ({NO_MASK_FILES} for a recipe without mask files)"
            )
        if self.source == "files" and self.files_dir == NO_MASK_FILES:
            raise ValueError(
                "mask.source=files needs mask.files_dir: the folder of <image_id>.png masks, "
                "relative to the repo root"
            )
        return self


class RecipeConfig(Section):
    """One edit: a diffusers pipeline, its prompts and knobs, and the mask it edits under."""

    pipeline: Pipeline
    model_id: str
    prompt: str
    negative_prompt: str
    # img2img/inpaint: how much noise is added (0 keeps the source, 1 ignores it).
    strength: float = Field(gt=0.0, le=1.0)
    # Classifier-free guidance towards the prompt (lower keeps more of the source content).
    guidance_scale: float = Field(ge=0.0, le=50.0)
    # instruct_pix2pix only (and only there): pull towards the source image. Absent (None) on
    # the other pipelines, which have no such knob.
    image_guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    steps: int = Field(ge=1, le=500)
    scheduler: Scheduler
    seed: Seed
    # The longer side the model sees (rounded down to a multiple of 8); results are resized
    # back to the source size.
    resolution: int = Field(ge=64, le=2048)
    # Which score the edit is meant to raise: the sweep's "edit success".
    goal: Goal
    mask: MaskConfig

    @model_validator(mode="after")
    def _inpaint_needs_mask(self) -> RecipeConfig:
        if self.pipeline == "inpaint" and self.mask.source == "none":
            raise ValueError("pipeline=inpaint needs a mask: set mask.source to text or files")
        pix2pix = self.pipeline == "instruct_pix2pix"
        if pix2pix and self.image_guidance_scale is None:
            raise ValueError("pipeline=instruct_pix2pix needs image_guidance_scale")
        if not pix2pix and self.image_guidance_scale is not None:
            raise ValueError(
                f"image_guidance_scale applies to pipeline=instruct_pix2pix only, "
                f"not {self.pipeline}; remove it"
            )
        if self.pipeline != "instruct_pix2pix" and int(self.steps * self.strength) < 1:
            raise ValueError(
                f"steps * strength = {self.steps} * {self.strength} leaves no denoising step; "
                "raise steps or strength"
            )
        return self


class CombineWeights(Section):
    """Weights of the alien-friendliness components (a weighted mean over those available)."""

    green: float = Field(ge=0.0)
    neon: float = Field(ge=0.0)
    towels: float = Field(ge=0.0)
    clip: float = Field(ge=0.0)


class ScoresConfig(Section):
    """How images are judged. Colour scores need no weights; towels and CLIP need models."""

    # A pixel is "green" when its hue lies in [green_hue_min, green_hue_max] degrees and it is
    # saturated and bright enough.
    green_hue_min: float = Field(ge=0.0, le=360.0)
    green_hue_max: float = Field(ge=0.0, le=360.0)
    green_min_saturation: float = Field(ge=0.0, le=1.0)
    green_min_value: float = Field(ge=0.0, le=1.0)
    # A pixel "glows neon" when it is both very saturated and very bright (any hue).
    neon_min_saturation: float = Field(ge=0.0, le=1.0)
    neon_min_value: float = Field(ge=0.0, le=1.0)
    # Shares that earn the full green / neon component (the component is share / target, <= 1).
    green_target: float = Field(gt=0.0, le=1.0)
    neon_target: float = Field(gt=0.0, le=1.0)
    # Towel area (CLIPSeg probability of towel_prompt above towel_threshold); the towel
    # component is 1 - area / towel_tolerance, floored at 0.
    towel_prompt: str
    towel_threshold: float = Field(ge=0.0, le=1.0)
    towel_tolerance: float = Field(gt=0.0, le=1.0)
    clipseg_model_id: str | None
    # CLIP: zero-shot probability of the preference prompts against the aversion prompts, and
    # image-image similarity (content preservation).
    clip_model_id: str | None
    preference_prompts: list[str]
    aversion_prompts: list[str]
    combine: CombineWeights
    # Missing score weights: skip those scores (null in the tables) or fail before any work.
    on_missing_weights: Literal["skip", "error"]

    @model_validator(mode="after")
    def _ranges(self) -> ScoresConfig:
        if self.green_hue_min > self.green_hue_max:
            raise ValueError("green_hue_min must not exceed green_hue_max")
        if not self.preference_prompts or not self.aversion_prompts:
            raise ValueError("preference_prompts and aversion_prompts must not be empty")
        return self


class SweepConfig(Section):
    """Content preservation against edit success over a grid of one recipe's knobs."""

    recipe: str
    # Recipe field -> values; every combination is run on the first `max_images` images.
    grid: dict[str, list[float]]
    max_images: int = Field(ge=1)

    @field_validator("grid")
    @classmethod
    def _known_fields(cls, grid: dict[str, list[float]]) -> dict[str, list[float]]:
        allowed = {"strength", "guidance_scale", "image_guidance_scale", "steps"}
        bad = sorted(set(grid) - allowed)
        if bad:
            raise ValueError(f"unknown sweep field(s) {bad}; allowed: {sorted(allowed)}")
        if not grid or any(not values for values in grid.values()):
            raise ValueError("the sweep grid needs at least one value per field")
        return grid


class EditConfig(Section):
    """`edit.*`: the recipes that run, where they run and how results are judged."""

    recipes: dict[RecipeName, RecipeConfig]
    # Where recipes run: this process, or a pool of Ray actors (`ray.*`).
    executor: Literal["local", "ray"]
    device: Literal["auto", "cpu", "cuda", "mps"]
    # auto: float16 on CUDA, float32 elsewhere.
    dtype: Literal["auto", "float32", "float16", "bfloat16"]
    # auto: on for CUDA (lower peak memory), off elsewhere.
    attention_slicing: Literal["auto", "on", "off"]
    # torch intra-op threads (torch.set_num_threads), like the text stages' n_jobs.
    n_jobs: int = Field(ge=1, le=1024)
    # Let the stages download missing weights themselves (off: fail fast, naming the model).
    allow_download: bool
    # Edit at most this many images per recipe (manifest order); null: all.
    max_images: int | None = Field(ge=0)
    # Rows of each contact sheet (original | mask | edited).
    sheet_rows: int = Field(ge=1, le=200)
    scores: ScoresConfig
    sweep: SweepConfig
    # The trained edit methods (stages `textual_inversion` and `imagic`; values in conf/edit/).
    textual_inversion: TextualInversionConfig
    imagic: ImagicConfig

    @model_validator(mode="after")
    def _names(self) -> EditConfig:
        if self.recipes and self.sweep.recipe not in self.recipes:
            raise ValueError(
                f"sweep.recipe={self.sweep.recipe!r} is not a recipe; "
                f"recipes: {', '.join(sorted(self.recipes))}"
            )
        swept = self.recipes.get(self.sweep.recipe)
        pix2pix = swept is not None and swept.pipeline == "instruct_pix2pix"
        if swept and "image_guidance_scale" in self.sweep.grid and not pix2pix:
            raise ValueError(
                f"sweep.grid.image_guidance_scale needs an instruct_pix2pix recipe; "
                f"sweep.recipe={self.sweep.recipe!r} is {swept.pipeline}"
            )
        return self
