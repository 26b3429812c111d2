"""Running a recipe over the images manifest: masks, resumable edits, scores, the sweep.

Per image: load (any size or mode -> RGB), mask at the source size, edit at the recipe's
resolution (multiple of 8), resize back, paste the source back outside the mask, save
`<out_dir>/<image_id>.png` with a resume key (recipe config + source content) in its metadata,
and score the source and the result. An image whose output already carries the same key is not
edited again. Nothing loads a model when there is nothing to edit.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from alien_hotels import modelhub
from alien_hotels.common import StageError, remove_partial_writes
from alien_hotels.editing import imaging, models
from alien_hotels.editing.config import EditConfig, RecipeConfig
from alien_hotels.editing.scores import Scorer, success
from alien_hotels.imageio import ImageFailure, load_rgb
from alien_hotels.images import usable_images
from alien_hotels.modelhub import Located

log = logging.getLogger(__name__)

SCORE_KEYS = [
    "green_share",
    "neon_share",
    "towel_fraction",
    "towel_free",
    "clip_preference",
    "alien_score",
]
TABLE_COLUMNS = [
    "image_id",
    "status",
    "reason",
    "resumed",
    "mask_fraction",
    "seconds",
    *[f"{k}_{when}" for k in SCORE_KEYS for when in ("before", "after")],
    "ssim",
    "clip_similarity",
    "success",
    "key",
]
KEY_VERSION = "edit-v1"


@dataclass
class Models:
    """What a recipe needs; the diffusion pipeline loads on first use (a fully resumed run
    never loads it)."""

    loader: Any
    segmenter: Any
    scorer: Scorer
    dtype: str
    _pipe: Any = None

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = self.loader()
        return self._pipe


def check_weights(name: str, recipe: RecipeConfig, cfg: EditConfig) -> dict[str, Located]:
    """Fail before any work when a needed model is missing; config key -> checked weights."""
    return models.check_recipe(name, recipe, cfg)


def load_models(name: str, recipe: RecipeConfig, cfg: EditConfig) -> Models:
    found = check_weights(name, recipe, cfg)
    modelhub.set_torch_threads(cfg.n_jobs)
    device, dtype = models.resolve_device(cfg)
    key = f"edit.recipes.{name}"
    for item in found.values():
        log.info("%s: %s", item.ref.key, item.label)
    segmenters: dict[Path, Any] = {}

    def segmenter(folder: Path) -> Any:  # one CLIPSeg for the mask and the towel score
        if folder not in segmenters:
            segmenters[folder] = models.Segmenter(folder, device)
        return segmenters[folder]

    clipseg = found.get("edit.scores.clipseg_model_id")
    clip = found.get("edit.scores.clip_model_id")
    scorer = Scorer(
        cfg.scores,
        segmenter=segmenter(clipseg.path) if clipseg else None,
        clip=models.ClipScorer(clip.path, device) if clip else None,
    )
    mask = found.get(f"{key}.mask.model_id")
    pipeline = found[f"{key}.model_id"].path
    return Models(
        lambda: models.load_pipeline(recipe, key, cfg, pipeline),
        segmenter(mask.path) if mask else None,
        scorer,
        str(dtype).removeprefix("torch."),
    )


def recipe_hash(recipe: RecipeConfig, dtype: str) -> str:
    text = f"{KEY_VERSION}|{dtype}|{recipe.model_dump_json()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mask_file(recipe: RecipeConfig, image_id: str, root: Path) -> Path:
    """`<mask.files_dir>/<image_id>.png`, `files_dir` relative to the repo root."""
    return root / (recipe.mask.files_dir or "") / f"{image_id}.png"


def compute_mask(
    recipe: RecipeConfig, image_id: str, source: Image.Image, segmenter: Any, root: Path
) -> tuple[np.ndarray | None, str]:
    """(mask at the source size or None for a whole-image edit, note)."""
    spec = recipe.mask
    if spec.source == "none":
        return None, ""
    if spec.source == "text":
        probs = segmenter.probs(source, spec.prompt or "")
        return imaging.mask_from_probs(probs, source.size, spec.threshold, spec.dilate), ""
    path = mask_file(recipe, image_id, root)
    if not path.is_file():
        return np.zeros((source.height, source.width), dtype=bool), f"no mask file {path}"
    return imaging.mask_from_file(path, source.size, spec.dilate), ""


def edit_image(
    pipe: Any, recipe: RecipeConfig, source: Image.Image, mask: np.ndarray | None
) -> Image.Image:
    """Edit at the model's size, back to the source size, source kept outside the mask."""
    prepared = imaging.prepare(source, recipe.resolution)
    mask_img = None
    if mask is not None:
        mask_img = imaging.mask_image(mask).resize(prepared.size, Image.Resampling.NEAREST)
    edited = models.run_pipeline(pipe, recipe, prepared, mask_img)
    edited = imaging.restore(edited, source.size)
    return imaging.composite(source, edited, mask) if mask is not None else edited


