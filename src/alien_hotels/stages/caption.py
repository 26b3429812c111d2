"""Stage `caption`: a caption per sampled image (caption.*): the dataset's own column
(`caption=precomputed`), a CSV made elsewhere (`caption=file`) or CLIP Interrogator over the
images stage's manifest."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pandas as pd

from alien_hotels import captioning
from alien_hotels.common import StageError, read_csv, write_csv, write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths

log = logging.getLogger("alien_hotels")


def run(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    cfg = params.caption
    if cfg.method == "precomputed":
        sample = read_csv(paths.sample, ["image_id"], what="sample table")
        captions = captioning.precomputed_captions(sample, params.data.caption_column, cfg)
        failures = pd.DataFrame(columns=captioning.FAILURE_COLUMNS)
        metrics = {
            "images": len(sample),
            "ok": len(captions),
            "failed": len(sample) - len(captions),
            "method": cfg.method,
        }
        n_images = len(sample)
    elif cfg.method == "file":
        from alien_hotels.captioning.fromfile import file_captions

        sample = read_csv(paths.sample, ["image_id"], what="sample table")
        captions, failures, metrics = file_captions(sample, cfg, params.data.path)
        metrics = {"method": cfg.method, **metrics}
        n_images = len(sample)
    else:
        from alien_hotels.captioning.run import LocalCaptioner, caption_images
        from alien_hotels.tables import read_manifest

        manifest = read_manifest(paths.images_manifest)
        # The executor is chosen here, the stage entry point: the captioning code below never
        # imports the Ray side, which imports it (and a local run loads no Ray code).
        executor = LocalCaptioner
        if cfg.executor == "ray":
            from alien_hotels.distributed.caption import RayCaptioner

            executor = functools.partial(RayCaptioner, ray_cfg=params.ray)
        result = caption_images(manifest, cfg, root=Path("."), executor=executor)
        captions, failures, metrics = result.captions, result.failures, result.metrics
        metrics = {"method": cfg.method, **metrics}
        n_images = metrics["images"]
    if captions.empty:
        raise StageError(
            f"caption: no captions produced for the {n_images} images"
            + (f" (failures: {metrics.get('failed_by_reason')})" if len(failures) else "")
        )
    write_csv(failures, paths.caption_failures)
    write_csv(captions, paths.captions)
    write_json(metrics, paths.caption_metrics)
    log.info("captioned %d images (%d failed)", len(captions), len(failures))
    return captions
