"""Benchmark: per-step overhead of the flavor chain outside the model, library vs FastChain.

On a GPU the text tower's arithmetic is nearly free and what is left of a chain step is the host
side: tokenizing the candidate strings, Python per candidate, small tensor ops and host syncs,
and the rescoring of the near-tie band. This measures that part on CPU with the tiny random test
CLIP (width 32, 2 layers): a chain of `--steps` steps over `--candidates` candidates
(clip-interrogator's own flavors), the library's `Interrogator.chain` and ours in the same run.
Every call of the text tower (`encode_text`, our packed `encode_text_grouped`) is timed apart:
"model" is that, "overhead" is the rest of the step. A forced margin puts a given fraction of
the candidates in the band at the first step (0: the float32 margin; 1: every candidate).
`torch.profiler` counts the aten operators per step that launch a kernel (views and allocations
left out): a proxy for GPU launch overhead.

    PYTHONPATH=src python benchmarks/bench_chain_overhead.py [--candidates 2048] [--steps 4]
        [--bands 0 0.33 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

PROMPT = "a hotel room with a large bed and a television, interior design"
# Operators that only make views, metadata or allocations: no kernel on a GPU.
NO_KERNEL = {
    "aten::view", "aten::as_strided", "aten::t", "aten::transpose", "aten::_reshape_alias",
    "aten::reshape", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::slice",
    "aten::select", "aten::detach", "aten::alias", "aten::resolve_conj", "aten::resolve_neg",
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::lift_fresh",
    "aten::permute", "aten::chunk", "aten::split", "aten::unbind", "aten::flatten",
    "aten::contiguous", "aten::_unsafe_view", "aten::narrow", "aten::numpy_T",
    "aten::split_with_sizes",
    "aten::unflatten", "aten::view_as", "aten::expand_as", "aten::broadcast_tensors",
    "aten::result_type", "aten::is_nonzero", "aten::_has_compatible_shallow_copy_type",
}  # fmt: skip
SYNC = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero"}


def tiny_setup(candidates: int):
    import clip_interrogator
    import open_clip
    import torch
    from clip_interrogator import Config, Interrogator

    from alien_hotels.testing.interrogator import tiny_clip

    model, _ = tiny_clip(0)
    ci = Interrogator.__new__(Interrogator)  # only what `chain` uses: no label tables
    ci.config = Config(caption_model_name=None, device="cpu", quiet=True)
    ci.device, ci.clip_model = "cpu", model
    ci.tokenize = open_clip.get_tokenizer("ViT-L-14")  # the real CLIP tokenizer
    ci.caption_offloaded = ci.clip_offloaded = False
    flavors_file = Path(clip_interrogator.__file__).parent / "data" / "flavors.txt"
    flavors = flavors_file.read_text(encoding="utf-8").splitlines()
    flavors = random.Random(0).sample(flavors, candidates)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, model.text_projection.shape[1], generator=gen)
    return ci, flavors, image / image.norm(dim=-1, keepdim=True)


def band_margin(ci, image, flavors, fraction: float) -> float | None:
    """A margin that puts `fraction` of the first step's candidates within reach of the leader
    (None: the float32 margin)."""
    from alien_hotels.captioning.fastchain import FastChain

    if fraction <= 0:
        return None
    if fraction >= 1:
        return float("inf")
    texts = [f"{PROMPT}, {f}" for f in flavors]
    sims = FastChain(ci).similarities([ci.tokenize(texts)], [image])[0].float()
    ordered = sims.sort(descending=True).values
    k = max(2, round(fraction * len(texts)))
    return float(ordered[0] - (ordered[k - 1] + ordered[k]) / 2)


@contextmanager
def model_timer(ci, times: dict):
    """Time every text-tower forward (library `encode_text`, ours `encode_text_grouped`)."""
    from alien_hotels.captioning import fastchain

    model = ci.clip_model
    originals = {"encode_text": model.encode_text, "grouped": fastchain.encode_text_grouped}

    def wrap(key, fn):
        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                times[key] += time.process_time() - start

        return timed

    model.encode_text = wrap("model", originals["encode_text"])
    fastchain.encode_text_grouped = wrap("model", originals["grouped"])
    try:
        yield
    finally:
        del model.encode_text
        fastchain.encode_text_grouped = originals["grouped"]


def run_chain(ci, which: str, image, flavors, steps: int, margin):
    from alien_hotels.captioning.fastchain import ChainJob, FastChain

    sim = ci.similarity(image, PROMPT)
    if which == "library":
        return ci.chain(image, flavors, PROMPT, sim, steps, steps), steps, 0
    job = ChainJob(image, flavors, PROMPT, sim, steps, steps)
    out = FastChain(ci, margin=margin).chains([job])[0]
    return out, job.stats.steps, job.stats.rescored


def kernel_ops(fn) -> tuple[int, int]:
    """(aten operators that would launch a kernel, host syncs) while `fn` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = syncs = 0
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        syncs += e.name in SYNC
        leaf = not any(c.name.startswith("aten::") for c in e.cpu_children)
        ops += leaf and e.name not in NO_KERNEL
    return ops, syncs


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--bands", type=float, nargs="+", default=[0.0, 0.33, 1.0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ci, flavors, image = tiny_setup(args.candidates)
    print(
        f"tiny CLIP (width 32, 2 layers), real tokenizer, CPU, 1 thread; {args.candidates} "
        f"candidates, {args.steps} chain steps; CPU ms per step"
    )
    print(
        f"  {'band':>6} {'who':8} {'total':>8} {'model':>8} {'overhead':>9} "
        f"{'aten ops':>9} {'syncs':>6} {'rescored':>9}"
    )
    with torch.no_grad():
        lib = None
        for fraction in args.bands:
            margin = band_margin(ci, image, flavors, fraction)
            rows = {}
            for which in ("library", "ours"):
                if which == "library" and lib is not None:
                    rows[which] = lib  # the library's step does not depend on the margin
                    continue
                times = defaultdict(list)
                for _ in range(args.repeats):
                    t = defaultdict(float)
                    with model_timer(ci, t):
                        start = time.process_time()
                        out, steps, rescored = run_chain(
                            ci, which, image, flavors, args.steps, margin
                        )
                        total = time.process_time() - start
                    times["total"].append(total / steps)
                    times["model"].append(t["model"] / steps)
                ops, syncs = kernel_ops(
                    lambda which=which, margin=margin: run_chain(
                        ci, which, image, flavors, args.steps, margin
                    )
                )
                total, model = (statistics.median(times[k]) for k in ("total", "model"))
                rows[which] = (total, model, ops / steps, syncs / steps, rescored / steps, out)
            lib = rows["library"]
            for which, (total, model, ops, syncs, rescored, _) in rows.items():
                label = f"{fraction:.2f}" if which == "library" else ""
                print(
                    f"  {label:>6} {which:8} {total * 1e3:8.1f} {model * 1e3:8.1f} "
                    f"{(total - model) * 1e3:9.1f} {ops:9.0f} {syncs:6.0f} {rescored:9.0f}"
                )
            (lt, lm, lo, *_, lout), (ot, om, oo, *_, oout) = rows["library"], rows["ours"]
            print(
                f"  {'':>6} library/ours: overhead {(lt - lm) / (ot - om):.1f}x, aten ops "
                f"{lo / oo:.1f}x, total {lt / ot:.1f}x; same string: {lout == oout}"
            )


if __name__ == "__main__":
    main()
