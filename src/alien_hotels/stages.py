"""Thin stage entry points: read inputs, call the pipeline modules, write outputs atomically.

Each function is one DVC stage of `dvc.yaml` and one `alien-hotels <stage>` command; the paths in
`StagePaths` are the ones `dvc.yaml` declares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alien_hotels import captioning, clustering, features, mapping, sampling, text
from alien_hotels.common import (
    StageError,
    atomic_path,
    read_csv,
    write_csv,
    write_json,
    write_text,
)
from alien_hotels.config import Params
from alien_hotels.reports import clusters_markdown

log = logging.getLogger("alien_hotels")


@dataclass(frozen=True)
class StagePaths:
    sample: Path = Path("data/interim/sample.csv")
    captions: Path = Path("data/processed/captions.csv")
    texts: Path = Path("data/processed/texts.csv")
    features: Path = Path("data/processed/features.npz")
    labels: Path = Path("data/processed/cluster_labels.csv")
    clusters: Path = Path("data/processed/clusters.csv")
    sample_metrics: Path = Path("metrics/sample.json")
    preprocess_metrics: Path = Path("metrics/preprocess.json")
    features_metrics: Path = Path("metrics/features.json")
    cluster_metrics: Path = Path("metrics/clustering.json")
    elbow_plot: Path = Path("plots/elbow.csv")
    clusters_report: Path = Path("reports/clusters.md")
    map_html: Path = Path("reports/cluster_map.html")
    map_png: Path = Path("reports/cluster_map.png")


def run_sample(params: Params, paths: StagePaths = StagePaths()) -> sampling.SampleStats:
    df = sampling.load_dataset(params.data)
    sample, stats = sampling.sample_hotels(df, params.data)
    write_csv(sample, paths.sample)
    write_json(stats.as_dict(), paths.sample_metrics)
    log.info("sampled %d rows from %d hotels", stats.rows_kept, stats.hotels_sampled)
    return stats


def run_caption(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    sample = read_csv(paths.sample, ["image_id"], what="sample table")
    captions = captioning.precomputed_captions(sample, params.data.caption_column, params.caption)
    if captions.empty:
        raise StageError(f"caption: no captions produced for the {len(sample)} sampled images")
    write_csv(captions, paths.captions)
    return captions


def run_preprocess(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    sample = read_csv(
        paths.sample, ["image_id", "hotel_id"], what="sample table", usecols=["hotel_name"]
    )
    captions = read_csv(paths.captions, ["image_id", "caption"], what="captions table", usecols=[])
    meta = sample.drop(columns=[c for c in ("caption",) if c in sample.columns])
    if "hotel_name" not in meta.columns:
        meta = meta.assign(hotel_name=meta["hotel_id"].astype(str))
    table = captions[["image_id", "caption"]].merge(
        meta[["image_id", "hotel_id", "hotel_name"]], on="image_id", how="inner"
    )
    table = table[table["caption"].astype("string").str.strip().fillna("") != ""]
    if table.empty:
        raise StageError("preprocess: no captioned images (captions and sample share no image_id)")
    preprocessor = text.CaptionPreprocessor(params.text)
    classify = text.RoomTypeClassifier(params.room_types)
    captions_text = table["caption"].astype(str)
    table = table.assign(
        room_type=captions_text.map(classify), text=preprocessor.transform(captions_text)
    )
    empty = table["text"].str.strip() == ""
    out = table.loc[
        ~empty, ["image_id", "hotel_id", "hotel_name", "room_type", "caption", "text"]
    ].reset_index(drop=True)
    if out.empty:
        raise StageError("preprocess: every text is empty after truncation and stopword removal")
    write_csv(out, paths.texts)
    write_json(
        {
            "n_docs": len(out),
            "dropped_empty": int(empty.sum()),
            "distinct_words": len(preprocessor._lemmas),
            "room_types": out["room_type"].value_counts().to_dict(),
        },
        paths.preprocess_metrics,
    )
    return out


def run_features(params: Params, paths: StagePaths = StagePaths()) -> features.TextFeatures:
    texts = read_csv(paths.texts, ["image_id", "text"], what="preprocessed texts", usecols=[])
    fitted = features.fit_features(texts["text"].fillna("").astype(str).tolist(), params.features)
    # Uncompressed: SVD coordinates barely compress, and zlib cost seconds per million rows.
    with atomic_path(paths.features) as tmp, tmp.open("wb") as fh:
        np.savez(fh, embedding=fitted.embedding, image_id=texts["image_id"].to_numpy())
    write_json(
        {
            "n_docs": len(texts),
            "n_terms": fitted.n_terms,
            "n_components": params.features.n_components,
            "explained_variance": fitted.explained_variance,
        },
        paths.features_metrics,
    )
    return fitted


def load_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise StageError(f"features not found: {path} (run the features stage first)")
    with np.load(path, allow_pickle=False) as data:
        return data["embedding"], data["image_id"]


def run_cluster(params: Params, paths: StagePaths = StagePaths()) -> dict:
    cfg = params.cluster
    embedding, image_ids = load_features(paths.features)
    texts = read_csv(paths.texts, ["image_id", "hotel_id", "room_type", "text"], what="texts")
    texts = texts.set_index("image_id").loc[image_ids].reset_index()
    sweep = clustering.sweep_kmeans(embedding, cfg)
    k = clustering.choose_k(sweep.inertia, cfg)
    final = clustering.final_clustering(embedding, sweep, k, cfg)
    labels = final.labels
    scores = clustering.score_clusters(
        embedding,
        labels,
        texts["hotel_id"],
        texts["room_type"],
        silhouette_sample=cfg.silhouette_sample,
        random_state=cfg.random_state,
        n_jobs=cfg.n_jobs,
    )
    top_terms = clustering.class_tfidf_terms(
        texts["text"].fillna("").astype(str),
        labels,
        cfg.top_terms,
        sample_size=cfg.terms_sample,
        random_state=cfg.random_state,
    )
    names = clustering.cluster_labels(top_terms, texts["room_type"], labels, cfg.label_terms)
    assigned = texts.assign(cluster=labels, cluster_label=[names[int(c)] for c in labels])

    metrics = {
        "n_docs": len(texts),
        "k": k,
        "k_source": "given" if cfg.k is not None else "elbow",
        **scores,
        "inertia": {str(kk): v for kk, v in sweep.inertia.items()},
        # The final model's inertia on all rows (below the sweep's value when it was refined).
        "inertia_at_k": final.inertia,
        "sweep_fit_rows": len(texts) if sweep.fit_rows is None else len(sweep.fit_rows),
    }
    elbow = pd.DataFrame({"k": list(sweep.inertia), "inertia": list(sweep.inertia.values())})
    report = clusters_markdown(assigned, top_terms, names, metrics)
    write_csv(assigned.drop(columns=["text"]), paths.labels)
    write_csv(elbow, paths.elbow_plot)
    write_text(report, paths.clusters_report)
    write_json(metrics, paths.cluster_metrics)
    log.info(
        "k=%d (%s), nmi room type %.3f vs hotel %.3f",
        k,
        metrics["k_source"],
        scores["nmi_room_type"],
        scores["nmi_hotel"],
    )
    return metrics


def run_map(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    embedding, image_ids = load_features(paths.features)
    labels = read_csv(
        paths.labels,
        ["image_id", "hotel_id", "room_type", "cluster", "cluster_label"],
        what="cluster labels",
        usecols=[],
    )
    texts = read_csv(
        paths.texts, ["image_id", "text", "caption", "hotel_name"], what="texts", usecols=[]
    )
    coords = mapping.embed_2d(embedding, params.map)
    table = (
        pd.DataFrame({"image_id": image_ids, "x": coords[:, 0], "y": coords[:, 1]})
        .merge(
            labels[["image_id", "hotel_id", "room_type", "cluster", "cluster_label"]], on="image_id"
        )
        .merge(texts[["image_id", "caption", "text", "hotel_name"]], on="image_id")
    )
    drawn = mapping.plot_subsample(table, params.map)
    mapping.write_html_map(drawn, paths.map_html, params.map, n_total=len(table))
    mapping.write_png_map(drawn, paths.map_png, params.map.max_groups)
    columns = ["image_id", "hotel_id", "room_type", "cluster", "x", "y", "caption", "text"]
    write_csv(table[columns + ["cluster_label", "hotel_name"]], paths.clusters)
    return table
