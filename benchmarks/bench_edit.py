"""Time the edit stage's loop with tiny random-weight models on synthetic images.

    python -m benchmarks.bench_edit [--images 8] [--steps 6] [--resolution 64]

Prints images/s of a fresh run of recipe `neon` (img2img) and of `no_towels` (inpaint with a
text mask), and the wall time of a resumed run against the fresh run measured in the same
process (the baseline): resuming must skip the diffusion work, leaving only loading and scoring.
Then the thread control (`edit.n_jobs`): a fresh `neon` run with torch's default thread count
(the baseline, one per core) against `--threads` (default 1), same images, same process.
The figures are about the code around the models (I/O, masks, scoring, resume), not about
Stable Diffusion itself, whose cost on real weights dominates by orders of magnitude.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="edit.n_jobs to compare")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    from alien_hotels.config import compose_params, validate_params
    from alien_hotels.editing import runner
    from alien_hotels.testing.diffusion import save_tiny_models

    default_threads = torch.get_num_threads()  # torch's own choice, before anyone sets it
    conf = Path(__file__).resolve().parents[1] / "conf"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = save_tiny_models(root / "models")
        rows = []
        for i in range(args.images):
            arr = np.random.default_rng(i).integers(0, 256, (300, 400, 3), dtype=np.uint8)
            path = root / f"img{i}.jpg"
            Image.fromarray(arr).save(path)
            rows.append({"image_id": f"img{i}", "path": str(path), "status": "ok"})
        manifest = pd.DataFrame(rows)
        overrides = [
            f"edit.scores.clipseg_model_id={models['clipseg']}",
            f"edit.scores.clip_model_id={models['clip']}",
        ]
        for name, kind in (("neon", "img2img"), ("no_towels", "inpaint")):
            overrides += [
                f"edit.recipes.{name}.model_id={models[kind]}",
                f"edit.recipes.{name}.steps={args.steps}",
                f"edit.recipes.{name}.resolution={args.resolution}",
                f"edit.recipes.{name}.mask.model_id={models['clipseg']}",
            ]
        overrides.append("edit.recipes.no_towels.mask.threshold=0.45")
        cfg = validate_params(
            compose_params([*overrides, f"edit.n_jobs={args.threads}"], conf)
        ).edit
        print(
            f"{args.images} images 400x300, steps {args.steps}, resolution {args.resolution}, "
            f"edit.n_jobs {cfg.n_jobs}, {os.cpu_count()} CPUs"
        )
        for name in ("neon", "no_towels"):
            out = root / "out" / name
            start = time.perf_counter()
            fresh = runner.edit_recipe(name, cfg, manifest, out)
            fresh_s = time.perf_counter() - start
            start = time.perf_counter()
            resumed = runner.edit_recipe(name, cfg, manifest, out)
            resumed_s = time.perf_counter() - start
            assert resumed.table["resumed"].all()
            edited = int((fresh.table["status"] == "edited").sum())
            print(
                f"{name:10s} fresh {fresh_s:6.2f} s ({args.images / fresh_s:5.2f} img/s, "
                f"{edited} edited)  resumed {resumed_s:6.2f} s  "
                f"resumed/fresh {resumed_s / fresh_s:.2f}"
            )
        timings = []
        for i, threads in enumerate((default_threads, args.threads)):  # baseline first
            threaded = cfg.updated(n_jobs=threads)
            start = time.perf_counter()
            runner.edit_recipe("neon", threaded, manifest, root / "threads" / str(i))
            timings.append(time.perf_counter() - start)
        print(
            f"threads    neon fresh with torch's default {default_threads} threads "
            f"{timings[0]:6.2f} s, with edit.n_jobs={args.threads} {timings[1]:6.2f} s: "
            f"default/n_jobs {timings[0] / timings[1]:.2f}x"
        )


if __name__ == "__main__":
    main()
