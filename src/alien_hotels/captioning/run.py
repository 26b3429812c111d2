"""`caption.method=clip_interrogator`: caption the images of the images manifest.

Flow: check the models are there (before any work) -> open the checkpoint -> decode images in
background threads -> per batch of `caption.batch_size` manifest rows: captions (BLIP) and CLIP
image features in one go, then the per-image prompt search -> each finished image appended to
the checkpoint -> the output tables, in manifest order, from the checkpoint.

Batches are fixed slices of the manifest's `ok` rows. A resumed run recomputes the batch it was
killed in as a whole (keeping only the images not yet done), so every image is computed in the
same batch as in an uninterrupted run and the output is identical.

`caption_batch` is the per-batch worker: `LocalCaptioner` runs it here; the stage entry point
(`alien_hotels.stages.caption`) passes the Ray executor instead for `caption.executor=ray`, whose
actors run the same function while this process appends to the same checkpoint, so both write the
same tables. This module never imports the Ray side (it imports this one).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from alien_hotels.captioning import CAPTION_COLUMNS, FAILURE_COLUMNS
from alien_hotels.captioning.checkpoint import Checkpoint, config_key
from alien_hotels.captioning.config import CaptionConfig
from alien_hotels.captioning.images import Loaded, load_row, prefetch
from alien_hotels.common import StageError
from alien_hotels.tables import usable_images

log = logging.getLogger("alien_hotels.captioning")


@dataclass
class CaptionRun:
    captions: pd.DataFrame
    failures: pd.DataFrame
    metrics: dict


@dataclass(frozen=True)
class _Done:
    """What one run went through, for `_collect`: the selected manifest rows (ids and paths as
    the checkpoint keys them), the rows left out, the weights and where they ran, the counts."""

    rows: pd.DataFrame
    ids: list[str]
    paths: list[str]
    checkpoint: Checkpoint
    skipped: dict[str, int]
    device: str
    dtype: str
    weights: Any
    computed: int
    already: int
    wall: float


def caption_images(
    manifest: pd.DataFrame,
    cfg: CaptionConfig,
    root: Path = Path("."),
    executor: Callable[[CaptionConfig], Any] | None = None,
) -> CaptionRun:
    """Caption the manifest's usable images with `executor(cfg)` (default `LocalCaptioner`):
    an object with `device`, `dtype`, `weights`, `run` and `metrics`, used as a context manager.
    It is made only after the manifest is checked, so a bad manifest fails before any connection.
    """
    selected = usable_images(manifest)
    rows, skipped = selected.rows, selected.skipped
    if rows.empty:
        raise StageError(
            "caption.method=clip_interrogator: the images manifest has no image with status ok "
            f"(statuses: {skipped or 'none'}); run the images stage with a dataset that has "
            "images, or use caption=precomputed"
        )
    if executor is None:
        if cfg.executor != "local":
            raise ValueError(
                f"caption.executor={cfg.executor}: pass its executor (alien_hotels.stages.caption "
                "picks it)"
            )
        executor = LocalCaptioner
    with executor(cfg) as captioner:  # checks the models (ray: on every worker) before any work
        device, dtype, weights = captioner.device, captioner.dtype, captioner.weights
        key = config_key(cfg, device, dtype)
        checkpoint = Checkpoint(root / cfg.checkpoint_dir, key, enabled=cfg.resume)
        ids = [str(i) for i in rows["image_id"]]
        paths = rows["path"].tolist()
        batches = [
            range(s, min(s + cfg.batch_size, len(ids))) for s in range(0, len(ids), cfg.batch_size)
        ]
        todo = [b for b in batches if not all(checkpoint.done(ids[i], paths[i]) for i in b)]
        already = sum(checkpoint.done(i, p) for i, p in zip(ids, paths, strict=True))
        log.info(
            "caption: %d images, %d already in checkpoint %s", len(ids), already, checkpoint.path
        )
        started = time.perf_counter()
        computed = 0
        if todo:
            computed = captioner.run(root, ids, paths, todo, checkpoint, already)
        wall = time.perf_counter() - started
    done = _Done(
        rows, ids, paths, checkpoint, skipped, device, dtype, weights, computed, already, wall
    )
    run = _collect(done, cfg)
    run.metrics.update(captioner.metrics())
    return run


def caption_batch(engine, cfg: CaptionConfig, loaded: list[Loaded], done) -> Iterator[dict]:
    """The checkpoint rows of one batch: failures, then captions (their prompt searches run
    together, so the captions come at the end of the batch).

    The one per-batch worker both executors run. Captions and CLIP features are computed for the
    whole batch (so an image's result never depends on which of its neighbours were already
    done); images for which `done(image_id, path)` holds are not yielded again."""
    started = time.perf_counter()
    good = [r for r in loaded if r.ok]
    captions = engine.captions([r.image for r in good])
    features = engine.image_features([r.image for r in good]) if good else None
    shared = (time.perf_counter() - started) / max(1, len(loaded))
    for r in loaded:
        if r.ok or done(r.image_id, r.path):
            continue
        yield {
            "image_id": r.image_id,
            "path": r.path,
            "status": "failed",
            "reason": r.reason,
            "detail": r.detail,
        }
    todo = [j for j, r in enumerate(good) if not done(r.image_id, r.path)]
    if not todo:
        return
    t0 = time.perf_counter()
    # The batch's flavor chains advance together (same strings as one by one).
    prompted = engine.prompts(features[todo], [captions[j] for j in todo], cfg.mode)
    search = (time.perf_counter() - t0) / len(todo)
    for j, result in zip(todo, prompted, strict=True):
        r = good[j]
        yield {
            "image_id": r.image_id,
            "path": r.path,
            "status": "ok",
            "caption": result.prompt,
            "blip_caption": captions[j],
            "seconds": shared + search,
            **result.stats.as_dict(),  # chain steps, near-tie fallbacks, rescored candidates
        }


def load_engine(cfg: CaptionConfig, device: str, dtype: str, weights):
    from alien_hotels.captioning.interrogate import BatchInterrogator
    from alien_hotels.captioning.models import load_interrogator

    return BatchInterrogator(load_interrogator(cfg, device, dtype, weights), cfg)


class LocalCaptioner:
    """caption.executor=local: the models in this process, images decoded by loader threads."""

    def __init__(self, cfg: CaptionConfig):
        from alien_hotels.captioning.models import check_models, resolve_device

        self.cfg = cfg
        self.device, self.dtype = resolve_device(cfg)
        self.weights = check_models(cfg)

    def __enter__(self) -> LocalCaptioner:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def metrics(self) -> dict:
        return {"executor": "local"}

    def run(self, root, ids, paths, todo, checkpoint, already) -> int:
        from tqdm import tqdm

        cfg = self.cfg
        engine = load_engine(cfg, self.device, self.dtype, self.weights)
        items = [
            (root, ids[i], paths[i], cfg.max_image_side, cfg.max_image_pixels)
            for b in todo
            for i in b
        ]
        loaded = prefetch(items, load_row, cfg.loader_workers, ahead=2 * cfg.batch_size)
        computed = 0
        with tqdm(
            total=len(ids),
            initial=already,
            unit="img",
            desc="caption",
            disable=not cfg.progress,
            smoothing=0.1,
        ) as bar:
            for batch in todo:
                rows = [next(loaded) for _ in batch]
                for row in caption_batch(engine, cfg, rows, checkpoint.done):
                    checkpoint.add(row)
                    computed += row["status"] == "ok"
                    bar.update(1)
        return computed


def _collect(run: _Done, cfg: CaptionConfig) -> CaptionRun:
    rows, ids, paths, checkpoint, weights = (
        run.rows,
        run.ids,
        run.paths,
        run.checkpoint,
        run.weights,
    )
    done = [checkpoint.rows[i] for i in ids]
    ok = [i for i, row in enumerate(done) if row["status"] == "ok"]
    failed = [i for i, row in enumerate(done) if row["status"] != "ok"]
    # The weights that ran (`<repo>@<commit>` or a local path), not the configured names.
    captions = pd.DataFrame(
        {
            "image_id": rows["image_id"].iloc[ok].to_numpy(),
            "caption": [done[i]["caption"] for i in ok],
            "caption_mode": cfg.mode,
            "caption_model": weights.caption.label,
            "clip_model": weights.clip.label,
        },
        columns=CAPTION_COLUMNS,
    )
    failures = pd.DataFrame(
        {
            "image_id": rows["image_id"].iloc[failed].to_numpy(),
            "path": [paths[i] for i in failed],
            "reason": [done[i]["reason"] for i in failed],
            "detail": [done[i].get("detail", "") for i in failed],
        },
        columns=FAILURE_COLUMNS,
    )
    seconds = [done[i].get("seconds", 0.0) for i in ok]
    chain = {
        key: [done[i].get(key, 0) for i in ok]
        for key in ("chain_steps", "chain_fallbacks", "chain_rescored", "chain_full_batch")
    }
    metrics = {
        "images": len(ids),
        "ok": len(ok),
        "failed": len(failed),
        "failed_by_reason": dict(sorted(Counter(done[i]["reason"] for i in failed).items())),
        "not_in_manifest_as_ok": run.skipped,
        "seconds_per_image": sum(seconds) / len(seconds) if seconds else None,
        "computed_this_run": run.computed,
        "resumed_from_checkpoint": run.already,
        "wall_seconds": run.wall,
        "mode": cfg.mode,
        "chain": cfg.chain,
        # Flavor-chain steps, near-tie steps the library decided on the band, candidates it
        # rescored, and steps so close it decided on the full candidate batch: per image (mean,
        # max over the captioned images) and in total.
        **{
            f"{key}_per_image_{stat}": (fn(values) if values else None)
            for key, values in chain.items()
            for stat, fn in (("mean", lambda v: round(sum(v) / len(v), 3)), ("max", max))
        },
        **{f"{key}_total": sum(values) for key, values in chain.items()},
        "caption_model": cfg.caption_model_name,
        "caption_weights": weights.caption.label,
        "clip_model": cfg.clip_model_name,
        "clip_weights": weights.clip.label,
        "torch_threads": cfg.n_jobs,
        "device": run.device,
        "dtype": run.dtype,
        "batch_size": cfg.batch_size,
        "checkpoint": str(checkpoint.path),
    }
    return CaptionRun(captions, failures, metrics)
