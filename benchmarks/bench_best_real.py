"""Benchmark: `mode=best` per image at real model sizes, the library vs ours, same run.

Models: the real architectures with random weights (nothing can be downloaded here):
BLIP-large (`BlipForConditionalGeneration`, ViT-L/16 vision at 384 px, BERT-base decoder with
blip's 30524-token vocabulary, a WordPiece vocab written at run time) and open_clip's ViT-L-14.
Label tables are clip-interrogator's own lists reduced to about 2,900 phrases (every 50th flavor,
every 20th artist, all mediums, movements and trending sites) so their embeddings can be computed
here; they are computed once as setup (with the packed encoder, stored in float16 as the library
stores them), not timed. CPU float32.

Library: `Interrogator.interrogate(image)` per image, its parts timed by wrapping its own
methods. Ours: `BatchInterrogator` (captions and image features for the batch, then the
prompt search with the fast chain of all images advancing together), per image. The strings are
compared. The chain is bounded (`--candidates`, `--steps`: the library's defaults are 2048 and
8-32, which take the library hours per image on 2 CPU cores); the per-step costs printed let the
reader scale to the defaults.

    PYTHONPATH=src python benchmarks/bench_best_real.py [--images 1] [--candidates 512] [--steps 2]
        [--min-steps N] [--device cuda] [--dtype float16]     (benchmarks/gpu_check.sh on a GPU)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"
LABEL_STEPS = {"flavors.txt": 50, "artists.txt": 20, "mediums.txt": 1, "movements.txt": 1,
               "negative.txt": 1}  # fmt: skip


def blip_large(workdir: Path, caption_tokens: int):
    """BLIP-large's architecture with random weights and a run-time WordPiece vocabulary."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    from alien_hotels.testing.interrogator import SPECIAL, WORDS

    vocab_size = 30524  # Salesforce/blip-image-captioning-large
    fillers = [f"w{i}" for i in range(vocab_size - len(SPECIAL) - len(WORDS) - 1)]
    vocab = workdir / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL, *WORDS, *fillers, "[DEC]"]) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    text = {"vocab_size": vocab_size, "bos_token_id": vocab_size - 1, "pad_token_id": 0,
            "sep_token_id": 3, "eos_token_id": 3, "encoder_hidden_size": 1024}  # fmt: skip
    vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
              "num_attention_heads": 16, "image_size": 384, "patch_size": 16}  # fmt: skip
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision))
    with torch.no_grad():  # captions of `caption_tokens` hotel words, as a trained captioner's
        bias = model.text_decoder.cls.predictions.decoder.bias
        bias.fill_(-1e4)  # (fillers would make captions of 77+ CLIP tokens: a truncated chain)
        bias[len(SPECIAL) : len(SPECIAL) + len(WORDS)] = 0.0
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}),
        tokenizer=tokenizer,
    )
    return model.eval(), processor


def reduced_labels(dest: Path) -> Path:
    import clip_interrogator

    src = Path(clip_interrogator.__file__).parent / "data"
    dest.mkdir(parents=True, exist_ok=True)
    for name, k in LABEL_STEPS.items():
        lines = src.joinpath(name).read_text(encoding="utf-8", errors="replace").splitlines()
        dest.joinpath(name).write_text("\n".join(lines[::k]) + "\n", encoding="utf-8")
    return dest


def build(workdir: Path, candidates: int, caption_tokens: int, device: str, dtype: str):
    import open_clip
    import torch
    from clip_interrogator import Config, Interrogator

    from alien_hotels.captioning.fastchain import encode_text_grouped

    blip, processor = blip_large(workdir, caption_tokens)
    blip = blip.to(device, getattr(torch, dtype))
    torch.manual_seed(0)
    precision = "fp16" if dtype == "float16" else "fp32"  # as models.load_interrogator does
    clip, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-L-14", pretrained=None, precision=precision, device=device
    )
    clip.eval()
    cfg = Config(caption_model_name="blip-large", clip_model_name="ViT-L-14/random",
                 cache_path=str(workdir / "cache"), download_cache=False,
                 data_path=str(reduced_labels(workdir / "labels")), device=device, quiet=True,
                 caption_max_length=caption_tokens,
                 flavor_intermediate_count=candidates)  # fmt: skip
    cfg.caption_model, cfg.caption_processor = blip, processor
    cfg.clip_model, cfg.clip_preprocess = clip, preprocess

    # Setup only: the label tables' embeddings through the packed encoder (the library's own
    # 77-token encode of ~2,900 phrases would take the better part of an hour here).
    def packed_encode(tokens, normalize=False):
        return torch.cat([encode_text_grouped(clip, [t]) for t in tokens.split(256)])

    clip.encode_text = packed_encode
    try:
        ci = Interrogator(cfg)
    finally:
        del clip.encode_text
    ci.dtype = getattr(torch, dtype)  # caption inputs, as models.load_interrogator sets it
    return ci


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# CPU: process CPU time (one torch thread), so other jobs on a shared machine do not inflate
# the figures; CUDA: wall time (after synchronising).
CLOCKS = {"cpu": time.process_time, "cuda": time.perf_counter}


