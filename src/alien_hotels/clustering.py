"""Stage 5, `cluster`: the k-means elbow sweep, the chosen k, and what the clusters mean.

The study fitted `KMeans(n_clusters=k, random_state=42)` for k = 1..29, read the elbow off the
inertia plot (9-10) and kept k = 10. Here the knee is found by Kneedle (`kneed`); the clusters'
silhouette is here, their agreement with the two explanations the study weighed (hotel identity
and room type), with its uncertainty, is `evaluation`'s.

Scale (docs/design/performance.md): with more than `cluster.sweep_sample` documents, each k of the
sweep is fitted on a seeded sample of that many rows and its centers are then scored on every row
(the inertia curve is always the full data's); the chosen k is then refined with Lloyd
iterations on all rows, starting from the sample's centers. Silhouette and the c-TF-IDF terms
use seeded samples too (`cluster.silhouette_sample`, `cluster.terms_sample`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from alien_hotels.common import Section, Seed, StageError, resolve_n_jobs, rounded, seeded_rows

if TYPE_CHECKING:  # scikit-learn is imported where it runs: the config loader imports this
    from sklearn.cluster import KMeans  # module in every stage, most of which never cluster

log = logging.getLogger(__name__)


class ElbowConfig(Section):
    """`cluster.elbow.*`: Kneedle settings (see `kneed.KneeLocator`)."""

    sensitivity: float = Field(gt=0)
    interp_method: Literal["interp1d", "polynomial"]
    polynomial_degree: int = Field(ge=1)
    online: bool


class ClusterConfig(Section):
    """`cluster.*`: the sweep range, the final k (null: the elbow) and k-means settings."""

    k_min: int = Field(ge=1)
    k_max: int = Field(ge=1)
    k: int | None = Field(ge=1)
    random_state: Seed
    # k-means++ restarts per k; the best (lowest inertia) restart is kept.
    n_init: int = Field(ge=1)
    max_iter: int = Field(ge=1)
    tol: float = Field(ge=0)
    # Above this many documents the sweep fits each k on a seeded sample of this size, scores the
    # centers on every row, and the chosen k is refined on all rows; null: always fit all rows.
    sweep_sample: int | None = Field(ge=100)
    # k-means++ restarts per k when the sweep runs on a sample (the refinement on all rows then
    # polishes the chosen k); null: n_init.
    sweep_n_init: int | None = Field(ge=1)
    # Silhouette is O(n^2): above this many documents it is computed on a seeded sample.
    silhouette_sample: int | None = Field(ge=100)
    # Documents used for the c-TF-IDF cluster terms (stratified by cluster); null: all.
    terms_sample: int | None = Field(ge=100)
    # Threads: the sweep (and the silhouettes, the seed reruns) fit several k at once, each fit
    # on one thread, so the results are the same bits for any number; null: every core this
    # process may use (common.available_cores).
    n_jobs: int | None = Field(ge=1)
    elbow: ElbowConfig
    top_terms: int = Field(ge=1)
    label_terms: int = Field(ge=1)
    # Words left out of cluster terms and labels, on top of English stopwords: BLIP artefacts.
    label_stopwords: list[str]
    # The finding's uncertainty (evaluation.py, docs/finding.md): NMI's chance level over seeded
    # permutations of each yardstick, AMI's bootstrap interval over documents, and the spread of
    # AMI over reruns of SVD + k-means at the chosen k with other seeds. 0 turns one off.
    n_permutations: int = Field(ge=0, le=100_000)
    n_bootstrap: int = Field(ge=0, le=100_000)
    n_seeds: int = Field(ge=0, le=1000)
    confidence: float = Field(gt=0, lt=1)
    # Above this many documents the permutations, bootstrap and seed reruns use a seeded sample.
    uncertainty_sample: int | None = Field(ge=100)
    # Leave-one-out nearest-neighbour retrieval of the hotel (and chain): seeded queries; null:
    # all; 0: off.
    retrieval_queries: int | None = Field(ge=0)
    # Cluster one image per duplicate group (data/processed/duplicates.csv, the duplicates stage);
    # the report shows the scores with and without the duplicates either way.
    drop_duplicates: bool

    @model_validator(mode="after")
    def _check_range(self) -> ClusterConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"cluster.k_min ({self.k_min}) must not exceed cluster.k_max")
        if self.k is None and self.k_max - self.k_min < 2:
            raise ValueError(
                "cluster.k=null (elbow) needs at least 3 swept values: widen cluster.k_min..k_max"
            )
        largest = max(self.k_max, self.k or 0)
        if self.sweep_sample is not None and self.sweep_sample < 10 * largest:
            raise ValueError(
                f"cluster.sweep_sample ({self.sweep_sample}) must be at least 10 rows per "
                f"cluster of the largest k ({largest}), i.e. >= {10 * largest}, or null"
            )
        return self


@dataclass
class SweepResult:
    """Inertia on all rows per k; centers per k; labels per k only when all rows were fitted."""

    inertia: dict[int, float]
    labels: dict[int, np.ndarray]
    centers: dict[int, np.ndarray] = field(default_factory=dict)
    fit_rows: np.ndarray | None = None  # the sample the sweep was fitted on; None: all rows

    @property
    def sampled(self) -> bool:
        return self.fit_rows is not None


@dataclass
class FinalClustering:
    labels: np.ndarray
    inertia: float
    refined: bool  # refined on all rows from the sample's centers


def assign(embedding: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearest center per row and the inertia (sum of squared distances), in chunks."""
    from sklearn.metrics import pairwise_distances_argmin_min

    labels, distances = pairwise_distances_argmin_min(embedding, centers)
    return labels.astype(np.int32), float(np.square(distances, dtype=np.float64).sum())


