"""Stage `images`: take the sampled images from the local tree or download them (images.*)."""

from __future__ import annotations

import pandas as pd

from alien_hotels.common import read_csv, write_csv, write_json, write_report_csv
from alien_hotels.config import Params
from alien_hotels.images.collect import collect_images
from alien_hotels.stages.paths import StagePaths

REPORT_COLUMNS = ["path", "reason", "detail", "stage", "image_id", "url"]


def run(params: Params, paths: StagePaths = StagePaths()) -> dict:
    sample = read_csv(paths.sample, ["image_id", "hotel_id"], what="sample table")
    manifest, metrics = collect_images(
        sample,
        params.images,
        params.data.images_dir,
        paths.images_dir,
        follow_external_symlinks=params.data.follow_external_symlinks,
    )
    write_csv(manifest, paths.images_manifest)
    write_report_csv(skipped_report(paths, manifest), paths.skipped_report)
    write_json(metrics, paths.images_metrics)
    return metrics


def skipped_report(paths: StagePaths, manifest: pd.DataFrame) -> pd.DataFrame:
    """Every file left out, for people: what the sample stage did not take from the photo tree,
    then the images that failed here (and, data=folder, those gone since the sample: missing).
    `path` is relative to data.path; a download's failure has its URL instead."""
    taken = pd.DataFrame(columns=["path", "reason", "detail"])
    if paths.sample_skipped.is_file():  # absent only when an older sample stage ran
        # every cell a string: a file called `NA` or `null` keeps its name
        taken = pd.read_csv(paths.sample_skipped, dtype=str, keep_default_na=False)
    taken = taken.assign(stage="sample", image_id="", url="")
    status = manifest["status"]
    bad = (status == "failed") | ((status == "missing") & (manifest["image_path"] != ""))
    failed = manifest.loc[bad]
    failed = pd.DataFrame(
        {
            "path": failed["image_path"],
            "reason": failed["reason"],
            "detail": failed["detail"],
            "stage": "images",
            "image_id": failed["image_id"].astype(str),
            "url": failed["url"],
        }
    )
    frames = [frame for frame in (taken, failed) if not frame.empty]
    out = pd.concat(frames) if frames else pd.DataFrame(columns=REPORT_COLUMNS)
    return out.reindex(columns=REPORT_COLUMNS).fillna("").reset_index(drop=True)
