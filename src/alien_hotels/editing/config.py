"""`edit.*`: diffusion edit recipes, the scores that judge them, the trade-off sweep, and the
two trained edit methods (`edit.textual_inversion.*`, `edit.imagic.*`, run by `methods/`). No torch.

Each recipe is one file `conf/edit/recipes/<name>.yaml` composed under `edit.recipes.<name>` by
the defaults list of `conf/edit/default.yaml`; `dvc.yaml` runs one `edit@<name>` stage per key.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from alien_hotels.common import Section, Seed

# Reference folders live under this tracked folder, so the stage's `deps:` in dvc.yaml covers them.
REFERENCES_ROOT = "data/references"
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
# The score an edit is meant to raise (a recipe's `goal`, imagic's `goal`).
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
