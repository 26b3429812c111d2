"""Stage `sample`: choose hotels and their images from the dataset (data.*)."""

from __future__ import annotations

import logging

from alien_hotels import sampling
from alien_hotels.common import write_csv, write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths

log = logging.getLogger("alien_hotels")


def run(params: Params, paths: StagePaths = StagePaths()) -> sampling.SampleStats:
    dataset = sampling.read_dataset(params.data)
    sample, stats = sampling.sample_hotels(dataset, params.data)
    write_csv(sample, paths.sample)
    write_json(stats.as_dict(), paths.sample_metrics)
    log.info("sampled %d rows from %d hotels", stats.rows_kept, stats.hotels_sampled)
    skipped = {k: v for k, v in stats.load.items() if k.startswith("folder_skipped") and v}
    if skipped:  # data=folder: what the tree held besides photos (metrics/sample.json)
        log.info(
            "skipped in %s: %s", params.data.path, ", ".join(f"{k} {v}" for k, v in skipped.items())
        )
    return stats
