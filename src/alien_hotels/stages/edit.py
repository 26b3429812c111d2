"""Stage `edit@<recipe>`: diffusion-edit the images for alien guests with one recipe."""

from __future__ import annotations

import functools
import logging

from alien_hotels.common import StageError, atomic_path, write_csv, write_json
from alien_hotels.config import Params
from alien_hotels.editing import imaging, report, runner
from alien_hotels.stages.paths import StagePaths
from alien_hotels.tables import read_manifest, usable_images

log = logging.getLogger("alien_hotels")


def run(params: Params, recipe: str | None = None, paths: StagePaths = StagePaths()) -> dict:
    """Edit with `recipe` (every recipe when None); per-recipe metrics by name."""
    cfg = params.edit
    names = list(cfg.recipes) if recipe is None else [recipe]
    unknown = [n for n in names if n not in cfg.recipes]
    if unknown:
        raise StageError(
            f"edit: unknown recipe {unknown[0]!r}; edit.recipes has: "
            f"{', '.join(cfg.recipes) or '(none)'}"
        )
    manifest = read_manifest(paths.images_manifest)
    for name in names:  # every model is checked before any image is edited (ray: on workers)
        if cfg.executor == "local" and not usable_images(manifest, cfg.max_images).rows.empty:
            runner.check_weights(name, cfg.recipes[name], cfg)
    # The executor is chosen here, the stage entry point: the editing code never imports the Ray
    # side, which imports it (and a local run loads no Ray code).
    executor = None
    if cfg.executor == "ray":
        from alien_hotels.distributed.edit import edit_recipe_on_ray

        executor = functools.partial(edit_recipe_on_ray, ray_cfg=params.ray)
    out: dict[str, dict] = {}
    for name in names:
        result = runner.edit_recipe(name, cfg, manifest, paths.edited_dir / name, executor=executor)
        metrics = report.clean(
            {"recipe": name, **runner.recipe_metrics(result.table), **result.executor}
        )
        sheet = imaging.contact_sheet(result.sheet, title=f"recipe {name}")
        with atomic_path(paths.edit_sheets / f"{name}.jpg") as tmp:
            sheet.save(tmp, format="JPEG", quality=88)
        write_csv(result.table, paths.edit_tables / f"{name}.csv")
        write_json(metrics, paths.edit_recipe_metrics / f"{name}.json")
        log.info(
            "edit %s: %d edited, %d unchanged, %d failed",
            name,
            metrics["n_edited"],
            metrics["n_unchanged"],
            metrics["n_failed"],
        )
        out[name] = metrics
    return out
