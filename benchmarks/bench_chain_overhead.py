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
SYNC = {"aten::_local_scalar_dense", "aten::nonzero"}  # a device-to-host wait on a GPU


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


def run_chain(ci, fast, image, flavors, steps: int):
    """One chain of `steps` steps: the library's (`fast` None) or ours; (string, rescored)."""
    from alien_hotels.captioning.fastchain import ChainJob

    sim = ci.similarity(image, PROMPT)
    if fast is None:
        return ci.chain(image, flavors, PROMPT, sim, steps, steps), 0
    job = ChainJob(image, flavors, PROMPT, sim, steps, steps)
    return fast.chains([job])[0], job.stats.rescored


@contextmanager
def host_scopes():
    """Mark host-only work (tokenizing, building token rows, the forward's layout and the band
    choice, all on CPU tensors) for the profiler: no kernels there on a GPU."""
    from open_clip.tokenizer import SimpleTokenizer
    from torch.profiler import record_function

    from alien_hotels.captioning import fastchain

    targets = [(SimpleTokenizer, "__call__"), (getattr(fastchain, "ChainTokens", None), "__call__"),
               (fastchain, "_layout"), (fastchain, "_band")]  # fmt: skip
    targets = [(obj, name) for obj, name in targets if hasattr(obj, name)]  # older FastChains
    originals = [getattr(obj, name) for obj, name in targets]

    def scoped(fn):
        def run(*args, **kwargs):
            with record_function("host"):
                return fn(*args, **kwargs)

        return run

    for (obj, name), fn in zip(targets, originals, strict=True):
        setattr(obj, name, scoped(fn))
    try:
        yield
    finally:
        for (obj, name), fn in zip(targets, originals, strict=True):
            setattr(obj, name, fn)


def kernel_ops(fn) -> tuple[int, int, int]:
    """While `fn` runs: aten operators that would launch a kernel on a GPU (leaf operators
    outside host-only work, views and allocations left out), host syncs among them (`item`),
    and operators in host-only work."""
    from torch.profiler import ProfilerActivity, profile

    with host_scopes(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = syncs = host = 0
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        parent, on_host = e.cpu_parent, False
        while parent is not None and not on_host:
            on_host, parent = parent.name == "host", parent.cpu_parent
        leaf = not any(c.name.startswith("aten::") for c in e.cpu_children)
        if on_host:
            host += leaf
        elif leaf and e.name not in NO_KERNEL:
            ops += 1
            syncs += e.name in SYNC
    return ops, syncs, host


def measure(ci, fast, image, flavors, steps: int, repeats: int):
    """Per step: (total s, model s, kernel ops, syncs, host ops, rescored), and the string."""
    totals, models = [], []
    for _ in range(repeats):
        t = defaultdict(float)
        with model_timer(ci, t):
            start = time.process_time()
            out, rescored = run_chain(ci, fast, image, flavors, steps)
            totals.append((time.process_time() - start) / steps)
        models.append(t["model"] / steps)
    ops, syncs, host = kernel_ops(lambda: run_chain(ci, fast, image, flavors, steps))
    row = (statistics.median(totals), statistics.median(models), ops / steps, syncs / steps,
           host / steps, rescored / steps)  # fmt: skip
    return row, out


def main() -> None:
    import torch

    from alien_hotels.captioning.fastchain import FastChain

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
        f"candidates, {args.steps} chain steps; per step: CPU ms, aten operators that launch a "
        "kernel on a GPU, syncs among them, operators on host-only tensors"
    )
    head = f"{'band':>6} {'who':8} {'total':>8} {'model':>8} {'overhead':>9} {'kernel ops':>11}"
    print(f"  {head} {'syncs':>6} {'host ops':>9} {'rescored':>9}")
    with torch.no_grad():
        lib, lib_out = measure(ci, None, image, flavors, args.steps, args.repeats)
        fast = FastChain(ci)
        start = time.process_time()
        if hasattr(fast, "tokens"):  # fills the phrase cache, once per phrase per FastChain
            fast.tokens(PROMPT, flavors)
        fill = time.process_time() - start
        for fraction in args.bands:
            fast._margin = band_margin(ci, image, flavors, fraction)
            ours, out = measure(ci, fast, image, flavors, args.steps, args.repeats)
            for who, (total, model, ops, syncs, host, rescored) in (
                ("library", lib),
                ("ours", ours),
            ):
                label = f"{fraction:.2f}" if who == "library" else ""
                print(
                    f"  {label:>6} {who:8} {total * 1e3:8.1f} {model * 1e3:8.1f} "
                    f"{(total - model) * 1e3:9.1f} {ops:11.0f} {syncs:6.0f} {host:9.0f} "
                    f"{rescored:9.0f}"
                )
            print(
                f"  {'':>6} library/ours: overhead {(lib[0] - lib[1]) / (ours[0] - ours[1]):.1f}x, "
                f"kernel ops {lib[2] / ours[2]:.1f}x, total {lib[0] / ours[0]:.1f}x; same string: "
                f"{out == lib_out}"
            )
    print(
        f"  ours, once per phrase (cold cache, {args.candidates} phrases): {fill * 1e3:.1f} ms, "
        "not in the per-step figures (the cache lives as long as the FastChain: all images of "
        "a stage run)"
    )


if __name__ == "__main__":
    main()
