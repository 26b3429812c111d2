"""Tiny random-weight diffusion, CLIPSeg and CLIP models for tests and benchmarks.

Every builder returns the REAL classes (`StableDiffusionImg2ImgPipeline`,
`StableDiffusionInpaintPipeline`, `StableDiffusionInstructPix2PixPipeline`,
`CLIPSegForImageSegmentation`, `CLIPModel`) built from tiny configs, so the editing code runs
through the same pipeline code paths as with real weights, in well under a second per image on
a CPU. Nothing is downloaded: the CLIP BPE tokenizer is built from the first merges of the
vocabulary file that open_clip ships (`bpe_simple_vocab_16e6.txt.gz`).

`save_tiny_models(root)` writes them with `save_pretrained`, so a recipe's `model_id` can point
at the local directory exactly as it would at a hub id.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import Literal

N_MERGES = 2000
HIDDEN = 32


@lru_cache(maxsize=1)
def _bpe_vocab() -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [m for m in lines[1 : N_MERGES + 1] if m.strip()]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = tuple((tok, i) for i, tok in enumerate(dict.fromkeys(tokens)))
    return vocab, tuple(merges)


def tiny_tokenizer():
    """A real CLIP BPE tokenizer (first `N_MERGES` merges of open_clip's vocabulary)."""
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_vocab()
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=77)


def vocab_size() -> int:
    return len(_bpe_vocab()[0])


def _text_config_kwargs() -> dict:
    vocab = dict(_bpe_vocab()[0])
    return {
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
        "projection_dim": HIDDEN,
    }


def tiny_text_encoder(seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**_text_config_kwargs())).eval()


def tiny_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        sample_size=32,
    ).eval()


def tiny_unet(in_channels: int = 4, seed: int = 0):
    """4 input channels for img2img, 9 for inpainting, 8 for InstructPix2Pix."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
    ).eval()


Kind = Literal["img2img", "inpaint", "instruct_pix2pix"]
UNET_CHANNELS = {"img2img": 4, "inpaint": 9, "instruct_pix2pix": 8}


def tiny_pipeline(kind: Kind = "img2img", seed: int = 0):
    """A diffusers pipeline of the given kind with random tiny components (CPU, float32)."""
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionInstructPix2PixPipeline,
    )

    classes = {
        "img2img": StableDiffusionImg2ImgPipeline,
        "inpaint": StableDiffusionInpaintPipeline,
        "instruct_pix2pix": StableDiffusionInstructPix2PixPipeline,
    }
    if kind == "instruct_pix2pix":
        scheduler = EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        )
    else:
        scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1)
    return assemble(
        classes[kind],
        unet=tiny_unet(UNET_CHANNELS[kind], seed),
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed),
        tokenizer=tiny_tokenizer(),
        scheduler=scheduler,
    )


def assemble(pipeline_class, **components):
    """A pipeline from its parts, without safety checker or image encoder, progress bar off."""
    pipe = pipeline_class(
        **components,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _vision_config_kwargs(num_hidden_layers: int) -> dict:
    """A tiny ViT on 32-pixel images, shared by the CLIPSeg and CLIP builders."""
    return {
        "hidden_size": HIDDEN,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": num_hidden_layers,
        "image_size": 32,
        "patch_size": 8,
    }


def tiny_clipseg(seed: int = 0):
    """(CLIPSegForImageSegmentation, CLIPSegProcessor) with 32-pixel inputs."""
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    text = _text_config_kwargs()
    text.pop("projection_dim")
    vision = _vision_config_kwargs(num_hidden_layers=3)
    config = CLIPSegConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=HIDDEN,
        reduce_dim=16,
        extract_layers=[1, 2],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config).eval()
    processor = CLIPSegProcessor(
        image_processor=ViTImageProcessor(
            do_resize=True,
            size={"height": 32, "width": 32},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        ),
        tokenizer=tiny_tokenizer(),
    )
    return model, processor


def tiny_clip(seed: int = 0):
    """(CLIPModel, CLIPProcessor) with 32-pixel inputs, for CLIP scores."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    text = _text_config_kwargs()
    text.pop("projection_dim")
    vision = _vision_config_kwargs(num_hidden_layers=2)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=HIDDEN))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tiny_tokenizer(),
    )
    return model.eval(), processor


def save_tiny_models(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Save every tiny model under `root` with `save_pretrained`; return name -> directory.

    Names: `img2img`, `inpaint`, `instruct_pix2pix`, `clipseg`, `clip`.
    """
    root = Path(root)
    out: dict[str, Path] = {}
    for kind in UNET_CHANNELS:
        out[kind] = root / kind
        tiny_pipeline(kind, seed).save_pretrained(out[kind])  # type: ignore[arg-type]
    for name, builder in (("clipseg", tiny_clipseg), ("clip", tiny_clip)):
        model, processor = builder(seed)
        out[name] = root / name
        model.save_pretrained(out[name])
        processor.save_pretrained(out[name])
    return out


# The pipeline kind of every shipped recipe (conf/edit/recipes/), to pick the matching tiny model.
RECIPE_KIND = {
    "neon": "img2img",
    "green": "img2img",
    "window_view": "inpaint",
    "aliens": "inpaint",
    "no_towels": "inpaint",
    "neon_pix2pix": "instruct_pix2pix",
}


def tiny_edit_overrides(models: dict, steps: int = 3, resolution: int = 64) -> list[str]:
    """Hydra overrides pointing every shipped recipe, score model and trained method's base model
    at `save_tiny_models` dirs."""
    out = [
        f"edit.scores.clipseg_model_id={models['clipseg']}",
        f"edit.scores.clip_model_id={models['clip']}",
        "edit.scores.on_missing_weights=error",
    ]
    for name, kind in RECIPE_KIND.items():
        out += [
            f"edit.recipes.{name}.model_id={models[kind]}",
            f"edit.recipes.{name}.steps={steps}",
            f"edit.recipes.{name}.resolution={resolution}",
            f"edit.recipes.{name}.mask.model_id={models['clipseg']}",
        ]
    # the trained methods' base model (a StableDiffusionPipeline reads the img2img folder)
    out += [
        f"edit.textual_inversion.model_id={models['img2img']}",
        f"edit.imagic.model_id={models['img2img']}",
    ]
    return out
