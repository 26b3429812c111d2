"""The text half at Hotels-50K size: our pipeline at scale, and against the study's recipe.

(a) scale: synthetic captions (`alien_hotels.datagen.captions`) through preprocess -> room_types ->
    features -> cluster -> map, each stage in its own process as `dvc repro` runs them; prints
    wall time, CPU time and peak RSS per stage. Goal: 1.1M captions in <= 15 min, <= 8 GB peak RSS.
(b) compare: at a smaller size, the study's recipe (`benchmarks.study_recipe`) and our pipeline
    on the same captions, twice: unpinned (each side uses the cores it is given) and pinned to
    one core (`taskset -c 0` on every process of both sides), so the ratio is known per core
    count. Prints both times, the ratios and the inertia gap at our chosen k. Goals (issue 28):
    >= 15x unpinned on 2 cores, >= 20x pinned, inertia within 1% at the same k. Both sides use
    the same text processing (WordNet lemmas if NLTK can find WordNet data, else none) so the
    inertia gap measures the clustering alone.

Honest timings: the load average is printed before and after the run and at the start of each
side; before each side the benchmark waits (up to `--settle` seconds) for the 1-minute load
average to fall to `--busy-load` (0.3), since the side before it leaves its own load behind.
A side that starts above it is labelled LOADED and a warning closes the output: report quiet
figures as the headline, and loaded ones only as such.

    python -m benchmarks.bench_text_scale                       # both, full sizes (long)
    python -m benchmarks.bench_text_scale --quick               # (b) on 5,000 captions, k <= 12
    python -m benchmarks.bench_text_scale --scale-n 20000 --compare-n 3000   # a smoke run
    python -m benchmarks.bench_text_scale --skip-compare        # (a) only
    python -m benchmarks.bench_text_scale --skip-scale --modes pinned   # (b) pinned only

Results also go to `<workdir>/results_<parts>.json`. Timings on a shared machine are noisy:
compare the figures of one run, and read CPU time next to wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "room_types", "features", "cluster", "map")
GB = 1024.0
PIN = ["taskset", "-c", "0"]  # both sides, every process
MODES = ("unpinned", "pinned")
CORES_PROBE = "from alien_hotels.common import available_cores; print(available_cores())"


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


def run_stage(workdir: Path, stage: str, env: dict[str, str], prefix: list[str] = ()) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "benchmarks._stage", stage],
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


def run_pipeline(workdir: Path, env: dict[str, str], prefix: list[str] = ()) -> dict:
    stages = {}
    for stage in STAGES:
        stages[stage] = run_stage(workdir, stage, env, prefix)
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


def run_recipe(
    workdir: Path, lemmatizer: str, env: dict[str, str], k_max: int = 29, prefix: list[str] = ()
) -> dict:
    out = workdir / "recipe.json"
    start = time.perf_counter()
    cmd = [*prefix, sys.executable, "-m", "benchmarks.study_recipe", "input.csv", str(out)]
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


def load_average() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())


def settle(busy_load: float, timeout_s: float) -> tuple[float, float, float]:
    """Wait (at most `timeout_s`) for the 1-minute load average to fall to `busy_load`; the
    load average then. The side run before leaves its own load in the average for a minute."""
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] > busy_load and time.monotonic() < deadline:
        time.sleep(5)
    return load_average()


def allowed_cores(env: dict[str, str], prefix: list[str]) -> int:
    """The cores a process started with `prefix` may use (affinity and cgroup quota)."""
    cmd = [*prefix, sys.executable, "-c", CORES_PROBE]
    return int(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)


def run_side(name: str, run, args: argparse.Namespace, env: dict, prefix: list[str]) -> dict:
    """One side of one mode: settle, note the load and the cores, run, note the load after."""
    load_start = settle(args.busy_load, args.settle)
    cores = allowed_cores(env, prefix)
    print(f"  {name} (cores allowed: {cores}, load average {_load_text(load_start)}):", flush=True)
    result = run()
    return {
        **result,
        "cores": cores,
        "load_start": load_start,
        "load_end": load_average(),
        "loaded": load_start[0] > args.busy_load,
    }


def _load_text(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


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
    modes = {}
    for mode in args.modes:
        if mode == "pinned" and shutil.which(PIN[0]) is None:
            print("  pinned: skipped, no `taskset` on this machine (util-linux)", flush=True)
            continue
        prefix = PIN if mode == "pinned" else []
        print(f" {mode}{' (' + ' '.join(PIN) + ', both sides)' if prefix else ''}:", flush=True)
        ours = run_side("ours", lambda p=prefix: run_pipeline(workdir, env, p), args, env, prefix)
        if args.recipe_json and mode == "unpinned":
            print(f"  study recipe: reusing {args.recipe_json} (another run)", flush=True)
            recipe = json.loads(args.recipe_json.read_text(encoding="utf-8"))
            if recipe["n_docs"] != args.compare_n or recipe["lemmatizer"] != lemmatizer:
                raise SystemExit(f"{args.recipe_json} is for other captions or another lemmatizer")
            recipe.setdefault("process_wall_s", recipe["total_s"])
            recipe.update(cores=recipe.get("cores"), load_start=None, load_end=None, loaded=None)
        else:
            recipe = run_side(
                "study recipe",
                lambda p=prefix: run_recipe(workdir, lemmatizer, env, args.k_max, p),
                args,
                env,
                prefix,
            )
        for step, seconds in recipe["times"].items():
            print(f"  {step:<13} {seconds:8.1f} s", flush=True)
        modes[mode] = summarise(ours, recipe, lemmatizer)
    print_table(modes, args)
    return {**info, "modes": modes}


def summarise(ours: dict, recipe: dict, lemmatizer: str) -> dict:
    k = ours["k"]
    recipe_inertia = recipe["inertia"][str(k)]
    gap = (ours["inertia_at_k"] - recipe_inertia) / recipe_inertia
    return {
        "ours": ours,
        "recipe": recipe,
        "summary": {
            "lemmatizer": lemmatizer,
            "ours_cores": ours["cores"],
            "recipe_cores": recipe.get("cores"),
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
            "loaded": bool(ours["loaded"] or recipe.get("loaded")),
        },
    }


def print_table(modes: dict, args: argparse.Namespace) -> None:
    """One line per mode: cores, load at the start of each side, wall and CPU times, ratios."""
    if not modes:
        return
    print(
        f"\n  {'mode':<9} {'cores ours/recipe':>17} {'load ours/recipe':>17} "
        f"{'ours wall':>10} {'recipe wall':>12} {'ratio':>7} {'cpu ratio':>10}  inertia gap",
        flush=True,
    )
    for mode, result in modes.items():
        s = result["summary"]
        loads = [result["ours"]["load_start"], result["recipe"]["load_start"]]
        load_cell = "/".join("-" if x is None else f"{x[0]:.2f}" for x in loads)
        cores_cell = f"{s['ours_cores']}/{s['recipe_cores'] or '?'}"
        cpu_ratio = f"{s['speedup_cpu']:.1f}x" if s["speedup_cpu"] else "-"
        label = "  LOADED" if s["loaded"] else ""
        print(
            f"  {mode:<9} {cores_cell:>17} {load_cell:>17} {s['ours_wall_s']:9.1f}s "
            f"{s['recipe_wall_s']:11.1f}s {s['speedup_wall']:6.1f}x {cpu_ratio:>10}  "
            f"{s['inertia_gap']:+.2%} at k={s['k']}{label}",
            flush=True,
        )
    goals = {"unpinned": 15, "pinned": 20}
    print(
        "  goals (issue 28, quiet 2-core machine, 100k captions): "
        + ", ".join(f"{mode} >= {goals[mode]}x" for mode in modes)
        + ", inertia within 1% at the same k",
        flush=True,
    )


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
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="which side-by-sides of (b): unpinned, pinned (taskset -c 0) or both (default)",
    )
    parser.add_argument(
        "--busy-load",
        type=float,
        default=0.3,
        help="1-minute load average above which a side counts as run on a busy machine",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=120,
        help="seconds to wait at most, before each side, for the load to fall to --busy-load",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check that (b) runs: --skip-scale --compare-n 5000 --k-max 12 --settle 0",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.skip_scale, args.compare_n, args.k_max, args.settle = True, 5000, 12, 0
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    args.workdir = args.workdir.resolve()
    if args.k_max != 29:
        args.set = [f"cluster.k_max={args.k_max}", *args.set]
    load_start = load_average()
    print(f"load average before: {_load_text(load_start)} (1, 5, 15 min)", flush=True)
    results: dict = {
        "cpu_count": os.cpu_count(),
        "cores_allowed": allowed_cores(_env(), []),
        "load_avg_start": load_start,
    }
    if not args.skip_scale:
        results["scale"] = scale_benchmark(args)
    if not args.skip_compare:
        results["compare"] = compare_benchmark(args)
    results["load_avg_end"] = load_average()
    print(f"load average after: {_load_text(results['load_avg_end'])}", flush=True)
    busy = [
        f"{mode} ({', '.join(side for side in ('ours', 'recipe') if r[side].get('loaded'))})"
        for mode, r in results.get("compare", {}).get("modes", {}).items()
        if r["summary"]["loaded"]
    ]
    if load_start[0] > args.busy_load or busy:
        print(
            f"WARNING: the machine was busy (1-minute load average above {args.busy_load}: "
            f"{_load_text(load_start)} at the start"
            + (f"; sides started loaded: {'; '.join(busy)}" if busy else "")
            + "). These are loaded figures: label them so, and rerun on a quiet machine for the "
            "headline.",
            flush=True,
        )
    args.workdir.mkdir(parents=True, exist_ok=True)
    parts = [f"scale_{args.scale_n}"] * (not args.skip_scale)
    parts += [f"compare_{args.compare_n}"] * (not args.skip_compare)
    name = "results_" + "_".join(parts or ["none"]) + ".json"
    (args.workdir / name).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"results: {args.workdir / name}", flush=True)
    return results


if __name__ == "__main__":
    main()
