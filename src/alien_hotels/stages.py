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

from alien_hotels import captioning, clustering, features, images, mapping, sampling, text
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
    images_manifest: Path = Path("data/interim/images.csv")
    images_dir: Path = Path("data/images")
    images_metrics: Path = Path("metrics/images.json")
    captions: Path = Path("data/processed/captions.csv")
    caption_failures: Path = Path("data/processed/caption_failures.csv")
    caption_metrics: Path = Path("metrics/captioning.json")
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
    images_manifest: Path = Path("data/interim/images.csv")
    edited_dir: Path = Path("data/edited")
    edit_tables: Path = Path("data/processed/edits")
    edit_sheets: Path = Path("reports/edits")
    edit_recipe_metrics: Path = Path("metrics/edits")
    edit_metrics: Path = Path("metrics/editing.json")
    alien_ranking: Path = Path("reports/alien_ranking.md")
    alien_hotels_plot: Path = Path("plots/alien_hotels.csv")
    sweep_table: Path = Path("plots/edit_tradeoff.csv")
    sweep_plot: Path = Path("reports/edit_tradeoff.png")
    sweep_metrics: Path = Path("metrics/edit_sweep.json")


def run_sample(params: Params, paths: StagePaths = StagePaths()) -> sampling.SampleStats:
    dataset = sampling.read_dataset(params.data)
    sample, stats = sampling.sample_hotels(dataset, params.data)
    write_csv(sample, paths.sample)
    write_json(stats.as_dict(), paths.sample_metrics)
    log.info("sampled %d rows from %d hotels", stats.rows_kept, stats.hotels_sampled)
    return stats


def run_images(params: Params, paths: StagePaths = StagePaths()) -> dict:
    sample = read_csv(paths.sample, ["image_id", "hotel_id"], what="sample table")
    manifest, metrics = images.collect_images(
        sample, params.images, params.data.images_dir, paths.images_dir
    )
    write_csv(manifest, paths.images_manifest)
    write_json(metrics, paths.images_metrics)
    return metrics


def run_caption(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    cfg = params.caption
    if cfg.method == "precomputed":
        sample = read_csv(paths.sample, ["image_id"], what="sample table")
        captions = captioning.precomputed_captions(sample, params.data.caption_column, cfg)
        failures = pd.DataFrame(columns=captioning.FAILURE_COLUMNS)
        metrics = {
            "images": len(sample),
            "ok": len(captions),
            "failed": len(sample) - len(captions),
            "mode": cfg.mode,
            "method": cfg.method,
            "caption_model": cfg.caption_model_name,
            "clip_model": cfg.clip_model_name,
        }
        n_images = len(sample)
    else:
        from alien_hotels.captioning.run import caption_images

        manifest = images.read_manifest(paths.images_manifest)
        result = caption_images(manifest, cfg, root=Path("."))
        captions, failures, metrics = result.captions, result.failures, result.metrics
        metrics = {"method": cfg.method, **metrics}
        n_images = metrics["images"]
    if captions.empty:
        raise StageError(
            f"caption: no captions produced for the {n_images} images"
            + (f" (failures: {metrics.get('failed_by_reason')})" if len(failures) else "")
        )
    write_csv(failures, paths.caption_failures)
    write_csv(captions, paths.captions)
    write_json(metrics, paths.caption_metrics)
    log.info("captioned %d images (%d failed)", len(captions), len(failures))
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
        extra_stopwords=cfg.label_stopwords,
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
    write_csv(table[[*columns, "cluster_label", "hotel_name"]], paths.clusters)
    return table


def run_edit(
    params: Params, recipe: str | None = None, paths: StagePaths = StagePaths()
) -> dict[str, dict]:
    """Stage `edit@<recipe>` (all recipes when `recipe` is None)."""
    from alien_hotels.editing import imaging, report, runner

    cfg = params.edit
    names = list(cfg.recipes) if recipe is None else [recipe]
    unknown = [n for n in names if n not in cfg.recipes]
    if unknown:
        raise StageError(
            f"edit: unknown recipe {unknown[0]!r}; edit.recipes has: "
            f"{', '.join(cfg.recipes) or '(none)'}"
        )
    manifest = images.read_manifest(paths.images_manifest)
    for name in names:  # every model is checked before any image is edited
        if not images.usable_images(manifest, cfg.max_images).rows.empty:
            runner.check_weights(name, cfg.recipes[name], cfg)
    out: dict[str, dict] = {}
    for name in names:
        result = runner.edit_recipe(name, cfg, manifest, paths.edited_dir / name)
        metrics = report.clean({"recipe": name, **runner.recipe_metrics(result.table)})
        sheet = imaging.contact_sheet(result.sheet, title=f"recipe {name}")
        with atomic_path(paths.edit_sheets / f"{name}.jpg") as tmp:
            sheet.save(tmp, format="JPEG", quality=88)
        write_csv(result.table, paths.edit_tables / f"{name}.csv")
        write_json(metrics, paths.edit_recipe_metrics / f"{name}.json")
        log.info(
            "edit %s: %d edited, %d unchanged, %d failed",
            name,
            metrics["n_edited"],
            metrics["n_unchanged"],
            metrics["n_failed"],
        )
        out[name] = metrics
    return out


def run_edit_report(params: Params, paths: StagePaths = StagePaths()) -> dict:
    """Stage `edit_report`: per-recipe means and the hotel ranking for alien guests."""
    from alien_hotels.editing import report, runner

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
    write_csv(ranking, paths.alien_hotels_plot)
    write_text(report.ranking_markdown(ranking, metrics["recipes"]), paths.alien_ranking)
    write_json(metrics, paths.edit_metrics)
    return metrics


def run_edit_sweep(params: Params, paths: StagePaths = StagePaths()) -> pd.DataFrame:
    """Stage `edit_sweep`: preservation against edit success over a grid of one recipe."""
    from alien_hotels.editing import report, runner

    cfg = params.edit
    table = runner.sweep(cfg, images.read_manifest(paths.images_manifest))
    best = None
    if not table.empty:
        ranked = table.assign(success=pd.to_numeric(table["success"], errors="coerce"))
        best = ranked.sort_values("success", ascending=False).iloc[0].to_dict()
    write_csv(table, paths.sweep_table)
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