def sweep_kmeans(embedding: np.ndarray, cfg: ClusterConfig, progress: bool = True) -> SweepResult:
    """Fit k-means for every k in [k_min, k_max]; inertia on all rows per k."""
    n_docs = len(embedding)
    if n_docs < 2:
        raise StageError(
            f"cluster: {n_docs} document(s) cannot be clustered (cluster.k_min..k_max needs at "
            "least 2): add photos"
        )
    if cfg.k is not None and cfg.k > n_docs:
        raise StageError(f"cluster.k={cfg.k} is larger than the number of documents ({n_docs})")
    # k-means cannot have more clusters than distinct documents (identical captions are common
    # in a small folder); counted only where k_max could come near them.
    n_distinct = len(np.unique(embedding, axis=0)) if n_docs < 10 * cfg.k_max else n_docs
    k_max = min(cfg.k_max, n_distinct)
    if cfg.k_min > k_max:
        raise StageError(
            f"cluster.k_min={cfg.k_min} is larger than the number of distinct documents "
            f"({n_distinct})"
        )
    if k_max < cfg.k_max:
        log.warning(
            "cluster.k_max=%d exceeds the %d %sdocuments: sweeping k=%d..%d",
            cfg.k_max,
            n_distinct,
            "distinct " if n_distinct < n_docs else "",
            cfg.k_min,
            k_max,
        )
    fit_rows = seeded_rows(n_docs, cfg.sweep_sample, cfg.random_state)
    data = embedding if fit_rows is None else embedding[fit_rows]
    result = SweepResult(inertia={}, labels={}, fit_rows=fit_rows)
    ks = range(cfg.k_min, k_max + 1)
    n_init = cfg.n_init if fit_rows is None else (cfg.sweep_n_init or cfg.n_init)

    def fit(k: int) -> tuple[int, KMeans, float]:
        model = _kmeans(k, cfg, n_init).fit(data)
        if fit_rows is None:
            return k, model, float(model.inertia_)
        return k, model, assign(embedding, model.cluster_centers_)[1]

    with tqdm(total=len(ks), desc="k-means sweep", unit="k", disable=not progress) as bar:
        for k, model, inertia in parallel(fit, ks, cfg.n_jobs):
            result.centers[k] = model.cluster_centers_
            result.inertia[k] = inertia
            if fit_rows is None:
                result.labels[k] = model.labels_
            bar.update()
    return result


