"""Running a recipe over the images manifest: masks, resumable edits, scores, the sweep.

Per image: load (any size or mode -> RGB), mask at the source size, edit at the recipe's
resolution (multiple of 8), resize back, paste the source back outside the mask, save
`<out_dir>/<image_id>.png` with a resume key (recipe config + source content) in its metadata,
and score the source and the result. An image whose output already carries the same key is not
edited again. Nothing loads a model when there is nothing to edit.

Each image goes through `plan_job` (no model: readable?, resume key, output already there?),
`run_job` (the models: mask, edit, scores) and `store` (the PNG). `edit_recipe` runs all three
here; for `edit.executor=ray` the stage entry point (`alien_hotels.stages.edit`) passes the Ray
executor (`alien_hotels.distributed.edit`), which runs `run_job` on Ray actors. This module never
imports the Ray side (it imports this one).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from alien_hotels import modelhub
from alien_hotels.common import StageError, remove_partial_writes
from alien_hotels.editing import embedding, imaging, models
from alien_hotels.editing.config import EditConfig, RecipeConfig
from alien_hotels.editing.scores import Scorer, success
from alien_hotels.imageio import ImageFailure, load_rgb
from alien_hotels.modelhub import Located
from alien_hotels.tables import EMBEDDING_PATH, usable_images

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
    key_extra: str = ""  # the learned embedding's digest when the prompt uses its token
    _pipe: Any = None

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = self.loader()
        return self._pipe


def check_weights(name: str, recipe: RecipeConfig, cfg: EditConfig) -> dict[str, Located]:
    """Fail before any work when a needed model is missing; config key -> checked weights."""
    found = models.check_recipe(name, recipe, cfg)
    if embedding.uses_token(recipe, cfg):
        embedding.check_embedding(name, EMBEDDING_PATH, cfg)
    return found


def load_scorer(cfg: EditConfig) -> Scorer:
    """The scores alone (for stages that bring their own generator, e.g. imagic); missing
    optional score models are left out, with a warning."""
    found = modelhub.ensure(models.score_refs(cfg), "edit", cfg.allow_download)
    device, _ = models.resolve_device(cfg)
    clipseg = found.get("edit.scores.clipseg_model_id")
    clip = found.get("edit.scores.clip_model_id")
    return Scorer(
        cfg.scores,
        segmenter=models.Segmenter(clipseg.path, device) if clipseg else None,
        clip=models.ClipScorer(clip.path, device) if clip else None,
    )


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
    learned = EMBEDDING_PATH
    uses_token = embedding.uses_token(recipe, cfg)

    def load_pipe() -> Any:
        pipe = models.load_pipeline(recipe, key, cfg, pipeline)
        if uses_token:  # the prompt names the learned token: load it into the pipeline
            embedding.attach(pipe, learned, cfg)
        return pipe

    return Models(
        load_pipe,
        segmenter(mask.path) if mask else None,
        scorer,
        str(dtype).removeprefix("torch."),
        key_extra=f"|ti:{imaging.file_md5(learned)}" if uses_token else "",
    )


def loaded_key(recipe: RecipeConfig, loaded: Models) -> str:
    """The resume key of a recipe run with these models (dtype, and the learned embedding when
    the prompt uses its token): every executor keys its outputs with this."""
    return recipe_hash(recipe, loaded.dtype + loaded.key_extra)


def recipe_hash(recipe: RecipeConfig, dtype: str) -> str:
    text = f"{KEY_VERSION}|{dtype}|{recipe.model_dump_json()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_mask_file(recipe: RecipeConfig, image_id: str, root: Path) -> tuple[bytes | None, str]:
    """mask.source=files: (the bytes of `<files_dir>/<image_id>.png` or None, a note when it is
    missing); `files_dir` is relative to the repo root."""
    if recipe.mask.source != "files":
        return None, ""
    path = root / (recipe.mask.files_dir or "") / f"{image_id}.png"
    if not path.is_file():
        return None, f"no mask file {path}"
    return path.read_bytes(), ""


def compute_mask(
    recipe: RecipeConfig, source: Image.Image, segmenter: Any, mask_file: bytes | None
) -> np.ndarray | None:
    """Mask at the source size, or None for a whole-image edit. mask.source=files without a
    file (`mask_file` None): an empty mask, so the image is kept unchanged. An unreadable mask
    file raises `ImageFailure`."""
    spec = recipe.mask
    if spec.source == "none":
        return None
    if spec.source == "text":
        probs = segmenter.probs(source, spec.prompt or "")
        return imaging.mask_from_probs(probs, source.size, spec.threshold, spec.dilate)
    if mask_file is None:
        return np.zeros((source.height, source.width), dtype=bool)
    return imaging.mask_from_file(io.BytesIO(mask_file), source.size, spec.dilate)


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
    executor: dict[str, Any] = field(default_factory=lambda: {"executor": "local"})


def _failed(image_id: str, reason: str) -> dict[str, Any]:
    return {"image_id": image_id, "status": "failed", "reason": reason, "resumed": False}


@dataclass
class EditJob:
    """One image to edit, everything in memory (it may travel to a Ray worker): the source
    file's bytes, the mask file's, the resume key and, when the output with that key already
    exists, its bytes (scored again, not edited again)."""

    image_id: str
    source: bytes
    mask_file: bytes | None
    note: str
    key: str
    existing: bytes | None


@dataclass
class EditDone:
    row: dict[str, Any]
    edited: Image.Image
    mask: np.ndarray | None


def plan_job(
    recipe: RecipeConfig, base_key: str, image_id: str, path: str, root: Path, out_dir: Path
) -> EditJob | dict[str, Any]:
    """The job for one manifest row (no model needed), or its failure row."""
    src_path = root / path
    try:
        decoded = load_rgb(src_path)  # unreadable sources fail here, with the local message
        source = src_path.read_bytes()
    except ImageFailure as exc:
        return _failed(image_id, f"cannot read {path}: {exc.reason}")
    mask_file, note = read_mask_file(recipe, image_id, root)
    if mask_file is not None:
        try:  # a corrupt mask fails its row before any model work
            imaging.mask_from_file(io.BytesIO(mask_file), decoded.size, 0)
        except ImageFailure as exc:
            return _failed(image_id, f"cannot read the mask: {exc.detail}")
    digest = hashlib.md5(source).hexdigest()
    if mask_file is not None:
        digest += hashlib.md5(mask_file).hexdigest()
    key = hashlib.sha256(f"{base_key}|{digest}".encode()).hexdigest()[:20]
    target = out_dir / f"{image_id}.png"
    existing = target.read_bytes() if imaging.saved_key(target) == key else None
    return EditJob(image_id, source, mask_file, note, key, existing)


def run_job(loaded: Models, recipe: RecipeConfig, job: EditJob) -> EditDone:
    """Mask, edit (unless resumed or the mask is empty) and score one image: the per-image
    worker both executors run."""
    start = time.perf_counter()
    source = load_rgb(job.source)
    mask = compute_mask(recipe, source, loaded.segmenter, job.mask_file)
    empty = mask is not None and not mask.any()
    if job.existing is not None:
        edited = load_rgb(job.existing)
    else:
        edited = source.copy() if empty else edit_image(loaded.pipe, recipe, source, mask)
    row: dict[str, Any] = {
        "image_id": job.image_id,
        "status": "unchanged" if empty else "edited",
        "reason": job.note or ("empty mask: copied unchanged" if empty else ""),
        "resumed": job.existing is not None,
        "mask_fraction": 1.0 if mask is None else float(mask.mean()),
        "seconds": round(time.perf_counter() - start, 3),
        "key": job.key,
    }
    row.update(loaded.scorer.compare(source, edited))
    row["success"] = success(row, recipe.goal)
    return EditDone(row, edited, mask)


def store(job: EditJob, done: EditDone, out_dir: Path) -> None:
    """Write a newly edited image (with its resume key); resumed ones are already there."""
    if job.existing is None:
        imaging.save_png(done.edited, out_dir / f"{job.image_id}.png", job.key)


def sheet_entry(job: EditJob, done: EditDone):
    mask_img = imaging.mask_image(done.mask) if done.mask is not None else None
    return (job.image_id, load_rgb(job.source), mask_img, done.edited)


def finish(rows: list[dict[str, Any]], out_dir: Path) -> pd.DataFrame:
    keep = {r["image_id"] for r in rows if r["status"] != "failed"}
    _remove_stale(out_dir, keep)
    return pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)


def edit_recipe(
    name: str,
    cfg: EditConfig,
    manifest: pd.DataFrame,
    out_dir: Path,
    root: Path = Path("."),
    loaded: Models | None = None,
    executor: Callable[[str, EditConfig, pd.DataFrame, Path, Path], RecipeResult] | None = None,
) -> RecipeResult:
    """Edit every selected image with recipe `name`; see the module docstring.

    `executor(name, cfg, images, out_dir, root)`, when given, edits the selected images instead
    of the local loop below (after the checks every executor shares).
    """
    recipe = cfg.recipes[name]
    images = usable_images(manifest, cfg.max_images).rows
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(out_dir)  # PNGs of a killed run: DVC would track them
    if images.empty:
        _remove_stale(out_dir, set())
        log.info("edit %s: no images to edit (manifest has no status=ok rows)", name)
        return RecipeResult(pd.DataFrame(columns=TABLE_COLUMNS))
    masks = root / (recipe.mask.files_dir or "")
    if recipe.mask.source == "files" and not masks.is_dir():
        raise StageError(
            f"edit.recipes.{name}.mask.files_dir: no folder {recipe.mask.files_dir} "
            "(relative to the repo root)"
        )
    if executor is not None:
        return executor(name, cfg, images, out_dir, root)
    if cfg.executor != "local":
        raise ValueError(
            f"edit.executor={cfg.executor}: pass its executor (alien_hotels.stages.edit picks it)"
        )
    result = RecipeResult(pd.DataFrame(columns=TABLE_COLUMNS))
    loaded = loaded or load_models(name, recipe, cfg)
    base_key = loaded_key(recipe, loaded)
    rows: list[dict[str, Any]] = []
    bar = tqdm(images.itertuples(index=False), total=len(images), desc=f"edit {name}", unit="img")
    for item in bar:
        job = plan_job(recipe, base_key, str(item.image_id), str(item.path), root, out_dir)
        if isinstance(job, dict):
            rows.append(job)
            continue
        done = run_job(loaded, recipe, job)
        store(job, done, out_dir)
        rows.append(done.row)
        if len(result.sheet) < cfg.sheet_rows:
            result.sheet.append(sheet_entry(job, done))
    result.table = finish(rows, out_dir)
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
        # True, or 1.0 in a column that a missing value made float: `fillna(False)` there is
        # deprecated in pandas 3 (Pandas4Warning) and will raise
        "n_resumed": int(table["resumed"].eq(True).sum()) if len(table) else 0,
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
        mask_bytes, _ = read_mask_file(recipe, str(item.image_id), root)
        try:
            source = load_rgb(root / str(item.path))
            mask = compute_mask(recipe, source, loaded.segmenter, mask_bytes)
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
