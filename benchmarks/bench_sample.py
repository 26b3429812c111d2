"""Time the `sample` stage on full-size synthetic Hotels-50K metadata.

    python -m benchmarks.bench_sample [--meta DIR] [--rows 1124215] [--repeat 3]

Generates the metadata (1.1M training rows, 50,000 hotels, 92 chains) unless `--meta` names a
dataset root that has it, then runs the stage in fresh child processes and prints wall time and
peak RSS for each, next to a baseline measured the same way: a bare `pandas.read_csv` of
`train_set.csv` (the least any sampler has to do). Goal on a 2-core machine: <= 30 s, <= 2 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE = """
def peak_rss():
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak over exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import json, sys, time
from pathlib import Path
from alien_hotels.config import validate_params, compose_params
from alien_hotels.stages.paths import StagePaths
from alien_hotels.stages.sample import run as run_sample
meta, out, conf = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
params = validate_params(compose_params(["data=hotels50k", f"data.path={meta}"], conf))
t = time.perf_counter()
stats = run_sample(params, StagePaths(sample=out / "sample.csv", sample_metrics=out / "m.json"))
wall = time.perf_counter() - t
peak = peak_rss()
print(json.dumps({"wall_s": wall, "peak_bytes": peak, "rows": stats.rows_kept}))
"""

BASELINE = """
def peak_rss():
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak over exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import json, sys, time
import pandas as pd
t = time.perf_counter()
df = pd.read_csv(sys.argv[1] + "/train_set.csv")
wall = time.perf_counter() - t
peak = peak_rss()
print(json.dumps({"wall_s": wall, "peak_bytes": peak, "rows": len(df)}))
"""


def _child(code: str, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", type=Path, help="dataset root holding dataset/*.csv")
    parser.add_argument("--rows", type=int, default=1_124_215)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        meta_root = args.meta
        if meta_root is None:
            from alien_hotels.datagen.hotels50k import generate

            t = time.perf_counter()
            meta_root = Path(tmp) / "hotels50k"
            generate(meta_root, rows=args.rows)
            print(f"generated {args.rows:,} rows in {time.perf_counter() - t:.1f} s")
        meta = str(meta_root / "dataset")
        size = (meta_root / "dataset" / "train_set.csv").stat().st_size
        print(f"train_set.csv: {size / 1e6:.0f} MB")
        for i in range(args.repeat):
            base = _child(BASELINE, meta)
            stage = _child(STAGE, meta, tmp, str(root / "conf"))
            print(
                f"run {i + 1}: sample stage {stage['wall_s']:.2f} s, "
                f"peak RSS {stage['peak_bytes'] / 2**20:.0f} MiB, {stage['rows']} rows sampled | "
                f"baseline pandas.read_csv {base['wall_s']:.2f} s, "
                f"{base['peak_bytes'] / 2**20:.0f} MiB | "
                f"ratio {stage['wall_s'] / base['wall_s']:.2f}x time, "
                f"{stage['peak_bytes'] / base['peak_bytes']:.2f}x memory"
            )


if __name__ == "__main__":
    main()
