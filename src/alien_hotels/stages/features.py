"""Stage `features`: TF-IDF then TruncatedSVD over the preprocessed texts, or CLIP embeddings of
the photos or captions (features.*; caption.* for the CLIP model)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from alien_hotels import features
from alien_hotels.common import StageError, read_csv, rounded, write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths
from alien_hotels.tables import read_manifest, usable_images

log = logging.getLogger("alien_hotels")


def run(params: Params, paths: StagePaths = StagePaths()) -> np.ndarray:
    cfg = params.features
    # the captions only for CLIP's text tower (100k captions: 0.1 s to parse for nothing)
    texts = read_csv(
        paths.texts,
        ["image_id", "text"],
        what="preprocessed texts",
        usecols=["caption"] if cfg.kind == "clip_text" else [],
    )
    if cfg.kind == "tfidf":
        return tfidf(params, paths, texts)
    from alien_hotels import embeddings

    if cfg.kind == "clip_text":
        captions = texts["caption"] if "caption" in texts else texts["text"]
        vectors = embeddings.text_embeddings(
            captions.fillna("").astype(str).tolist(), params.caption, cfg.clip.batch_size
        )
        ids, failed = texts["image_id"].to_numpy(), 0
    else:
        rows = photo_rows(texts, paths)
        found, vectors, failures = embeddings.image_embeddings(
            rows, params.caption, cfg.clip.batch_size
        )
        if not found:
            raise StageError(
                f"features.kind=clip_image: none of the {len(rows)} photos could be read "
                f"(first: {failures['reason'].iloc[0] if len(failures) else 'none'})"
            )
        ids = rows.set_index(rows["image_id"].astype(str)).loc[found, "image_id"].to_numpy()
        failed = len(failures)
    embedding = features.on_grid(vectors)
    features.save_features(paths.features, embedding, ids)
    write_json(
        rounded(
            {
                "kind": cfg.kind,
                "n_docs": len(ids),
                # documents with no usable photo (clip_image): left out of cluster and map
                "n_docs_left_out": len(texts) - len(ids),
                "n_failed": failed,
                "n_components_used": int(embedding.shape[1]),
                "clip_model": params.caption.clip_model_name,
            }
        ),
        paths.features_metrics,
    )
    return embedding


def tfidf(params: Params, paths: StagePaths, texts: pd.DataFrame) -> np.ndarray:
    fitted = features.fit_features(texts["text"].fillna("").astype(str).tolist(), params.features)
    features.save_features(paths.features, fitted.embedding, texts["image_id"].to_numpy())
    write_json(
        rounded(
            {
                "n_docs": len(texts),
                "n_terms": fitted.n_terms,
                "n_components": params.features.n_components,
                # Lowered to below the number of terms and documents (a small folder), as
                # cluster.k_max is: see features.n_components_for.
                "n_components_used": fitted.n_components_used,
                "n_components_clamped": fitted.n_components_used < params.features.n_components,
                "explained_variance": fitted.explained_variance,
            }
        ),
        paths.features_metrics,
    )
    return fitted.embedding


def photo_rows(texts: pd.DataFrame, paths: StagePaths) -> pd.DataFrame:
    """The manifest's usable photos of the documents (image_id, path), in `texts` order."""
    usable = pd.DataFrame(columns=["image_id", "path"])
    if paths.images_manifest.is_file():
        usable = usable_images(read_manifest(paths.images_manifest)).rows[["image_id", "path"]]
    usable = usable.drop_duplicates("image_id")
    rows = texts[["image_id"]].merge(usable, on="image_id", how="inner")
    if rows.empty:
        raise StageError(
            f"features.kind=clip_image needs photos, and none of the {len(texts)} documents has "
            "a usable one (the bundled sample is captions only): use features=tfidf or "
            "features=clip_text, or run on your photos (data=folder)"
        )
    if len(rows) < len(texts):
        log.warning(
            "features.kind=clip_image: %d of %d documents have no usable photo and are left out",
            len(texts) - len(rows),
            len(texts),
        )
    return rows
