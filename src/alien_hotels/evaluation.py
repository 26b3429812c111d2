"""The finding measured like a result: chance-corrected agreement with intervals, and retrieval.

For each yardstick (hotel, chain where known, each room-type source) the cluster stage reports
NMI, AMI and ARI; NMI's chance level (mean and 99th percentile over seeded permutations of the
yardstick); a bootstrap interval of AMI over documents; and leave-one-out nearest-neighbour
retrieval (top-1, top-10, cosine) with its chance level. Contract and cost: docs/finding.md.

Above `cluster.uncertainty_sample` rows the permutations and the bootstrap run on a seeded
sample of that many rows (the interval is then wider than the full data's: conservative), and
retrieval asks `cluster.retrieval_queries` seeded queries against every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from alien_hotels.common import beside, seeded_rows

if TYPE_CHECKING:
    from alien_hotels.clustering import ClusterConfig
    from alien_hotels.features import FeaturesConfig

# Cosine scores of a block of queries against every row at a time, in one reused buffer of at
# most this many float64 (256 MB; 512 queries x 65k rows): a fresh 400 MB block per step cost
# more in page faults than its matrix product.
SCORE_BUFFER = 2**25
QUERY_BLOCK = 512


def known(reference: Sequence) -> np.ndarray:
    """Rows that have a label: None, NaN and blank strings mean none (an unlabelled image)."""
    ref = pd.Series(list(reference), dtype=object)
    return (ref.notna() & (ref.astype(str).str.strip() != "")).to_numpy()


def codes(values: Sequence) -> np.ndarray:
    """Integer codes of labels (compared as strings, so 3 and "3" are one label)."""
    return pd.factorize(pd.Series(list(values), dtype=object).astype(str), sort=True)[0]


def ami_from_codes(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-learn's `adjusted_mutual_info_score` (arithmetic normaliser) from integer codes:
    its formulas in its order of operations, from a `bincount` contingency table, without its
    input validation and sparse table (~80% of its time at the interval's hundreds of calls).
    tests/test_evaluation.py checks it equals scikit-learn's, bit for bit."""
    from sklearn.metrics.cluster._expected_mutual_info_fast import (  # scikit-learn is pinned
        expected_mutual_information,
    )

    n = len(a)
    n_b = int(b.max()) + 1
    joint = np.bincount(a * n_b + b, minlength=(int(a.max()) + 1) * n_b).reshape(-1, n_b)
    joint = joint[joint.sum(axis=1) > 0][:, joint.sum(axis=0) > 0]  # labels present only
    rows, cols = joint.shape
    if rows == cols == 1:
        return 1.0  # scikit-learn: two single-label partitions agree perfectly
    if rows == 1 or cols == 1:
        return 0.0
    pi, pj = joint.sum(axis=1), joint.sum(axis=0)
    nzx, nzy = np.nonzero(joint)
    nz_val = joint[nzx, nzy]
    total = joint.sum()
    cell = nz_val / total
    outer = pi.take(nzx).astype(np.int64, copy=False) * pj.take(nzy).astype(np.int64, copy=False)
    log_outer = -np.log(outer) + np.log(pi.sum()) + np.log(pj.sum())
    mi = cell * (np.log(nz_val) - np.log(total)) + cell * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    mi = float(np.clip(mi.sum(), 0.0, None))
    emi = expected_mutual_information(joint, n)
    normalizer = np.mean([_entropy(pi), _entropy(pj)])
    tiny = np.finfo("float64").eps
    denominator = min(normalizer - emi, -tiny) if normalizer < emi else max(normalizer - emi, tiny)
    numerator = min(mi - emi, -tiny) if mi < emi else max(mi - emi, tiny)
    return float(numerator / denominator)


def _entropy(counts: np.ndarray) -> float:
    """scikit-learn's entropy of a labelling, from its label counts (all above 0)."""
    if counts.size == 1:
        return 0.0
    pi = counts.astype(np.float64)
    total = np.sum(pi)
    return float(-np.sum((pi / total) * (np.log(pi) - np.log(total))))


