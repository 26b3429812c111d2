"""Stage `imagic`: Imagic (Kawar et al., "Imagic: Text-Based Real Image Editing with Diffusion
Models", arXiv 2210.09276) on each selected image of the manifest, for every alpha.

Per image: (1) optimise the target text's embedding e_tgt -> e_opt so the frozen model
reconstructs the image; (2) fine-tune the UNet on e_opt (LoRA through peft by default: the
per-image state is a few MB instead of a 3.4 GB UNet copy, and one base UNet serves every image);
(3) generate with e = alpha * e_tgt + (1 - alpha) * e_opt (DDIM, fixed seed) for every alpha.

The per-image state (e_tgt, e_opt, tuned weights) is cached in `<out>/state/<image_id>.safetensors`
under a key of the training settings and the source file; each generated PNG carries a key of
that state and its generation settings. So changing only `alphas` (or guidance / inference
steps) regenerates from the cached state, and nothing loads a model when all is up to date.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from alien_hotels.editing import imaging, models
from alien_hotels.editing.config import EditConfig, ImagicConfig
from alien_hotels.editing.runner import SCORE_KEYS, load_scorer
from alien_hotels.editing.scores import success
from alien_hotels.imageio import ImageFailure, load_rgb
from alien_hotels.methods import training
from alien_hotels.tables import usable_images

log = logging.getLogger(__name__)

KEY = "edit.imagic"
VERSION = "imagic-v1"
ADAPTER = "imagic"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TRAIN_FIELDS = {
    "model_id",
    "target_text",
    "resolution",
    "seed",
    "embedding_steps",
    "embedding_lr",
    "finetune",
    "lora_rank",
    "lora_alpha",
    "unet_steps",
    "unet_lr",
    "mixed_precision",
}
TABLE_COLUMNS = [
    "image_id",
    "alpha",
    "status",
    "reason",
    "trained",
    "seconds",
    *[f"{k}_{when}" for k in SCORE_KEYS for when in ("before", "after")],
    "ssim",
    "clip_similarity",
    "success",
    "key",
]
PLOT_COLUMNS = ["alpha", "n_images", "ssim", "clip_similarity", "success", "alien_score_after"]


def alpha_name(alpha: float) -> str:
    return f"alpha_{alpha:.3f}.png"


@dataclass
class Loaded:
    """The diffusion parts load on first use: a run with everything cached never loads them."""

    cfg: EditConfig
    scorer: Any
    _parts: Any = None

    @property
    def parts(self) -> training.DiffusionParts:
        if self._parts is None:
            imagic = self.cfg.imagic
            self._parts = training.load_parts(
                imagic.model_id, f"{KEY}.model_id", self.cfg, imagic.mixed_precision
            )
            import diffusers

            sched = self._parts.pipe.scheduler.config
            self._parts.pipe.scheduler = diffusers.DDIMScheduler.from_config(sched)
        return self._parts


def check_weights(cfg: EditConfig) -> None:
    """Fail before any work when the base model is missing (score models: `load_scorer`)."""
    models.require_weights(cfg.imagic.model_id, f"{KEY}.model_id", "model_index.json")


def state_key(cfg: EditConfig, source_md5: str) -> str:
    device, _ = models.resolve_device(cfg.model_copy(update={"dtype": "float32"}))
    return training.digest(VERSION, cfg.imagic.model_dump(include=TRAIN_FIELDS), source_md5, device)


def image_key(state: str, alpha: float, cfg: ImagicConfig) -> str:
    return training.digest(state, alpha, cfg.guidance_scale, cfg.inference_steps, cfg.seed)


def optimise(
    parts: training.DiffusionParts,
    cfg: ImagicConfig,
    image: Image.Image,
    on_step: Callable[[str, int], None] | None = None,
) -> dict:
    """Phases 1 and 2: {e_target, e_optimised, unet.<weight>...} (tuned weights on CPU).

    Leaves the tuned UNet in place (LoRA adapter attached / full weights changed) for
    generation; `tuned()` restores the base model afterwards.
    """
    import torch

    generator = torch.Generator().manual_seed(cfg.seed)
    latents = training.encode_latents(parts, training.pixels(image, image.size))
    e_target = training.text_embeddings(parts, [cfg.target_text])
    e_opt = torch.nn.Parameter(e_target.detach().clone().float())

    def descend(phase: str, params: list, lr: float, steps: int, embedding) -> None:
        """Adam on `params` against the denoising loss of the source under `embedding`."""
        optimizer = torch.optim.Adam(params, lr=lr)
        for step in tqdm(range(steps), desc=f"imagic {phase}", unit="step", leave=False):
            training.denoising_loss(parts, latents, embedding, generator).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step(phase, step)

    descend("embedding", [e_opt], cfg.embedding_lr, cfg.embedding_steps, e_opt)
    e_opt = e_opt.detach()
    trainable = _trainable(parts, cfg)
    descend("unet", trainable, cfg.unet_lr, cfg.unet_steps, e_opt)
    for param in trainable:
        param.requires_grad_(False)
    state = {"e_target": e_target.cpu(), "e_optimised": e_opt.cpu()}
    state.update({f"unet.{k}": v.detach().cpu() for k, v in _tuned_weights(parts, cfg).items()})
    return state


def _trainable(parts: training.DiffusionParts, cfg: ImagicConfig) -> list:
    import torch

    if cfg.finetune == "full":
        parts.unet.requires_grad_(True)
        return [p for p in parts.unet.parameters()]
    from peft import LoraConfig

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS)
    with torch.random.fork_rng(devices=[]):  # LoRA's A matrices: seeded, global RNG untouched
        torch.manual_seed(cfg.seed)
        parts.unet.add_adapter(lora, adapter_name=ADAPTER)
    params = [
        p
        for n, p in parts.unet.named_parameters()
        if f"lora_A.{ADAPTER}" in n or f"lora_B.{ADAPTER}" in n
    ]
    for param in params:
        param.requires_grad_(True)
    return params


def _tuned_weights(parts: training.DiffusionParts, cfg: ImagicConfig) -> dict:
    if cfg.finetune == "full":
        return parts.unet.state_dict()
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(parts.unet, adapter_name=ADAPTER)


@contextlib.contextmanager
def tuned(parts: training.DiffusionParts, cfg: ImagicConfig, state: dict | None):
    """The UNet with this image's tuned weights (from `state`, or as `optimise` left it), then
    the base model again for the next image."""
    base = None
    if cfg.finetune == "full":
        base = {k: v.detach().clone() for k, v in parts.unet.state_dict().items()}
    try:
        if state is not None:
            weights = {k[5:]: v for k, v in state.items() if k.startswith("unet.")}
            if cfg.finetune == "full":
                parts.unet.load_state_dict(weights)
            else:
                from peft import LoraConfig
                from peft.utils import set_peft_model_state_dict

                lora = LoraConfig(
                    r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS
                )
                parts.unet.add_adapter(lora, adapter_name=ADAPTER)
                set_peft_model_state_dict(parts.unet, weights, adapter_name=ADAPTER)
        yield
    finally:
        if base is not None:
            parts.unet.load_state_dict(base)
        if cfg.finetune == "lora" and ADAPTER in getattr(parts.unet, "peft_config", {}):
            parts.unet.delete_adapters(ADAPTER)


def generate(
    parts: training.DiffusionParts, cfg: ImagicConfig, state: dict, alpha: float, size
) -> Image.Image:
    """Phase 3: DDIM from a fixed seed on the interpolated embedding, at `size` = (w, h)."""
    import torch

    e_target = state["e_target"].to(parts.device)
    e_opt = state["e_optimised"].to(parts.device)
    embedding = alpha * e_target + (1.0 - alpha) * e_opt
    uncond = training.text_embeddings(parts, [""])
    with training.autocast(parts):
        return parts.pipe(
            prompt_embeds=embedding,
            negative_prompt_embeds=uncond,
            height=size[1],
            width=size[0],
            num_inference_steps=cfg.inference_steps,
            guidance_scale=cfg.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(cfg.seed),
        ).images[0]


def load_state(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("key") != key:
                return None
        return load_file(str(path))
    except Exception as exc:  # a torn or foreign file: retrain rather than fail
        log.warning("imagic: ignoring unreadable state %s: %s", path, exc)
        return None


def save_state(state: dict, path: Path, key: str) -> None:
    from safetensors.torch import save_file

    from alien_hotels.common import atomic_path

    tensors = {k: v.contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), {"key": key})


@dataclass
class ImagicResult:
    table: pd.DataFrame
    sheets: dict[str, Image.Image]


def run(
    cfg: EditConfig, manifest: pd.DataFrame, out_dir: Path, root: Path = Path(".")
) -> ImagicResult:
    """Imagic over the selected images; see the module docstring."""
    imagic = cfg.imagic
    images = usable_images(manifest, imagic.max_images).rows
    result = ImagicResult(pd.DataFrame(columns=TABLE_COLUMNS), {})
    out_dir.mkdir(parents=True, exist_ok=True)  # a DVC output even when there is nothing to do
    if images.empty:
        _remove_stale(out_dir, set(), imagic.alphas)
        log.info("imagic: no images (manifest has no status=ok rows)")
        return result
    check_weights(cfg)
    loaded = Loaded(cfg, load_scorer(cfg))
    rows: list[dict[str, Any]] = []
    for item in tqdm(images.itertuples(index=False), total=len(images), desc="imagic", unit="img"):
        image_id = str(item.image_id)
        try:
            source = load_rgb(root / str(item.path))
            source_md5 = imaging.file_md5(root / str(item.path))
        except (ImageFailure, OSError) as exc:
            rows.append(
                {
                    "image_id": image_id,
                    "status": "failed",
                    "reason": f"cannot read {item.path}: {exc}",
                    "trained": False,
                }
            )
            continue
        rows += _one_image(loaded, image_id, source, source_md5, out_dir, result)
    _remove_stale(out_dir, {r["image_id"] for r in rows if r["status"] != "failed"}, imagic.alphas)
    result.table = pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)
    return result


def _one_image(loaded: Loaded, image_id, source, source_md5, out_dir, result) -> list[dict]:
    cfg = loaded.cfg.imagic
    start = time.perf_counter()
    key = state_key(loaded.cfg, source_md5)
    targets = {a: out_dir / "images" / image_id / alpha_name(a) for a in cfg.alphas}
    missing = [a for a, p in targets.items() if imaging.saved_key(p) != image_key(key, a, cfg)]
    trained = False
    if missing:
        parts = loaded.parts
        prepared = imaging.prepare(source, cfg.resolution)
        state_path = out_dir / "state" / f"{image_id}.safetensors"
        state = load_state(state_path, key)
        trained = state is None
        with tuned(parts, cfg, state):
            if state is None:
                state = optimise(parts, cfg, prepared)
                save_state(state, state_path, key)
            for alpha in missing:
                out = generate(parts, cfg, state, alpha, prepared.size)
                imaging.save_png(
                    imaging.restore(out, source.size), targets[alpha], image_key(key, alpha, cfg)
                )
    seconds = round(time.perf_counter() - start, 3)
    rows, columns = [], []
    for alpha, path in targets.items():
        generated = load_rgb(path)
        row = {
            "image_id": image_id,
            "alpha": alpha,
            "status": "edited",
            "reason": "",
            "trained": trained,
            "seconds": seconds,
            "key": image_key(key, alpha, cfg),
        }
        row.update(loaded.scorer.compare(source, generated))
        row["success"] = success(row, cfg.goal)
        rows.append(row)
        columns.append((f"alpha {alpha:g}", generated))
    result.sheets[image_id] = alpha_sheet(image_id, source, columns)
    return rows


def _remove_stale(out_dir: Path, keep: set[str], alphas: list[float]) -> None:
    """States and images of images no longer selected, and images of dropped alphas."""
    wanted = {alpha_name(a) for a in alphas}
    for path in (out_dir / "state").glob("*.safetensors"):
        if path.stem not in keep:
            path.unlink()
    for folder in (out_dir / "images").glob("*"):
        for path in folder.glob("*.png"):
            if folder.name not in keep or path.name not in wanted:
                path.unlink()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def alpha_curve(table: pd.DataFrame) -> pd.DataFrame:
    """The preservation / edit curve: per alpha, means over the images."""
    done = table[table["status"] == "edited"]
    if done.empty:
        return pd.DataFrame(columns=PLOT_COLUMNS)
    numeric = done.assign(**{c: pd.to_numeric(done[c]) for c in PLOT_COLUMNS[2:]})
    grouped = numeric.groupby("alpha", sort=True)
    curve = grouped[PLOT_COLUMNS[2:]].mean()
    curve.insert(0, "n_images", grouped.size())
    return curve.reset_index().reindex(columns=PLOT_COLUMNS)


def alpha_sheet(image_id: str, source: Image.Image, columns: list, height: int = 160):
    """One row: source, then one column per alpha, labelled."""
    pad, label_h = 6, 16
    width = max(8, round(source.width * height / source.height))
    tiles = [("source", source), *columns]
    sheet = Image.new(
        "RGB", (pad + len(tiles) * (width + pad), height + 2 * label_h + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), f"imagic {image_id}", fill="black")
    for i, (label, img) in enumerate(tiles):
        x = pad + i * (width + pad)
        draw.text((x, label_h), label, fill="black")
        sheet.paste(img.resize((width, height), Image.Resampling.LANCZOS), (x, 2 * label_h))
    return sheet
