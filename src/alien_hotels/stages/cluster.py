"""Stage `cluster`: the k-means elbow sweep, the chosen k, scores and the cluster report."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from alien_hotels import clustering, duplicates, evaluation, features
from alien_hotels.common import (
    StageError,
    read_csv,
    rounded,
    write_csv,
    write_json,
    write_report_csv,
    write_text,
)
from alien_hotels.config import Params
from alien_hotels.reports import clusters_markdown
from alien_hotels.stages.paths import StagePaths
from alien_hotels.tables import ROOM_TYPE_SOURCES

log = logging.getLogger("alien_hotels")


def run(params: Params, paths: StagePaths = StagePaths()) -> dict:
    cfg = params.cluster
    embedding, image_ids = features.load_features(paths.features)
    texts = read_csv(
        paths.texts, ["image_id", "hotel_id", "text"], what="texts", usecols=["hotel_name"]
    )
    texts = texts.set_index("image_id").loc[image_ids].reset_index()
    texts, sources, chosen = with_room_types(texts, paths)
    # Each row's duplicate-group representative (itself when it has none): drop_duplicates
    # clusters the representatives and gives every copy its representative's cluster.
    representative = duplicate_representatives(texts["image_id"], paths)
    kept = representative == np.arange(len(texts))
    fit = embedding if not cfg.drop_duplicates else embedding[kept]
    sweep = clustering.sweep_kmeans(fit, cfg)
    k, k_source = clustering.select_k(fit, sweep, cfg)
    final = clustering.final_clustering(fit, sweep, k, cfg)
    labels = final.labels
    if cfg.drop_duplicates:
        labels = labels[np.cumsum(kept) - 1][representative]
    scored = kept if cfg.drop_duplicates else np.ones(len(texts), dtype=bool)
    silhouette = clustering.silhouette(
        embedding[scored], labels[scored], cfg.silhouette_sample, cfg.random_state
    )
    yardsticks = {"hotel": texts["hotel_id"].tolist(), "chain": chain_ids(texts, paths)}
    yardsticks |= {f"room_type_{s}": v for s, v in sources.items()}
    # tfidf features are refitted per seed (SVD + k-means); embeddings only rerun k-means.
    tfidf = params.features.kind == "tfidf"
    finding = evaluation.measure(
        embedding,
        labels,
        scored,
        k,
        yardsticks,
        chosen,
        cfg,
        seed_texts=texts["text"].fillna("").astype(str).tolist() if tfidf else None,
        features=params.features if tfidf else None,
    )
    if not kept.all():  # the other view: with the copies when they were dropped, or without
        finding |= evaluation.duplicates_view(yardsticks, labels, kept, cfg.drop_duplicates, chosen)
    top_terms = clustering.class_tfidf_terms(
        texts["text"].fillna("").astype(str),
        labels,
        cfg.top_terms,
        sample_size=cfg.terms_sample,
        random_state=cfg.random_state,
        extra_stopwords=cfg.label_stopwords,
    )
    names = clustering.cluster_labels(top_terms, texts["room_type"], labels, cfg.label_terms)
    assigned = texts.assign(cluster=labels, cluster_label=[names[int(c)] for c in labels])

    swept = sorted(sweep.inertia)
    # Headline numbers only: the inertia of every k is the elbow plot (plots/elbow.csv), not 29
    # metric columns in `dvc exp show`.
    metrics = rounded(
        {
            "n_docs": len(texts),
            "k": k,
            # given, elbow, or the fallback when the curve has no knee: silhouette (k_min)
            "k_source": k_source,
            "silhouette": silhouette,
            # ARI and NMI with hotels and room types (`room_type_source`: which source), then
            # every source of the run side by side (captions' are circular: the clusters' words)
            **evaluation.headline(finding, yardsticks, scored, chosen),
            # The final model's inertia on all rows (below the sweep's value when refined).
            "inertia_at_k": final.inertia,
            "k_swept": f"{swept[0]}..{swept[-1]}",
            # The sweep stops at the number of documents when cluster.k_max exceeds it.
            "k_max_clamped": swept[-1] < cfg.k_max,
            "sweep_fit_rows": len(fit) if sweep.fit_rows is None else len(sweep.fit_rows),
            "duplicates_dropped": int((~kept).sum()) if cfg.drop_duplicates else 0,
            **finding,
        }
    )
    elbow = clustering.elbow_table(sweep.inertia, k)
    report = clusters_markdown(assigned, top_terms, names, metrics)
    # read by `map` and `cards`: exact values; no texts (texts.csv has them, clusters.csv too)
    write_csv(assigned.drop(columns=["text"]), paths.labels)
    write_csv(clustering.cluster_terms(assigned, top_terms, names), paths.cluster_terms)
    write_report_csv(elbow, paths.elbow_plot, plotted=True)
    write_text(report, paths.clusters_report)
    write_json(metrics, paths.cluster_metrics)
    nmi_room = metrics["nmi_room_type"]
    log.info(
        "k=%d (%s), nmi room type (%s) %s vs hotel %.3f",
        k,
        metrics["k_source"],
        metrics["room_type_source"],
        "n/a" if nmi_room is None else f"{nmi_room:.3f}",
        metrics["nmi_hotel"],
    )
    return metrics


def chain_ids(texts: pd.DataFrame, paths: StagePaths) -> list:
    """The sample's `chain_id` per row of `texts`; None where unknown (Hotels-50K's -1, a folder
    dataset's empty column)."""
    sample = read_csv(paths.sample, ["image_id"], what="sample table", usecols=["chain_id"])
    if "chain_id" not in sample:
        return [None] * len(texts)
    chain = sample.drop_duplicates("image_id").set_index("image_id")["chain_id"]
    chain = pd.to_numeric(chain.reindex(texts["image_id"]), errors="coerce")
    return [None if pd.isna(c) or c < 0 else int(c) for c in chain]


def duplicate_representatives(image_ids: pd.Series, paths: StagePaths) -> np.ndarray:
    """Per row, the row of its duplicate group's representative (duplicates.representatives);
    every row its own without a duplicates table (a run outside DVC)."""
    if not paths.duplicates.is_file():
        return np.arange(len(image_ids))
    table = read_csv(paths.duplicates, ["image_id", "group", "kind"], what="duplicates table")
    return duplicates.representatives(image_ids, table)


def with_room_types(texts: pd.DataFrame, paths: StagePaths) -> tuple[pd.DataFrame, dict, str]:
    """`texts` with `room_type` from the room_types stage (its chosen source), the labels of
    every source that run produced (source -> labels in `texts` order), and the chosen source."""
    table = read_csv(
        paths.room_types,
        ["image_id", "room_type", "room_type_source", "room_type_captions"],
        what="room types table (the room_types stage)",
    )
    table = table.drop_duplicates("image_id").set_index("image_id")
    missing = texts.loc[~texts["image_id"].isin(table.index), "image_id"]
    if len(missing):
        raise StageError(
            f"{paths.room_types} has no room type for {len(missing)} clustered images (e.g. "
            f"{missing.iloc[0]}): rerun the room_types stage (`alien-hotels room-types`)"
        )
    table = table.loc[texts["image_id"]]
    sources = {
        source: table[f"room_type_{source}"].tolist()
        for source in ROOM_TYPE_SOURCES
        if f"room_type_{source}" in table and table[f"room_type_{source}"].notna().any()
    }
    chosen = str(table["room_type_source"].iloc[0])
    return texts.assign(room_type=table["room_type"].to_numpy()), sources, chosen
