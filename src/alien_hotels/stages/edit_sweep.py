"""Stage `edit_sweep`: content preservation against edit success over a grid of one recipe."""

from __future__ import annotations

import pandas as pd

from alien_hotels.common import write_json, write_report_csv
from alien_hotels.config import Params
from alien_hotels.editing import report, runner
from alien_hotels.stages.paths import StagePaths
from alien_hotels.tables import read_manifest


def run(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    cfg = params.edit
    table = runner.sweep(cfg, read_manifest(paths.images_manifest))
    best = None
    if not table.empty:
        ranked = table.assign(success=pd.to_numeric(table["success"], errors="coerce"))
        best = ranked.sort_values("success", ascending=False).iloc[0].to_dict()
    write_report_csv(table, paths.sweep_table, plotted=True)
    report.tradeoff_plot(table, paths.sweep_plot, cfg.sweep.recipe)
    write_json(
        report.clean(
            {
                "recipe": cfg.sweep.recipe,
                "points": len(table),
                "n_images": int(table["n_images"].max()) if len(table) else 0,
                "most_successful": best,
            }
        ),
        paths.sweep_metrics,
    )
    return table
