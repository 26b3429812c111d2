"""Loading models (diffusers pipelines, CLIPSeg, CLIP) from weights checked on disk first.

Every model a recipe needs is located and checked file by file by `alien_hotels.modelhub`
(configs and weights, no network) before any image is touched; a missing one fails the stage
with the config key, the model id, what is missing and how to get it. Hub ids are read from the
Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`); a `model_id` that is a local directory (written
with `save_pretrained`) is read from there. Nothing is downloaded unless `edit.allow_download`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from alien_hotels import modelhub
from alien_hotels.editing.config import EditConfig, RecipeConfig
from alien_hotels.modelhub import Located, ModelRef

log = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}
PIPELINES = {
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "instruct_pix2pix": "StableDiffusionInstructPix2PixPipeline",
}
# Hook for methods that train on a base model (Textual Inversion, Imagic): sections of `edit.*`
# whose `model_id` names a diffusers base model. `models download` fetches them and
# `require_weights(model_id, key, "model_index.json")` checks them like recipe models.
BASE_MODEL_SECTIONS: tuple[str, ...] = ()


def recipe_refs(name: str, recipe: RecipeConfig) -> list[ModelRef]:
    key = f"edit.recipes.{name}"
    refs = [ModelRef(f"{key}.model_id", recipe.model_id, "diffusers")]
    if recipe.mask.source == "text":
        refs.append(ModelRef(f"{key}.mask.model_id", recipe.mask.model_id, "transformers"))
    return refs


def score_refs(cfg: EditConfig) -> list[ModelRef]:
    """The score models; optional unless `edit.scores.on_missing_weights=error`."""
    required = cfg.scores.on_missing_weights == "error"
    models = {
        "edit.scores.clipseg_model_id": cfg.scores.clipseg_model_id,
        "edit.scores.clip_model_id": cfg.scores.clip_model_id,
    }
    return [
        ModelRef(key, model_id, "transformers", required=required)
        for key, model_id in models.items()
        if model_id
    ]


def weight_refs(cfg: EditConfig) -> list[ModelRef]:
    """Every model the configured edit stages can load (what `models download` fetches)."""
    refs = [ref for name, recipe in cfg.recipes.items() for ref in recipe_refs(name, recipe)]
    for section in BASE_MODEL_SECTIONS:
        model_id = getattr(cfg, section).model_id
        refs.append(ModelRef(f"edit.{section}.model_id", model_id, "diffusers"))
    return refs + score_refs(cfg)


def check_recipe(name: str, recipe: RecipeConfig, cfg: EditConfig) -> dict[str, Located]:
    """Config key -> checked weights of everything recipe `name` loads (missing optional score
    models are left out, with a warning)."""
    refs = recipe_refs(name, recipe) + score_refs(cfg)
    return modelhub.ensure(refs, "edit", cfg.allow_download)


def require_weights(model_id: str, key: str, marker: str = "model_index.json") -> Path:
    """The checked folder of one model (`marker` model_index.json: a diffusers pipeline;
    config.json: a transformers model with its processor). StageError when incomplete."""
    layout = "diffusers" if marker == "model_index.json" else "transformers"
    ref = ModelRef(key, model_id, layout)
    return modelhub.require([ref], "edit", modelhub.download_hint("edit"))[key].path


def resolve_device(cfg: EditConfig) -> tuple[str, Any]:
    """(device, torch dtype): the rule every torch stage shares (modelhub.resolve_device)."""
    import torch

    device, dtype = modelhub.resolve_device(cfg.device, cfg.dtype, "edit")
    return device, getattr(torch, dtype)


def load_pipeline(
    recipe: RecipeConfig, key: str, cfg: EditConfig, folder: Path | None = None
) -> Any:
    """The recipe's diffusers pipeline from its checked folder, on the configured device."""
    import diffusers

    from alien_hotels.common import StageError

    folder = folder or require_weights(recipe.model_id, f"{key}.model_id")
    device, dtype = resolve_device(cfg)
    cls = getattr(diffusers, PIPELINES[recipe.pipeline])
    try:
        pipe = cls.from_pretrained(
            folder,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise StageError(f"{key}.model_id: cannot load {recipe.model_id!r}: {exc}") from exc
    if recipe.scheduler != "default":
        sched_cls = getattr(diffusers, SCHEDULERS[recipe.scheduler])
        pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    slicing = cfg.attention_slicing
    if slicing == "on" or (slicing == "auto" and device == "cuda"):
        pipe.enable_attention_slicing()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe: Any, recipe: RecipeConfig, image, mask_img=None):
    """One edit of a prepared image (and prepared mask for inpainting); deterministic."""
    import torch

    generator = torch.Generator("cpu").manual_seed(recipe.seed)
    kwargs: dict[str, Any] = {
        "prompt": recipe.prompt,
        "negative_prompt": recipe.negative_prompt or None,
        "image": image,
        "num_inference_steps": recipe.steps,
        "guidance_scale": recipe.guidance_scale,
        "generator": generator,
    }
    if recipe.pipeline == "instruct_pix2pix":
        kwargs["image_guidance_scale"] = recipe.image_guidance_scale
    else:
        kwargs["strength"] = recipe.strength
    if recipe.pipeline == "inpaint":
        kwargs.update(mask_image=mask_img, height=image.height, width=image.width)
    with torch.inference_mode():
        return pipe(**kwargs).images[0]


