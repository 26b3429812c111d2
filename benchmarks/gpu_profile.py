"""Profile of the fast flavor chain's steps (issue 17, item 1): where a step's time goes.

open_clip ViT-L-14's text tower with random weights (`chain_regimes.text_clip`; only the text
side runs), an `Interrogator` stub, candidates from clip-interrogator's flavors.txt, a batch of
images whose chains start from a caption plus three flavors, image features in the `random` and
`planted` regimes (`chain_regimes`). Per regime: one warm-up step (`FastChain.chains` with
min=max=1), then `torch.profiler` (CPU, plus CUDA on a GPU) over two steps from the same start.
Printed: the band sizes (ChainStats; and, from the fast scores, the candidates within the
float32 / float16 margins of the leader at the first step and after the profiled steps), the
top operators by CUDA time (on a GPU) and by CPU time, how busy the GPU was (kernel time /
wall), and the step split by `fastchain`'s `record_function` ranges:
chain.host (token rows, packed layout), chain.forward (the prefix-cached packed forward),
chain.transfer (the one score transfer per step), chain.band (band rescoring by the library's
code), chain.full_batch (the library's full candidate batch), chain.single_prompt
(`ci.similarity`, `_prompt_at_max_len`); waits/syncs (cudaStreamSynchronize, cudaMemcpy,
`item`) apart; "other" is the rest of the wall time (Python between ranges).

CUDA: float16 weights under autocast (the library's CUDA setup), wall time; defaults 2048
candidates, 8 images (under 3 minutes on one H100 with both regimes). CPU: float32, one torch
thread, defaults 256 candidates, 2 images (the host side and the forward's CPU cost).

    bash benchmarks/gpu_profile.sh [--device cpu] [--tiny] [--candidates N] [--images N]
    PYTHONPATH=src python -m benchmarks.gpu_profile --device cpu --tiny     (smoke test)
"""

from __future__ import annotations

import time

try:
    from benchmarks import chain_regimes as cr
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    import chain_regimes as cr

RANGES = ["chain.host", "chain.forward", "chain.transfer", "chain.band", "chain.full_batch",
          "chain.single_prompt"]  # fmt: skip


def parse_args(argv=None):
    parser = cr.tower_parser(__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float16", "float32"], default=None,
                        help="default: float16 on CUDA, float32 on CPU")  # fmt: skip
    parser.add_argument("--candidates", type=int, default=None, help="2048 CUDA / 256 CPU")
    parser.add_argument("--images", type=int, default=None, help="8 CUDA / 2 CPU")
    parser.add_argument("--steps", type=int, default=2, help="profiled chain steps")
    parser.add_argument("--regimes", nargs="+", default=list(cr.REGIMES), choices=cr.REGIMES)
    parser.add_argument("--plant-k", type=int, default=3)
    parser.add_argument("--plant-noise", type=float, default=0.5)
    parser.add_argument("--row-limit", type=int, default=15)
    parser.add_argument("--margin", type=float, default=None,
                        help="FastChain margin (default: its precision's; 2e-2 on CPU float32 "
                        "gives float16's bands, slowly)")  # fmt: skip
    parser.add_argument("--tie-tolerance", type=float, default=None)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    args.candidates = args.candidates or (2048 if cuda else 256)
    args.images = args.images or (8 if cuda else 2)
    return args


def profile_regime(args, ci, fast, flavors, prompts, regime: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    from alien_hotels.captioning.fastchain import ChainJob

    cuda = args.device == "cuda"
    features, _ = cr.image_features(regime, ci, prompts, flavors, args.plant_k, args.plant_noise)
    sims = [ci.similarity(features[i : i + 1], p) for i, p in enumerate(prompts)]

    def jobs(steps: int):
        return [
            ChainJob(features[i : i + 1], flavors, p, sims[i], steps, steps)
            for i, p in enumerate(prompts)
        ]

    fast.chains(jobs(1))  # warm-up: kernels, allocator, the phrase-token cache
    cr.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    run = jobs(args.steps)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fast.chains(run)
        cr.sync()
        wall = time.perf_counter() - start
    probe = cr.band_probe(fast, prompts, flavors, features)
    later = [job.best_prompt for job in run]
    used = {f for p in later for f in p.split(", ")}
    probe_later = cr.band_probe(fast, later, [f for f in flavors if f not in used], features)
    steps = args.steps
    print(f"\n== regime {regime}: {steps} profiled chain steps of {len(prompts)} images, wall "
          f"{wall:.3f} s ({wall / steps * 1e3:.1f} ms per step, profiler on)")  # fmt: skip
    print(f"band sizes ({regime}): {cr.stats_line(run)}")
    for when, pr in (("first step", probe), ("after the steps", probe_later)):
        print(
            f"{when}, candidates within the margin of the leader (mean per image): float32 "
            f"margin {pr['band@float32']:.1f}, float16 margin {pr['band@float16']:.1f} of "
            f"{len(flavors)}; leader gap {pr['gap']:.2e}"
        )
    events = prof.events()
    averages = prof.key_averages()
    if cuda:
        print(f"-- top {args.row_limit} operators by CUDA time ({regime})")
        print(averages.table(sort_by="self_device_time_total", row_limit=args.row_limit))
    print(f"-- top {args.row_limit} operators by CPU time ({regime})")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.row_limit))
    wall_us = wall * 1e6
    if cuda:
        busy = cr.kernel_us(events)
        print(f"GPU busy ({regime}): kernel time {busy / 1e3:.1f} ms of {wall * 1e3:.1f} ms wall "
              f"({busy / wall_us:.1%})")  # fmt: skip
    print(f"-- step split ({regime}), ms per chain step (all {len(prompts)} images)")
    print(f"  {'range':22} {'total':>9} {'self':>9} {'waits':>9} {'self-waits':>11} "
          f"{'kernels':>9} {'share':>7}")  # fmt: skip
    for name, total, own, waits, dev in cr.profile_split(events, wall_us, RANGES):
        net = own - waits if name not in ("waits/syncs", "other") else own
        print(
            f"  {name:22} {total / steps / 1e3:9.2f} {own / steps / 1e3:9.2f} "
            f"{waits / steps / 1e3:9.2f} {net / steps / 1e3:11.2f} {dev / steps / 1e3:9.2f} "
            f"{net / wall_us:7.1%}"
        )
    print(f"  {'wall':22} {wall / steps * 1e3:9.2f}")


def main(argv=None) -> None:
    import torch

    from alien_hotels.captioning.fastchain import FastChain

    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = cr.text_clip(args.device, args.dtype, args.tiny, args.layers)
    ci = cr.library_stub(model, tokenizer, args.device)
    flavors, prompts = cr.candidates_and_prompts(args.candidates, args.images)
    fast = FastChain(ci, margin=args.margin, tie_tolerance=args.tie_tolerance)
    tower = "tiny CLIP (2 layers, width 32)" if args.tiny else (
        f"ViT-L-14 text tower ({len(model.transformer.resblocks)} layers)")  # fmt: skip
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"gpu_profile: {tower}, random weights, {where}, {args.dtype}"
        f"{' (autocast)' if args.device == 'cuda' else ''}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; {args.candidates} candidates, {args.images} images; "
        f"margin {fast.margin:g}, tie tolerance {fast.tie_tolerance:g}; setup "
        f"{time.perf_counter() - start:.1f} s"
    )
    for regime in args.regimes:
        profile_regime(args, ci, fast, flavors, prompts, regime)


if __name__ == "__main__":
    main()