@dataclass
class RecipeResult:
    table: pd.DataFrame
    sheet: list[tuple[str, Image.Image, Image.Image | None, Image.Image]] = field(
        default_factory=list
    )


def _failed(image_id: str, reason: str) -> dict[str, Any]:
    return {"image_id": image_id, "status": "failed", "reason": reason, "resumed": False}


def edit_recipe(
    name: str,
    cfg: EditConfig,
    manifest: pd.DataFrame,
    out_dir: Path,
    root: Path = Path("."),
    loaded: Models | None = None,
) -> RecipeResult:
    """Edit every selected image with recipe `name`; see the module docstring."""
    recipe = cfg.recipes[name]
    images = usable_images(manifest, cfg.max_images).rows
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(out_dir)  # PNGs of a killed run: DVC would track them
    result = RecipeResult(pd.DataFrame(columns=TABLE_COLUMNS))
    if images.empty:
        _remove_stale(out_dir, set())
        log.info("edit %s: no images to edit (manifest has no status=ok rows)", name)
        return result
    masks = root / (recipe.mask.files_dir or "")
    if recipe.mask.source == "files" and not masks.is_dir():
        raise StageError(
            f"edit.recipes.{name}.mask.files_dir: no folder {recipe.mask.files_dir} "
            "(relative to the repo root)"
        )
    loaded = loaded or load_models(name, recipe, cfg)
    base_key = recipe_hash(recipe, loaded.dtype)
    rows: list[dict[str, Any]] = []
    bar = tqdm(images.itertuples(index=False), total=len(images), desc=f"edit {name}", unit="img")
    for item in bar:
        image_id = str(item.image_id)
        src_path = root / str(item.path)
        try:
            source = load_rgb(src_path)
            digest = imaging.file_md5(src_path)
        except ImageFailure as exc:
            rows.append(_failed(image_id, f"cannot read {item.path}: {exc.reason}"))
            continue
        start = time.perf_counter()
        try:
            mask, note = compute_mask(recipe, image_id, source, loaded.segmenter, root)
        except ImageFailure as exc:
            rows.append(_failed(image_id, f"cannot read the mask: {exc.detail}"))
            continue
        if recipe.mask.source == "files" and not note:
            digest += imaging.file_md5(mask_file(recipe, image_id, root))
        key = hashlib.sha256(f"{base_key}|{digest}".encode()).hexdigest()[:20]
        target = out_dir / f"{image_id}.png"
        empty = mask is not None and not mask.any()
        resumed = target.is_file() and imaging.saved_key(target) == key
        if resumed:
            edited = load_rgb(target)
        else:
            edited = source.copy() if empty else edit_image(loaded.pipe, recipe, source, mask)
            imaging.save_png(edited, target, key)
        row: dict[str, Any] = {
            "image_id": image_id,
            "status": "unchanged" if empty else "edited",
            "reason": note or ("empty mask: copied unchanged" if empty else ""),
            "resumed": resumed,
            "mask_fraction": 1.0 if mask is None else float(mask.mean()),
            "seconds": round(time.perf_counter() - start, 3),
            "key": key,
        }
        row.update(loaded.scorer.compare(source, edited))
        row["success"] = success(row, recipe.goal)
        rows.append(row)
        if len(result.sheet) < cfg.sheet_rows:
            mask_img = imaging.mask_image(mask) if mask is not None else None
            result.sheet.append((image_id, source, mask_img, edited))
    keep = {r["image_id"] for r in rows if r["status"] != "failed"}
    _remove_stale(out_dir, keep)
    result.table = pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)
    return result


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Outputs of images no longer selected (or failed) would mislead: remove them."""
    for path in out_dir.glob("*.png"):
        if path.stem not in keep:
            path.unlink()


def recipe_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """Counts and the means of every score column (null where no value exists)."""
    status = table["status"].value_counts() if not table.empty else pd.Series(dtype=int)
    out: dict[str, Any] = {
        "n_images": len(table),
        "n_edited": int(status.get("edited", 0)),
        "n_unchanged": int(status.get("unchanged", 0)),
        "n_failed": int(status.get("failed", 0)),
        "n_resumed": int(table["resumed"].fillna(False).astype(bool).sum()) if len(table) else 0,
    }
    numeric = [c for c in TABLE_COLUMNS if c.endswith(("_before", "_after"))]
    numeric += ["ssim", "clip_similarity", "success", "mask_fraction", "seconds"]
    for col in numeric:
        values = pd.to_numeric(table[col], errors="coerce") if len(table) else pd.Series([])
        out[col] = None if values.isna().all() else round(float(values.mean()), 6)
    return out


SWEEP_METRICS = ["ssim", "clip_similarity", "success", "alien_score_after", "mask_fraction"]


def sweep(
    cfg: EditConfig, manifest: pd.DataFrame, root: Path = Path("."), loaded: Models | None = None
) -> pd.DataFrame:
    """One row per grid point: mean preservation (SSIM, CLIP) and edit success."""
    name = cfg.sweep.recipe
    fields = list(cfg.sweep.grid)
    columns = [*fields, "n_images", *SWEEP_METRICS]
    images = usable_images(manifest, cfg.sweep.max_images).rows
    if images.empty or not cfg.recipes:
        return pd.DataFrame(columns=columns)
    recipe = cfg.recipes[name]
    loaded = loaded or load_models(name, recipe, cfg)
    prepared = []
    for item in images.itertuples(index=False):
        try:
            source = load_rgb(root / str(item.path))
            mask, _ = compute_mask(recipe, str(item.image_id), source, loaded.segmenter, root)
        except ImageFailure as exc:
            log.warning("sweep: skipping %s: %s", item.image_id, exc)
            continue
        prepared.append((source, mask))
    points = list(itertools.product(*cfg.sweep.grid.values()))
    out = []
    bar = tqdm(total=len(points) * len(prepared), desc=f"sweep {name}", unit="img")
    for values in points:
        update = dict(zip(fields, values, strict=True))
        point = RecipeConfig.model_validate({**recipe.model_dump(), **update})
        rows = []
        for source, mask in prepared:
            empty = mask is not None and not mask.any()
            edited = source.copy() if empty else edit_image(loaded.pipe, point, source, mask)
            row = loaded.scorer.compare(source, edited)
            row["success"] = success(row, point.goal)
            row["mask_fraction"] = 1.0 if mask is None else float(mask.mean())
            rows.append(row)
            bar.update()
        frame = pd.DataFrame(rows).reindex(columns=SWEEP_METRICS).apply(pd.to_numeric)
        out.append({**update, "n_images": len(rows), **frame.mean().to_dict()})
    bar.close()
    return pd.DataFrame(out, columns=columns)