class Segmenter:
    """CLIPSeg: per-pixel probability that a text prompt is there."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.processor = CLIPSegProcessor.from_pretrained(folder, local_files_only=True)
        model = CLIPSegForImageSegmentation.from_pretrained(folder, local_files_only=True)
        self.model = model.to(device).eval()
        self.device = device
        self._recent: list[tuple[Any, str, np.ndarray]] = []  # the mask and the towel score
        # usually ask about the same source image and prompt: compute it once

    def probs(self, image, prompt: str) -> np.ndarray:
        for seen, seen_prompt, probs in self._recent:
            if seen is image and seen_prompt == prompt:
                return probs
        probs = self._probs(image, prompt)
        self._recent = [*self._recent[-3:], (image, prompt, probs)]
        return probs

    def _probs(self, image, prompt: str) -> np.ndarray:
        import torch

        inputs = self.processor(text=[prompt], images=[image], return_tensors="pt", padding=True)
        with torch.inference_mode():
            logits = self.model(**inputs.to(self.device)).logits
        return torch.sigmoid(logits.float()).reshape(-1, *logits.shape[-2:])[0].cpu().numpy()


class ClipScorer:
    """CLIP: zero-shot preference probability and image-image cosine similarity."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device = device
        self._text: dict[tuple[str, ...], Any] = {}

    def image_embedding(self, image) -> Any:
        import torch

        inputs = self.processor(images=[image], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            emb = self.model.get_image_features(**inputs)
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1)[0]

    def text_embeddings(self, prompts: tuple[str, ...]) -> Any:
        import torch

        if prompts not in self._text:
            inputs = self.processor(text=list(prompts), return_tensors="pt", padding=True)
            with torch.inference_mode():
                emb = self.model.get_text_features(**inputs.to(self.device))
            emb = getattr(emb, "pooler_output", emb)
            self._text[prompts] = torch.nn.functional.normalize(emb.float(), dim=-1)
        return self._text[prompts]

    def preference(self, image_emb, positive: list[str], negative: list[str]) -> float:
        """Softmax probability mass of the positive prompts among all prompts."""
        import torch

        text = self.text_embeddings((*positive, *negative))
        with torch.inference_mode():
            scale = self.model.logit_scale.exp().float()
            probs = torch.softmax(scale * text @ image_emb, dim=0)
        return float(probs[: len(positive)].sum())
