"""Stage `images`: take the sampled images from the local tree or download them (images.*)."""

from __future__ import annotations

from alien_hotels import images
from alien_hotels.common import read_csv, write_csv, write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths


def run(params: Params, paths: StagePaths = StagePaths()) -> dict:
    sample = read_csv(paths.sample, ["image_id", "hotel_id"], what="sample table")
    manifest, metrics = images.collect_images(
        sample,
        params.images,
        params.data.images_dir,
        paths.images_dir,
        follow_external_symlinks=params.data.follow_external_symlinks,
    )
    write_csv(manifest, paths.images_manifest)
    write_json(metrics, paths.images_metrics)
    return metrics
