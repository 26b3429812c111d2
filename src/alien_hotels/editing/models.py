"""Loading models (diffusers pipelines, CLIPSeg, CLIP) and checking their weights first.

`require_weights` runs before any image is touched: a missing model fails the stage with its id
and how to get it. Hub ids honour `HF_HOME` and `HF_HUB_OFFLINE`; a `model_id` that is a local
directory (written with `save_pretrained`) is loaded from there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from alien_hotels.common import StageError
from alien_hotels.editing.config import EditConfig, RecipeConfig

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


def _looks_local(model_id: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else is meant as a path."""
    return model_id.startswith((".", "/", "~")) or model_id.count("/") > 1


def weights_available(model_id: str, marker: str) -> tuple[bool, str]:
    """(found, why not). `marker` is the file every copy has (model_index.json, config.json)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if (path / marker).is_file():
            return True, ""
        return False, f"local directory {path} has no {marker}"
    if _looks_local(model_id):
        return False, f"local directory {path} does not exist"
    from huggingface_hub import constants, snapshot_download, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id, marker), str):
        return True, ""
    if constants.is_offline_mode():
        return False, (
            f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set"
        )
    try:
        snapshot_download(model_id)
    except Exception as exc:  # network, auth, unknown repo
        return False, f"download failed: {type(exc).__name__}: {exc}"
    return True, ""


def require_weights(model_id: str, key: str, marker: str) -> None:
    found, why = weights_available(model_id, marker)
    if not found:
        raise StageError(
            f"{key}: weights for model {model_id!r} are missing ({why}). Fetch them on a machine "
            f"with internet access (`hf download {model_id}`) into HF_HOME, or point {key} at a "
            "local directory saved with save_pretrained."
        )


def resolve_device(cfg: EditConfig) -> tuple[str, Any]:
    """(device, torch dtype) from edit.device / edit.dtype."""
    import torch

    device = cfg.device
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise StageError("edit.device=cuda but torch sees no CUDA device; use auto or cpu")
    dtype_name = cfg.dtype
    if dtype_name == "auto":
        dtype_name = "float16" if device == "cuda" else "float32"
    if dtype_name == "float16" and device == "cpu":
        raise StageError("edit.dtype=float16 needs a GPU; use auto or float32 on the CPU")
    return device, getattr(torch, dtype_name)


def load_pipeline(recipe: RecipeConfig, key: str, cfg: EditConfig) -> Any:
    """The recipe's diffusers pipeline on the configured device, with its scheduler."""
    import diffusers

    device, dtype = resolve_device(cfg)
    cls = getattr(diffusers, PIPELINES[recipe.pipeline])
    try:
        pipe = cls.from_pretrained(
            recipe.model_id, dtype=dtype, safety_checker=None, requires_safety_checker=False
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

    def __init__(self, model_id: str, device: str = "cpu") -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.processor = CLIPSegProcessor.from_pretrained(model_id)
        self.model = CLIPSegForImageSegmentation.from_pretrained(model_id).to(device).eval()
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

    def __init__(self, model_id: str, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.processor = CLIPProcessor.from_pretrained(model_id)
        self.model = CLIPModel.from_pretrained(model_id).to(device).eval()
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
