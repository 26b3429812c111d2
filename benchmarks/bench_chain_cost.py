"""Benchmark: cost model of one fast-chain step, against band size and images per batch.

Issue 17, item 3. One `FastChain.chains` step (min=max=1) of a batch of images on open_clip
ViT-L-14's text tower (random weights), from a caption plus three flavors over `--candidates`
flavors. The band is forced: a margin that puts exactly the top k fast scores within reach of
the leader (as tests/test_fastchain.py's near-tie test does), k = 1 (no band), 1%, 10%, 33% and
all of the candidates; the images of a batch are copies of one image (same features and prompt)
so that one margin gives every image the same band, and the work equals that of distinct
images. Band rows never take the full-batch level (tie tolerance below zero): they price the
band; the "full batch" row forces it (tie tolerance infinite, band of 2): the library's whole
candidate batch per image. Then a least-squares fit, step = a + b * images + c * bands (images
that fell back) + d * rescored candidates, to read off the cost of a step once a pilot run
reports its band sizes (`metrics/captioning.json`: chain_fallbacks, chain_rescored,
chain_full_batch).

Times: CUDA wall (synchronised), float16 under autocast; CPU process time, one torch thread,
float32. Defaults: CUDA 2048 candidates, 1 / 8 / 32 images, 3 repeats; CPU 64 candidates,
1 / 2 images, 1 repeat (a few minutes on this 2-core machine).

    PYTHONPATH=src python -m benchmarks.bench_chain_cost [--device cuda] [--candidates N]
        [--images 1 8 32] [--bands 0 0.01 0.1 0.33 1] [--layers N] [--tiny]
"""

from __future__ import annotations

import statistics
import warnings

try:
    from benchmarks import chain_regimes as cr
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    import chain_regimes as cr


