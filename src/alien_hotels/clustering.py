"""Stage 5, `cluster`: the k-means elbow sweep, the chosen k, and what the clusters mean.

The study fitted `KMeans(n_clusters=k, random_state=42)` for k = 1..29, read the elbow off the
inertia plot (9-10) and kept k = 10. Here the knee is found by Kneedle (`kneed`), and the result
is scored against the two explanations the study weighed: hotel identity and room type.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from tqdm.auto import tqdm

from alien_hotels.common import Section, StageError


class ElbowConfig(Section):
    """`cluster.elbow.*`: Kneedle settings (see `kneed.KneeLocator`)."""

    sensitivity: float = Field(1.0, gt=0)
    interp_method: Literal["interp1d", "polynomial"] = "polynomial"
    polynomial_degree: int = Field(7, ge=1)
    online: bool = False


class ClusterConfig(Section):
    """`cluster.*`: the sweep range, the final k (null: the elbow) and k-means settings."""

    k_min: int = Field(1, ge=1)
    k_max: int = Field(29, ge=1)
    k: int | None = Field(None, ge=1)
    random_state: int = 42
    n_init: int = Field(10, ge=1)
    max_iter: int = Field(300, ge=1)
    elbow: ElbowConfig = ElbowConfig()
    top_terms: int = Field(8, ge=1)
    label_terms: int = Field(3, ge=1)
    # Words left out of cluster terms and labels, on top of English stopwords: BLIP artefacts.
    label_stopwords: list[str] = ["arafed", "araffe", "arafe"]

    @model_validator(mode="after")
    def _check_range(self) -> ClusterConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"cluster.k_min ({self.k_min}) must not exceed cluster.k_max")
        if self.k is None and self.k_max - self.k_min < 2:
            raise ValueError(
                "cluster.k=null (elbow) needs at least 3 swept values: widen cluster.k_min..k_max"
            )
        return self


@dataclass
class SweepResult:
    inertia: dict[int, float]
    labels: dict[int, np.ndarray]


def sweep_kmeans(embedding: np.ndarray, cfg: ClusterConfig, progress: bool = True) -> SweepResult:
    """Fit k-means for every k in [k_min, k_max]; keep inertia and labels per k."""
    n_docs = len(embedding)
    if cfg.k_max > n_docs:
        raise StageError(
            f"cluster.k_max={cfg.k_max} is larger than the number of documents ({n_docs})"
        )
    if cfg.k is not None and cfg.k > n_docs:
        raise StageError(f"cluster.k={cfg.k} is larger than the number of documents ({n_docs})")
    inertia: dict[int, float] = {}
    labels: dict[int, np.ndarray] = {}
    ks = range(cfg.k_min, cfg.k_max + 1)
    for k in tqdm(ks, desc="k-means sweep", unit="k", disable=not progress):
        model = _kmeans(k, cfg).fit(embedding)
        inertia[k] = float(model.inertia_)
        labels[k] = model.labels_
    return SweepResult(inertia=inertia, labels=labels)


def choose_k(inertia: dict[int, float], cfg: ClusterConfig) -> int:
    """The given `cluster.k`, or the knee of the inertia curve (Kneedle)."""
    if cfg.k is not None:
        return cfg.k
    ks = sorted(inertia)
    if inertia[ks[0]] - inertia[ks[-1]] <= 1e-12 * max(abs(inertia[ks[0]]), 1.0):
        raise StageError("the inertia curve is flat, so it has no elbow; set cluster.k explicitly")
    # A degree-7 fit over few points is poorly conditioned by design; the fit is only a smoother.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        locator = _knee_locator(ks, inertia, cfg)
    if locator.knee is None:
        raise StageError(
            "no elbow found in the inertia curve; set cluster.k explicitly "
            "or widen cluster.k_min..k_max"
        )
    return int(locator.knee)


def _knee_locator(ks: list[int], inertia: dict[int, float], cfg: ClusterConfig):
    from kneed import KneeLocator

    return KneeLocator(
        ks,
        [inertia[k] for k in ks],
        S=cfg.elbow.sensitivity,
        curve="convex",
        direction="decreasing",
        interp_method=cfg.elbow.interp_method,
        polynomial_degree=cfg.elbow.polynomial_degree,
        online=cfg.elbow.online,
    )


def final_labels(embedding: np.ndarray, sweep: SweepResult, k: int, cfg: ClusterConfig):
    if k in sweep.labels:
        return sweep.labels[k]
    return _kmeans(k, cfg).fit(embedding).labels_


def score_clusters(
    embedding: np.ndarray, labels: np.ndarray, hotel_ids: Sequence, room_types: Sequence[str]
) -> dict[str, float | None]:
    """Silhouette, and agreement (ARI, NMI) of clusters with hotels and with room types."""
    n_clusters = len(np.unique(labels))
    silhouette = (
        float(silhouette_score(embedding, labels)) if 2 <= n_clusters <= len(labels) - 1 else None
    )
    return {
        "silhouette": silhouette,
        "ari_hotel": float(adjusted_rand_score(hotel_ids, labels)),
        "nmi_hotel": float(normalized_mutual_info_score(hotel_ids, labels)),
        "ari_room_type": float(adjusted_rand_score(room_types, labels)),
        "nmi_room_type": float(normalized_mutual_info_score(room_types, labels)),
    }


def class_tfidf_terms(
    texts: Sequence[str], labels: np.ndarray, top_n: int, extra_stopwords: Sequence[str] = ()
) -> dict[int, list[str]]:
    """Top terms per cluster by class-based TF-IDF (BERTopic's c-TF-IDF).

    All documents of a cluster form one class document; a term's weight is its in-class
    frequency (L1-normalised) times log(1 + A / f_t), A the mean words per class and f_t the
    term's frequency over all classes.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stopwords = sorted(ENGLISH_STOP_WORDS | {w.lower() for w in extra_stopwords})
    vectorizer = CountVectorizer(stop_words=stopwords)
    frame = pd.DataFrame({"text": list(texts), "cluster": labels})
    joined = frame.groupby("cluster")["text"].apply(" ".join)
    try:
        counts = vectorizer.fit_transform(joined.to_numpy()).toarray().astype(float)
    except ValueError:  # every word is a stopword
        return {int(c): [] for c in joined.index}
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    avg_words = counts.sum() / len(counts)
    idf = np.log1p(avg_words / np.maximum(counts.sum(axis=0), 1.0))
    weights = tf * idf
    terms = vectorizer.get_feature_names_out()
    top: dict[int, list[str]] = {}
    for row, cluster in enumerate(joined.index):
        order = np.argsort(-weights[row], kind="stable")[:top_n]
        top[int(cluster)] = [terms[i] for i in order if weights[row, i] > 0]
    return top


def cluster_labels(
    top_terms: dict[int, list[str]], room_types: Sequence[str], labels: np.ndarray, n_terms: int
) -> dict[int, str]:
    """A readable name per cluster: its dominant room type and its leading c-TF-IDF terms."""
    frame = pd.DataFrame({"room_type": list(room_types), "cluster": labels})
    dominant = frame.groupby("cluster")["room_type"].agg(lambda s: s.value_counts().index[0])
    return {
        int(c): f"{dominant[c]}: {' · '.join(top_terms.get(int(c), [])[:n_terms]) or '-'}"
        for c in dominant.index
    }


def _kmeans(k: int, cfg: ClusterConfig) -> KMeans:
    return KMeans(
        n_clusters=k, random_state=cfg.random_state, n_init=cfg.n_init, max_iter=cfg.max_iter
    )
