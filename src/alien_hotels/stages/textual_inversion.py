"""Stage `textual_inversion`: the learned token embedding, its loss curve and metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pandas as pd

from alien_hotels.common import write_json, write_report_csv
from alien_hotels.config import Params
from alien_hotels.methods import textual_inversion
from alien_hotels.stages.paths import StagePaths

log = logging.getLogger("alien_hotels")


def run(
    params: Params,
    paths: StagePaths = StagePaths(),
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """`on_step(step)` after every optimizer step (tests kill the process there)."""
    cfg = params.edit.textual_inversion
    paths.ti_checkpoints.mkdir(parents=True, exist_ok=True)
    result = textual_inversion.train(cfg, params.edit, paths.ti_checkpoints, on_step)
    textual_inversion.save_embedding(result, cfg, paths.ti_embedding)
    steps = list(range(1, len(result.losses) + 1))
    losses = pd.DataFrame({"step": steps, "loss": result.losses})
    write_report_csv(losses, paths.ti_loss_plot, plotted=True)
    metrics = textual_inversion.loss_metrics(result, cfg)
    write_json(metrics, paths.ti_metrics)
    log.info("textual_inversion: %d steps, final loss %s", metrics["steps"], metrics["final_loss"])
    return metrics
