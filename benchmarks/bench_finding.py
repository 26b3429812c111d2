"""What measuring the finding costs: chance levels, intervals, seed reruns and retrieval
(`evaluation.py`, run by the cluster stage) next to the cluster stage's own k-means, at 10k and
100k synthetic captions (`alien_hotels.datagen.captions`), default params, one process.

    python -m benchmarks.bench_finding                 # 10k and 100k
    python -m benchmarks.bench_finding --sizes 5000    # a smoke run

Prints, per size, seconds for each part and the finding's share of the cluster stage's work.
Timings on a shared machine are noisy: read the load average printed with them.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def run(n: int) -> dict[str, float]:
    from alien_hotels import clustering, evaluation
    from alien_hotels.common import seeded_rows
    from alien_hotels.config import compose_params, validate_params
    from alien_hotels.datagen.captions import synthetic_captions
    from alien_hotels.features import fit_features
    from alien_hotels.roomtypes import caption_labels

    params = validate_params(compose_params())
    cfg = params.cluster
    table = synthetic_captions(n, seed=0)
    texts = table["description"].str.lower().tolist()
    room_types = caption_labels(table["description"], params.room_types)
    times: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = time.perf_counter() - start
        return out

    embedding = timed("features (tf-idf + svd)", fit_features, texts, params.features).embedding
    sweep = timed("k-means sweep k=1..29", clustering.sweep_kmeans, embedding, cfg, progress=False)
    final = timed("final k-means k=9", clustering.final_clustering, embedding, sweep, 9, cfg)
    labels = final.labels
    yardsticks = {
        "hotel": table["hotel_id"].tolist(),
        "chain": table["chain_id"].tolist(),
        "room_type": room_types,
    }
    settings = dict(
        n_permutations=cfg.n_permutations,
        n_bootstrap=cfg.n_bootstrap,
        confidence=cfg.confidence,
        sample=cfg.uncertainty_sample,
        random_state=cfg.random_state,
    )
    start = time.perf_counter()
    for values in yardsticks.values():
        evaluation.agreement(values, labels, **settings)
    times["finding: chance + intervals (3 yardsticks)"] = time.perf_counter() - start
    rows = seeded_rows(n, cfg.uncertainty_sample, cfg.random_state)
    runs = timed(
        f"finding: {cfg.n_seeds} seed reruns (svd + k-means)",
        evaluation.seed_reruns,
        embedding,
        texts,
        9,
        cfg,
        params.features,
        rows,
    )
    start = time.perf_counter()
    for values in yardsticks.values():
        evaluation.seed_spread(runs, values, rows)
    for name in ("hotel", "chain"):
        evaluation.retrieval(
            embedding, yardsticks[name], queries=cfg.retrieval_queries, random_state=0
        )
    times[f"finding: retrieval ({cfg.retrieval_queries} queries x2) + spreads"] = (
        time.perf_counter() - start
    )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}, cores: {len(os.sched_getaffinity(0))}")
    for n in args.sizes:
        times = run(n)
        finding = sum(v for k, v in times.items() if k.startswith("finding"))
        stage = sum(v for k, v in times.items() if k.startswith(("k-means", "final")))
        print(f"\n{n:,} captions")
        for name, seconds in times.items():
            print(f"  {name:<48} {seconds:7.2f} s")
        print(
            f"  the finding: {finding:.1f} s, {finding / (finding + stage):.0%} of the cluster "
            f"stage's k-means + finding ({np.round(stage, 1)} s of k-means)"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
