"""CLIP Interrogator's flavor chain with the same strings for far less compute.

`Interrogator.chain` spends nearly all of `mode=best` in `rank_top`: each greedy step encodes
`"<current prompt>, <flavor>"` for up to 2048 flavors through the CLIP text tower at the full
77-token context. Two facts make most of that redundant:

* the text transformer is causal and pools at the end-of-text token, so the hidden states of the
  token prefix every candidate shares are the same for all of them: they are computed once per
  step, and each candidate runs only its own suffix tokens, attending to the cached keys and
  values of the prefix;
* positions after end-of-text never reach the pooled token, so they are not computed at all
  (the suffix tokens of all candidates are packed into one sequence for the linear layers).

The chains of several images advance together (`chains`): each image has its own prefix, and
the suffixes of every image's candidates share one packed forward.

Exactness (banded fallback): the fast scores equal the library's up to float rounding. Every
candidate whose fast score lies within `margin` of the leader's is rescored by the library's own
`rank_top` (full 77-token encode, same precision, same order, so its tie order holds); with
`margin` at least twice the fast path's largest deviation from the library, the library's choice
is always inside that band (docs/captioning.md states the contract per precision). Unsupported
text towers (not open_clip's default causal `ResidualAttentionBlock` with argmax pooling) use
the library path throughout.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

from alien_hotels.captioning.libcompat import check_private_apis

# Band half-widths per score precision: 4x the largest fast-vs-library similarity deviation
# measured on CPU over 26 random text towers (widths 32-512) and 6,400 candidates per precision
# (benchmarks/bench_margins.py; max float32 1.2e-6, float16 5.0e-3, bfloat16 4.4e-2). The band
# needs 2x; the rest is headroom for towers not sampled (docs/performance.md).
MARGINS = {"float32": 5e-6, "float16": 2e-2, "bfloat16": 2e-1}


@dataclass
class ChainStats:
    """Per image: chain steps, steps with a near tie, candidates the library rescored."""

    steps: int = 0
    fallbacks: int = 0
    rescored: int = 0
    library_steps: int = 0  # whole steps run by the library (unsupported tower, < 2 candidates)

    def as_dict(self) -> dict[str, int]:
        return {
            "chain_steps": self.steps,
            "chain_fallbacks": self.fallbacks,
            "chain_rescored": self.rescored,
            "chain_library_steps": self.library_steps,
        }


@dataclass
class ChainJob:
    """One image's `Interrogator.chain` call, as arguments plus its running state."""

    features: object
    phrases: list[str]
    best_prompt: str = ""
    best_sim: float = 0
    min_count: int = 8
    max_count: int = 32
    reverse: bool = False
    stats: ChainStats = field(default_factory=ChainStats)


@dataclass
class _Running:
    """A chain in progress: candidates left, current prompt and similarity, step index."""

    job: ChainJob
    phrases: set[str]
    curr: str = ""
    curr_sim: float = 0
    idx: int = 0


def score_precision(model, on_cuda: bool) -> str:
    """The dtype similarities are computed in: the library runs CUDA under autocast (float16
    matmuls whatever the weights), elsewhere in the text tower's own dtype."""
    import torch

    if on_cuda:
        return str(torch.get_autocast_dtype("cuda")).replace("torch.", "")
    return str(model.transformer.get_cast_dtype()).replace("torch.", "")


