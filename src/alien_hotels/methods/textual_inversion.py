"""Stage `textual_inversion`: learn one new token (`<alien-style>`) from reference images.

Only the new token's input embedding is trained: a forward hook on the text encoder's token
embedding swaps it in wherever the placeholder id appears, so the UNet, VAE, text encoder and
every other token stay exactly as loaded, and the optimizer state is one vector. The result is
written as `{placeholder: (1, hidden)}` in `learned_embeds.safetensors`, the format diffusers'
`load_textual_inversion` reads.

Resumable: every `checkpoint_interval` steps the embedding, optimizer, grad scaler, RNG state
and losses are saved atomically; a rerun with the same key (config without `steps`, references,
device) continues from there and ends bit-identical to an uninterrupted run on the same device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from alien_hotels.common import StageError, atomic_path
from alien_hotels.editing import imaging
from alien_hotels.editing.config import EditConfig, TextualInversionConfig
from alien_hotels.imageio import ImageFailure, load_rgb
from alien_hotels.methods import training

log = logging.getLogger(__name__)

KEY = "edit.textual_inversion"
CHECKPOINT_FILE = "checkpoint.pt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VERSION = "ti-v1"
PROBE_SIZE = 16


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    n_references: int = 0
    resumed_from: int = 0
    embedding: Any = None  # (1, hidden) float32 tensor; None when nothing was learned
    # Loss on a fixed probe set (same images, prompts, noise, timesteps) with the initial and
    # the learned embedding: a low-variance measure of progress next to the noisy step losses.
    probe_start: float | None = None
    probe_end: float | None = None


def load_references(cfg: TextualInversionConfig) -> list[tuple[Path, Image.Image]]:
    """Every image of reference_dir, or a clear error (missing, empty, unreadable) before work."""
    folder = Path(cfg.reference_dir or "")
    if not folder.is_dir():
        raise StageError(f"{KEY}.reference_dir: {folder} is not a folder")
    try:
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
    except OSError as exc:
        raise StageError(f"{KEY}.reference_dir: cannot list {folder}: {exc}") from exc
    if not files:
        raise StageError(
            f"{KEY}.reference_dir: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
            "put 3-10 example images of the style there"
        )
    images, bad = [], []
    for path in files:
        try:
            images.append((path, load_rgb(path)))
        except (ImageFailure, OSError) as exc:
            bad.append(f"{path.name} ({exc})")
    if bad:
        raise StageError(
            f"{KEY}.reference_dir: unreadable image(s) in {folder}: {'; '.join(bad)}; "
            "fix or remove them"
        )
    return images


def square(image: Image.Image, resolution: int) -> Image.Image:
    """Centre crop to a square, resized to resolution (as diffusers' training example does)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    crop = image.crop((left, top, left + side, top + side))
    return crop.resize((resolution, resolution), Image.Resampling.LANCZOS)


def add_placeholder(tokenizer: Any, cfg: TextualInversionConfig, model_id: str) -> tuple[int, int]:
    """(placeholder id, initializer id); the placeholder must be new, the initializer one token."""
    vocab = tokenizer.get_vocab()
    token = cfg.placeholder_token
    if token in vocab or f"{token}</w>" in vocab:
        raise StageError(
            f"{KEY}.placeholder_token: {token!r} is already in the vocabulary of {model_id!r}; "
            "choose a new token such as <alien-style>"
        )
    init_ids = tokenizer.encode(cfg.initializer_token, add_special_tokens=False)
    if len(init_ids) != 1:
        raise StageError(
            f"{KEY}.initializer_token: {cfg.initializer_token!r} is {len(init_ids)} tokens for "
            f"{model_id!r}; choose a word that is a single token"
        )
    tokenizer.add_tokens(token)
    return tokenizer.convert_tokens_to_ids(token), init_ids[0]


def run_key(cfg: TextualInversionConfig, references: list[Path], device: str) -> str:
    """What a checkpoint must match to be continued (`steps` may grow; the interval is free)."""
    settings = cfg.model_dump(exclude={"steps", "checkpoint_interval"})
    return training.digest(VERSION, settings, [imaging.file_md5(p) for p in references], device)


def train(
    cfg: TextualInversionConfig,
    edit_cfg: EditConfig,
    checkpoint_dir: Path,
    on_step: Callable[[int], None] | None = None,
    parts: training.DiffusionParts | None = None,
) -> TrainResult:
    """Train (or continue) the embedding; nothing is loaded when reference_dir is null.

    `parts`: already loaded components (benchmarks); by default loaded from cfg.model_id.
    """
    if cfg.reference_dir is None:
        log.info("textual_inversion: reference_dir is null, nothing to learn")
        return TrainResult()
    references = load_references(cfg)
    import torch

    if parts is None:
        parts = training.load_parts(cfg.model_id, f"{KEY}.model_id", edit_cfg, cfg.mixed_precision)
    token_id, init_id = add_placeholder(parts.tokenizer, cfg, cfg.model_id)
    parts.text_encoder.resize_token_embeddings(len(parts.tokenizer))
    embeddings = parts.text_encoder.get_input_embeddings()
    learned = torch.nn.Parameter(embeddings.weight[init_id].detach().clone().float()[None])

    def swap_in(_module, inputs, output):
        return torch.where((inputs[0] == token_id)[..., None], learned.to(output.dtype), output)

    handle = embeddings.register_forward_hook(swap_in)
    try:
        pixels = torch.cat(
            [
                training.pixels(square(img, cfg.resolution), (cfg.resolution,) * 2)
                for _, img in references
            ]
        )
        latents = torch.cat([training.encode_latents(parts, p[None]) for p in pixels])
        probe_start = _probe_loss(cfg, parts, latents)
        result = _optimise(cfg, parts, latents, learned, references, checkpoint_dir, on_step)
        result.probe_start, result.probe_end = probe_start, _probe_loss(cfg, parts, latents)
        return result
    finally:
        handle.remove()


def _optimise(cfg, parts, latents, learned, references, checkpoint_dir, on_step) -> TrainResult:
    import torch

    key = run_key(cfg, [p for p, _ in references], parts.device)
    optimizer = torch.optim.AdamW([learned], lr=cfg.learning_rate, weight_decay=1e-2)
    scaler = torch.amp.GradScaler(enabled=parts.autocast_dtype == torch.float16)
    generator = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult(n_references=len(references))
    ckpt_path = checkpoint_dir / CHECKPOINT_FILE
    state = _load_checkpoint(ckpt_path, key, cfg.steps)
    if state is not None:
        with torch.no_grad():
            learned.copy_(state["learned"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        result.losses = list(state["losses"])
        result.resumed_from = len(result.losses)
        log.info("textual_inversion: resuming at step %d of %d", result.resumed_from, cfg.steps)
    bar = tqdm(total=cfg.steps, initial=result.resumed_from, desc="textual inversion", unit="step")
    for step in range(result.resumed_from + 1, cfg.steps + 1):
        total = 0.0
        for _ in range(cfg.gradient_accumulation):
            pick = torch.randint(0, len(latents), (cfg.batch_size,), generator=generator)
            slots = torch.randint(0, len(cfg.templates), (cfg.batch_size,), generator=generator)
            prompts = [cfg.templates[i].format(cfg.placeholder_token) for i in slots.tolist()]
            with training.autocast(parts):
                cond = parts.text_encoder(training.tokenize(parts, prompts))[0]
            loss = training.denoising_loss(parts, latents[pick.to(parts.device)], cond, generator)
            scaler.scale(loss / cfg.gradient_accumulation).backward()
            total += float(loss.detach()) / cfg.gradient_accumulation
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(total)
        bar.update()
        bar.set_postfix(loss=f"{total:.4f}")
        if step % cfg.checkpoint_interval == 0 or step == cfg.steps:
            checkpoint = {
                "key": key,
                "learned": learned.detach().cpu(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "generator": generator.get_state(),
                "losses": result.losses,
            }
            # Through a file object: given a path, torch.save names the archive's records after
            # the file, here the random temporary name, so identical checkpoints differed.
            with atomic_path(ckpt_path) as tmp, tmp.open("wb") as fh:
                torch.save(checkpoint, fh)
        if on_step is not None:
            on_step(step)
    bar.close()
    result.embedding = learned.detach().float().cpu()
    return result


def _probe_loss(
    cfg: TextualInversionConfig, parts: Any, latents: Any, n: int = PROBE_SIZE
) -> float:
    """Mean loss over `n` fixed draws from their own generator (training RNG untouched)."""
    import torch

    generator = torch.Generator().manual_seed(cfg.seed + 1)
    n = PROBE_SIZE
    losses = []
    with torch.no_grad():
        for start in range(0, n, cfg.batch_size):
            size = min(cfg.batch_size, n - start)
            pick = torch.randint(0, len(latents), (size,), generator=generator)
            slots = torch.randint(0, len(cfg.templates), (size,), generator=generator)
            prompts = [cfg.templates[i].format(cfg.placeholder_token) for i in slots.tolist()]
            with training.autocast(parts):
                cond = parts.text_encoder(training.tokenize(parts, prompts))[0]
            loss = training.denoising_loss(parts, latents[pick.to(parts.device)], cond, generator)
            losses.append(float(loss) * size)
    return sum(losses) / n


def _load_checkpoint(path: Path, key: str, steps: int) -> dict | None:
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file is not fatal: train from the start
        log.warning("textual_inversion: ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if state.get("key") != key:
        log.info("textual_inversion: checkpoint %s is for other settings; starting over", path)
        return None
    if len(state["losses"]) > steps:
        log.info("textual_inversion: checkpoint is past steps=%d; starting over", steps)
        return None
    return state


def save_embedding(result: TrainResult, cfg: TextualInversionConfig, target: Path) -> None:
    """`learned_embeds.safetensors`: {placeholder: (1, hidden)}, or a valid empty file."""
    metadata = {"placeholder_token": cfg.placeholder_token, "model_id": cfg.model_id}
    if result.embedding is None:
        training.write_empty_safetensors(target, {**metadata, "status": "empty"})
        return
    training.save_safetensors(
        {cfg.placeholder_token: result.embedding.contiguous()}, target, metadata
    )


def loss_metrics(result: TrainResult, cfg: TextualInversionConfig) -> dict[str, Any]:
    """Final loss and the mean loss over the first and the last tenth of the run."""
    losses = result.losses
    window = max(1, len(losses) // 10)
    mean = (lambda xs: round(sum(xs) / len(xs), 6)) if losses else (lambda xs: None)
    return {
        "placeholder_token": cfg.placeholder_token,
        "steps": len(losses),
        "n_references": result.n_references,
        "resumed_from_step": result.resumed_from,
        "final_loss": round(losses[-1], 6) if losses else None,
        "loss_first_tenth": mean(losses[:window]),
        "loss_last_tenth": mean(losses[-window:]),
        "probe_loss_start": None if result.probe_start is None else round(result.probe_start, 6),
        "probe_loss_end": None if result.probe_end is None else round(result.probe_end, 6),
    }
