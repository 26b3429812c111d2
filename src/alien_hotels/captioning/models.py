"""Model resolution for CLIP Interrogator: where the weights are, whether they are there, how to
get them, and loading them into a `clip_interrogator.Interrogator`.

Weights come from the Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`) or from local folders
(`caption.caption_model_path`, `caption.clip_model_path`). The stage never downloads unless
`caption.allow_download=true` (and `HF_HUB_OFFLINE` is unset): a missing model fails before any
image is touched, naming the model and the `alien-hotels models download` command that fetches it
on a machine with internet.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from alien_hotels.captioning import CAPTION_MODELS, CaptionConfig
from alien_hotels.common import StageError

log = logging.getLogger("alien_hotels.captioning")

# clip_interrogator.clip_interrogator.CACHE_URL_BASE: precomputed label embeddings per CLIP model.
LABEL_CACHE_URL = "https://huggingface.co/pharma/ci-preprocess/resolve/main/"
LABEL_TABLES = ("artists", "flavors", "mediums", "movements", "trendings", "negative")
CAPTION_IGNORE = ["*.msgpack", "*.h5", "*.ot", "tf_model*", "flax_model*", "*.onnx", "rust_model*"]


@dataclass(frozen=True)
class Download:
    """One thing `alien-hotels models download` fetches."""

    what: str  # caption_model | clip_model | label_embeddings
    source: str  # hub repo id or URL
    files: tuple[str, ...]  # file names (empty: the repo snapshot minus CAPTION_IGNORE)
    dest: str  # cache folder it lands in

    def describe(self) -> str:
        files = ", ".join(self.files) if self.files else "snapshot"
        return f"{self.what}: {self.source} [{files}] -> {self.dest}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


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


def caption_source(cfg: CaptionConfig) -> str:
    return cfg.caption_model_path or CAPTION_MODELS[cfg.caption_model_name]


def clip_hub_file(clip_model_name: str) -> tuple[str, tuple[str, ...]] | None:
    """(repo id, candidate file names) open_clip downloads for `arch/tag`, or None if the tag is
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


def download_plan(cfg: CaptionConfig, labels: bool = True) -> list[Download]:
    """What `alien-hotels models download` fetches for this config (no network needed)."""
    hub = str(hub_cache_dir())
    plan = []
    if not cfg.caption_model_path:
        plan.append(Download("caption_model", CAPTION_MODELS[cfg.caption_model_name], (), hub))
    if not cfg.clip_model_path:
        found = clip_hub_file(cfg.clip_model_name)
        if found is None:
            raise StageError(
                f"{cfg.clip_model_name} is downloaded by open_clip from a URL, not the hub: "
                "download it with open_clip and set caption.clip_model_path"
            )
        repo, files = found
        plan.append(Download("clip_model", repo, files, hub))
    if labels and not cfg.labels_path and not cfg.clip_model_path:
        sanitized = cfg.clip_model_name.replace("/", "_").replace("@", "_")
        files = tuple(f"{sanitized}_{table}.safetensors" for table in LABEL_TABLES)
        plan.append(Download("label_embeddings", LABEL_CACHE_URL, files, str(label_cache_dir(cfg))))
    return plan


def run_download(plan: list[Download]) -> list[Path]:
    """Fetch everything in `plan` into the caches (needs internet)."""
    import requests
    from huggingface_hub import hf_hub_download, snapshot_download

    fetched = []
    for item in plan:
        if item.what == "caption_model":
            path = snapshot_download(
                item.source, cache_dir=item.dest, ignore_patterns=CAPTION_IGNORE
            )
            fetched.append(Path(path))
        elif item.what == "clip_model":
            errors = []
            for name in item.files:
                try:
                    fetched.append(Path(hf_hub_download(item.source, name, cache_dir=item.dest)))
                    break
                except Exception as exc:  # try the next candidate (safetensors, then .bin)
                    errors.append(f"{name}: {exc}")
            else:
                raise StageError(f"could not download {item.source}: {'; '.join(errors)}")
        else:
            Path(item.dest).mkdir(parents=True, exist_ok=True)
            for name in item.files:
                target = Path(item.dest) / name
                with requests.get(item.source + name, stream=True, timeout=60) as resp:
                    resp.raise_for_status()
                    tmp = target.with_suffix(".part")
                    with tmp.open("wb") as fh:
                        for chunk in resp.iter_content(1 << 22):
                            fh.write(chunk)
                    tmp.replace(target)
                fetched.append(target)
    return fetched


