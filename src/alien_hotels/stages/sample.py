"""Stage `sample`: choose hotels and their images from the dataset (data.*)."""

from __future__ import annotations

import logging

import pandas as pd

from alien_hotels import datasets, sampling
from alien_hotels.common import write_csv, write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths

log = logging.getLogger("alien_hotels")
SKIPPED_COLUMNS = ["path", "reason", "detail"]
SHOWN = 5  # skipped files named in the log; reports/skipped.csv has them all


def run(params: Params, paths: StagePaths = StagePaths()) -> sampling.SampleStats:
    dataset = datasets.read_dataset(params.data)
    sample, stats = sampling.sample_hotels(dataset, params.data)
    write_csv(sample, paths.sample)
    # data=folder: the files left out, by path; the images stage adds its failures and writes
    # reports/skipped.csv (empty for the other datasets, which skip no files of their own).
    write_csv(pd.DataFrame(dataset.skipped, columns=SKIPPED_COLUMNS), paths.sample_skipped)
    write_json(stats.as_dict(), paths.sample_metrics)
    log.info("sampled %d rows from %d hotels", stats.rows_kept, stats.hotels_sampled)
    skipped = {k: v for k, v in stats.load.items() if k.startswith("folder_skipped") and v}
    if skipped:  # data=folder: what the tree held besides photos (metrics/sample.json)
        log.info(
            "skipped in %s: %s", params.data.path, ", ".join(f"{k} {v}" for k, v in skipped.items())
        )
    if dataset.skipped:
        shown = "; ".join(f"{path} ({reason})" for path, reason, _ in dataset.skipped[:SHOWN])
        more = len(dataset.skipped) - SHOWN
        log.info(
            "not taken from %s: %s%s (all in %s after the images stage)",
            params.data.path,
            shown,
            f" and {more} more" if more > 0 else "",
            paths.skipped_report,
        )
    return stats
