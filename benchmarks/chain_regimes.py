"""Shared setup of the flavor-chain device scripts (issue 17: `gpu_profile`, `bench_chain_cost`,
`gpu_check`): random-weight text towers, an `Interrogator` stub, candidate flavors and start
prompts, the image regimes, the band and batch-tolerance probes, and a true float32 library run.

Image regimes (features of a batch of images, unit rows):

* `random`: random unit vectors. A random direction matches no candidate and random weights
  compress similarities, so many candidates sit within the float16 margin of the leader: a third
  of 2048 fell in the band at every step on the H100, a worst case for the band.
* `planted`: each image's features are the normalised sum of the text features of its prompt
  plus one of `k` flavors from its candidate list (`"<prompt>, <flavor>"`), plus Gaussian noise
  of norm `noise`: a photo that matches its caption and a few flavors, so the chain has clear
  leaders. A random tower maps every text near one common direction (ViT-L-14, random weights:
  mean cosine ~0.77 between bare flavors, ~0.94 between candidates that share a prompt), so each
  planted feature is taken less the mean feature of the image's candidates; without that (or
  planting bare flavor features) the signal drowns in the common direction and the float16
  band stays nearly as wide as with random features (ViT-L-14, 96 candidates: 16-29 of them
  within the float16 margin, vs 2-3 as planted here, the planted flavors leading).
"""

from __future__ import annotations

import random as _random
import time
from contextlib import contextmanager
from pathlib import Path

# BLIP-like captions of hotel photos: the start of every chain (and the regimes' planted prompt).
CAPTIONS = [
    "a hotel room with a large bed and a television",
    "a swimming pool next to a hotel at night",
    "a lobby with chairs and a table and a large window",
    "a bathroom with a white sink and a mirror",
    "a balcony with a view of the ocean",
    "a restaurant with wooden tables and chairs",
    "a bedroom with two beds and a lamp",
    "a modern kitchen with a white table",
]
REGIMES = ("random", "planted")
# The vision tower is never run (image features are made here): the smallest one open_clip
# builds keeps setup and memory to the text side.
MIN_VISION = {"image_size": 32, "layers": 1, "width": 64, "head_width": 64, "patch_size": 16}
# Host syncs / waits in a profile: the outermost of these nested events is counted.
SYNC_EVENTS = (
    "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
    "cudaMemcpyAsync", "aten::item", "aten::_local_scalar_dense",
)  # fmt: skip


def tower_parser(description: str):
    """The arguments every chain benchmark shares: device, tower size, CPU threads."""
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="tiny 2-layer test CLIP (smoke)")
    parser.add_argument("--layers", type=int, default=None, help="text blocks (default 12)")
    parser.add_argument("--threads", type=int, default=1, help="CPU torch threads")
    return parser


def flavor_lines() -> list[str]:
    import clip_interrogator

    path = Path(clip_interrogator.__file__).parent / "data" / "flavors.txt"
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def candidates_and_prompts(candidates: int, images: int, extra: int = 3, seed: int = 0):
    """`candidates` flavors from clip-interrogator's list, and one start prompt per image: a
    caption plus `extra` other flavors, as the chain has built after a few steps."""
    picked = _random.Random(seed).sample(flavor_lines(), candidates + extra * images)
    flavors, rest = picked[:candidates], picked[candidates:]
    prompts = [
        ", ".join([CAPTIONS[i % len(CAPTIONS)], *rest[i * extra : (i + 1) * extra]])
        for i in range(images)
    ]
    return flavors, prompts


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def clock(device: str):
    """CUDA: wall time (callers synchronise); CPU: process CPU time, which other jobs on a
    shared machine do not inflate (one torch thread)."""
    return time.perf_counter if device == "cuda" else time.process_time


