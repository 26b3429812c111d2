"""CLIP Interrogator's flavor chain with the same strings for far less compute.

`Interrogator.chain` spends nearly all of `mode=best` in `rank_top`: each greedy step encodes
`"<current prompt>, <flavor>"` for up to 2048 flavors through the CLIP text tower at the full
77-token context. Two facts make most of that redundant:

* the text transformer is causal and pools at the end-of-text token, so the hidden states of the
  token prefix every candidate shares are the same for all of them: they are computed once per
  step (batch of one), and each candidate runs only its own suffix tokens, attending to the
  cached keys and values of the prefix;
* positions after end-of-text never reach the pooled token, so they are not computed at all
  (the suffix tokens of all candidates are packed into one sequence for the linear layers).

Exactness: the fast scores equal the library's up to float rounding (different matmul shapes).
A step's decision is taken from them only when the best candidate leads the runner-up by more
than `margin` (far above the observed rounding error for the dtype); otherwise the step is
recomputed with the library's own `rank_top` on the same list. So the chain returns the same
strings as `Interrogator.chain` (tests check it against `interrogate`/`interrogate_negative`
on many images and seeds). Unsupported text towers (not open_clip's default causal
`ResidualAttentionBlock` with argmax pooling) use the library path throughout.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext

# Decision margins per dtype: the fast path's largest deviation from the library's similarity
# measured on tiny and ViT-L-14 towers is ~1e-6 in float32 (see tests/test_fastchain.py).
MARGINS = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


class FastChain:
    def __init__(self, ci, margin: float | None = None):
        self.ci = ci
        self.stats: Counter[str] = Counter()
        self.supported = _supported(ci.clip_model)
        self._margin = margin

    @property
    def margin(self) -> float:
        if self._margin is not None:
            return self._margin
        dtype = str(self.ci.clip_model.transformer.get_cast_dtype()).replace("torch.", "")
        return MARGINS.get(dtype, 5e-2)

    # -- the library's chain, with rank_top replaced -------------------------------------------

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
        from clip_interrogator.clip_interrogator import _prompt_at_max_len

        ci = self.ci
        ci._prepare_clip()
        phrases = set(phrases)  # the library's iteration order decides ties: keep it
        if not best_prompt:
            best_prompt = self.rank_top(image_features, [f for f in phrases], reverse=reverse)
            best_sim = ci.similarity(image_features, best_prompt)
            phrases.remove(best_prompt)
        curr_prompt, curr_sim = best_prompt, best_sim

        for idx in range(max_count):
            best = self.rank_top(
                image_features, [f"{curr_prompt}, {f}" for f in phrases], reverse=reverse
            )
            flave = best[len(curr_prompt) + 2 :]
            prompt = curr_prompt + ", " + flave
            sim = ci.similarity(image_features, prompt)
            if reverse:
                sim = -sim
            if sim > best_sim:
                best_prompt, best_sim = prompt, sim
            if not (sim > curr_sim or idx < min_count):
                break
            curr_prompt, curr_sim = prompt, sim
            if _prompt_at_max_len(curr_prompt, ci.tokenize):
                break
            phrases.remove(flave)
        return best_prompt

    # -- ranking --------------------------------------------------------------------------------

    def rank_top(self, image_features, text_array: list[str], reverse: bool = False) -> str:
        """`Interrogator.rank_top`, computed with a shared-prefix KV cache."""
        ci = self.ci
        self.stats["steps"] += 1
        if not self.supported or len(text_array) < 2:
            self.stats["library"] += 1
            return ci.rank_top(image_features, text_array, reverse=reverse)
        tokens = ci.tokenize(list(text_array)).to(ci.device)
        sims = self.similarities(tokens, image_features)
        if reverse:
            sims = -sims
        top = sims.float().topk(2)
        if float(top.values[0] - top.values[1]) > self.margin:
            return text_array[int(top.indices[0])]
        self.stats["fallback"] += 1  # too close to call in this precision: the library decides
        return ci.rank_top(image_features, text_array, reverse=reverse)

    def similarities(self, tokens, image_features):
        """Cosine similarity of each token row's text features with `image_features`: what
        `encode_text` + normalise + `@ image_features.T` gives, without the redundant work."""
        import torch

        model = self.ci.clip_model
        autocast = torch.autocast("cuda") if tokens.is_cuda else nullcontext()
        with torch.no_grad(), autocast:
            features = encode_text_shared_prefix(model, tokens)
            features = features / features.norm(dim=-1, keepdim=True)
            return (features @ image_features.T)[:, 0]


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
    """`model.encode_text(tokens)` (open_clip CLIP, causal, argmax pooling): the shared prefix
    runs once; each row's suffix, up to its end-of-text token, runs against the prefix's cached
    keys/values. The suffix tokens of all rows are packed into one sequence for the linear
    layers (no padding work); only attention sees them padded per row."""
    import torch

    cast = model.transformer.get_cast_dtype()
    pos = model.positional_embedding.to(cast)
    n = tokens.shape[0]
    eot = tokens.argmax(dim=-1)  # open_clip pools at argmax: the end-of-text token
    p = common_prefix_length(tokens)
    prefix_kv = []
    if p > 0:
        x = model.token_embedding(tokens[:1, :p]).to(cast) + pos[:p]
        for block in model.transformer.resblocks:
            x, kv = _block(block, x, None)
            prefix_kv.append(kv)
    lengths = eot - p + 1
    width = int(lengths.max())
    offsets = torch.arange(width, device=tokens.device)
    valid = offsets[None, :] < lengths[:, None]  # (n, width): real suffix positions
    rows, cols = valid.nonzero(as_tuple=True)  # packed order: row-major
    x = model.token_embedding(tokens[rows, p + cols]).to(cast) + pos[p + cols]
    for i, block in enumerate(model.transformer.resblocks):
        x = _packed_block(block, x, prefix_kv[i] if prefix_kv else None, valid, rows, cols)
    last = torch.cumsum(lengths, 0) - 1  # each row's end-of-text in the packed sequence
    pooled = model.ln_final(x[last])
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            pooled = model.text_projection(pooled)
        else:
            pooled = pooled @ model.text_projection
    assert pooled.shape[0] == n
    return pooled


def _packed_block(block, x, prefix_kv, valid, rows, cols):
    """One `ResidualAttentionBlock` on packed suffix tokens `x` (T, D): linear layers on the
    packed tokens, attention on a (rows, width) padded view. Pads sit after each row's real
    tokens, so the causal mask alone keeps them out of every real position."""
    import torch
    import torch.nn.functional as F

    attn = block.attn
    d = x.shape[1]
    h = attn.num_heads
    n, width = valid.shape
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    padded = qkv.new_zeros((n, width, 3 * d))
    padded[rows, cols] = qkv
    q, k, v = (u.view(n, width, h, d // h).transpose(1, 2) for u in padded.chunk(3, dim=-1))
    mask = torch.ones(width, width, dtype=torch.bool, device=x.device).tril()
    if prefix_kv is not None:
        pk, pv = prefix_kv
        k = torch.cat([pk.expand(n, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.expand(n, -1, -1, -1), v], dim=2)
        prefix = torch.ones(width, pk.shape[2], dtype=torch.bool, device=x.device)
        mask = torch.cat([prefix, mask], dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(n, width, d)[rows, cols]
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _block(block, x, prefix_kv):
    """One `ResidualAttentionBlock` on new positions `x` (B, S, D) that follow a cached prefix
    (keys/values (1, H, P, d) or None). Returns the new hidden states and their keys/values."""
    import torch
    import torch.nn.functional as F

    attn = block.attn
    b, s, d = x.shape
    h = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(b, s, h, d // h).transpose(1, 2) for t in (q, k, v))
    own_kv = (k, v)
    causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
    if prefix_kv is not None:
        pk, pv = prefix_kv
        n = pk.shape[2]
        k = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
        causal = torch.cat([torch.ones(s, n, dtype=torch.bool, device=x.device), causal], dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
    out = out.transpose(1, 2).reshape(b, s, d)
    x = x + block.ls_1(attn.out_proj(out))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, own_kv
