"""Model resolution for CLIP Interrogator: which weights, whether they are all there, how to get
them, and loading them into a `clip_interrogator.Interrogator`.

Weights come from the Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`) or from local folders
(`caption.caption_model_path`, `caption.clip_model_path`); `alien_hotels.modelhub` checks them
file by file on disk (configs and weights) before any image is touched, and the loaders read the
checked folders. The stage never downloads unless `caption.allow_download=true` (and
`HF_HUB_OFFLINE` is unset).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from alien_hotels import modelhub
from alien_hotels.captioning.config import CAPTION_MODELS, CaptionConfig
from alien_hotels.common import StageError
from alien_hotels.modelhub import Located, ModelRef

log = logging.getLogger("alien_hotels.captioning")

# clip_interrogator.clip_interrogator.CACHE_URL_BASE: precomputed label embeddings per CLIP
# model, files of this hub repo.
LABEL_REPO = "pharma/ci-preprocess"
LABEL_TABLES = ("artists", "flavors", "mediums", "movements", "trendings", "negative")


def label_cache_dir(cfg: CaptionConfig) -> Path:
    """Folder of cached label embeddings for this CLIP model.

    Hub models share one folder with the library's file names (what `models download` fills);
    local CLIP weights get a subfolder keyed by the weights' path, size and mtime, so two local
    models with the same name never share embeddings."""
    if cfg.label_cache_dir:
        base = Path(cfg.label_cache_dir).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
        base = base / "alien-hotels" / "labels"
    if not cfg.clip_model_path:
        return base
    weights = Path(cfg.clip_model_path).expanduser()
    stats = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in ([weights] if weights.is_file() else sorted(weights.glob("*")))
        if p.is_file()
    )
    digest = hashlib.sha256(repr((str(weights.resolve()), stats)).encode()).hexdigest()[:12]
    return base / f"local-{digest}"


def clip_hub_file(clip_model_name: str) -> tuple[str, tuple[str, ...]] | None:
    """(repo id, candidate file names) open_clip reads for `arch/tag`, or None if the tag is
    not a hub model. Raises StageError for unknown names."""
    import open_clip

    arch, tag = clip_model_name.split("/", 1)
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = ", ".join(sorted("/".join(x) for x in open_clip.list_pretrained())[:12])
        raise StageError(
            f"caption.clip_model_name={clip_model_name!r} is not an open_clip pretrained model "
            f"(e.g. {known}, ...); or set caption.clip_model_path to local weights"
        )
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    safe = filename.replace("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
    return repo, tuple(dict.fromkeys([safe, filename]))


def model_refs(cfg: CaptionConfig) -> tuple[ModelRef, ModelRef]:
    """(caption model, CLIP model) as the stage loads them."""
    if cfg.caption_model_path:
        caption = ModelRef("caption.caption_model_path", cfg.caption_model_path, "transformers")
    else:
        repo = CAPTION_MODELS[cfg.caption_model_name]
        caption = ModelRef("caption.caption_model_name", repo, "transformers")
    if cfg.clip_model_path:
        return caption, ModelRef("caption.clip_model_path", cfg.clip_model_path, "open_clip")
    found = clip_hub_file(cfg.clip_model_name)
    if found is None:
        raise StageError(
            f"caption.clip_model_name={cfg.clip_model_name} is downloaded by open_clip from a "
            "URL, not the hub: download it with open_clip and set caption.clip_model_path"
        )
    repo, files = found
    return caption, ModelRef("caption.clip_model_name", repo, "open_clip", files)


def label_ref(cfg: CaptionConfig) -> ModelRef | None:
    """The library's precomputed label embeddings for a hub CLIP model (None: computed locally)."""
    if cfg.labels_path or cfg.clip_model_path:
        return None
    sanitized = cfg.clip_model_name.replace("/", "_").replace("@", "_")
    files = tuple(f"{sanitized}_{table}.safetensors" for table in LABEL_TABLES)
    dest = str(label_cache_dir(cfg))
    return ModelRef("caption.label_cache_dir", LABEL_REPO, "files", files, dest, required=False)


def download_refs(cfg: CaptionConfig, labels: bool = True) -> list[ModelRef]:
    """What `alien-hotels models download` fetches for captioning (no network needed)."""
    refs = list(model_refs(cfg))
    extra = label_ref(cfg) if labels else None
    return refs + ([extra] if extra else [])


