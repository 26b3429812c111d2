"""Captions per second: the local executor against Ray with 1 and 2 workers, same images.

    python -m benchmarks.bench_ray [--images 8] [--flavors 256]

CLIP Interrogator `best` mode on the tiny random-weight models (real open_clip / BLIP classes),
with a flavor pool large enough that each image costs about a second of model work (the flavor
chain's CLIP text-tower passes), so the figures show what Ray adds around the model: shipping
image bytes, scheduling tasks, returning rows to the driver. Every run uses one torch thread per
worker (the local run too), a fresh checkpoint, and must return the same captions. Ray runs on
an instance started here (`ray.address=null`, 2 CPUs).

Printed: start-up (connecting and loading the models on the workers; paid once per stage run),
the compute phase's wall time and images/s, speed-up against local, and per image the worker time
not spent in model work (compute wall x workers minus the workers' own per-image model seconds:
decoding, transfers, scheduling, checkpoint writes, idle workers). Ray's overhead per image is
that figure for Ray with 1 worker minus the local one; it is less exposed than raw wall-time
differences to other jobs sharing the machine.
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--flavors", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    from alien_hotels.captioning.run import caption_images
    from alien_hotels.config import compose_params, validate_params
    from alien_hotels.distributed.caption import RayCaptioner
    from alien_hotels.testing.interrogator import save_tiny_models, tiny_overrides

    torch.set_num_threads(1)
    conf = Path(__file__).resolve().parents[1] / "conf"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = save_tiny_models(root / "tiny")
        rows = []
        rng = np.random.default_rng(0)
        for i in range(args.images):
            pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"{i}.jpg", quality=90)
            rows.append({"image_id": i, "path": f"{i}.jpg", "status": "ok"})
        manifest = pd.DataFrame(rows)
        base = [
            *tiny_overrides(tiny),
            "caption.mode=best",
            f"caption.flavor_intermediate_count={args.flavors}",
            "caption.max_flavors=24",
            "caption.batch_size=2",
            "caption.loader_workers=1",
            "caption.progress=false",
            "ray.local_num_cpus=2",
        ]
        runs = {
            "local": [],
            "ray, 1 worker": ["caption.executor=ray", "ray.num_workers=1"],
            "ray, 2 workers": ["caption.executor=ray", "ray.num_workers=2", "ray.min_workers=2"],
        }
        print(
            f"{args.images} images 640x480 JPEG, mode best, {args.flavors} flavors, batch 2, "
            f"1 torch thread per worker, {os.cpu_count()} CPUs"
        )
        results = {}
        for i, (name, extra) in enumerate(runs.items()):
            params = validate_params(
                compose_params([*base, *extra, f"caption.checkpoint_dir={root}/ckpt{i}"], conf)
            )
            start = time.perf_counter()
            executor = None  # the local loop
            if params.caption.executor == "ray":
                executor = functools.partial(RayCaptioner, ray_cfg=params.ray)
            run = caption_images(manifest, params.caption, root, executor)
            total = time.perf_counter() - start
            compute = run.metrics["wall_seconds"]
            # model work: each image's own seconds on its worker (batch share + prompt search);
            # the rest of the workers' wall time went to decoding, transfers, scheduling, idling
            model = run.metrics["seconds_per_image"] * run.metrics["ok"]
            workers = run.metrics.get("ray_workers", 1)
            results[name] = (run, compute, (compute * workers - model) / args.images)
            print(
                f"{name:15s} start-up {total - compute:6.1f} s  compute {compute:6.1f} s  "
                f"{args.images / compute:5.2f} img/s  "
                f"speed-up vs local {results['local'][1] / compute:4.2f}x  "
                f"not model work {results[name][2] * 1000:5.0f} ms/img"
            )
        reference = results["local"][0].captions
        for name, (run, *_) in results.items():
            assert run.captions.equals(reference), f"{name}: captions differ from local"
        added = results["ray, 1 worker"][2] - results["local"][2]
        print(f"Ray overhead per image (1 worker vs local, not model work): {added * 1000:+.0f} ms")
        print("captions identical across the three runs")


if __name__ == "__main__":
    main()
