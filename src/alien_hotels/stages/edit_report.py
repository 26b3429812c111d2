"""Stage `edit_report`: per-recipe means and the hotel ranking for alien guests."""

from __future__ import annotations

import pandas as pd

from alien_hotels.common import StageError, read_csv, write_json, write_report_csv, write_text
from alien_hotels.config import Params
from alien_hotels.editing import report, runner
from alien_hotels.stages.paths import StagePaths


def run(params: Params, paths: StagePaths = StagePaths()) -> dict:
    sample = read_csv(paths.sample, ["image_id", "hotel_id"], what="sample table")
    tables: dict[str, pd.DataFrame] = {}
    per_recipe: dict[str, dict] = {}
    for name in params.edit.recipes:
        path = paths.edit_tables / f"{name}.csv"
        if not path.is_file():
            raise StageError(f"edit_report: {path} not found: run `dvc repro edit@{name}` first")
        table = pd.read_csv(path).reindex(columns=runner.TABLE_COLUMNS)
        tables[name] = table
        per_recipe[name] = runner.recipe_metrics(table)
    ranking = report.hotel_ranking(tables, sample)
    best = None if ranking.empty else ranking.iloc[0]
    metrics = report.clean(
        {
            "recipes": per_recipe,
            "n_hotels_ranked": len(ranking),
            "best_hotel": None if best is None else str(best["hotel_id"]),
            "best_hotel_alien_score": None if best is None else float(best["alien_score"]),
        }
    )
    write_report_csv(ranking, paths.alien_hotels_plot, plotted=True)
    write_text(report.ranking_markdown(ranking, metrics["recipes"]), paths.alien_ranking)
    write_json(metrics, paths.edit_metrics)
    return metrics
