"""GPU check v2 of `mode=best` (issue 17, items 5 and 6): the library vs ours per image, in two
image regimes, at batch 1 and batch 8; the batch tie tolerance; the float16 noise floor.

Models: BLIP-large and open_clip ViT-L-14 with random weights and reduced label tables
(`bench_best_real.build`: ~2,900 phrases), float16 on CUDA as the library loads them (CLIP under
its float16 autocast), float32 on CPU; `--tiny`: the tiny test models (CPU smoke test). The
library's defaults: 2048 candidates, 8-32 chain steps.

Image regimes (`chain_regimes`): the images are random pixels and both sides run their own
caption and image-feature code (timed), but the image features they go on with are replaced by
the regime's: `random` unit vectors, or `planted` (each image's features: its library caption
plus each of k flavors of the flavor table, less the common direction, plus noise). The
library captions each image itself (timed); the planted features are built from those captions.

1. Batch tie tolerance, per precision: max |library score of rows scored in a band-sized batch
   - the same rows in the full candidate batch| (`chain_regimes.batch_tolerance`); what
   `fastchain.TIE_TOLERANCES` must be 4x of.
2. Per regime: the library's `Interrogator.interrogate(image, caption=its caption)` per image,
   ours (`BatchInterrogator`, fast chain) at batch 1 on the same images and at batch `--batch`;
   per-image seconds by part (CUDA wall, CPU process time), strings compared, the chain's
   fallback levels (fallbacks, rescored, full_batch).
3. Float16 noise floor, per regime: the library in float16 and in float32 on the same images,
   captions and features, and ours in both; how many strings agree. float16 on CUDA is the
   library's own setup (float16 weights, autocast); its "float32" there must leave autocast
   off, or it is float16 arithmetic again: float32 weights inside `chain_regimes.true_float32()`
   (the library's `torch.cuda.amp.autocast` and our `torch.autocast` replaced by disabled
   contexts) and the label tables' stored float16 embeddings upcast, as the library does on CPU.
   On CPU: float16 = every CLIP weight and the label embeddings cast (no autocast on CPU).

Phases 2 (planted) and 3 run only while `--budget` seconds last (printed when skipped).

    bash benchmarks/gpu_check.sh                    (CUDA, under 5 minutes on one H100)
    PYTHONPATH=src python -m benchmarks.gpu_check --device cpu --tiny --images 2 --batch 2 \
        --candidates 48 --min-steps 2 --steps 3            (CPU smoke test)
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections import defaultdict
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

try:
    from benchmarks import chain_regimes as cr
    from benchmarks.bench_best_real import build, timing
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    import chain_regimes as cr
    from bench_best_real import build, timing

CONF = Path(__file__).resolve().parents[1] / "conf"
PARTS = ("caption", "image features", "label ranking", "chain", "total")


def parse_args(argv=None):
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="tiny test models (CPU smoke)")
    parser.add_argument("--images", type=int, default=4, help="images the library runs")
    parser.add_argument("--batch", type=int, default=8, help="ours' second batch size")
    parser.add_argument("--candidates", type=int, default=2048)
    parser.add_argument("--min-steps", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--caption-tokens", type=int, default=20)
    parser.add_argument("--regimes", nargs="+", default=list(cr.REGIMES), choices=cr.REGIMES)
    parser.add_argument("--plant-k", type=int, default=3)
    parser.add_argument("--plant-noise", type=float, default=0.5)
    parser.add_argument("--tolerance-images", type=int, default=2)
    parser.add_argument("--tolerance-dtypes", nargs="*", default=["float16", "float32"])
    parser.add_argument("--no-noise-floor", action="store_true")
    parser.add_argument("--budget", type=float, default=1e9, help="seconds for the whole run")
    parser.add_argument("--threads", type=int, default=1, help="CPU torch threads")
    return parser.parse_args(argv)


def setup(args, workdir: Path):
    """(library Interrogator, dtype of its CLIP run)."""
    if args.tiny:
        if args.device != "cpu":
            raise SystemExit("--tiny runs on CPU only")
        from alien_hotels.testing.interrogator import library_interrogator, save_tiny_models

        paths = save_tiny_models(workdir, seed=0)
        ci = library_interrogator(paths, flavor_intermediate_count=args.candidates,
                                  caption_max_length=8)  # fmt: skip
        return ci, "float32"
    dtype = "float16" if args.device == "cuda" else "float32"
    return build(workdir, args.candidates, args.caption_tokens, args.device, dtype), dtype


@contextmanager
def given_features(ci, table: dict, times: dict | None, clock):
    """`ci.image_to_features(image)` returns the regime's features for that image; with `times`
    the library's own encode still runs (and is timed), its result replaced."""
    original = ci.image_to_features

    def run(image):
        wanted = table[id(image)]
        if times is None:
            return wanted.to(ci.clip_model.text_projection.dtype)
        cr.sync()
        start = clock()
        got = original(image)
        cr.sync()
        times["image features"] += clock() - start
        return wanted.to(got.dtype)

    ci.image_to_features = run
    try:
        yield
    finally:
        del ci.image_to_features