def text_clip(device: str, dtype: str, tiny: bool = False, layers: int | None = None):
    """(model, tokenizer): open_clip ViT-L-14's text tower with random weights (open_clip's
    init; `layers` fewer blocks for quick CPU runs) and a minimal vision tower, or the tiny test
    CLIP (2 layers, width 32). float16: on CUDA as open_clip's `precision="fp16"` loads it (the
    library's CUDA load: low-precision linear weights, float32 layer norms, run under autocast);
    on CPU every weight cast (there is no CPU autocast in the library)."""
    import open_clip
    import torch

    half = dtype == "float16"
    if tiny:
        from alien_hotels.testing.interrogator import tiny_clip

        model, _ = tiny_clip(0)
    else:
        cfg = open_clip.get_model_config("ViT-L-14")
        text = dict(cfg["text_cfg"], **({"layers": layers} if layers else {}))
        torch.manual_seed(0)
        cast = torch.float16 if half and device == "cuda" else None
        model = open_clip.CLIP(cfg["embed_dim"], MIN_VISION, text, cast_dtype=cast)
    model = model.to(device).eval()
    if half:
        if device == "cuda":
            open_clip.model.convert_weights_to_lp(model, torch.float16)
        else:
            model = model.half()
    return model, open_clip.get_tokenizer("ViT-L-14")


def library_stub(model, tokenizer, device: str):
    """An `Interrogator` carrying only what `chain` / `rank_top` / `similarity` use."""
    from clip_interrogator import Config, Interrogator

    ci = Interrogator.__new__(Interrogator)
    ci.config = Config(caption_model_name=None, device=device, quiet=True)
    ci.device, ci.clip_model, ci.tokenize = device, model, tokenizer
    ci.caption_offloaded = ci.clip_offloaded = False
    return ci


def text_features(ci, texts: list[str], chunk: int = 256):
    """Normalised text features (float32) through the packed encoder (setup only: the library's
    77-token encode of thousands of phrases is too slow on a CPU)."""
    import torch

    from alien_hotels.captioning.fastchain import encode_text_grouped

    on_cuda = str(ci.device).startswith("cuda")
    out = []
    with torch.no_grad(), torch.autocast("cuda", enabled=on_cuda):
        for start in range(0, len(texts), chunk):
            tokens = ci.tokenize(texts[start : start + chunk])
            out.append(encode_text_grouped(ci.clip_model, [tokens]).float())
    features = torch.cat(out)
    return features / features.norm(dim=-1, keepdim=True)


def image_features(
    regime: str,
    ci,
    prompts: list[str],
    candidates: list[list[str]] | list[str],
    k: int = 3,
    noise: float = 0.5,
    seed: int = 0,
    pool: int = 256,
):
    """(features (n, dim) float32 unit rows on `ci.device`, planted flavors per image).
    `candidates`: one list for every image or one list per image. `planted`: the normalised sum
    of the features of `"<prompt>, <flavor>"` for `k` of the image's candidates, each less the
    mean feature of `"<prompt>, <x>"` over `pool` of them, plus noise of norm `noise`."""
    import torch

    n = len(prompts)
    dim = ci.clip_model.text_projection.shape[1]
    gen = torch.Generator().manual_seed(seed)
    noise_rows = torch.randn(n, dim, generator=gen)
    noise_rows = noise_rows / noise_rows.norm(dim=-1, keepdim=True)
    if regime == "random":
        return noise_rows.to(ci.device), [[] for _ in range(n)]
    if regime != "planted":
        raise ValueError(f"unknown regime {regime!r} (one of {REGIMES})")
    per_image = candidates if candidates and isinstance(candidates[0], list) else [candidates] * n
    rng = _random.Random(seed)
    planted, rows = [], []
    for prompt, cands in zip(prompts, per_image, strict=True):
        cands = list(cands)
        picked = rng.sample(cands, min(k, len(cands)))
        sample = rng.sample(cands, min(pool, len(cands)))
        common = text_features(ci, [f"{prompt}, {x}" for x in sample]).mean(0)
        signal = (text_features(ci, [f"{prompt}, {f}" for f in picked]) - common).sum(0)
        rows.append(signal.cpu() / signal.norm().cpu())
        planted.append(picked)
    rows = torch.stack(rows) + noise * noise_rows
    return (rows / rows.norm(dim=-1, keepdim=True)).to(ci.device), planted


