"""Tiny CLIP Interrogator models: the real classes with random weights, built in seconds.

* CLIP: an `open_clip.CLIP` with a 2-layer vision and text tower (embed_dim 32) and the real
  `SimpleTokenizer` vocabulary that open_clip ships, saved in open_clip's `local-dir:` layout
  (`open_clip_config.json` + `open_clip_model.safetensors`), so the stage loads it with the same
  code that loads downloaded weights.
* Caption model: `BlipForConditionalGeneration` from a tiny `BlipConfig` with a WordPiece vocab of
  hotel words written at runtime, saved with `save_pretrained` (model + `BlipProcessor`).
* Labels: every k-th line of clip-interrogator's own label lists (a few hundred phrases).

`save_tiny_models(dest)` writes all three; `tiny_overrides(paths)` gives the Hydra overrides that
point `caption=clip_interrogator` at them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TINY_CLIP_NAME = "alien-tiny/random"

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_PREPROCESS_CFG = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}

WORDS = """
a an the of with and in on room hotel bed beds bedroom bathroom toilet shower sink mirror lobby
pool swimming view window windows chair chairs table desk lamp television tv couch sofa white
large small two king sized double kitchen balcony restaurant dining area living wooden floor
carpet curtains city night building outdoor garden sea ocean beach green blue red light lights
dark modern old
""".split()  # noqa: SIM905
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class TinyModelPaths:
    root: Path
    clip: Path
    blip: Path
    labels: Path


def tiny_clip(seed: int = 0):
    """(model, preprocess) of a random-weight tiny open_clip CLIP in eval mode."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    # Larger random weights than open_clip's init spread similarities out, so rankings are
    # decided by the model rather than by float noise.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embedding" not in name:
                p.normal_(0.0, 0.15)
    model.eval()
    preprocess = open_clip.image_transform(
        TINY_CLIP_CFG["vision_cfg"]["image_size"],
        is_train=False,
        mean=TINY_PREPROCESS_CFG["mean"],
        std=TINY_PREPROCESS_CFG["std"],
        interpolation=TINY_PREPROCESS_CFG["interpolation"],
        resize_mode=TINY_PREPROCESS_CFG["resize_mode"],
    )
    return model, preprocess


def write_vocab(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*SPECIAL, *WORDS, "[DEC]"]) + "\n", encoding="utf-8")
    return path


def tiny_blip(workdir: Path, seed: int = 0):
    """(model, processor) of a random-weight tiny BLIP captioner with a WordPiece vocab."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab = write_vocab(Path(workdir) / "vocab.txt")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    n_vocab = len(SPECIAL) + len(WORDS) + 1
    text_config = {
        "vocab_size": n_vocab,
        "hidden_size": 32,
        "encoder_hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": n_vocab - 1,
        "sep_token_id": SPECIAL.index("[SEP]"),
        "eos_token_id": SPECIAL.index("[SEP]"),
        "pad_token_id": SPECIAL.index("[PAD]"),
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embeddings" not in name:
                p.normal_(0.0, 0.3)
        # Random heads would often pick a special token first (an empty caption): forbid them so
        # every caption has words, like a trained captioner's.
        bias = model.text_decoder.cls.predictions.decoder.bias
        for token_id in [*range(len(SPECIAL)), n_vocab - 1]:
            bias[token_id] = -1e4
    model.eval()
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


def write_tiny_labels(dest: Path, step: int = 0) -> Path:
    """Every k-th line of clip-interrogator's label lists (about 300 flavors, 60 artists)."""
    import clip_interrogator

    src = Path(clip_interrogator.__file__).parent / "data"
    steps = {
        "flavors.txt": 331,
        "artists.txt": 89,
        "mediums.txt": 3,
        "movements.txt": 5,
        "negative.txt": 1,
    }
    dest.mkdir(parents=True, exist_ok=True)
    for name, k in steps.items():
        lines = src.joinpath(name).read_text(encoding="utf-8", errors="replace").splitlines()
        picked = [line.strip() for line in lines[step % k :: k] if line.strip()]
        dest.joinpath(name).write_text("\n".join(picked) + "\n", encoding="utf-8")
    return dest


def save_tiny_models(dest: Path, seed: int = 0) -> TinyModelPaths:
    """Write the tiny CLIP (open_clip local-dir), BLIP (save_pretrained) and label lists."""
    from safetensors.torch import save_file

    dest = Path(dest)
    clip_dir, blip_dir, labels = dest / "clip", dest / "blip", dest / "labels"
    clip_dir.mkdir(parents=True, exist_ok=True)
    model, _ = tiny_clip(seed)
    config = {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": TINY_PREPROCESS_CFG}
    (clip_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(clip_dir / "open_clip_model.safetensors"))
    blip, processor = tiny_blip(dest / "vocab", seed)
    blip.save_pretrained(blip_dir)
    processor.save_pretrained(blip_dir)
    write_tiny_labels(labels)
    return TinyModelPaths(root=dest, clip=clip_dir, blip=blip_dir, labels=labels)


def tiny_overrides(paths: TinyModelPaths, cache: Path | None = None) -> list[str]:
    """Hydra overrides running `caption=clip_interrogator` on the tiny models, on CPU."""
    cache = cache or paths.root / "label_cache"
    return [
        "caption=clip_interrogator",
        "caption.caption_model_name=blip-base",
        f"caption.caption_model_path={paths.blip}",
        f"caption.clip_model_name={TINY_CLIP_NAME}",
        f"caption.clip_model_path={paths.clip}",
        f"caption.labels_path={paths.labels}",
        f"caption.label_cache_dir={cache}",
        "caption.device=cpu",
        "caption.caption_max_length=8",
    ]


def library_interrogator(paths: TinyModelPaths, cache: Path | None = None, **config):
    """A `clip_interrogator.Interrogator` built the library's way around the tiny models, as a
    reference for tests: models passed through `Config`'s model slots."""
    import open_clip
    import torch
    from clip_interrogator import Config, Interrogator
    from transformers import AutoProcessor, BlipForConditionalGeneration

    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{paths.clip}")
    clip.eval()
    blip = BlipForConditionalGeneration.from_pretrained(paths.blip, dtype=torch.float32).eval()
    cfg = Config(
        caption_model_name="blip-base",
        clip_model_name=TINY_CLIP_NAME,
        cache_path=str(cache or paths.root / "label_cache"),
        download_cache=False,
        data_path=str(paths.labels),
        device="cpu",
        quiet=True,
        caption_max_length=config.pop("caption_max_length", 8),
        **config,
    )
    cfg.caption_model = blip
    cfg.caption_processor = AutoProcessor.from_pretrained(paths.blip)
    cfg.clip_model = clip
    cfg.clip_preprocess = preprocess
    return Interrogator(cfg)
