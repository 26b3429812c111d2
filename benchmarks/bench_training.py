"""Seconds per Textual Inversion step and per Imagic image on the real Stable Diffusion 1.5
architecture (random weights, CPU at reduced resolution; or CUDA, fp16 autocast).

    python -m benchmarks.bench_training [--resolution 128] [--ti-steps 2]
    python -m benchmarks.bench_training --device cuda --resolution 512   (benchmarks/gpu_check.sh)

Builds diffusers' `UNet2DConditionModel`, `AutoencoderKL` and transformers' `CLIPTextModel` with
the SD 1.5 configs written below (860M + 84M + 123M parameters) and runs the stages' own code
(`textual_inversion.train`, `imagic.optimise` / `imagic.generate`, LoRA rank 16) on it. Printed:
seconds per TI optimizer step (batch 1), per Imagic embedding step, per Imagic LoRA step and per
generated alpha image (DDIM, CFG), each also as a ratio to the baseline measured in the same run:
one plain UNet forward pass (inference, batch 1) at the same resolution. Then the extrapolation to
the shipped defaults (3000 TI steps; Imagic 500 + 1000 steps and 7 alphas x 50 DDIM steps).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

# Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5 unet/vae config.json; CLIP ViT-L/14 text).
UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
}


def sd15_pipeline():
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from alien_hotels.testing.diffusion import tiny_tokenizer

    torch.manual_seed(0)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=UNet2DConditionModel(**UNET),
        vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT)),
        tokenizer=tiny_tokenizer(),  # the real BPE, first merges only: same token ids shape
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--ti-steps", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed-precision", default="auto", help="auto: fp16 on CUDA, else no")
    parser.add_argument("--budget", type=float, default=1e9, help="seconds; Imagic skipped after")
    args = parser.parse_args()
    t_start = time.perf_counter()

    import numpy as np
    import torch
    from PIL import Image

    from alien_hotels.config import compose_params, validate_params
    from alien_hotels.methods import imagic, textual_inversion, training

    res, device = args.resolution, args.device
    autocast_dtype = training.resolve_precision(args.mixed_precision, device, "--mixed-precision")
    parts = training.parts_from_pipeline(sd15_pipeline(), device, autocast_dtype)
    n_params = sum(p.numel() for p in parts.unet.parameters()) / 1e6
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"SD 1.5 architecture, random weights, {where}, autocast {autocast_dtype}, torch threads "
        f"{torch.get_num_threads()}, {res}x{res} px ({res // 8}x{res // 8} latents), UNet "
        f"{n_params:.0f}M parameters",
        flush=True,
    )

    def now() -> float:  # CUDA runs asynchronously: a time stamp waits for the queued work
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    conf = Path(__file__).resolve().parents[1] / "conf"

    # baseline: one UNet forward pass, batch 1, inference
    latents = torch.randn(1, 4, res // 8, res // 8, device=device)
    cond = training.text_embeddings(parts, ["a hotel room"])
    with torch.no_grad(), training.autocast(parts):
        parts.unet(latents, 500, cond)  # warm-up
        times = []
        for _ in range(3):
            start = now()
            parts.unet(latents, 500, cond)
            times.append(now() - start)
    base = statistics.median(times)

    def show(name: str, seconds: float) -> None:
        print(f"{name:32s}{seconds:8.3f} s   x{seconds / base:5.1f} baseline", flush=True)

    print(f"baseline UNet forward           {base:8.3f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        refs = Path("data/references/bench")
        refs.mkdir(parents=True)
        for i in range(3):
            arr = np.random.default_rng(i).integers(0, 256, (res, res, 3), dtype=np.uint8)
            Image.fromarray(arr).save(refs / f"r{i}.png")
        cfg = validate_params(
            compose_params(
                [
                    f"edit.device={device}",
                    f"edit.textual_inversion.reference_dir={refs}",
                    f"edit.textual_inversion.resolution={res}",
                    f"edit.textual_inversion.steps={args.ti_steps + 1}",
                    "edit.textual_inversion.batch_size=1",
                    "edit.textual_inversion.gradient_accumulation=1",
                    "edit.textual_inversion.initializer_token=a",  # one token of the short BPE
                ],
                conf,
            )
        ).edit
        # the probe loss (before/after, not per step) shrunk to one sample: it is not a step cost
        textual_inversion.PROBE_SIZE = 1
        stamps: list[float] = []
        textual_inversion.train(
            cfg.textual_inversion,
            cfg,
            Path("ckpt"),
            on_step=lambda _: stamps.append(now()),
            parts=parts,
        )
        ti_step = statistics.median(np.diff(stamps))  # the first step (warm-up) is excluded
        show("textual inversion step", ti_step)
        if time.perf_counter() - t_start > args.budget:
            print(f"imagic: skipped (time budget {args.budget:.0f} s)")
            return

        image = Image.fromarray(np.random.default_rng(9).integers(0, 256, (res, res, 3), np.uint8))
        overrides = [
            "edit.imagic.embedding_steps=3",
            "edit.imagic.unet_steps=3",
            "edit.imagic.inference_steps=2",
            f"edit.imagic.resolution={res}",
        ]
        icfg = validate_params(compose_params(overrides, conf)).edit.imagic
        marks: dict[str, list[float]] = {"embedding": [], "unet": []}
        with imagic.tuned(parts, icfg, None):
            start = now()
            state = imagic.optimise(
                parts,
                icfg,
                image,
                on_step=lambda phase, _: marks[phase].append(now()),
            )
            emb_step = statistics.median(np.diff([start, *marks["embedding"]])[1:])
            lora_step = statistics.median(np.diff([marks["embedding"][-1], *marks["unet"]])[1:])
            start = now()
            imagic.generate(parts, icfg, state, 0.7, (res, res))
            ddim_step = (now() - start) / icfg.inference_steps  # with decode
        show("imagic embedding step", emb_step)
        show("imagic LoRA step", lora_step)
        show("imagic DDIM step (CFG, batch 2)", ddim_step)

        shipped = validate_params(compose_params([], conf)).edit
        ti_total = shipped.textual_inversion.steps * shipped.textual_inversion.gradient_accumulation
        im = shipped.imagic
        train = im.embedding_steps * emb_step + im.unet_steps * lora_step
        generate = len(im.alphas) * im.inference_steps * ddim_step
        print(
            f"shipped defaults at {res} px on this {where}: textual inversion "
            f"{ti_total * ti_step / 3600:.1f} h; imagic per image {train / 3600:.1f} h training "
            f"+ {generate / 60:.1f} min for {len(im.alphas)} alphas"
        )


if __name__ == "__main__":
    main()