@contextmanager
def timing(obj, name: str, times: dict, key: str, clock):
    """Add the wall time of every `obj.name(...)` call (not nested in another timed call of the
    same key) to `times[key]`."""
    original = getattr(obj, name)
    depth = [0]

    def timed(*args, **kwargs):
        depth[0] += 1
        sync()
        start = clock()
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
            sync()
            if depth[0] == 0:
                times[key] += clock() - start

    setattr(obj, name, timed)
    try:
        yield
    finally:
        if isinstance(obj, type):
            setattr(obj, name, original)
        else:
            delattr(obj, name)  # the bound method shows through again


def main() -> None:
    import numpy as np
    import torch
    from clip_interrogator.clip_interrogator import LabelTable
    from PIL import Image

    from alien_hotels.captioning.fastchain import FastChain
    from alien_hotels.captioning.interrogate import BatchInterrogator
    from alien_hotels.config import compose_params, validate_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=512, help="flavor_intermediate_count")
    parser.add_argument("--steps", type=int, default=2, help="max_flavors")
    parser.add_argument("--min-steps", type=int, default=None, help="min_flavors (--steps)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--caption-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    clock = CLOCKS[args.device]
    min_steps = args.steps if args.min_steps is None else args.min_steps
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        for _ in range(args.images)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        start = clock()
        ci = build(Path(tmp), args.candidates, args.caption_tokens, args.device, args.dtype)
        n_labels = sum(len(t.labels) for t in (ci.artists, ci.flavors, ci.mediums,
                                               ci.movements, ci.trendings))  # fmt: skip
        print(f"setup (random BLIP-large + ViT-L-14, {n_labels} label phrases embedded): "
              f"{clock() - start:.0f} s")  # fmt: skip

        lib = defaultdict(float)
        lib_out = []
        with (
            timing(ci, "generate_caption", lib, "caption", clock),
            timing(ci, "image_to_features", lib, "image features", clock),
            timing(LabelTable, "rank", lib, "label ranking", clock),
            timing(ci, "chain", lib, "chain", clock),
        ):
            start = clock()
            for image in images:
                lib_out.append(ci.interrogate(image, min_steps, args.steps))
            sync()
            lib["total"] = clock() - start

        overrides = ["caption=clip_interrogator", "caption.chain=fast",
                     f"caption.min_flavors={min_steps}", f"caption.max_flavors={args.steps}",
                     f"caption.flavor_intermediate_count={args.candidates}"]  # fmt: skip
        cfg = validate_params(compose_params(overrides, CONF)).caption
        engine = BatchInterrogator(ci, cfg)
        ours = defaultdict(float)
        with (
            timing(LabelTable, "rank", ours, "label ranking", clock),
            timing(FastChain, "chains", ours, "chain", clock),
        ):
            start = clock()
            t0 = clock()
            captions = engine.captions(images)
            ours["caption"] = clock() - t0
            t0 = clock()
            feats = engine.image_features(images)
            ours["image features"] = clock() - t0
            results = engine.prompts(feats, captions, "best")
            sync()
            ours["total"] = clock() - start
    ours_out = [r.prompt for r in results]
    n = args.images
    print(
        f"mode=best per image, {n} images 640x480, {args.device} {args.dtype}, torch threads "
        f"{torch.get_num_threads()}, chain: {args.candidates} candidates, "
        f"{min_steps}..{args.steps} steps"
    )
    what = "wall s" if args.device == "cuda" else "CPU s"
    print(f"  {'part (' + what + ')':22} {'library':>9} {'ours':>9} {'speed-up':>9}")
    for part in ("caption", "image features", "label ranking", "chain", "total"):
        a, b = lib[part] / n, ours[part] / n
        print(f"  {part:22} {a:9.2f} {b:9.2f} {a / b if b else float('inf'):8.1f}x")
    other_lib = lib["total"] - sum(lib[p] for p in ("caption", "image features",
                                                    "label ranking", "chain"))  # fmt: skip
    print(f"  (library other: {other_lib / n:.2f} s/image: tokenizing, the final 4-way pick)")
    stats = [r.stats for r in results]
    steps = sum(s.steps for s in stats)
    fallbacks = sum(s.fallbacks for s in stats)
    same = sum(a == b for a, b in zip(ours_out, lib_out, strict=True))
    print(
        f"  same strings as the library: {same}/{n} images; chain steps {steps}, near-tie "
        f"fallbacks {fallbacks} ({fallbacks / max(1, steps):.1%} of steps), rescored "
        f"candidates {sum(s.rescored for s in stats)} (margin {engine.chain.margin:g})"
    )
    lib_step = lib["chain"] / max(1, steps)
    ours_step = ours["chain"] / max(1, steps)
    print(f"  per chain step: library {lib_step:.1f} s, ours {ours_step:.2f} s "
          f"({lib_step / ours_step:.1f}x) at {args.candidates} candidates")  # fmt: skip


if __name__ == "__main__":
    main()
