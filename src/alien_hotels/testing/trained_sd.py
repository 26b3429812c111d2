"""A tiny Stable Diffusion that has learned something: two captioned rooms, in about half a minute.

Random-weight models exercise the code paths but cannot show what a method is for: a random
VAE does not reconstruct, and a random UNet ignores its text. Tests that check an outcome
(Imagic at alpha 0 reconstructs the source better than at alpha 1) need a model whose text
decides the picture. `trained_tiny_sd()` trains, on the CPU with a fixed seed:

- a VAE with Stable Diffusion's 8x downsampling (64 px -> 8x8x4 latents) to autoencode the
  rooms, with colour jitter so it is not a two-image lookup table;
- the CLIP text encoder and the UNet together on "a red room" / "a green room" (15% of the
  captions dropped, for classifier-free guidance).

Two choices make the text matter with two pictures and tiny latents. The schedule has zero
terminal SNR (`rescale_betas_zero_snr`, v-prediction, "trailing" DDIM steps; Lin et al. 2023):
with Stable Diffusion 1.5's schedule the last step still shows the picture through the noise,
so a two-image model reads it from there and ignores its prompt. And the UNet also pools the
text into its time embedding (diffusers' `addition_embed_type="text"`), which a few hundred
steps can learn; cross-attention alone learns too slowly for a test fixture.

All are the real diffusers / transformers classes, saved with `save_pretrained`, so the stages
load them by path like any hub model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alien_hotels.testing.diffusion import HIDDEN, assemble, tiny_text_encoder, tiny_tokenizer

SIZE = 64
ROOMS = {"red": (200, 40, 40), "green": (40, 190, 60)}
SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "rescale_betas_zero_snr": True,
    "prediction_type": "v_prediction",
    "steps_offset": 1,
}


def caption(colour: str) -> str:
    return f"a {colour} room"


def room(colour: str, size: int = SIZE, window: tuple[float, float] = (0.25, 0.5)):
    """A `colour` room: shaded wall (lighter at the bottom) with a bright window."""
    from PIL import Image

    y = np.mgrid[0:size, 0:size][0] / size
    img = np.array(ROOMS[colour], float)[None, None] * (0.6 + 0.4 * y[..., None])
    top, bottom = (int(f * size) for f in window)
    img[top:bottom, size // 4 : 3 * size // 4] = 235
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _pixels(image) -> Any:
    import torch

    return torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def trained_tiny_sd(vae_steps: int = 150, unet_steps: int = 400, seed: int = 0):
    """A StableDiffusionPipeline (float32, CPU) trained as the module docstring says."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        sample_size=SIZE,
    )
    images = torch.stack([_pixels(room(c)) for c in ROOMS])
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(vae_steps):
        jitter = (torch.rand(len(images), 3, 1, 1, generator=generator) - 0.5) * 0.6
        batch = (images + jitter).clamp(-1, 1)
        recon = vae.decode(vae.encode(batch).latent_dist.mean).sample
        torch.nn.functional.mse_loss(recon, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean
    vae.register_to_config(scaling_factor=1.0 / float(latents.std()))
    latents = latents * vae.config.scaling_factor

    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(seed).train()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    ).train()
    captions = [caption(c) for c in ROOMS] + [""]
    ids = tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    index = torch.arange(len(ROOMS)).repeat(2)
    for _ in range(unet_steps):
        embeddings = text_encoder(ids)[0]
        cond = embeddings[index].clone()
        cond[torch.rand(len(index), generator=generator) < 0.15] = embeddings[-1]
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),),
                          generator=generator)  # fmt: skip
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, cond).sample
        target = noise_scheduler.get_velocity(x0, noise, t)
        torch.nn.functional.mse_loss(pred, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    unet.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    return assemble(
        StableDiffusionPipeline,
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SCHEDULE, clip_sample=False, timestep_spacing="trailing"),
    )