def _download_hint(cfg: CaptionConfig) -> str:
    return (
        "On a machine with internet run `alien-hotels models download "
        f"--caption-model {cfg.caption_model_name} --clip-model {cfg.clip_model_name}` "
        f"(it fills the Hugging Face cache, here {hub_cache_dir()}; copy it or mount it as "
        "HF_HOME), or set caption.allow_download=true, or point "
        "caption.caption_model_path / caption.clip_model_path at local weights"
    )


def may_download(cfg: CaptionConfig) -> bool:
    return cfg.allow_download and not hub_offline()


def check_models(cfg: CaptionConfig) -> None:
    """Raise StageError naming each model whose weights are not available, before any work."""
    from huggingface_hub import try_to_load_from_cache

    if may_download(cfg):
        return
    cache = hub_cache_dir()
    problems = []
    if cfg.caption_model_path:
        folder = Path(cfg.caption_model_path).expanduser()
        if not (folder / "config.json").is_file():
            problems.append(
                f"caption.caption_model_path={cfg.caption_model_path}: no config.json there "
                "(expected a save_pretrained folder of model and processor)"
            )
    else:
        repo = CAPTION_MODELS[cfg.caption_model_name]
        weights = (
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        )
        has_config = isinstance(try_to_load_from_cache(repo, "config.json", cache_dir=cache), str)
        has_weights = any(
            isinstance(try_to_load_from_cache(repo, name, cache_dir=cache), str) for name in weights
        )
        if not (has_config and has_weights):
            problems.append(f"caption model {cfg.caption_model_name} ({repo}) is not in {cache}")
    if cfg.clip_model_path:
        path = Path(cfg.clip_model_path).expanduser()
        if not (path.is_file() or (path / "open_clip_config.json").is_file()):
            problems.append(
                f"caption.clip_model_path={cfg.clip_model_path}: neither a checkpoint file nor "
                "an open_clip folder with open_clip_config.json"
            )
    else:
        found = clip_hub_file(cfg.clip_model_name)
        if found is not None:
            repo, files = found
            if not any(
                isinstance(try_to_load_from_cache(repo, f, cache_dir=cache), str) for f in files
            ):
                problems.append(
                    f"CLIP model {cfg.clip_model_name} ({repo}/{files[-1]}) is not in {cache}"
                )
    if problems:
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise StageError(
            "caption: model weights not available"
            + offline
            + ":\n  - "
            + "\n  - ".join(problems)
            + "\n"
            + _download_hint(cfg)
        )


def resolve_device(cfg: CaptionConfig) -> tuple[str, str]:
    """(device, dtype) with `auto` resolved: cuda, then mps, then cpu; fp16 on cuda only."""
    import torch

    device = cfg.device
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError("caption.device=cuda but torch sees no CUDA device")
    dtype = cfg.dtype if cfg.dtype != "auto" else ("float16" if device == "cuda" else "float32")
    return device, dtype


def load_interrogator(cfg: CaptionConfig, device: str, dtype: str):
    """A `clip_interrogator.Interrogator` around models loaded from the cache or local paths."""
    import clip_interrogator
    import open_clip
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoProcessor,
        Blip2ForConditionalGeneration,
        BlipForConditionalGeneration,
    )

    check_models(cfg)
    torch_dtype = getattr(torch, dtype)
    local_only = not may_download(cfg)
    cache = str(hub_cache_dir())
    source = caption_source(cfg)
    kwargs = {"cache_dir": cache, "local_files_only": local_only}
    name = cfg.caption_model_name
    log.info("loading caption model %s from %s", name, source)
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
    arch, tag = cfg.clip_model_name.split("/", 1)
    clip_device = "cpu" if cfg.clip_offload else device
    log.info("loading CLIP model %s from %s", cfg.clip_model_name, cfg.clip_model_path or "hub")
    if cfg.clip_model_path and Path(cfg.clip_model_path).expanduser().is_dir():
        model_name, pretrained = f"local-dir:{Path(cfg.clip_model_path).expanduser()}", None
    else:
        model_name = arch
        pretrained = str(Path(cfg.clip_model_path).expanduser()) if cfg.clip_model_path else tag
    clip_model, _, clip_preprocess = open_clip.create_model_and_transforms(
        model_name,
        pretrained=pretrained,
        precision=precision,
        device=clip_device,
        jit=False,
        cache_dir=cache,
    )
    clip_model.eval()

    labels = cfg.labels_path or str(Path(clip_interrogator.__file__).parent / "data")
    config = clip_interrogator.Config(
        caption_model_name=name,
        caption_max_length=cfg.caption_max_length,
        caption_offload=cfg.caption_offload,
        clip_model_name=cfg.clip_model_name,
        clip_offload=cfg.clip_offload,
        cache_path=str(label_cache_dir(cfg)),
        download_cache=cfg.download_label_cache and not hub_offline(),
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
