"""Stage `features`: TF-IDF then TruncatedSVD over the preprocessed texts (features.*)."""

from __future__ import annotations

from alien_hotels import features
from alien_hotels.common import read_csv, rounded, write_json
from alien_hotels.config import Params
from alien_hotels.stages.paths import StagePaths


def run(params: Params, paths: StagePaths = StagePaths()) -> features.TextFeatures:
    texts = read_csv(paths.texts, ["image_id", "text"], what="preprocessed texts", usecols=[])
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
    return fitted