@dataclass(frozen=True)
class CaptionWeights:
    caption: Located
    clip: Located


def check_models(cfg: CaptionConfig) -> CaptionWeights:
    """The checked weights of both models; StageError naming each missing one, before any
    work (downloads first only when `caption.allow_download` and not offline)."""
    caption, clip = model_refs(cfg)
    found = modelhub.ensure([caption, clip], "caption", cfg.allow_download)
    return CaptionWeights(found[caption.key], found[clip.key])


def resolve_device(cfg: CaptionConfig) -> tuple[str, str]:
    """(device, dtype): the rule every torch stage shares (modelhub.resolve_device)."""
    return modelhub.resolve_device(cfg.device, cfg.dtype, "caption")


def load_clip(cfg: CaptionConfig, clip: Located, precision: str, device: str):
    """open_clip model and preprocess from the checked weights only (never the network);
    `require_pretrained` makes open_clip fail rather than fall back to random weights."""
    import open_clip

    common = {"precision": precision, "device": device, "jit": False, "require_pretrained": True}
    if clip.path.is_dir():  # open_clip local-dir layout: config and weights
        return open_clip.create_model_and_transforms(f"local-dir:{clip.path}", **common)
    arch, tag = cfg.clip_model_name.split("/", 1)
    if cfg.clip_model_path:  # a checkpoint file for the architecture
        return open_clip.create_model_and_transforms(arch, pretrained=str(clip.path), **common)
    # The hub weights of `arch/tag`, with the tag's preprocessing, as open_clip would load them.
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
    return open_clip.create_model_and_transforms(
        arch,
        pretrained=str(clip.path),
        image_mean=tag_cfg.get("mean"),
        image_std=tag_cfg.get("std"),
        image_interpolation=tag_cfg.get("interpolation"),
        image_resize_mode=tag_cfg.get("resize_mode"),
        **common,
    )


def load_interrogator(
    cfg: CaptionConfig, device: str, dtype: str, weights: CaptionWeights | None = None
):
    """A `clip_interrogator.Interrogator` around the checked weights (`check_models`)."""
    import clip_interrogator
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoProcessor,
        Blip2ForConditionalGeneration,
        BlipForConditionalGeneration,
    )

    modelhub.set_torch_threads(cfg.n_jobs)
    weights = weights or check_models(cfg)
    torch_dtype = getattr(torch, dtype)
    source = str(weights.caption.path)
    kwargs = {"local_files_only": True}
    name = cfg.caption_model_name
    log.info("loading caption model %s from %s", name, weights.caption.label)
    if name.startswith("git-"):  # the library keeps GIT in float32
        caption_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    elif name.startswith("blip2-"):
        caption_model = Blip2ForConditionalGeneration.from_pretrained(
            source, dtype=torch_dtype, **kwargs
        )
    else:
        caption_model = BlipForConditionalGeneration.from_pretrained(
            source, dtype=torch_dtype, **kwargs
        )
    caption_model.eval()
    processor = AutoProcessor.from_pretrained(source, **kwargs)

    precision = "fp16" if dtype == "float16" else "fp32"
    clip_device = "cpu" if cfg.clip_offload else device
    log.info("loading CLIP model %s from %s", cfg.clip_model_name, weights.clip.label)
    clip_model, _, clip_preprocess = load_clip(cfg, weights.clip, precision, clip_device)
    clip_model.eval()

    labels = cfg.labels_path or str(Path(clip_interrogator.__file__).parent / "data")
    config = clip_interrogator.Config(
        caption_model_name=name,
        caption_max_length=cfg.caption_max_length,
        caption_offload=cfg.caption_offload,
        clip_model_name=cfg.clip_model_name,
        clip_offload=cfg.clip_offload,
        cache_path=str(label_cache_dir(cfg)),
        download_cache=cfg.download_label_cache and not modelhub.hub_offline(),
        chunk_size=cfg.chunk_size,
        data_path=labels,
        device=device,
        flavor_intermediate_count=cfg.flavor_intermediate_count,
        quiet=True,
    )
    # Model slots are class attributes of Config, not constructor fields.
    config.caption_model = caption_model
    config.caption_processor = processor
    config.clip_model = clip_model
    config.clip_preprocess = clip_preprocess
    ci = clip_interrogator.Interrogator(config)
    ci.dtype = torch_dtype
    return ci
