"""Stage `map`: the t-SNE map of the clusters as HTML and PNG (map.*)."""

from __future__ import annotations

import pandas as pd

from alien_hotels import features, mapping
from alien_hotels.common import (
    beside,
    read_csv,
    rounded,
    seeded_rows,
    write_json,
    write_report_csv,
)
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths

LABEL_COLUMNS = ["image_id", "hotel_id", "room_type", "cluster", "cluster_label"]
MAP_COLUMNS = ["image_id", "hotel_id", "room_type", "cluster", "x", "y", "caption", "text"]


def run(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    embedding, image_ids = features.load_features(paths.features)
    labels = read_csv(paths.labels, LABEL_COLUMNS, what="cluster labels", usecols=[])
    rows = seeded_rows(len(embedding), params.map.fit_sample, params.map.random_state)
    n_fit = len(embedding) if rows is None else len(rows)
    perplexity = mapping.perplexity_for(n_fit, params.map)  # warns once when lowered
    # t-SNE (C++, its own threads) beside reading the texts (pandas)
    embedded = beside(
        mapping.embed_2d,
        embedding,
        params.map.updated(perplexity=perplexity),
        n_jobs=params.map.n_jobs,
    )
    texts = read_csv(
        paths.texts, ["image_id", "text", "caption", "hotel_name"], what="texts", usecols=[]
    )
    coords = embedded.result()
    # beside the plots and the CSV: it is numpy and C, they are Python
    trust = beside(
        mapping.trustworthiness,
        embedding,
        coords,
        rows,
        params.map.random_state,
        n_jobs=params.map.n_jobs,
    )
    table = (
        pd.DataFrame({"image_id": image_ids, "x": coords[:, 0], "y": coords[:, 1]})
        .merge(labels[LABEL_COLUMNS], on="image_id")
        .merge(texts[["image_id", "caption", "text", "hotel_name"]], on="image_id")
    )
    drawn = mapping.plot_subsample(table, params.map)
    mapping.write_html_map(drawn, paths.map_html, params.map, n_total=len(table))
    mapping.write_png_map(drawn, paths.map_png, params.map.max_groups)
    # for people (no stage reads it): a name that a spreadsheet would run as a formula gets `'`
    write_report_csv(table[[*MAP_COLUMNS, "cluster_label", "hotel_name"]], paths.clusters)
    # Beside clustering.json (StagePaths has no field of its own for it): the perplexity used,
    # lowered for a small folder as cluster.k_max and features.n_components are.
    write_json(
        rounded(
            {
                "n_docs": len(table),
                "fit_rows": n_fit,
                "perplexity": params.map.perplexity,
                "perplexity_used": perplexity,
                "perplexity_clamped": perplexity < params.map.perplexity,
                # of the fitted rows (at most mapping.TRUSTWORTHINESS_ROWS, seeded), 5 neighbours
                "trustworthiness": trust.result(),
            }
        ),
        paths.cluster_metrics.parent / "map.json",
    )
    return table