def margin_for_top(scores, k: int) -> float:
    """A margin that puts exactly the top `k` of `scores` within reach of the leader (`k <= 1`:
    the leader alone; `k >= len`: every candidate)."""
    ordered = scores.float().sort(descending=True).values
    if k >= len(ordered):
        return float("inf")
    k = max(1, k)
    return float(ordered[0] - (ordered[k - 1] + ordered[k]) / 2)


def band_probe(fast, prompts: list[str], candidates: list[str], features) -> dict:
    """Per image, the fast scores of its first chain step: candidates within the float32 and
    float16 margins of the leader, and the leader's gap to the runner-up (means over images)."""
    import torch

    from alien_hotels.captioning.fastchain import MARGINS

    tokens = [fast.tokens(p, candidates) for p in prompts]
    feats = [features[i : i + 1] for i in range(len(prompts))]
    with torch.no_grad():
        sims = [s.float().cpu() for s in fast.similarities(tokens, feats)]
    out = {}
    for name in ("float32", "float16"):
        counts = [int((s >= s.max() - MARGINS[name]).sum()) for s in sims]
        out[f"band@{name}"] = sum(counts) / len(counts)
    gaps = [float(s.topk(2).values[0] - s.topk(2).values[1]) for s in sims]
    out["gap"] = sum(gaps) / len(gaps)
    return out


def stats_line(jobs) -> str:
    """Band sizes of a chain run, summed over its images (`ChainStats`)."""
    s = [job.stats for job in jobs]
    steps = sum(x.steps for x in s)
    rescored = sum(x.rescored for x in s)
    return (
        f"steps {steps}, fallbacks {sum(x.fallbacks for x in s)}, rescored {rescored} "
        f"({rescored / max(1, steps):.1f} per image-step), full_batch "
        f"{sum(x.full_batch for x in s)}, library_steps {sum(x.library_steps for x in s)}"
    )


