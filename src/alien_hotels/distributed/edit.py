"""edit.executor=ray: a recipe's images edited and scored on Ray actors, written here.

The driver plans each image as the local executor does (`plan_job`: read and check the source,
resume key, the output already there), ships the job with the image bytes, and the worker runs
the same per-image code (`run_job`: mask, seeded edit, scores). Results come back as they
complete; the driver writes the PNGs (`store`, the local executor's writer), and builds the
table and contact sheet in manifest order, so outputs equal a local run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from alien_hotels.distributed.config import RayConfig
from alien_hotels.distributed.pool import ActorPool, Worker, ray_session
from alien_hotels.editing import runner
from alien_hotels.editing.config import EditConfig


class EditWorker(Worker):
    """Holds one recipe's models (the diffusion pipeline loads on its first edit)."""

    def __init__(self, name: str, cfg: EditConfig):
        self.name = name
        self.cfg = cfg
        self.loaded = None

    def load(self) -> dict[str, Any]:
        recipe = self.cfg.recipes[self.name]
        found = runner.check_weights(self.name, recipe, self.cfg)
        self.loaded = runner.load_models(self.name, recipe, self.cfg)
        scorer = self.loaded.scorer
        return {
            "dtype": self.loaded.dtype,
            # the local loop's key: it covers the learned embedding a token recipe loads
            "base_key": runner.loaded_key(recipe, self.loaded),
            "score_models": [scorer.segmenter is not None, scorer.clip is not None],
            # `repo@commit` or path of each model: every node must run the same weights
            "weight_labels": sorted((key, item.label) for key, item in found.items()),
        }

    def run(self, payload: list[tuple[Any, bool]]) -> list[Any]:
        recipe = self.cfg.recipes[self.name]
        out = []
        for job, want_mask in payload:
            done = runner.run_job(self.loaded, recipe, job)
            if not want_mask:
                done.mask = None  # only the contact sheet's rows need it back
            out.append(done)
        return out


def edit_recipe_on_ray(
    name: str,
    cfg: EditConfig,
    images: pd.DataFrame,
    out_dir: Path,
    root: Path,
    ray_cfg: RayConfig | None,
) -> runner.RecipeResult:
    """`runner.edit_recipe`'s executor for `edit.executor=ray` (the edit stage binds `ray_cfg`):
    the selected `images` edited on Ray actors, written here."""
    recipe = cfg.recipes[name]
    what = f"edit {name}"
    with (
        ray_session(ray_cfg, "edit"),
        ActorPool(
            EditWorker,
            (name, cfg),
            ray_cfg,
            what,
            agree_on=("dtype", "base_key", "score_models", "weight_labels"),
        ) as pool,
    ):
        info = pool.start()  # every worker's models checked before any image
        out_dir.mkdir(parents=True, exist_ok=True)
        base_key = info["base_key"]
        per_task = ray_cfg.batch_size or 1
        positions = list(range(len(images)))
        tasks = [tuple(positions[i : i + per_task]) for i in range(0, len(positions), per_task)]
        ids = images["image_id"].astype(str).tolist()
        paths = images["path"].astype(str).tolist()
        rows: dict[int, dict[str, Any]] = {}
        sheet: dict[int, Any] = {}
        planned: dict[tuple[int, ...], list[tuple[int, Any]]] = {}
        wanted: set[int] = set()  # positions whose (source, mask, edited) go on the sheet
        counts = {"edited": 0, "failed": 0}
        bar = tqdm(total=len(images), desc=f"{what} (ray)", unit="img")

        def payload(task: tuple[int, ...]) -> list[tuple[Any, bool]]:
            # Tasks are first handed out in manifest order, so the sheet gets the first
            # `sheet_rows` readable images, as in the local loop.
            jobs = []
            for pos in task:
                job = runner.plan_job(recipe, base_key, ids[pos], paths[pos], root, out_dir)
                if isinstance(job, dict):
                    rows[pos] = job
                    counts["failed"] += 1
                    bar.update(1)
                    continue
                if len(wanted) < cfg.sheet_rows:
                    wanted.add(pos)
                jobs.append((pos, job))
            planned[task] = jobs
            return [(job, pos in wanted) for pos, job in jobs]

        def on_result(task: tuple[int, ...], results: list[Any]) -> None:
            for (pos, job), done in zip(planned.pop(task), results, strict=True):
                runner.store(job, done, out_dir)
                rows[pos] = done.row
                if pos in wanted:
                    sheet[pos] = runner.sheet_entry(job, done)
                counts["edited"] += 1
                bar.update(1)
            bar.set_postfix(counts, workers=pool.alive, refresh=False)

        pool.run(tasks, payload, on_result)
        bar.close()
        metrics = pool.metrics()
    result = runner.RecipeResult(runner.finish([rows[p] for p in positions], out_dir))
    result.sheet = [sheet[p] for p in sorted(sheet)]
    result.executor = {**metrics, "ray_images_per_task": per_task}
    return result