def nmi_from_codes(a: np.ndarray, b: np.ndarray) -> float:
    """NMI with the arithmetic-mean normaliser (scikit-learn's default), from integer codes:
    a `bincount` contingency table, fast enough for hundreds of permutations."""
    n = len(a)
    n_b = int(b.max()) + 1
    joint = np.bincount(a * n_b + b, minlength=(int(a.max()) + 1) * n_b).astype(np.float64)
    joint = joint.reshape(-1, n_b) / n
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    ha = float(-(pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha == 0 and hb == 0:
        return 1.0  # scikit-learn: two single-label partitions agree perfectly
    return max(mi, 0.0) / ((ha + hb) / 2)


@dataclass(frozen=True)
class Agreement:
    """The clusters against one yardstick, with chance level and interval."""

    n: int  # rows with a label
    nmi: float
    ami: float
    ari: float
    nmi_chance: float | None  # mean NMI of the clusters against a permuted yardstick
    nmi_chance_p99: float | None
    ami_low: float | None  # half-sample interval over documents (cluster.confidence)
    ami_high: float | None

    def as_metrics(self, name: str) -> dict[str, float | int | None]:
        return {
            f"nmi_{name}": self.nmi,
            f"ami_{name}": self.ami,
            f"ari_{name}": self.ari,
            f"ami_{name}_low": self.ami_low,
            f"ami_{name}_high": self.ami_high,
            f"nmi_{name}_chance": self.nmi_chance,
            f"nmi_{name}_chance_p99": self.nmi_chance_p99,
        }


def agreement(
    reference: Sequence,
    labels: np.ndarray,
    *,
    n_permutations: int,
    n_bootstrap: int,
    confidence: float,
    sample: int | None,
    random_state: int,
) -> Agreement | None:
    """NMI, AMI and ARI of `labels` against `reference` (its labelled rows), NMI's permutation
    chance level and AMI's bootstrap interval; None below 2 labelled rows."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    mask = known(reference)
    if mask.sum() < 2:
        return None
    ref = codes(np.asarray(list(reference), dtype=object)[mask])
    lab = codes(np.asarray(labels)[mask])
    nmi = float(normalized_mutual_info_score(ref, lab))
    ami = ami_from_codes(ref, lab)
    ari = float(adjusted_rand_score(ref, lab))
    rows = seeded_rows(len(ref), sample, random_state)
    if rows is not None:
        ref, lab = ref[rows], lab[rows]
    rng = np.random.default_rng(random_state)
    chance = chance_p99 = None
    if n_permutations:
        permuted = [nmi_from_codes(rng.permutation(ref), lab) for _ in range(n_permutations)]
        chance, chance_p99 = float(np.mean(permuted)), float(np.quantile(permuted, 0.99))
    low = high = None
    if n_bootstrap:
        # Half-samples without replacement (delete-d jackknife, d = n/2): their spread matches
        # the full sample's sampling spread. Drawing n with replacement copies documents, and a
        # copy always agrees with itself: on the bundled sample that interval (0.156-0.240)
        # excluded its own estimate (hotel AMI 0.155). docs/finding.md.
        half = len(ref) // 2
        draws = (rng.permutation(len(ref))[:half] for _ in range(n_bootstrap))
        amis = [ami_from_codes(ref[d], lab[d]) for d in draws]
        tail = (1 - confidence) / 2
        low, high = float(np.quantile(amis, tail)), float(np.quantile(amis, 1 - tail))
    return Agreement(int(mask.sum()), nmi, ami, ari, chance, chance_p99, low, high)


def spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of the finite values; None where there are none."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return None, None
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), sd


def distinguishable(a: Agreement | None, b: Agreement | None) -> bool | None:
    """Whether the two AMI intervals are disjoint; None without intervals."""
    if a is None or b is None or a.ami_low is None or b.ami_low is None:
        return None
    return a.ami_low > b.ami_high or b.ami_low > a.ami_high


# --- retrieval ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retrieval:
    """Leave-one-out nearest-neighbour retrieval of a yardstick (e.g. the hotel)."""

    queries: int  # queries that have another row with their label
    top1: float
    top10: float
    top1_chance: float
    top10_chance: float

    def as_metrics(self, name: str) -> dict[str, float | int]:
        return {
            f"retrieval_{name}_top1": self.top1,
            f"retrieval_{name}_top10": self.top10,
            f"retrieval_{name}_top1_chance": self.top1_chance,
            f"retrieval_{name}_top10_chance": self.top10_chance,
        }


def retrieval(
    embedding: np.ndarray,
    reference: Sequence,
    *,
    queries: int | None,
    random_state: int,
    ks: tuple[int, int] = (1, 10),
) -> Retrieval | None:
    """Each query's rank of its nearest same-label row among all other rows, by cosine.

    Ties are broken by row order, so the result is exact and the same on every machine: the
    saved features lie on a 2^-17 grid, so their float64 dot products are exact sums whatever
    the BLAS kernel or thread count. Rows without a label take no part. None when no query has
    another row with its label."""
    mask = known(reference)
    x = np.asarray(embedding, dtype=np.float64)[mask]
    ref = codes(np.asarray(list(reference), dtype=object)[mask])
    n = len(ref)
    if n < 2:
        return None
    sizes = np.bincount(ref)
    askable = np.flatnonzero(sizes[ref] > 1)
    if len(askable) == 0:
        return None
    picked = seeded_rows(len(askable), queries, random_state)
    askable = askable if picked is None else askable[picked]
    norms = np.sqrt((x * x).sum(axis=1))
    norms[norms == 0] = 1.0  # a zero vector scores 0 against everything
    inverse = 1.0 / norms  # the query's own norm does not change its ranking
    members = np.argsort(ref, kind="stable")  # rows by label, then row order
    starts = np.searchsorted(ref[members], np.arange(len(sizes)))
    block = max(1, min(QUERY_BLOCK, SCORE_BUFFER // n))
    score_buffer = np.empty((block, n))
    flag_buffer = np.empty((block, n), dtype=bool)
    ranks = np.empty(len(askable), dtype=np.int64)
    for start in range(0, len(askable), block):
        q = askable[start : start + block]
        scores, flags = score_buffer[: len(q)], flag_buffer[: len(q)]
        np.matmul(x[q], x.T, out=scores)
        scores *= inverse
        scores[np.arange(len(q)), q] = -np.inf  # leave the query out
        # Each query's same-label rows, flattened: (query in block, row).
        counts = sizes[ref[q]]
        owner = np.repeat(np.arange(len(q)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = members[np.repeat(starts[ref[q]], counts) + offsets]
        hit = scores[owner, rows]
        best = np.full(len(q), -np.inf)
        np.maximum.at(best, owner, hit)
        # the first same-label row at the best score: the one the ranking reaches first
        first = np.full(len(q), n)
        at_best = hit == best[owner]
        np.minimum.at(first, owner[at_best], rows[at_best])
        # Rows ranked ahead: a higher score, or the same score earlier (none has the query's
        # label: `best` is their maximum and `first` the earliest at it). So: the rows at or
        # above `best`, less the ties from `first` on.
        b = best[:, None]
        at_least = np.count_nonzero(np.greater_equal(scores, b, out=flags), axis=1)
        tied = np.equal(scores, b, out=flags)
        later = [np.count_nonzero(tied[i, first[i] :]) for i in range(len(q))]
        ranks[start : start + len(q)] = at_least - np.asarray(later)
    positives = sizes[ref[askable]] - 1
    k1, k10 = ks
    return Retrieval(
        queries=len(askable),
        top1=float((ranks < k1).mean()),
        top10=float((ranks < k10).mean()),
        top1_chance=float(hit_chance(n - 1, positives, k1).mean()),
        top10_chance=float(hit_chance(n - 1, positives, k10).mean()),
    )


def hit_chance(candidates: int, positives: np.ndarray, k: int) -> np.ndarray:
    """Probability that `k` rows drawn at random from `candidates` include one of `positives`:
    1 - C(candidates - positives, k) / C(candidates, k), as a product (no huge binomials)."""
    positives = np.asarray(positives, dtype=np.float64)
    k = min(k, candidates)
    miss = np.ones_like(positives)
    for i in range(k):
        miss *= np.clip((candidates - positives - i) / (candidates - i), 0.0, 1.0)
    return 1.0 - miss


# --- seed reruns -------------------------------------------------------------------------------


def seed_reruns(
    embedding: np.ndarray,
    texts: Sequence[str] | None,
    k: int,
    cluster: ClusterConfig,
    features: FeaturesConfig | None,
    rows: np.ndarray | None,
) -> list[np.ndarray]:
    """Labels of `cluster.n_seeds` reruns at the chosen `k` with seeds `random_state + 1, ...`:
    TF-IDF + SVD refitted on `texts` (when `features` is given: the tfidf features) and k-means,
    on `rows` (a seeded sample; None: every row). The labels are in `rows` order."""
    from sklearn.cluster import KMeans

    from alien_hotels.clustering import parallel
    from alien_hotels.features import fit_features

    picked = np.arange(len(embedding)) if rows is None else rows

    def rerun(i: int) -> np.ndarray:
        seed = (cluster.random_state + i) % 2**32
        x = embedding[picked]
        if features is not None and texts is not None:
            chosen = [texts[j] for j in picked]
            x = fit_features(chosen, features.updated(random_state=seed, n_jobs=1)).embedding
        model = KMeans(
            n_clusters=min(k, len(np.unique(x, axis=0))),
            random_state=seed,
            n_init=cluster.n_init,
            max_iter=cluster.max_iter,
            tol=cluster.tol,
        )
        return model.fit(x).labels_

    return list(parallel(rerun, range(1, cluster.n_seeds + 1), cluster.n_jobs))


def seed_spread(
    runs: list[np.ndarray], reference: Sequence, rows: np.ndarray | None
) -> tuple[float | None, float | None]:
    """(mean, sd) of AMI between each rerun's labels and `reference` (restricted to `rows`)."""
    ref = np.asarray(list(reference), dtype=object)
    if rows is not None:
        ref = ref[rows]
    mask = known(ref)
    if mask.sum() < 2 or not runs:
        return None, None
    ref_codes = codes(ref[mask])
    return spread([ami_from_codes(ref_codes, np.asarray(run)[mask]) for run in runs])


# --- the cluster stage's measurements ----------------------------------------------------------


def measure(
    embedding: np.ndarray,
    labels: np.ndarray,
    scored: np.ndarray,
    k: int,
    yardsticks: dict[str, list],
    chosen: str,
    cluster: ClusterConfig,
    seed_texts: Sequence[str] | None = None,
    features: FeaturesConfig | None = None,
) -> dict:
    """The cluster metrics' finding: NMI, AMI and ARI per yardstick at the top level
    (`ami_room_type`: the `chosen` room-type source's); per yardstick its chance level, interval
    and seed spread (`uncertainty`); hotel and chain retrieval (`retrieval`). `scored`: the rows
    scored (all, or the duplicates' representatives); `seed_texts` and `features`: refit TF-IDF
    + SVD per seed (None: embeddings, k-means only)."""
    # Retrieval is BLAS (exact, any thread count) and the intervals mostly Python: side by side.
    retrievals = beside(
        _retrievals, embedding[scored], yardsticks, scored, cluster, n_jobs=cluster.n_jobs
    )
    rows = np.flatnonzero(scored)
    sample = seeded_rows(len(rows), cluster.uncertainty_sample, cluster.random_state)
    sample_rows = rows if sample is None else rows[sample]
    runs = seed_reruns(embedding, seed_texts, k, cluster, features, sample_rows)
    out: dict = {}
    uncertainty: dict = {}
    for name, values in yardsticks.items():
        found = agreement(
            pd.Series(values)[scored].tolist(),
            labels[scored],
            n_permutations=cluster.n_permutations,
            n_bootstrap=cluster.n_bootstrap,
            confidence=cluster.confidence,
            sample=cluster.uncertainty_sample,
            random_state=cluster.random_state,
        )
        if found is None:
            continue
        out |= {f"nmi_{name}": found.nmi, f"ami_{name}": found.ami, f"ari_{name}": found.ari}
        mean, sd = seed_spread(runs, values, sample_rows)
        uncertainty[name] = {
            "n": found.n,
            "ami_low": found.ami_low,
            "ami_high": found.ami_high,
            "nmi_chance": found.nmi_chance,
            "nmi_chance_p99": found.nmi_chance_p99,
            "ami_seed_mean": mean,
            "ami_seed_sd": sd,
        }
    out["ami_room_type"] = out.get(f"ami_room_type_{chosen}")
    return {
        **out,
        "uncertainty_rows": len(sample_rows),
        "n_permutations": cluster.n_permutations,
        "n_bootstrap": cluster.n_bootstrap,
        "confidence": cluster.confidence,
        "n_seeds": len(runs),
        "uncertainty": uncertainty,
        "retrieval": retrievals.result(),
    }


def headline(
    finding: dict, yardsticks: dict[str, list], scored: np.ndarray, chosen: str
) -> dict[str, float | int | str | None]:
    """The agreement keys the cluster metrics lead with, from `measure`'s `finding`: ARI and NMI
    with hotels and with the `chosen` room-type source (`ari_room_type`, `nmi_room_type`), then
    `room_type_source` and each room-type source's ARI and NMI side by side, with
    `n_room_type_<source>` where a source labelled fewer of the `scored` rows. None where a
    yardstick labelled fewer than 2 rows."""
    out = {key: finding.get(key) for key in ("ari_hotel", "nmi_hotel")}
    out["ari_room_type"] = finding.get(f"ari_room_type_{chosen}")
    out["nmi_room_type"] = finding.get(f"nmi_room_type_{chosen}")
    out["room_type_source"] = chosen
    for name, values in yardsticks.items():
        if name.startswith("room_type_"):
            out[f"ari_{name}"] = finding.get(f"ari_{name}")
            out[f"nmi_{name}"] = finding.get(f"nmi_{name}")
            labelled = int(known(pd.Series(values)[scored].tolist()).sum())
            if labelled < scored.sum():
                out[f"n_{name}"] = labelled
    return out


def _retrievals(
    embedding: np.ndarray, yardsticks: dict[str, list], scored: np.ndarray, cluster: ClusterConfig
) -> dict[str, dict]:
    """`retrieval` of the hotel and of the chain, for `measure`."""
    found_retrieval: dict = {}
    for name in ("hotel", "chain") if cluster.retrieval_queries != 0 else ():
        found = retrieval(
            embedding,
            pd.Series(yardsticks[name])[scored].tolist(),
            queries=cluster.retrieval_queries,
            random_state=cluster.random_state,
        )
        if found is not None:
            found_retrieval[name] = {
                "queries": found.queries,
                "top1": found.top1,
                "top10": found.top10,
                "top1_chance": found.top1_chance,
                "top10_chance": found.top10_chance,
            }
    return found_retrieval


def duplicates_view(
    yardsticks: dict[str, list], labels: np.ndarray, kept: np.ndarray, dropped: bool, chosen: str
) -> dict:
    """The scores of the other view: with the copies when they were dropped (every row), or
    without them (the representatives, `kept`)."""
    rows = np.ones(len(labels), dtype=bool) if dropped else kept
    ami = {}
    for name in ("hotel", f"room_type_{chosen}"):
        found = agreement(
            pd.Series(yardsticks[name])[rows].tolist(),
            labels[rows],
            n_permutations=0,
            n_bootstrap=0,
            confidence=0.95,
            sample=None,
            random_state=0,
        )
        ami[f"ami_{name}"] = None if found is None else found.ami
    key = "with_duplicates" if dropped else "without_duplicates"
    return {key: {"n_docs": int(rows.sum()), **ami}}