class FastChain:
    def __init__(self, ci, margin: float | None = None):
        check_private_apis()
        self.ci = ci
        self.supported = _supported(ci.clip_model)
        self._margin = margin

    @property
    def margin(self) -> float:
        if self._margin is not None:
            return self._margin
        precision = score_precision(self.ci.clip_model, str(self.ci.device).startswith("cuda"))
        return MARGINS.get(precision, max(MARGINS.values()))

    def __call__(
        self,
        image_features,
        phrases: list[str],
        best_prompt: str = "",
        best_sim: float = 0,
        min_count: int = 8,
        max_count: int = 32,
        desc: str = "Chaining",
        reverse: bool = False,
    ) -> str:
        """`Interrogator.chain` for one image (same signature)."""
        job = ChainJob(
            image_features, phrases, best_prompt, best_sim, min_count, max_count, reverse
        )
        return self.chains([job])[0]

    def chains(self, jobs: list[ChainJob]) -> list[str]:
        """`Interrogator.chain` for several images, their steps advanced together; each result
        is what the library's chain returns for that image alone."""
        from clip_interrogator.clip_interrogator import _prompt_at_max_len

        ci = self.ci
        ci._prepare_clip()
        # The library's set iteration order decides ties: keep it.
        runs = [_Running(job, set(job.phrases)) for job in jobs]
        fresh = [r for r in runs if not r.job.best_prompt]
        firsts = self.rank_many([(r.job, list(r.phrases)) for r in fresh])
        for r, first in zip(fresh, firsts, strict=True):
            r.job.best_prompt = first
            r.job.best_sim = ci.similarity(r.job.features, first)
            r.phrases.remove(first)
        for r in runs:
            r.curr, r.curr_sim = r.job.best_prompt, r.job.best_sim
        active = [r for r in runs if r.job.max_count > 0]
        while active:
            tops = self.rank_many([(r.job, [f"{r.curr}, {f}" for f in r.phrases]) for r in active])
            still = []
            for r, best in zip(active, tops, strict=True):
                job = r.job
                flave = best[len(r.curr) + 2 :]
                prompt = r.curr + ", " + flave
                sim = ci.similarity(job.features, prompt)
                if job.reverse:
                    sim = -sim
                if sim > job.best_sim:
                    job.best_prompt, job.best_sim = prompt, sim
                if not (sim > r.curr_sim or r.idx < job.min_count):
                    continue  # the library's `break`: this chain is done
                r.curr, r.curr_sim = prompt, sim
                if _prompt_at_max_len(prompt, ci.tokenize):
                    continue
                r.phrases.remove(flave)
                r.idx += 1
                if r.idx < job.max_count:
                    still.append(r)
            active = still
        return [r.job.best_prompt for r in runs]

    # -- ranking --------------------------------------------------------------------------------

    def rank_top(self, image_features, text_array: list[str], reverse: bool = False) -> str:
        """`Interrogator.rank_top` for one image."""
        return self.rank_many([(ChainJob(image_features, [], reverse=reverse), text_array)])[0]

    def rank_many(self, groups: list[tuple[ChainJob, list[str]]]) -> list[str]:
        """`Interrogator.rank_top` for each (image, candidates) pair, scored in one forward."""
        import torch

        ci = self.ci
        fast = [(job, texts) for job, texts in groups if self.supported and len(texts) >= 2]
        sims = []
        if fast:
            tokens = [ci.tokenize(list(texts)).to(ci.device) for _, texts in fast]
            sims = self.similarities(tokens, [job.features for job, _ in fast])
        scored = iter(sims)
        result = []
        for job, texts in groups:
            job.stats.steps += 1
            if not (self.supported and len(texts) >= 2):
                job.stats.library_steps += 1
                result.append(ci.rank_top(job.features, texts, reverse=job.reverse))
                continue
            s = next(scored).float()
            if job.reverse:
                s = -s
            band = torch.nonzero(s >= s.max() - self.margin).flatten().tolist()
            if len(band) == 1:
                result.append(texts[band[0]])
                continue
            # Too close to call in this precision: the library scores the band (in list order,
            # so its first-index tie rule holds) and decides.
            job.stats.fallbacks += 1
            job.stats.rescored += len(band)
            result.append(ci.rank_top(job.features, [texts[i] for i in band], reverse=job.reverse))
        return result

    def similarities(self, tokens: list, image_features: list) -> list:
        """Per group: cosine similarity of each token row's text features with that group's
        image features, as `encode_text` + normalise + `@ image_features.T` gives them."""
        import torch

        model = self.ci.clip_model
        on_cuda = tokens[0].is_cuda
        autocast = torch.autocast("cuda") if on_cuda else nullcontext()
        with torch.no_grad(), autocast:
            features = encode_text_grouped(model, tokens)
            features = features / features.norm(dim=-1, keepdim=True)
            out, start = [], 0
            for t, image in zip(tokens, image_features, strict=True):
                out.append((features[start : start + len(t)] @ image.T)[:, 0])
                start += len(t)
            return out


def _supported(model) -> bool:
    try:
        import torch.nn as nn
        from open_clip.transformer import ResidualAttentionBlock

        blocks = model.transformer.resblocks
        return (
            getattr(model, "text_pool_type", None) == "argmax"
            and getattr(model.transformer, "batch_first", False)
            and model.attn_mask is not None
            and all(
                type(b) is ResidualAttentionBlock
                and isinstance(b.attn, nn.MultiheadAttention)
                and b.attn.batch_first
                and b.attn._qkv_same_embed_dim
                and b.attn.bias_k is None
                and not hasattr(b, "ln_1_kv")
                for b in blocks
            )
        )
    except AttributeError:
        return False


def common_prefix_length(tokens) -> int:
    """Leading positions shared by every row, stopping before the earliest end-of-text."""
    same = (tokens == tokens[:1]).all(dim=0)
    differs = (~same).nonzero()
    first_diff = int(differs[0]) if len(differs) else tokens.shape[1]
    return min(first_diff, int(tokens.argmax(dim=-1).min()))