def regime_features(args, ci, regime: str, captions: list[str]):
    """Features per image (float32 rows) of a regime; planted on the captions given, with
    flavors of the flavor table (the chain's candidates are ranked from the whole table)."""
    feats, _ = cr.image_features(regime, ci, captions, ci.flavors.labels, args.plant_k,
                                 args.plant_noise, seed=1)  # fmt: skip
    return feats


def run_library(ci, images, captions, feats, args, clock, times=None) -> list[str]:
    """`interrogate(image, caption=...)` per image with the regime's features."""
    from clip_interrogator.clip_interrogator import LabelTable

    table = {id(im): feats[i : i + 1] for i, im in enumerate(images)}
    out = []
    with ExitStack() as stack:
        stack.enter_context(given_features(ci, table, times, clock))
        if times is not None:
            stack.enter_context(timing(LabelTable, "rank", times, "label ranking", clock))
            stack.enter_context(timing(ci, "chain", times, "chain", clock))
        cr.sync()
        start = clock()
        for image, caption in zip(images, captions, strict=True):
            out.append(ci.interrogate(image, args.min_steps, args.steps, caption=caption))
        cr.sync()
        if times is not None:
            times["total"] += clock() - start
    return out


def engine_for(ci, args):
    from alien_hotels.captioning.interrogate import BatchInterrogator
    from alien_hotels.config import compose_params, validate_params

    overrides = ["caption=clip_interrogator", "caption.chain=fast",
                 f"caption.min_flavors={args.min_steps}", f"caption.max_flavors={args.steps}",
                 f"caption.flavor_intermediate_count={args.candidates}"]  # fmt: skip
    return BatchInterrogator(ci, validate_params(compose_params(overrides, CONF)).caption)


def run_ours(engine, images, feats, batch: int, clock, times):
    """Ours on `images` in batches: captions and image features computed (timed), the
    features replaced by the regime's, then the prompt search. (prompts, stats, captions)."""
    from clip_interrogator.clip_interrogator import LabelTable

    from alien_hotels.captioning.fastchain import FastChain

    prompts, stats, captions = [], [], []
    with (
        timing(LabelTable, "rank", times, "label ranking", clock),
        timing(FastChain, "chains", times, "chain", clock),
    ):
        cr.sync()
        start = clock()
        for lo in range(0, len(images), batch):
            chunk = images[lo : lo + batch]
            t0 = clock()
            caps = engine.captions(chunk)
            cr.sync()
            times["caption"] += clock() - t0
            t0 = clock()
            got = engine.image_features(chunk)
            cr.sync()
            times["image features"] += clock() - t0
            results = engine.prompts(feats[lo : lo + len(chunk)].to(got.dtype), caps, "best")
            prompts += [r.prompt for r in results]
            stats += [r.stats for r in results]
            captions += caps
        cr.sync()
        times["total"] = clock() - start
    return prompts, stats, captions


def same(a: list, b: list) -> str:
    return f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)}"


