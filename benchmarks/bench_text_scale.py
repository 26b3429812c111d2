"""The text half at Hotels-50K size: our pipeline at scale, and against the study's recipe.

(a) scale: synthetic captions (`alien_hotels.datagen.captions`) through preprocess -> room_types ->
    features -> cluster -> map, each stage in its own process as `dvc repro` runs them; prints
    wall time, CPU time and peak RSS per stage. Goal: 1.1M captions in <= 15 min, <= 8 GB peak RSS.
(b) compare: at a smaller size, the study's recipe (`benchmarks.study_recipe`) and our pipeline
    on the same captions; prints both times, the speedup and the inertia gap at our chosen k.
    Goal: >= 10x faster, inertia within 2% of the recipe's at the same k. Both sides use the
    same text processing (WordNet lemmas if NLTK can find WordNet data, else none) so the
    inertia gap measures the clustering alone.

    python -m benchmarks.bench_text_scale                       # both, full sizes (long)
    python -m benchmarks.bench_text_scale --scale-n 20000 --compare-n 3000   # a smoke run
    python -m benchmarks.bench_text_scale --skip-compare        # (a) only

Results also go to `<workdir>/results_<parts>.json`. Timings on a shared machine are noisy:
compare the figures of one run, and read CPU time next to wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "room_types", "features", "cluster", "map")
GB = 1024.0


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env.update(extra)
    return env


def prepare(
    workdir: Path, n: int, seed: int, overrides: list[str], recipe_input: bool = False
) -> dict:
    """A project folder with the `sample` and `caption` outputs for `n` synthetic captions."""
    import yaml

    from alien_hotels.common import write_csv
    from alien_hotels.config import compose_params, validate_params
    from alien_hotels.datagen.captions import (
        BUNDLED_SAMPLE,
        CaptionVocabulary,
        pipeline_inputs,
        synthetic_captions,
    )

    start = time.perf_counter()
    vocabulary = CaptionVocabulary.from_csv(ROOT / BUNDLED_SAMPLE)
    table = synthetic_captions(n, seed=seed, vocabulary=vocabulary)
    generated = time.perf_counter() - start
    sample, captions = pipeline_inputs(table)
    workdir.mkdir(parents=True, exist_ok=True)
    write_csv(sample, workdir / "data/interim/sample.csv")
    write_csv(captions, workdir / "data/processed/captions.csv")
    if recipe_input:
        write_csv(table, workdir / "input.csv")  # the sample-format table, for the recipe
    raw = compose_params(overrides, ROOT / "conf")
    validate_params(raw, source="benchmark params")
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return {"n": n, "seed": seed, "generate_s": generated, "overrides": overrides}


def run_stage(workdir: Path, stage: str, env: dict[str, str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._stage", stage],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH "))
    result = json.loads(line[len("BENCH ") :])
    result["process_wall_s"] = wall
    return result


def run_pipeline(workdir: Path, env: dict[str, str]) -> dict:
    stages = {}
    for stage in STAGES:
        stages[stage] = run_stage(workdir, stage, env)
        s = stages[stage]
        print(
            f"  {stage:<10} wall {s['process_wall_s']:8.1f} s  cpu {s['cpu_s']:8.1f} s  "
            f"peak RSS {s['max_rss_mb'] / GB:6.2f} GB",
            flush=True,
        )
    metrics = json.loads((workdir / "metrics/clustering.json").read_text(encoding="utf-8"))
    total = sum(s["process_wall_s"] for s in stages.values())
    return {
        "stages": stages,
        "total_wall_s": total,
        "total_cpu_s": sum(s["cpu_s"] for s in stages.values()),
        "peak_rss_mb": max(s["max_rss_mb"] for s in stages.values()),
        "k": metrics["k"],
        "inertia_at_k": metrics["inertia_at_k"],
        "nmi_room_type": metrics["nmi_room_type"],
        "nmi_hotel": metrics["nmi_hotel"],
        "silhouette": metrics["silhouette"],
    }


def run_recipe(workdir: Path, lemmatizer: str, env: dict[str, str], k_max: int = 29) -> dict:
    out = workdir / "recipe.json"
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "benchmarks.study_recipe", "input.csv", str(out)]
    cmd += ["--lemmatizer", lemmatizer, "--nltk-data", env["NLTK_DATA"], "--k-max", str(k_max)]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"recipe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text(encoding="utf-8"))
    result["process_wall_s"] = wall
    return result


def text_overrides(nltk_data: Path) -> tuple[str, list[str]]:
    """The text settings both sides of the comparison use: WordNet if available, else none."""
    from benchmarks.study_recipe import ensure_wordnet

    if ensure_wordnet(nltk_data):
        return "wordnet", ["text=study_wordnet"]
    return "none", ["text.lemmatizer=none", "text.lowercase=false"]


def scale_benchmark(args: argparse.Namespace) -> dict:
    workdir = args.workdir / f"scale_{args.scale_n}"
    print(f"(a) our pipeline on {args.scale_n} synthetic captions ({workdir})", flush=True)
    info = prepare(workdir, args.scale_n, args.seed, args.set)
    print(f"  generated the captions in {info['generate_s']:.1f} s (not counted)", flush=True)
    result = run_pipeline(workdir, _env())
    print(
        f"  total      wall {result['total_wall_s']:8.1f} s  cpu {result['total_cpu_s']:8.1f} s  "
        f"peak RSS {result['peak_rss_mb'] / GB:6.2f} GB  (goal: <= 900 s, <= 8 GB)\n"
        f"  k={result['k']}  nmi room type {result['nmi_room_type']:.3f}  "
        f"nmi hotel {result['nmi_hotel']:.3f}",
        flush=True,
    )
    return {**info, **result}


def compare_benchmark(args: argparse.Namespace) -> dict:
    workdir = args.workdir / f"compare_{args.compare_n}"
    nltk_data = (args.workdir / "nltk_data").resolve()
    lemmatizer, overrides = text_overrides(nltk_data)
    env = _env(NLTK_DATA=str(nltk_data))
    print(
        f"(b) study recipe vs ours on {args.compare_n} synthetic captions "
        f"(lemmatizer on both sides: {lemmatizer})",
        flush=True,
    )
    info = prepare(workdir, args.compare_n, args.seed, overrides + args.set, recipe_input=True)
    print("  ours:", flush=True)
    ours = run_pipeline(workdir, env)
    if args.recipe_json:
        print(f"  study recipe: reusing {args.recipe_json}", flush=True)
        recipe = json.loads(args.recipe_json.read_text(encoding="utf-8"))
        if recipe["n_docs"] != args.compare_n or recipe["lemmatizer"] != lemmatizer:
            raise SystemExit(f"{args.recipe_json} is for other captions or another lemmatizer")
        recipe.setdefault("process_wall_s", recipe["total_s"])
    else:
        print("  study recipe:", flush=True)
        recipe = run_recipe(workdir, lemmatizer, env, args.k_max)
    for step, seconds in recipe["times"].items():
        print(f"  {step:<13} {seconds:8.1f} s", flush=True)
    k = ours["k"]
    recipe_inertia = recipe["inertia"][str(k)]
    gap = (ours["inertia_at_k"] - recipe_inertia) / recipe_inertia
    summary = {
        "lemmatizer": lemmatizer,
        "ours_wall_s": ours["total_wall_s"],
        "ours_cpu_s": ours["total_cpu_s"],
        "recipe_wall_s": recipe["process_wall_s"],
        "speedup_wall": recipe["process_wall_s"] / ours["total_wall_s"],
        "recipe_cpu_s": recipe.get("cpu_s"),
        "speedup_cpu": recipe["cpu_s"] / ours["total_cpu_s"] if "cpu_s" in recipe else None,
        "k": k,
        "ours_inertia_at_k": ours["inertia_at_k"],
        "recipe_inertia_at_k": recipe_inertia,
        "inertia_gap": gap,
    }
    print(
        f"  recipe {summary['recipe_wall_s']:.1f} s (peak RSS {recipe['max_rss_mb'] / GB:.2f} GB)"
        f" vs ours {summary['ours_wall_s']:.1f} s: {summary['speedup_wall']:.1f}x faster "
        f"(goal >= 10x)\n"
        f"  CPU time: recipe {summary['recipe_cpu_s'] or float('nan'):.1f} s vs ours "
        f"{summary['ours_cpu_s']:.1f} s: {summary['speedup_cpu'] or float('nan'):.1f}x\n"
        f"  inertia at k={k}: ours {summary['ours_inertia_at_k']:.1f}, recipe "
        f"{recipe_inertia:.1f}: gap {gap:+.2%} (goal within 2%)",
        flush=True,
    )
    return {**info, "ours": ours, "recipe": recipe, "summary": summary}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale-n", type=int, default=1_100_000, help="captions for (a)")
    parser.add_argument("--compare-n", type=int, default=100_000, help="captions for (b)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic captions' seed")
    parser.add_argument("--skip-scale", action="store_true", help="skip (a)")
    parser.add_argument("--skip-compare", action="store_true", help="skip (b)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override for our pipeline, e.g. --set cluster.sweep_sample=50000",
    )
    parser.add_argument(
        "--recipe-json",
        type=Path,
        default=None,
        help="reuse the recipe's results.json of an earlier run on the same captions "
        "(the recipe takes long); the figures are then from two runs",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "benchmarks/results/text_scale",
        help="where the synthetic projects and results.json go",
    )
    parser.add_argument(
        "--k-max", type=int, default=29, help="sweep 1..K on both sides (the study: 29)"
    )
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    if args.k_max != 29:
        args.set = [f"cluster.k_max={args.k_max}", *args.set]
    results: dict = {"cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    if not args.skip_scale:
        results["scale"] = scale_benchmark(args)
    if not args.skip_compare:
        results["compare"] = compare_benchmark(args)
    results["load_avg_end"] = os.getloadavg()
    args.workdir.mkdir(parents=True, exist_ok=True)
    parts = [f"scale_{args.scale_n}"] * (not args.skip_scale)
    parts += [f"compare_{args.compare_n}"] * (not args.skip_compare)
    name = "results_" + "_".join(parts or ["none"]) + ".json"
    (args.workdir / name).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"results: {args.workdir / name}", flush=True)
    return results


if __name__ == "__main__":
    main()
