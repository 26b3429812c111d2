"""What Textual Inversion and Imagic share: loading the Stable Diffusion parts, precision, latents
and the denoising loss.

Randomness comes only from an explicit CPU `torch.Generator`, so a run is reproducible and its
state can be checkpointed. Weights stay float32 (they are trained or back-propagated through);
`mixed_precision` runs the forward passes under autocast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alien_hotels import modelhub
from alien_hotels.common import StageError, atomic_path
from alien_hotels.editing import models
from alien_hotels.editing.config import EditConfig


@dataclass
class DiffusionParts:
    """The components of a Stable Diffusion pipeline and where they run."""

    pipe: Any  # StableDiffusionPipeline holding the same modules (used for generation)
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any  # DDPMScheduler with the model's training schedule
    device: str
    autocast_dtype: Any  # None: full precision


def load_parts(model_id: str, key: str, cfg: EditConfig, mixed_precision: str) -> DiffusionParts:
    """Check the weights, load the pipeline in float32 on edit.device, everything frozen.

    The one place these stages load a model; presence checks and the device rule are the
    shared ones (`editing.models` over `modelhub`).
    """
    import diffusers
    import torch

    folder = models.require_weights(model_id, key, "model_index.json")
    modelhub.set_torch_threads(cfg.n_jobs)
    device, _ = models.resolve_device(cfg.model_copy(update={"dtype": "float32"}))
    autocast_dtype = resolve_precision(mixed_precision, device, key)
    try:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            folder,
            dtype=torch.float32,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise StageError(f"{key}: cannot load {model_id!r}: {exc}") from exc
    return parts_from_pipeline(pipe, device, autocast_dtype)


def parts_from_pipeline(pipe: Any, device: str, autocast_dtype: Any = None) -> DiffusionParts:
    """A loaded (or, in benchmarks, built) pipeline on `device`, every module frozen."""
    import diffusers

    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.text_encoder, pipe.vae, pipe.unet):
        module.requires_grad_(False)
        module.eval()
    noise_scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
    return DiffusionParts(
        pipe,
        pipe.tokenizer,
        pipe.text_encoder,
        pipe.vae,
        pipe.unet,
        noise_scheduler,
        device,
        autocast_dtype,
    )


def resolve_precision(mixed_precision: str, device: str, key: str) -> Any:
    """Autocast dtype (None: none). fp16 autocast on a CPU is refused, not silently slow."""
    import torch

    if mixed_precision == "auto":
        mixed_precision = "fp16" if device == "cuda" else "no"
    if mixed_precision == "no":
        return None
    if mixed_precision == "fp16" and device != "cuda":
        raise StageError(f"{key}: mixed_precision=fp16 needs a CUDA device; use auto, no or bf16")
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


def autocast(parts: DiffusionParts):
    import torch

    if parts.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(parts.device.split(":")[0], dtype=parts.autocast_dtype)


def pixels(image, size: tuple[int, int]) -> Any:
    """PIL RGB -> (1, 3, h, w) float tensor in [-1, 1] at `size` = (w, h)."""
    import numpy as np
    import torch
    from PIL import Image

    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def encode_latents(parts: DiffusionParts, image_pixels: Any) -> Any:
    """VAE posterior means, scaled (deterministic: the same latents every step and every run)."""
    import torch

    with torch.no_grad():
        dist = parts.vae.encode(image_pixels.to(parts.device)).latent_dist
        return dist.mean * parts.vae.config.scaling_factor


def text_embeddings(parts: DiffusionParts, prompts: list[str]) -> Any:
    import torch

    tokens = tokenize(parts, prompts)
    with torch.no_grad():
        return parts.text_encoder(tokens)[0]


def tokenize(parts: DiffusionParts, prompts: list[str]) -> Any:
    return parts.tokenizer(
        prompts,
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(parts.device)


def denoising_loss(parts: DiffusionParts, latents: Any, cond: Any, generator: Any) -> Any:
    """MSE of the UNet's prediction at a random timestep (noise or v, as the model was trained)."""
    import torch

    n = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(parts.device)
    steps = parts.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (n,), generator=generator).to(parts.device)
    noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    if parts.noise_scheduler.config.prediction_type == "v_prediction":
        target = parts.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    with autocast(parts):
        pred = parts.unet(noisy, timesteps, cond).sample
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def save_safetensors(tensors: dict[str, Any], target: Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file`, with a header whose bytes depend only on its content.

    safetensors keeps `metadata` in a Rust HashMap, which iterates in an order drawn at random in
    every process (not fixed by PYTHONHASHSEED): two runs with identical tensors wrote files with
    different bytes, so DVC saw a changed output. The header is rewritten with sorted metadata.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata)
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.pop("__metadata__", {}).items()))
    tensor_entries = sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"),
        key=lambda item: item[1]["data_offsets"],
    )
    text = json.dumps({"__metadata__": header["__metadata__"], **dict(tensor_entries)}).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with atomic_path(target) as tmp:
        tmp.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])


def write_empty_safetensors(target: Path, metadata: dict[str, str]) -> None:
    """A valid safetensors file with no tensors, written without torch or safetensors installed
    (the bundled sample runs on the base install)."""
    header = json.dumps({"__metadata__": metadata}).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    with atomic_path(target) as tmp:
        tmp.write_bytes(struct.pack("<Q", len(header)) + header)