def levels(stats) -> str:
    steps = sum(s.steps for s in stats)
    rescored = sum(s.rescored for s in stats)
    return (
        f"steps {steps}, fallbacks {sum(s.fallbacks for s in stats)}, rescored {rescored} "
        f"({rescored / max(1, steps):.1f} per step), full_batch "
        f"{sum(s.full_batch for s in stats)}, library_steps {sum(s.library_steps for s in stats)}"
    )


def tie_tolerance(args, ci, main_dtype: str, captions: list[str]) -> None:
    import torch

    from alien_hotels.captioning.fastchain import TIE_TOLERANCES, FastChain

    n = min(args.tolerance_images, len(captions))
    feats = regime_features(args, ci, "random", captions[:n])
    print(f"\n== batch tie tolerance: max |library score in a band-sized batch - in the full "
          f"batch of {args.candidates}|, {n} images, first chain step")  # fmt: skip
    for dtype in args.tolerance_dtypes:
        cip = ci if dtype == main_dtype else cr.in_precision(ci, dtype)
        f32_cuda = dtype == "float32" and args.device == "cuda"
        fast = FastChain(cip)
        merged = engine_for(cip, args).merged  # the tables in this precision
        worst: dict = defaultdict(float)
        with cr.true_float32() if f32_cuda else nullcontext(), torch.no_grad():
            for i in range(n):
                f = feats[i : i + 1].to(cip.clip_model.text_projection.dtype)
                tokens = fast.tokens(captions[i], merged.rank(f, args.candidates))
                for size, dev in cr.batch_tolerance(fast, f, tokens).items():
                    worst[size] = max(worst[size], dev)
        what = "autocast" if dtype == "float16" and args.device == "cuda" else "weights"
        cells = ", ".join(f"{k}: {v:.2e}" for k, v in worst.items())
        top = max(worst.values()) if worst else float("nan")
        print(f"  {dtype} ({what}): max {top:.2e} -> 4x = {4 * top:.1e} (TIE_TOLERANCES "
              f"{TIE_TOLERANCES.get(dtype)}); by band size {cells}")  # fmt: skip


