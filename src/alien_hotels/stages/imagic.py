"""Stage `imagic`: images per alpha, a contact sheet per image, the per-alpha curve."""

from __future__ import annotations

import logging

from alien_hotels.common import atomic_path, write_csv, write_json, write_report_csv
from alien_hotels.config import Params
from alien_hotels.editing import report
from alien_hotels.methods import imagic
from alien_hotels.stages.paths import StagePaths
from alien_hotels.tables import read_manifest

log = logging.getLogger("alien_hotels")


def run(params: Params, paths: StagePaths = StagePaths()) -> dict:
    cfg = params.edit
    result = imagic.run(cfg, read_manifest(paths.images_manifest), paths.imagic_dir)
    paths.imagic_sheets.mkdir(parents=True, exist_ok=True)
    for stale in paths.imagic_sheets.glob("*.jpg"):
        if stale.stem not in result.sheets:
            stale.unlink()
    for image_id, sheet in result.sheets.items():
        with atomic_path(paths.imagic_sheets / f"{image_id}.jpg") as tmp:
            sheet.save(tmp, format="JPEG", quality=88)
    curve = imagic.alpha_curve(result.table)
    write_csv(result.table, paths.imagic_table)
    write_report_csv(curve, paths.imagic_plot, plotted=True)
    per_image = result.table.drop_duplicates("image_id")
    metrics = report.clean(
        {
            "n_images": len(per_image),
            "n_failed": int((per_image["status"] == "failed").sum()),
            "n_trained": int(per_image["trained"].fillna(False).astype(bool).sum()),
            "alphas": list(cfg.imagic.alphas),
            "per_alpha": {
                f"{row.alpha:g}": {"ssim": row.ssim, "success": row.success}
                for row in curve.itertuples(index=False)
            },
        }
    )
    write_json(metrics, paths.imagic_metrics)
    log.info("imagic: %d images, %d trained", metrics["n_images"], metrics["n_trained"])
    return metrics