def encode_text_shared_prefix(model, tokens):
    """`model.encode_text(tokens)` for one group of rows sharing a prefix."""
    return encode_text_grouped(model, [tokens])


def encode_text_grouped(model, groups: list):
    """`model.encode_text(torch.cat(groups))` (open_clip CLIP, causal, argmax pooling). Each
    group's shared prefix runs once (all groups' prefixes in one padded batch); each row's
    suffix, up to its end-of-text token, runs against its group's cached keys/values. The suffix
    tokens of all rows of all groups are packed into one sequence for the linear layers (no
    padding work); only attention sees them padded per row."""
    import torch

    cast = model.transformer.get_cast_dtype()
    pos = model.positional_embedding.to(cast)
    device = groups[0].device
    prefix_lens = [common_prefix_length(t) for t in groups]
    tokens = torch.cat(groups)
    group_of_row = torch.cat(
        [torch.full((len(t),), g, device=device) for g, t in enumerate(groups)]
    )
    plen = torch.tensor(prefix_lens, device=device)[group_of_row]
    prefix_kv = []
    width_p = max(prefix_lens)
    if width_p > 0:  # pads after a shorter prefix never reach its real positions (causal)
        x = model.token_embedding(torch.stack([t[0, :width_p] for t in groups])).to(cast)
        x = x + pos[:width_p]
        for block in model.transformer.resblocks:
            x, kv = _block(block, x)
            prefix_kv.append(kv)
    eot = tokens.argmax(dim=-1)  # open_clip pools at argmax: the end-of-text token
    lengths = eot - plen + 1
    width = int(lengths.max())
    offsets = torch.arange(width, device=device)
    valid = offsets[None, :] < lengths[:, None]  # (n, width): real suffix positions
    rows, cols = valid.nonzero(as_tuple=True)  # packed order: row-major
    x = model.token_embedding(tokens[rows, plen[rows] + cols]).to(cast)
    x = x + pos[plen[rows] + cols]
    layout = (valid, rows, cols, [len(t) for t in groups], prefix_lens)
    for i, block in enumerate(model.transformer.resblocks):
        x = _packed_block(block, x, prefix_kv[i] if prefix_kv else None, layout)
    last = torch.cumsum(lengths, 0) - 1  # each row's end-of-text in the packed sequence
    pooled = model.ln_final(x[last])
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            pooled = model.text_projection(pooled)
        else:
            pooled = pooled @ model.text_projection
    return pooled


def _packed_block(block, x, prefix_kv, layout):
    """One `ResidualAttentionBlock` on packed suffix tokens `x` (T, D): linear layers on the
    packed tokens, attention per group on a (rows, width) padded view. Pads sit after each row's
    real tokens, so the causal mask alone keeps them out of every real position. A group's
    prefix keys/values are broadcast, never copied per row."""
    import torch
    import torch.nn.functional as F

    valid, rows, cols, group_sizes, prefix_lens = layout
    attn = block.attn
    d = x.shape[1]
    h = attn.num_heads
    n, width = valid.shape
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    padded = qkv.new_zeros((n, width, 3 * d))
    padded[rows, cols] = qkv
    q, k, v = (u.view(n, width, h, d // h).transpose(1, 2) for u in padded.chunk(3, dim=-1))
    causal = torch.ones(width, width, dtype=torch.bool, device=x.device).tril()
    scale = (d // h) ** -0.5
    out = torch.empty_like(q)
    start = 0
    for g, size in enumerate(group_sizes):
        sl = slice(start, start + size)
        start += size
        own = (q[sl] @ k[sl].transpose(-1, -2)) * scale
        own = own.masked_fill(~causal, float("-inf"))
        p = prefix_lens[g]
        if prefix_kv is None or p == 0:
            out[sl] = own.float().softmax(-1).to(q.dtype) @ v[sl]
            continue
        pk, pv = (t[g : g + 1, :, :p] for t in prefix_kv)
        pre = (q[sl] @ pk.transpose(-1, -2)) * scale  # (size, h, width, p), prefix broadcast
        weights = torch.cat([pre, own], dim=-1).float().softmax(-1).to(q.dtype)
        out[sl] = weights[..., :p] @ pv + weights[..., p:] @ v[sl]
    out = out.transpose(1, 2).reshape(n, width, d)[rows, cols]
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _block(block, x):
    """One `ResidualAttentionBlock` on whole prefixes `x` (G, S, D), causal. Returns the new
    hidden states and their keys/values (G, H, S, d)."""
    import torch
    import torch.nn.functional as F

    attn = block.attn
    b, s, d = x.shape
    h = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(b, s, h, d // h).transpose(1, 2) for t in (q, k, v))
    causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
    out = out.transpose(1, 2).reshape(b, s, d)
    x = x + block.ls_1(attn.out_proj(out))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, (k, v)