def main(argv=None) -> None:
    import numpy as np
    import torch
    from PIL import Image

    warnings.filterwarnings("ignore", message=".*autocast.*")
    warnings.filterwarnings("ignore", message="CUDA is not available")
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.budget
    clock = cr.clock(args.device)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    n_all = max(args.images, args.batch)
    size = (64, 48) if args.tiny else (640, 480)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
              for _ in range(n_all)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ci, main_dtype = setup(args, Path(tmp))
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    models = "tiny test models" if args.tiny else "BLIP-large + ViT-L-14 (random weights)"
    print(f"gpu_check v2: {models}, {where}, {main_dtype}, torch {torch.__version__}; "
          f"{args.candidates} candidates, {args.min_steps}..{args.steps} steps; library on "
          f"{args.images} images, ours at batch 1 and {args.batch}; setup "
          f"{time.perf_counter() - t_start:.0f} s")  # fmt: skip

    lib_caption = []
    cr.sync()
    start = clock()
    for image in images:
        lib_caption.append(ci.generate_caption(image))
    cr.sync()
    caption_s = (clock() - start) / n_all

    if args.tolerance_dtypes:
        tie_tolerance(args, ci, main_dtype, lib_caption)

    engine = engine_for(ci, args)
    n = args.images
    what = "wall s" if args.device == "cuda" else "CPU s"
    lib_strings, lib_per_image, ours_per_image = {}, None, 0.0
    for regime in args.regimes:
        if regime != args.regimes[0] and lib_per_image is not None:
            need = n * lib_per_image * 2.5  # library + ours at two batch sizes
            if time.perf_counter() + need > deadline:
                print(f"\n== regime {regime}: skipped (time budget, needs ~{need:.0f} s)")
                continue
        feats = regime_features(args, ci, regime, lib_caption)
        lib = defaultdict(float)
        t0 = time.perf_counter()
        lib_out = run_library(ci, images[:n], lib_caption[:n], feats[:n], args, clock, lib)
        lib_per_image = (time.perf_counter() - t0) / n
        lib["caption"] = caption_s
        lib["total"] += caption_s * n
        lib_strings[regime] = lib_out
        ours = {}
        for b, imgs in ((1, images[:n]), (args.batch, images)):
            times = defaultdict(float)
            t0 = time.perf_counter()
            ours[b] = (*run_ours(engine, imgs, feats, b, clock, times), times, len(imgs))
            if b == 1:
                ours_per_image = (time.perf_counter() - t0) / n
        print(f"\n== regime {regime}: per image, {what} (library {n} images, ours batch 1 on the "
              f"same {n}, batch {args.batch} on {len(images)})")  # fmt: skip
        print(f"  {'part':16} {'library':>9} {'ours b1':>9} {f'ours b{args.batch}':>9} "
              f"{'lib/b1':>7} {f'lib/b{args.batch}':>7}")  # fmt: skip
        for part in PARTS:
            a = lib[part] / n
            b1 = ours[1][3][part] / ours[1][4]
            bb = ours[args.batch][3][part] / ours[args.batch][4]
            print(f"  {part:16} {a:9.3f} {b1:9.3f} {bb:9.3f} {a / b1 if b1 else 0:6.1f}x "
                  f"{a / bb if bb else 0:6.1f}x")  # fmt: skip
        b1_out, bb_out = ours[1][0], ours[args.batch][0][:n]
        print(
            f"  same strings as the library: batch 1 {same(b1_out, lib_out)}, batch "
            f"{args.batch} {same(bb_out, lib_out)}; batch {args.batch} = batch 1: "
            f"{same(bb_out, b1_out)}; captions equal: {same(ours[1][2], lib_caption[:n])}"
        )
        print(f"  fallback levels ({regime}), batch 1: {levels(ours[1][1])}")
        print(f"  fallback levels ({regime}), batch {args.batch}: {levels(ours[args.batch][1])}")

    if args.no_noise_floor:
        return
    other = "float32" if main_dtype == "float16" else "float16"
    for regime in args.regimes:
        if regime not in lib_strings:
            continue
        # As many of the library's images as the budget allows (a true float32 library run is
        # the slower one; ours runs in both precisions).
        per_image = lib_per_image * (1.5 if other == "float32" else 1.0) + 2 * ours_per_image
        m = min(n, int((deadline - time.perf_counter()) / per_image))
        if m < 1:
            print(f"\n== float16 noise floor ({regime}): skipped (time budget, ~{per_image:.0f} "
                  "s per image)")  # fmt: skip
            continue
        feats = regime_features(args, ci, regime, lib_caption)
        caps = lib_caption[:m]
        lib = {main_dtype: lib_strings[regime][:m]}
        mine = {}
        for dtype in ("float16", "float32"):
            cip = ci if dtype == main_dtype else cr.in_precision(ci, dtype)
            ctx = cr.true_float32() if dtype == "float32" and args.device == "cuda" else None
            with ctx or nullcontext():
                if dtype not in lib:
                    lib[dtype] = run_library(cip, images[:m], caps, feats[:m], args, clock)
                f = feats[:m].to(cip.clip_model.text_projection.dtype)
                mine[dtype] = [r.prompt for r in engine_for(cip, args).prompts(f, caps, "best")]

        print(f"\n== float16 noise floor ({regime}): same strings, {m} images, the library's "
              f"captions and the regime's features on both sides")  # fmt: skip
        print(f"  library float16 = library float32: {same(lib['float16'], lib['float32'])}")
        print(f"  ours float16 = library float16: {same(mine['float16'], lib['float16'])}; "
              f"= library float32: {same(mine['float16'], lib['float32'])}")  # fmt: skip
        print(f"  ours float32 = library float32: {same(mine['float32'], lib['float32'])}; "
              f"= library float16: {same(mine['float32'], lib['float16'])}")  # fmt: skip
    print(f"\ngpu_check v2 done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
