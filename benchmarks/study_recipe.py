"""The study's text-half recipe, verbatim in spirit, as the speed and quality baseline.

Facts from the study's notebook (see shared/README.md): keep `downloaded == True`; remove commas,
split on single spaces, keep 14 words, `WordNetLemmatizer().lemmatize(word)` per word;
`TfidfVectorizer()`; `TruncatedSVD(n_components=50)`; `KMeans(n_clusters=k, random_state=42,
n_init=10)` for k = 1..29; `TSNE(n_components=2, perplexity=30, n_iter=300)`.

One deliberate deviation: the SVD gets `random_state=42` (the study left it unseeded), the same
seed as our `features.random_state`, so both sides cluster the same features and the inertia gap
measures the clustering alone.

Run as `python -m benchmarks.study_recipe INPUT.csv OUT.json [--lemmatizer wordnet|none]`; the
process reports its own peak RSS.

WordNet data: NLTK's downloader needs GitHub, which may be unreachable. Debian's `wordnet-base`
and `wordnet-sense-index` packages ship the same WordNet 3.0 database; `ensure_wordnet` copies
it into an NLTK data folder (adding the `lexnames` file NLTK expects) when NLTK has none.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

SYSTEM_WORDNET = Path("/usr/share/wordnet")
# WordNet 3.0's lexicographer files (lexnames(5WN)); NLTK's corpus has this file, Debian's not.
LEXNAMES = (  # noqa: SIM905
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def _wordnet_works() -> bool:
    from nltk.stem import WordNetLemmatizer

    try:
        return WordNetLemmatizer().lemmatize("rooms") == "room"
    except LookupError:
        return False


def ensure_wordnet(cache_dir: Path) -> bool:
    """Make NLTK's WordNet importable; True if it works (from NLTK data or Debian's files)."""
    import nltk

    if str(cache_dir) not in nltk.data.path and (cache_dir / "corpora/wordnet").is_dir():
        nltk.data.path.insert(0, str(cache_dir))
    if _wordnet_works():
        return True
    needed = ("index.noun", "data.noun", "noun.exc", "index.sense")
    if not all((SYSTEM_WORDNET / name).is_file() for name in needed):
        return False
    target = cache_dir / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for path in SYSTEM_WORDNET.iterdir():
        if path.is_file():  # NLTK refuses symlinks that leave its data folder: copy
            shutil.copy2(path, target / path.name)
    lines = [
        f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)
    ]
    (target / "lexnames").write_text("".join(lines), encoding="utf-8")
    if str(cache_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(cache_dir))
    return _wordnet_works()


def run_recipe(csv: Path, lemmatizer: str = "wordnet", k_max: int = 29, tsne: bool = True) -> dict:
    """The study's text half on `csv`; wall time per step and inertia per k."""
    import numpy as np
    import pandas as pd
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.manifold import TSNE

    times: dict[str, float] = {}
    start = time.perf_counter()
    df = pd.read_csv(csv)
    df = df[df["downloaded"] == True]  # noqa: E712 (the study's filter)
    times["read"] = time.perf_counter() - start

    start = time.perf_counter()
    if lemmatizer == "wordnet":
        from nltk.stem import WordNetLemmatizer

        lemmatize = WordNetLemmatizer().lemmatize
    else:
        lemmatize = None
    texts = []
    for description in df["description"]:
        words = description.replace(",", "").split(" ")[:14]
        if lemmatize is not None:
            words = [lemmatize(word) for word in words]
        texts.append(" ".join(words))
    times["lemmatize"] = time.perf_counter() - start

    start = time.perf_counter()
    tfidf = TfidfVectorizer().fit_transform(texts)
    embedding = TruncatedSVD(n_components=50, random_state=42).fit_transform(tfidf)
    times["tfidf_svd"] = time.perf_counter() - start

    start = time.perf_counter()
    inertia = {}
    for k in range(1, k_max + 1):
        inertia[k] = float(KMeans(n_clusters=k, random_state=42, n_init=10).fit(embedding).inertia_)
    times["kmeans_sweep"] = time.perf_counter() - start

    if tsne:
        start = time.perf_counter()
        coords = TSNE(n_components=2, perplexity=30, max_iter=300, random_state=42).fit_transform(
            embedding
        )
        times["tsne"] = time.perf_counter() - start
        assert np.isfinite(coords).all()
    return {
        "n_docs": len(texts),
        "lemmatizer": lemmatizer,
        "times": times,
        "total_s": sum(times.values()),
        "inertia": inertia,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="sample-format CSV with a description column")
    parser.add_argument("output", type=Path, help="JSON file for the results")
    parser.add_argument("--lemmatizer", choices=["wordnet", "none"], default="wordnet")
    parser.add_argument("--k-max", type=int, default=29)
    parser.add_argument("--no-tsne", action="store_true")
    parser.add_argument("--nltk-data", type=Path, default=Path("benchmarks/results/nltk_data"))
    args = parser.parse_args(argv)
    if args.lemmatizer == "wordnet" and not ensure_wordnet(args.nltk_data.resolve()):
        sys.exit("WordNet data unavailable: use --lemmatizer none")
    result = run_recipe(args.input, args.lemmatizer, args.k_max, tsne=not args.no_tsne)
    from benchmarks._stage import peak_rss_mb

    result["max_rss_mb"] = peak_rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    # what this process was given (taskset), and the OpenMP/BLAS threads it ran with
    result["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    from threadpoolctl import threadpool_info

    result["threads"] = {
        f"{pool['user_api']} {pool['internal_api']}": pool["num_threads"]
        for pool in threadpool_info()
    }
    args.output.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
