"""Stage 4, `features`: TF-IDF over the lemmatized texts, then TruncatedSVD (LSA).

The study used `TfidfVectorizer()` defaults and `TruncatedSVD(n_components=50)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator
from threadpoolctl import threadpool_limits

from alien_hotels.common import Section, Seed, StageError, atomic_path

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


class FeaturesConfig(Section):
    """`features.*`: TF-IDF settings and the SVD that reduces them."""

    tfidf: TfidfConfig
    n_components: int = Field(ge=1)
    algorithm: Literal["randomized", "arpack"]
    n_iter: int = Field(ge=1)
    random_state: Seed
    # BLAS threads for the SVD; 1 by default (see cluster.n_jobs: spinning threads on a shared
    # machine cost more than they save).
    n_jobs: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> FeaturesConfig:
        if isinstance(self.tfidf.min_df, float) and self.tfidf.min_df > 1:
            raise ValueError("features.tfidf.min_df as a fraction must be in [0, 1]")
        return self


@dataclass
class TextFeatures:
    """The fitted vectorizer and SVD, and the reduced document vectors."""

    vectorizer: TfidfVectorizer
    svd: TruncatedSVD
    embedding: np.ndarray  # (n_docs, n_components), float32

    @property
    def n_terms(self) -> int:
        return len(self.vectorizer.vocabulary_)

    @property
    def explained_variance(self) -> float:
        return float(self.svd.explained_variance_ratio_.sum())


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
    n_terms = tfidf.shape[1]
    if cfg.n_components >= n_terms:
        raise StageError(
            f"features.n_components={cfg.n_components} must be below the number of TF-IDF terms "
            f"({n_terms}); lower features.n_components or relax features.tfidf"
        )
    if cfg.n_components >= len(texts) and cfg.algorithm == "arpack":
        raise StageError(
            f"features.n_components={cfg.n_components} must be below the number of documents "
            f"({len(texts)}) with features.algorithm=arpack"
        )
    from sklearn.decomposition import TruncatedSVD

    svd = TruncatedSVD(
        n_components=cfg.n_components,
        algorithm=cfg.algorithm,
        n_iter=cfg.n_iter,
        random_state=cfg.random_state,
    )
    with threadpool_limits(cfg.n_jobs):
        embedding = svd.fit_transform(tfidf).astype(np.float32)
    return TextFeatures(vectorizer=vectorizer, svd=svd, embedding=embedding)


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
