"""Measure how far FastChain's similarities deviate from the library's, per precision.

For each precision, many random open_clip text towers (several sizes up to ViT-L-14's, open_clip's
own init and a 3x wider init for larger activations) and many prompts (prefixes of 0 to ~60
tokens, as the chain builds them), the fast path's similarity of every candidate is compared with
what the library's `rank_top` computes (`encode_text` at 77 tokens, normalise, `@ image.T`). Two
ways to compute in low precision on CPU are measured: weights cast to the dtype (what the library
does with a half model) and float32 weights under `torch.autocast` (as CUDA runs the library).
Prints max and 99.9th percentile of |fast - library| and the margin that `fastchain.MARGINS`
should hold (4x the max: the band needs 2x, the rest is headroom for towers not sampled here).

`--batch` measures the second tolerance of the contract instead: how far the library's own score
of a candidate moves with the batch it is computed in (the same rows scored in band-sized
batches of 1 to 33 rows vs in the full batch), which `fastchain.TIE_TOLERANCES` must be 4x of.
`--device cuda` measures it on a GPU under the library's float16 autocast.

    PYTHONPATH=src python benchmarks/bench_margins.py [--towers 3] [--prompts 6] [--quick]
    PYTHONPATH=src python benchmarks/bench_margins.py --batch [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from contextlib import nullcontext
from pathlib import Path

# (width, layers, heads) of random text towers, up to ViT-B-32's and ViT-L-14's. Low precision
# matmuls are slow on CPUs without native half support: the two real sizes get one seed and
# `--big-prompts` prompts.
TOWERS = [(32, 2, 2), (64, 3, 2), (128, 4, 4), (256, 6, 4), (512, 12, 8), (768, 12, 12)]
BIG = 512
CANDIDATES = 64


def text_tower(width: int, layers: int, heads: int, seed: int, init_scale: float):
    import open_clip
    import torch

    torch.manual_seed(seed)
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": width, "heads": heads,
                "layers": layers}  # fmt: skip
    vision_cfg = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 32}
    model = open_clip.CLIP(embed_dim=max(32, width), vision_cfg=vision_cfg, text_cfg=text_cfg)
    if init_scale != 1:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("transformer.") and p.ndim >= 2:
                    p.mul_(init_scale)
    return model.eval()


def chain_prompts(flavors: list[str], seed: int, n: int) -> list[str]:
    """No prompt, then n - 1 prompts of 1 to 12 flavors, as the chain builds them."""
    rng = random.Random(seed)
    return [""] + [", ".join(rng.sample(flavors, rng.randint(1, 12))) for _ in range(n - 1)]


def deviations(model, tokenizer, flavors, prompts, precision: str, mode: str, rng):
    """|fast - library| similarity of every candidate of every prompt, as one flat tensor."""
    import torch

    from alien_hotels.captioning.fastchain import encode_text_grouped

    dtype = getattr(torch, precision)
    if mode == "weights":
        model = copy.deepcopy(model).to(dtype)
        ctx = nullcontext
    else:
        ctx = lambda: torch.autocast("cpu", dtype=dtype)  # noqa: E731
    out = []
    dim = model.text_projection.shape[1]
    for prompt in prompts:
        texts = [f"{prompt}, {f}" if prompt else f for f in rng.sample(flavors, CANDIDATES)]
        tokens = tokenizer(texts)
        image = torch.randn(1, dim, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
        image = (image / image.norm()).to(dtype)
        with torch.no_grad(), ctx():  # the library's rank_top computation
            ref = model.encode_text(tokens)
            ref = ref / ref.norm(dim=-1, keepdim=True)
            ref = (ref @ image.T)[:, 0]
        with torch.no_grad(), ctx():  # FastChain.similarities
            got = encode_text_grouped(model, [tokens])
            got = got / got.norm(dim=-1, keepdim=True)
            got = (got @ image.T)[:, 0]
        out.append((got.float() - ref.float()).abs())
    return torch.cat(out)


BANDS = (1, 2, 3, 5, 8, 17, 33)


def batch_deviations(model, tokenizer, flavors, prompts, precision, mode, rng, device="cpu"):
    """|library score in a band batch - the same row's library score in the full batch|."""
    import torch

    dtype = getattr(torch, precision)
    if mode == "weights":
        model = copy.deepcopy(model).to(dtype)
    model = model.to(device)
    autocast = torch.autocast(device, dtype=dtype, enabled=mode == "autocast")
    dim = model.text_projection.shape[1]
    out = []
    for prompt in prompts:
        texts = [f"{prompt}, {f}" if prompt else f for f in rng.sample(flavors, 2 * CANDIDATES)]
        tokens = tokenizer(texts).to(device)
        image = torch.randn(1, dim, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
        image = (image / image.norm()).to(device, dtype if mode == "weights" else torch.float32)

        def scores(rows, image=image):  # the library's rank_top computation
            with torch.no_grad(), autocast:
                f = model.encode_text(rows)
                f = f / f.norm(dim=-1, keepdim=True)
                return (f @ image.T)[:, 0].float()

        full = scores(tokens)
        for k in BANDS:
            band = sorted(rng.sample(range(len(texts)), k))
            out.append((scores(tokens[band]) - full[band]).abs().cpu())
    return torch.cat(out)


def main_batch(args, tokenizer, flavors) -> None:
    import torch

    from alien_hotels.captioning.fastchain import TIE_TOLERANCES

    on_cuda = args.device == "cuda"
    if on_cuda:  # what the library computes on CUDA: float32 weights under float16 autocast
        cases = [("float16", "autocast"), ("float32", "weights")]
    else:
        cases = [("float32", "weights"), ("float16", "weights"), ("bfloat16", "weights")]
    towers = TOWERS[:-1] if args.quick else TOWERS
    results = {case: [] for case in cases}
    for width, layers, heads in towers:
        big = width >= BIG and not on_cuda
        for seed in range(1 if big else args.towers):
            model = text_tower(width, layers, heads, seed, 1.0)
            prompts = chain_prompts(flavors, seed, args.big_prompts if big else args.prompts)
            for precision, mode in cases:
                rng_case = random.Random(seed * 7 + 1)
                results[(precision, mode)].append(
                    batch_deviations(
                        model, tokenizer, flavors, prompts, precision, mode, rng_case, args.device
                    )
                )
        print(f"  towers width {width} x {layers} layers done", flush=True)
    print(
        f"library score vs batch composition ({args.device}): band batches of {BANDS} rows "
        f"vs the full batch of {2 * CANDIDATES}"
    )
    print(f"  {'precision':9} {'computed as':12} {'samples':>8} {'max':>10} {'changed':>8}")
    for (precision, mode), parts in results.items():
        d = torch.cat(parts)
        mx = float(d.max())
        print(
            f"  {precision:9} {mode:12} {len(d):8d} {mx:10.2e} {float((d > 0).float().mean()):8.1%}"
            f"   4x = {4 * mx:.1e} (fastchain.TIE_TOLERANCES: {TIE_TOLERANCES[precision]:.1e}, "
            f"{'covers' if TIE_TOLERANCES[precision] >= 2 * mx else 'DOES NOT cover'} 2x max)"
        )


def main() -> None:
    import clip_interrogator
    import open_clip
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towers", type=int, default=3, help="random seeds per tower size")
    parser.add_argument("--prompts", type=int, default=6, help="prompts per tower")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--big-prompts", type=int, default=2, help="prompts per real-size tower")
    parser.add_argument("--quick", action="store_true", help="skip the ViT-L-14-size towers")
    parser.add_argument("--batch", action="store_true", help="library score vs batch instead")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = open_clip.get_tokenizer("ViT-L-14")
    data = Path(clip_interrogator.__file__).parent / "data"
    flavors = [f for f in data.joinpath("flavors.txt").read_text().splitlines() if f.strip()]
    if args.batch:
        main_batch(args, tokenizer, flavors)
        return
    towers = TOWERS[:-1] if args.quick else TOWERS
    cases = [("float32", "weights"), ("float16", "weights"), ("float16", "autocast"),
             ("bfloat16", "weights"), ("bfloat16", "autocast")]  # fmt: skip
    results = {case: [] for case in cases}
    started = time.perf_counter()
    for width, layers, heads in towers:
        big = width >= BIG
        for seed in range(1 if big else args.towers):
            for init_scale in (1.0, 3.0):
                model = text_tower(width, layers, heads, seed, init_scale)
                prompts = chain_prompts(flavors, seed, args.big_prompts if big else args.prompts)
                for precision, mode in cases:
                    rng_case = random.Random(seed * 7 + 1)
                    results[(precision, mode)].append(
                        deviations(model, tokenizer, flavors, prompts, precision, mode, rng_case)
                    )
        print(
            f"  towers width {width} x {layers} layers done ({time.perf_counter() - started:.0f} s)"
        )
    n_towers = sum(2 * (1 if t[0] >= BIG else args.towers) for t in towers)
    print(
        f"fast-vs-library |similarity difference|, CPU, {n_towers} random text towers "
        f"(widths {', '.join(str(t[0]) for t in towers)}; open_clip init and 3x), "
        f"{args.prompts} prompts ({args.big_prompts} for widths >= {BIG}) x {CANDIDATES} "
        "candidates each"
    )
    print(f"  {'precision':9} {'computed as':12} {'samples':>8} {'max':>10} {'p99.9':>10}")
    worst: dict[str, float] = {}
    for (precision, mode), parts in results.items():
        d = torch.cat(parts)
        mx, p999 = float(d.max()), float(torch.quantile(d.double(), 0.999))
        worst[precision] = max(worst.get(precision, 0.0), mx)
        print(f"  {precision:9} {mode:12} {len(d):8d} {mx:10.2e} {p999:10.2e}")
    from alien_hotels.captioning.fastchain import MARGINS

    for precision, mx in worst.items():
        print(
            f"  margin for {precision}: measured max {mx:.2e} -> 4x = {4 * mx:.1e} "
            f"(fastchain.MARGINS: {MARGINS[precision]:.1e}, "
            f"{'covers' if MARGINS[precision] >= 2 * mx else 'DOES NOT cover'} 2x max)"
        )


if __name__ == "__main__":
    main()