def batch_tolerance(fast, features, tokens, sizes=(2, 8, 32, 128), thirds: bool = True) -> dict:
    """max |library score of rows scored in a batch of `size` - the same rows in the full
    batch| (the library's own `rank_top` arithmetic, `FastChain.library_similarities`), for the
    top rows by score (a band is the leaders) and, `thirds`, a third of all rows. This is what
    `fastchain.TIE_TOLERANCES` must be 4x of."""
    import torch

    full = fast.library_similarities(features, tokens).float().cpu()
    n = len(tokens)
    sizes = sorted({s for s in sizes if 2 <= s < n} | ({max(2, n // 3)} if thirds else set()))
    out = {}
    order = full.argsort(descending=True)
    for size in sizes:
        idx = order[:size].sort().values  # the band keeps the library's list order
        band = fast.library_similarities(features, tokens[idx]).float().cpu()
        out[size] = float((band - full[idx]).abs().max())
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(n, generator=gen)[: max(2, n // 3)].sort().values
    band = fast.library_similarities(features, tokens[idx]).float().cpu()
    out["random third"] = float((band - full[idx]).abs().max())
    return out


@contextmanager
def true_float32():
    """Run the library (and ours) without CUDA autocast: clip-interrogator 0.6.0 enters
    `torch.cuda.amp.autocast()` (float16) around every CLIP call, whatever the weights' dtype, so
    its "float32" on CUDA is float16 arithmetic. Replacing `torch.cuda.amp.autocast` (looked up
    at call time by the library) and `torch.autocast` (ours) with disabled contexts gives a true
    float32 run with float32 weights. Nested autocasts cannot do it: an inner enabled autocast
    overrides an outer disabled one. A no-op on CPU, where CUDA autocast is off anyway."""
    import torch

    real_cuda, real = torch.cuda.amp.autocast, torch.autocast

    def off_cuda(*args, **kwargs):
        return real("cuda", enabled=False)

    def off(device_type, *args, **kwargs):
        return real(device_type, enabled=False)

    torch.cuda.amp.autocast, torch.autocast = off_cuda, off
    try:
        yield
    finally:
        torch.cuda.amp.autocast, torch.autocast = real_cuda, real


def in_precision(ci, dtype: str):
    """A shallow copy of the `Interrogator` whose CLIP and label-table embeddings are in `dtype`
    (the tables keep the library's stored float16 values; CPU upcasts them to float32 as the
    library does, CUDA keeps float16 for the autocast matmul). `dtype` equal to the model's:
    the same model. float32 on CUDA needs `true_float32()` around the calls."""
    import copy

    import numpy as np
    import torch

    low = copy.copy(ci)
    target = getattr(torch, dtype)
    if ci.clip_model.text_projection.dtype != target:
        low.clip_model = copy.deepcopy(ci.clip_model).to(target)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    for name in ("artists", "flavors", "mediums", "movements", "trendings", "negative"):
        table = getattr(ci, name, None)
        if table is None:
            continue
        table = copy.copy(table)
        table.embeds = [np.asarray(e, dtype=np_dtype) for e in table.embeds]
        setattr(low, name, table)
    return low


def profile_split(events, wall_us: float, names: list[str]) -> list[tuple]:
    """Rows (name, total us, self us, waits us, device us) of the `record_function` ranges
    `names` in a profile's `events`: total of each range's outermost occurrences, self less the
    time of nested ranges of `names`, waits the sync events inside it (outermost,
    `SYNC_EVENTS`), device the kernel time of its ops. Then "waits/syncs" (all of them) and
    "other" (the wall time no range covers, waits outside ranges excluded)."""
    wanted = set(names)

    def inside(e, pred) -> bool:
        p = e.cpu_parent
        while p is not None:
            if pred(p):
                return True
            p = p.cpu_parent
        return False

    def nearest_range(e):
        p = e.cpu_parent
        while p is not None and p.name not in wanted:
            p = p.cpu_parent
        return p

    total = dict.fromkeys(names, 0.0)
    nested = dict.fromkeys(names, 0.0)
    waits = dict.fromkeys(names, 0.0)
    device = dict.fromkeys(names, 0.0)
    all_waits = outside_waits = covered = 0.0
    for e in events:
        if e.name in wanted and not inside(e, lambda p, n=e.name: p.name == n):
            t = e.cpu_time_total
            total[e.name] += t
            device[e.name] += e.device_time_total
            parent = nearest_range(e)
            if parent is not None:
                nested[parent.name] += t
                device[parent.name] -= e.device_time_total
            else:
                covered += t
        elif e.name in SYNC_EVENTS and not inside(e, lambda p: p.name in SYNC_EVENTS):
            t = e.cpu_time_total
            all_waits += t
            parent = nearest_range(e)
            if parent is None:
                outside_waits += t
            else:
                waits[parent.name] += t
    rows = [(n, total[n], total[n] - nested[n], waits[n], device[n]) for n in names]
    rows.append(("waits/syncs", all_waits, all_waits, all_waits, 0.0))
    other = max(0.0, wall_us - covered - outside_waits)
    rows.append(("other", other, other, 0.0, 0.0))
    return rows


def kernel_us(events) -> float:
    """Sum of device (kernel, memcpy, memset) time in a profile's events."""
    from torch.autograd import DeviceType

    device = [e for e in events if e.device_type != DeviceType.CPU]
    if device:
        return float(sum(e.time_range.elapsed_us() for e in device))
    return float(sum(k.duration for e in events for k in getattr(e, "kernels", [])))
