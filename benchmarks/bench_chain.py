"""Benchmark: one CLIP Interrogator flavor-chain step, library vs prefix-cached (FastChain).

One `rank_top` over 128 candidates `"<prompt>, <flavor>"` on open_clip's real ViT-L-14 text tower
(random weights, pretrained=None), CPU fp32; the library's step and ours in the same run, same
inputs: without a near tie, with the top k candidates forced within the margin (the band the
library rescores), and with a near-exact tie (the image midway between the two leaders: the
library's full batch decides). Then `mode=best` end to end on the tiny test models, per image.

    PYTHONPATH=src python benchmarks/bench_chain.py [--threads 1] [--repeats 2] [--bands 2 8 16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"
PROMPT = (
    "a hotel room with a large bed and a television, interior design, highly detailed, "
    "by Ricardo Bofill, trending on unsplash"
)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median process CPU time of `fn` (one torch thread: other jobs on a shared machine do not
    inflate it), and its result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def library_stub(model, tokenizer):
    """An `Interrogator` carrying only what `rank_top` uses (no label tables to embed)."""
    from clip_interrogator import Config, Interrogator

    ci = Interrogator.__new__(Interrogator)
    ci.config = Config(caption_model_name=None, device="cpu", quiet=True)
    ci.device, ci.clip_model, ci.tokenize = "cpu", model, tokenizer
    ci.caption_offloaded = ci.clip_offloaded = False
    return ci


def bench_step(repeats: int, candidates: int, bands: list[int]) -> None:
    import clip_interrogator
    import open_clip
    import torch

    from alien_hotels.captioning.fastchain import ChainJob, FastChain, common_prefix_length

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-L-14")
    ci = library_stub(model, tokenizer)
    flavors_file = Path(clip_interrogator.__file__).parent / "data" / "flavors.txt"
    flavors = flavors_file.read_text(encoding="utf-8").splitlines()
    flavors = random.Random(0).sample(flavors, candidates)
    texts = [f"{PROMPT}, {f}" for f in flavors]
    with torch.no_grad():
        image = torch.randn(1, model.text_projection.shape[1])
        image = image / image.norm(dim=-1, keepdim=True)
    fast = FastChain(ci)
    tokens = tokenizer(texts)
    prefix = common_prefix_length(tokens)
    lib_s, lib_top = timed(lambda: ci.rank_top(image, texts), repeats)
    ours_s, ours_top = timed(lambda: fast.rank_top(image, texts), repeats)
    with torch.no_grad():
        ref = model.encode_text(tokens)
        ref = ref / ref.norm(dim=-1, keepdim=True)
        sims = fast.similarities([tokens], [image])[0]
        diff = (sims - (ref @ image.T)[:, 0]).abs().max().item()
    eot = tokens.argmax(-1)
    print(
        f"ViT-L-14 text tower, CPU fp32, torch threads={torch.get_num_threads()}, "
        f"{candidates} candidates, shared prefix {prefix} tokens, eot positions "
        f"{int(eot.min())}..{int(eot.max())} of 77"
    )
    print(f"  library rank_top  : {lib_s * 1000:9.1f} ms CPU")
    print(f"  FastChain, no tie : {ours_s * 1000:9.1f} ms   {lib_s / ours_s:6.1f}x")
    # Forced near ties: a margin that puts exactly the top k candidates in the band, which the
    # library then rescores (full 77-token encode) and decides.
    ordered = sims.float().sort(descending=True).values
    for k in bands:
        margin = float(ordered[0] - (ordered[k - 1] + ordered[k]) / 2)
        forced = FastChain(ci, margin=margin)
        jobs = []

        def step(forced=forced, jobs=jobs):
            jobs.append(ChainJob(image, []))
            return forced.rank_many([(jobs[-1], texts)])[0]

        band_s, band_top = timed(step, repeats)
        print(
            f"  FastChain, top {k:3d} within the margin: {band_s * 1000:9.1f} ms   "
            f"{lib_s / band_s:6.1f}x   rescored {jobs[-1].stats.rescored}, "
            f"same choice: {band_top == lib_top}"
        )
    print(f"  same choice without ties: {lib_top == ours_top}, max |similarity diff| {diff:.2e}")
    # A near-exact tie: the image midway between the two leaders' library features, so the
    # library decides on rounding alone and ours must run the library over the full batch.
    a, b = (ref @ image.T)[:, 0].topk(2).indices.tolist()
    tie = ref[a] + ref[b]
    tie = (tie / tie.norm())[None]
    lib_tie_s, lib_tie = timed(lambda: ci.rank_top(tie, texts), repeats)
    jobs = []

    def tie_step():
        jobs.append(ChainJob(tie, []))
        return fast.rank_many([(jobs[-1], texts)])[0]

    tie_s, ours_tie = timed(tie_step, repeats)
    stats = jobs[-1].stats
    print(
        f"  FastChain, exact tie (full-batch decision): {tie_s * 1000:9.1f} ms   "
        f"{lib_tie_s / tie_s:6.1f}x   rescored {stats.rescored}, full batch {stats.full_batch}, "
        f"same choice: {ours_tie == lib_tie}"
    )


def bench_e2e(images: int) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from alien_hotels.captioning.interrogate import BatchInterrogator
    from alien_hotels.config import compose_params, validate_params
    from alien_hotels.testing.interrogator import library_interrogator, save_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        paths = save_tiny_models(Path(tmp), seed=0)
        ci = library_interrogator(paths)  # library defaults: 2048 intermediate flavors
        rng = np.random.default_rng(0)
        imgs = [
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            for _ in range(images)
        ]
        # The caption settings a user gets from conf/.
        caption = validate_params(compose_params(["caption=clip_interrogator"], CONF)).caption
        results = {}
        for chain in ("library", "fast"):
            engine = BatchInterrogator(ci, caption.updated(chain=chain))
            captions = engine.captions(imgs)
            with torch.no_grad():
                feats = engine.image_features(imgs)
            start = time.process_time()
            out = [engine.prompt(feats[i : i + 1], captions[i], "best") for i in range(images)]
            results[chain] = ((time.process_time() - start) / images, out)
    (lib_s, lib_out), (fast_s, fast_out) = results["library"], results["fast"]
    print(f"mode=best end to end, tiny models, {images} images (prompt search per image):")
    print(f"  library chain: {lib_s:6.3f} s/image")
    print(
        f"  fast chain   : {fast_s:6.3f} s/image   speed-up {lib_s / fast_s:.1f}x, "
        f"same strings: {lib_out == fast_out}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--bands", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    bench_step(args.repeats, args.candidates, args.bands)
    if not args.skip_e2e:
        bench_e2e(args.images)


if __name__ == "__main__":
    main()