def parse_args(argv=None):
    parser = cr.tower_parser(__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float16", "float32"], default=None)
    parser.add_argument("--candidates", type=int, default=None, help="2048 CUDA / 64 CPU")
    parser.add_argument("--images", type=int, nargs="+", default=None, help="1 8 32 / 1 2")
    parser.add_argument(
        "--bands",
        type=float,
        nargs="+",
        default=[0, 0.01, 0.1, 0.33, 1],
        help="fractions of the candidates in the band (0: the leader alone)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="3 CUDA / 1 CPU")
    parser.add_argument("--no-full-batch", action="store_true")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    args.candidates = args.candidates or (2048 if cuda else 64)
    args.images = args.images or ([1, 8, 32] if cuda else [1, 2])
    args.repeats = args.repeats or (3 if cuda else 1)
    return args


def main(argv=None) -> None:
    import numpy as np
    import torch

    from alien_hotels.captioning.fastchain import ChainJob, FastChain

    warnings.filterwarnings("ignore", message=".*autocast.*")
    warnings.filterwarnings("ignore", message="CUDA is not available")
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    clock = cr.clock(args.device)
    model, tokenizer = cr.text_clip(args.device, args.dtype, args.tiny, args.layers)
    ci = cr.library_stub(model, tokenizer, args.device)
    flavors, (prompt,) = cr.candidates_and_prompts(args.candidates, 1)
    feats, _ = cr.image_features("random", ci, [prompt], flavors)
    sim = ci.similarity(feats, prompt)
    n = len(flavors)
    tower = "tiny CLIP" if args.tiny else f"ViT-L-14 text ({len(model.transformer.resblocks)} L)"
    unit = "wall ms" if args.device == "cuda" else "CPU ms"
    print(
        f"chain step cost: {tower}, random weights, {args.device} {args.dtype}, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}; {n} candidates, prompt "
        f"{len(tokenizer.encode(prompt))} tokens; median of {args.repeats}; {unit} per step"
    )
    probe = FastChain(ci)
    rows = []  # (label, k, images, seconds, rescored per image, full_batch, fallbacks)
    cases = [(f"{f:.0%}" if 0 < f < 1 else ("none" if f <= 0 else "all"), f) for f in args.bands]
    if not args.no_full_batch:
        cases.append(("full batch", None))
    for images in args.images:
        jobs_feats = [feats] * images
        tokens = probe.tokens(prompt, flavors)
        with torch.no_grad():  # the scores in the batch composition the step will use
            scores = probe.similarities([tokens] * images, jobs_feats)[0].float().cpu()

        def step(fast, images=images):
            jobs = [ChainJob(feats, flavors, prompt, sim, 1, 1) for _ in range(images)]
            cr.sync()
            start = clock()
            fast.chains(jobs)
            cr.sync()
            return clock() - start, jobs

        FastChain(ci).chains([ChainJob(feats, flavors, prompt, sim, 1, 1)] * images)  # warm-up
        for label, fraction in cases:
            if fraction is None:  # full-batch level: a band of two, leaders "too close"
                k, fast = 2, FastChain(ci, margin=cr.margin_for_top(scores, 2),
                                       tie_tolerance=float("inf"))  # fmt: skip
            else:
                k = 1 if fraction <= 0 else max(2, min(n, round(fraction * n)))
                fast = FastChain(ci, margin=cr.margin_for_top(scores, k), tie_tolerance=-1.0)
            fast.tokens(prompt, flavors)  # the phrase cache, filled once per stage run
            times = []
            for _ in range(args.repeats):
                seconds, jobs = step(fast)
                times.append(seconds)
            s = [j.stats for j in jobs]
            rows.append((label, k, images, statistics.median(times),
                         sum(x.rescored for x in s) / images, sum(x.full_batch for x in s),
                         sum(x.fallbacks for x in s)))  # fmt: skip
            r = rows[-1]
            print(
                f"  band {label:>10} (k={k:4d}) images {images:3d}: {r[3] * 1e3:10.1f} {unit} "
                f"per step, {r[3] * 1e3 / images:9.1f} per image; rescored/image {r[4]:.0f}, "
                f"fallbacks {r[6]}, full_batch {r[5]}",
                flush=True,
            )
    print(f"\n-- step time, {unit} per step of the batch (per image in brackets)")
    head = "".join(f"{f'{b} image' + ('s' if b > 1 else ''):>22}" for b in args.images)
    print(f"  {'band (k per image)':24}{head}")
    for label, _ in cases:
        cells = [r for r in rows if r[0] == label]
        k = cells[0][1]
        line = "".join(f"{r[3] * 1e3:12.1f} ({r[3] * 1e3 / r[2]:7.1f})" for r in cells)
        print(f"  {f'{label} ({k})':24}{line}")
    fit = [r for r in rows if r[0] != "full batch"]
    if len({(r[2], r[4]) for r in fit}) >= 4:
        # step = fixed + per image (fast pass) + per band (one library call) + per rescored row
        a = np.array([[1.0, r[2], r[6], r[2] * r[4]] for r in fit])
        y = np.array([r[3] for r in fit])
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        resid = np.abs(a @ coef - y).max()
        c0, c1, c2, c3 = (c * 1e3 for c in coef)
        print(
            f"-- cost model (least squares over the band rows, ms): step = {c0:.2f} + {c1:.2f} "
            f"x images + {c2:.2f} x bands + {c3:.3f} x rescored candidates (max residual "
            f"{resid * 1e3:.1f} ms)"
        )
    for images in args.images:
        base = [r for r in rows if r[2] == images and r[1] == 2 and r[0] == "full batch"]
        one = [r for r in rows if r[2] == images and r[1] == 1]
        if base and one:
            extra = (base[0][3] - one[0][3]) / images
            print(f"   full-batch level at {images} images: +{extra * 1e3:.1f} ms per image "
                  f"that takes it (vs no band)")  # fmt: skip


if __name__ == "__main__":
    main()