def parallel(fn, items, n_jobs: int | None):
    """`fn` over `items` in `n_jobs` threads (null: every core), results in order. Each call runs
    on one BLAS/OpenMP thread, so the results are the same bits for any `n_jobs`: scikit-learn's
    k-means sums in per-thread chunks, which a thread count would change. The fits release the
    GIL (Cython and BLAS loops), so the threads run at once."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    workers = min(resolve_n_jobs(n_jobs), max(len(items), 1))

    def one(item):
        # OpenMP's thread count is per calling thread (a new thread starts at every core):
        # set it in the worker itself. BLAS's limit is the process's, set below.
        with threadpool_limits(1, user_api="openmp"):
            return fn(item)

    with threadpool_limits(1):
        if workers == 1:
            yield from map(fn, items)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="kmeans") as pool:
            yield from pool.map(one, items)


class NoElbow(StageError):
    """The inertia curve has no knee: too few values of k, flat, or Kneedle finds none."""


def choose_k(inertia: dict[int, float], cfg: ClusterConfig) -> int:
    """The given `cluster.k`, or the knee of the inertia curve (Kneedle); `NoElbow` if none."""
    if cfg.k is not None:
        return cfg.k
    ks = sorted(inertia)
    if len(ks) < 3:
        raise NoElbow(f"only {len(ks)} values of k (k={ks[0]}..{ks[-1]}): too few for an elbow")
    if inertia[ks[0]] - inertia[ks[-1]] <= 1e-12 * max(abs(inertia[ks[0]]), 1.0):
        raise NoElbow("the inertia curve is flat, so it has no elbow")
    # A degree-7 fit over few points is poorly conditioned by design; the fit is only a smoother.
    # kneed warns when it finds no knee: that case is handled below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        warnings.simplefilter("ignore", UserWarning)
        locator = _knee_locator(ks, inertia, cfg)
    if locator.knee is None:
        raise NoElbow("no elbow found in the inertia curve")
    return int(locator.knee)


def select_k(embedding: np.ndarray, sweep: SweepResult, cfg: ClusterConfig) -> tuple[int, str]:
    """(k, k_source): the given `cluster.k` ("given"), the elbow ("elbow"), or, when the curve
    has no knee (a small folder, a flat curve), the swept k with the best silhouette
    ("silhouette"); where no swept k has one (2 documents, identical ones) the smallest
    swept k ("k_min")."""
    try:
        k = choose_k(sweep.inertia, cfg)
    except NoElbow as exc:
        scores = silhouette_by_k(embedding, sweep, cfg)
        swept = sorted(sweep.inertia)
        if scores:
            k, source = max(scores, key=lambda kk: (scores[kk], -kk)), "silhouette"
        else:
            k, source = swept[0], "k_min"
        log.warning(
            "%s; k=%d instead (cluster.k_source=%s over k=%d..%d); set cluster.k to choose",
            exc,
            k,
            source,
            swept[0],
            swept[-1],
        )
        return k, source
    return k, "given" if cfg.k is not None else "elbow"


def silhouette_by_k(embedding: np.ndarray, sweep: SweepResult, cfg: ClusterConfig) -> dict:
    """Silhouette of each swept k's clustering (on a seeded sample above
    `cluster.silhouette_sample` rows); k without 2..n-1 distinct clusters has none."""
    from sklearn.metrics import silhouette_score

    rows = seeded_rows(len(embedding), cfg.silhouette_sample, cfg.random_state)
    x = embedding if rows is None else embedding[rows]

    def score(k: int) -> tuple[int, float | None]:
        labels = sweep.labels.get(k)
        if labels is None:  # a sampled sweep keeps centers only
            labels = assign(embedding, sweep.centers[k])[0]
        y = labels if rows is None else labels[rows]
        if 2 <= len(np.unique(y)) <= len(y) - 1:
            # rounded: k whose scores differ by BLAS noise only tie, and the smaller k wins
            return k, round(float(silhouette_score(x, y)), 6)
        return k, None

    found = parallel(score, sorted(sweep.inertia), cfg.n_jobs)
    return {k: value for k, value in found if value is not None}


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


def final_clustering(
    embedding: np.ndarray, sweep: SweepResult, k: int, cfg: ClusterConfig
) -> FinalClustering:
    """Labels and inertia of the final model at `k`, on all rows (one thread: the same bits for
    any `cluster.n_jobs`)."""
    with threadpool_limits(1):
        return _final_clustering(embedding, sweep, k, cfg)


def _final_clustering(
    embedding: np.ndarray, sweep: SweepResult, k: int, cfg: ClusterConfig
) -> FinalClustering:
    if not sweep.sampled:
        if k in sweep.labels:
            return FinalClustering(sweep.labels[k], sweep.inertia[k], refined=False)
        model = _kmeans(k, cfg).fit(embedding)
        return FinalClustering(model.labels_, float(model.inertia_), refined=False)
    centers = sweep.centers.get(k)
    if centers is None:  # a given k outside the swept range
        sample = embedding[sweep.fit_rows]
        centers = _kmeans(k, cfg, cfg.sweep_n_init or cfg.n_init).fit(sample).cluster_centers_
    from sklearn.cluster import KMeans

    # Lloyd on all rows from the sample's centers (one start: the restarts ran on the sample).
    model = KMeans(n_clusters=k, init=centers, n_init=1, max_iter=cfg.max_iter, tol=cfg.tol).fit(
        embedding
    )
    return FinalClustering(model.labels_, float(model.inertia_), refined=True)


def silhouette(
    embedding: np.ndarray, labels: np.ndarray, sample: int | None = None, random_state: int = 0
) -> float | None:
    """The clusters' silhouette, on a seeded sample of `sample` rows when there are more; None
    unless there are 2 to n-1 clusters. (Their agreement with hotels and room types, with its
    uncertainty, is `evaluation.measure`'s.)"""
    from sklearn.metrics import silhouette_score

    if not 2 <= len(np.unique(labels)) <= len(labels) - 1:
        return None
    rows = seeded_rows(len(labels), sample, random_state)
    x, y = (embedding, labels) if rows is None else (embedding[rows], labels[rows])
    if not 2 <= len(np.unique(y)) <= len(y) - 1:
        return None
    with threadpool_limits(1):  # the same bits for any thread count
        return float(silhouette_score(x, y))


def class_tfidf_terms(
    texts: Sequence[str],
    labels: np.ndarray,
    top_n: int,
    sample_size: int | None = None,
    random_state: int = 0,
    extra_stopwords: Sequence[str] = (),
) -> dict[int, list[str]]:
    """Top terms per cluster by class-based TF-IDF (BERTopic's c-TF-IDF).

    All documents of a cluster form one class document; a term's weight is its in-class
    frequency (L1-normalised) times log(1 + A / f_t), A the mean words per class and f_t the
    term's frequency over all classes. Above `sample_size` documents, each cluster contributes
    a seeded share of its documents (at least 200) and its counts are scaled back to its size.
    """
    labels = np.asarray(labels)
    texts = np.asarray(texts, dtype=object)
    clusters, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    rows = np.arange(len(labels))
    weights = np.ones(len(labels))
    if sample_size is not None and len(labels) > sample_size:
        rng = np.random.default_rng(random_state)
        picked = []
        for c, size in enumerate(sizes):
            members = np.flatnonzero(inverse == c)
            take = min(size, max(200, round(sample_size * size / len(labels))))
            chosen = rng.choice(members, size=take, replace=False)
            weights[chosen] = size / take
            picked.append(chosen)
        rows = np.sort(np.concatenate(picked))
    from scipy import sparse
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    stopwords = sorted(ENGLISH_STOP_WORDS | {w.lower() for w in extra_stopwords})
    vectorizer = CountVectorizer(stop_words=stopwords)
    try:
        doc_counts = vectorizer.fit_transform(texts[rows])
    except ValueError:  # every word is a stopword
        return {int(c): [] for c in clusters}
    membership = sparse.csr_matrix(
        (weights[rows], (inverse[rows], np.arange(len(rows)))), shape=(len(clusters), len(rows))
    )
    counts = np.asarray((membership @ doc_counts).todense(), dtype=float)
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    avg_words = counts.sum() / len(counts)
    idf = np.log1p(avg_words / np.maximum(counts.sum(axis=0), 1.0))
    weights = tf * idf
    terms = vectorizer.get_feature_names_out()
    top: dict[int, list[str]] = {}
    for row, cluster in enumerate(clusters):
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


def _kmeans(k: int, cfg: ClusterConfig, n_init: int | None = None) -> KMeans:
    from sklearn.cluster import KMeans

    return KMeans(
        n_clusters=k,
        random_state=cfg.random_state,
        n_init=n_init or cfg.n_init,
        max_iter=cfg.max_iter,
        tol=cfg.tol,
    )


def elbow_table(inertia: dict[int, float], k: int) -> pd.DataFrame:
    """`plots/elbow.csv`: inertia per swept k, and `chosen` (1 on the row of the final k, 0
    elsewhere; no 1 when a given k lies outside the sweep). The plot marks the chosen k from it,
    so `dvc plots diff` of runs that differ only in k still tells them apart."""
    ks = sorted(inertia)
    return pd.DataFrame(
        {
            "k": ks,
            "inertia": rounded([inertia[kk] for kk in ks]),
            "chosen": [int(kk == k) for kk in ks],
        }
    )


def cluster_terms(
    assigned: pd.DataFrame, top_terms: dict[int, list[str]], names: dict[int, str]
) -> pd.DataFrame:
    """`data/processed/cluster_terms.csv`: a row per cluster (size, label, terms, room types),
    read by the cards stage."""
    rows = []
    for cluster, group in assigned.groupby("cluster", sort=True):
        shares = group["room_type"].astype(str).value_counts(normalize=True).head(4)
        rows.append(
            {
                "cluster": int(cluster),
                "size": len(group),
                "label": names[int(cluster)],
                "top_terms": ", ".join(top_terms.get(int(cluster), [])),
                "room_types": ", ".join(f"{n} {v:.0%}" for n, v in shares.items()),
            }
        )
    return pd.DataFrame(rows, columns=["cluster", "size", "label", "top_terms", "room_types"])
