"""Stage 4, `features`: TF-IDF over the lemmatized texts, then TruncatedSVD (LSA); or CLIP
embeddings of the photos or captions (`features.kind`, embeddings.py).

The study used `TfidfVectorizer()` defaults and `TruncatedSVD(n_components=50)`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator
from threadpoolctl import threadpool_limits

from alien_hotels.common import Section, Seed, StageError, atomic_path, resolve_n_jobs

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # imported where it runs: the config loader imports this module in every stage
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer


class TfidfConfig(Section):
    """`features.tfidf.*`: the `TfidfVectorizer` parameters users tune most."""

    min_df: int | float = Field(ge=0)
    max_df: int | float = Field(gt=0)
    max_features: int | None = Field(ge=1)
    ngram_max: int = Field(ge=1, le=3)
    sublinear_tf: bool
    use_idf: bool
    smooth_idf: bool
    norm: Literal["l2", "l1", "none"]
    token_pattern: str


class ClipFeaturesConfig(Section):
    """`features.clip.*`: the CLIP embeddings of `kind: clip_image | clip_text` (the caption
    stage's CLIP model, `caption.clip_model_name`)."""

    batch_size: int = Field(ge=1, le=4096)


class FeaturesConfig(Section):
    """`features.*`: what the documents become (`kind`): the study's TF-IDF + SVD, or the CLIP
    embeddings of the photos or of the captions."""

    kind: Literal["tfidf", "clip_image", "clip_text"]
    tfidf: TfidfConfig
    clip: ClipFeaturesConfig
    n_components: int = Field(ge=1)
    algorithm: Literal["randomized", "arpack"]
    n_iter: int = Field(ge=1)
    random_state: Seed
    # BLAS threads for the SVD; null: every core this process may use. The saved vectors are the
    # same for any number (rounded to GRID, far above the threads' summation noise).
    n_jobs: int | None = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> FeaturesConfig:
        if isinstance(self.tfidf.min_df, float) and self.tfidf.min_df > 1:
            raise ValueError("features.tfidf.min_df as a fraction must be in [0, 1]")
        return self


# Saved features are rounded to this grid (2^-17, about 7.6e-6; SVD coordinates of L2-normalised
# rows lie in [-1, 1]). The float64 SVD differs between BLAS kernels (OpenBLAS Haswell vs
# SkylakeX, ...) by about 1e-13, eight orders below the grid, so the saved bytes, and everything
# cluster and map compute from them, are the same on every CPU. A power of two: every grid value
# below 128 is exact in float32.
GRID = 2.0**-17


@dataclass
class TextFeatures:
    """The fitted vectorizer and SVD, and the reduced document vectors."""

    vectorizer: TfidfVectorizer
    svd: TruncatedSVD
    embedding: np.ndarray  # (n_docs, n_components_used), float32 values on `GRID`

    @property
    def n_terms(self) -> int:
        return len(self.vectorizer.vocabulary_)

    @property
    def n_components_used(self) -> int:
        return int(self.svd.n_components)

    @property
    def explained_variance(self) -> float | None:
        ratio = self.svd.explained_variance_ratio_
        # NaN where the documents do not vary (one document, or identical ones)
        return float(ratio.sum()) if np.isfinite(ratio).all() else None


def make_vectorizer(cfg: TfidfConfig) -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        min_df=cfg.min_df,
        max_df=cfg.max_df,
        max_features=cfg.max_features,
        ngram_range=(1, cfg.ngram_max),
        sublinear_tf=cfg.sublinear_tf,
        use_idf=cfg.use_idf,
        smooth_idf=cfg.smooth_idf,
        norm=None if cfg.norm == "none" else cfg.norm,
        token_pattern=cfg.token_pattern,
        dtype=np.float32,
    )


def fit_features(texts: Sequence[str], cfg: FeaturesConfig) -> TextFeatures:
    """TF-IDF then SVD; errors name the parameter that does not fit the data."""
    if len(texts) == 0:
        raise StageError("features: no documents to vectorize (the preprocessed table is empty)")
    vectorizer = make_vectorizer(cfg.tfidf)
    try:
        tfidf = vectorizer.fit_transform(texts)
    except ValueError as exc:  # e.g. empty vocabulary, min_df > max_df
        raise StageError(f"features.tfidf: {exc}") from None
    n_components = n_components_for(cfg, n_docs=tfidf.shape[0], n_terms=tfidf.shape[1])
    from sklearn.decomposition import TruncatedSVD

    svd = TruncatedSVD(
        n_components=n_components,
        algorithm=cfg.algorithm,
        n_iter=cfg.n_iter,
        random_state=cfg.random_state,
    )
    # float64: its BLAS-kernel noise (~1e-13) is far below GRID; float32's rounding error
    # (up to 1.6e-5 on the demo) is of the grid's order, so a kernel could cross a grid step.
    threads = resolve_n_jobs(cfg.n_jobs)
    with threadpool_limits(threads), np.errstate(invalid="ignore", divide="ignore"):
        embedding = svd.fit_transform(tfidf.astype(np.float64))
    return TextFeatures(vectorizer=vectorizer, svd=svd, embedding=on_grid(embedding))


def n_components_for(cfg: FeaturesConfig, n_docs: int, n_terms: int) -> int:
    """`features.n_components`, lowered (with a warning) to below the number of TF-IDF terms and
    of documents: a small folder of photos has fewer than the default 50."""
    limit = min(n_terms, n_docs) - 1  # TruncatedSVD needs n_components < n_terms
    if cfg.algorithm == "randomized":
        limit = max(limit, 1) if n_terms > 1 else 0  # randomized SVD takes a single document
    if limit < 1:
        raise StageError(
            f"features.n_components: no SVD component fits {n_docs} document(s) with {n_terms} "
            f"TF-IDF term(s) (features.algorithm={cfg.algorithm} needs n_components below both); "
            "add photos or relax features.tfidf"
        )
    if cfg.n_components > limit:
        log.warning(
            "features.n_components=%d does not fit %d documents with %d TF-IDF terms: using %d",
            cfg.n_components,
            n_docs,
            n_terms,
            limit,
        )
        return limit
    return cfg.n_components


def on_grid(embedding: np.ndarray) -> np.ndarray:
    """`embedding` rounded to `GRID`, as float32 (exact), so BLAS noise does not reach the bytes."""
    rounded = np.round(np.asarray(embedding, dtype=np.float64) / GRID) * GRID
    return (rounded + 0.0).astype(np.float32)  # + 0.0: -0.0 becomes 0.0


def save_features(target: Path, embedding: np.ndarray, image_ids: np.ndarray) -> None:
    """`features.npz`, written by the features stage and read by cluster and map."""
    # Uncompressed: SVD coordinates barely compress, and zlib costs seconds per million rows.
    with atomic_path(target) as tmp, tmp.open("wb") as fh:
        np.savez(fh, embedding=embedding, image_id=image_ids)


def load_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The SVD vectors and their image ids, as `save_features` wrote them."""
    if not path.is_file():
        raise StageError(f"features not found: {path} (run the features stage first)")
    with np.load(path, allow_pickle=False) as data:
        return data["embedding"], data["image_id"]
