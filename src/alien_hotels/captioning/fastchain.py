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

Exactness, in two levels (docs/captioning.md states the contract per precision):

1. Banded fallback. The fast scores equal the library's up to float rounding. Every candidate
   whose fast score lies within `margin` of the leader's is rescored by the library's own
   `rank_top` computation (`library_similarities`: full 77-token encode, same precision, same
   order); with `margin` at least twice the fast path's largest deviation from the library, the
   library's choice is always inside that band.
2. Full-batch decision. The last bits of a row's library score depend on the batch it is
   computed in (BLAS blocking on CPU, cuBLAS kernel choice by shape on CUDA), so the band's
   scores can differ from the library's full-step scores by up to a batch tolerance. When the
   band's two leaders are within `tie_tolerance` (twice that deviation and more), only the
   library's own batch can say which it picks: the library's computation runs over the full
   candidate list, as `rank_top` does, and decides.

Unsupported text towers (not open_clip's default causal `ResidualAttentionBlock` with argmax
pooling) use the library path throughout.

Host side (what is left of a step on a GPU): the candidates' token rows are built from the ids of
the prompt (tokenized once per step) and of each phrase (tokenized once per `FastChain`), not by
tokenizing 2048 strings per step (`ChainTokens`: equal to the tokenizer's rows, see there); the
band is rescored on those rows (the library's `rank_top` less its tokenize call, same rows); the
packed forward's layout is computed on the CPU tokens, so it makes no host syncs; the band is
chosen from one transfer of all images' scores per step.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

from alien_hotels.captioning.libcompat import check_private_apis

# Band half-widths per score precision: 4x the largest fast-vs-library similarity deviation
# measured on CPU over 26 random text towers (widths 32-512) and 6,400 candidates per precision
# (benchmarks/bench_margins.py; max float32 1.2e-6, float16 5.0e-3, bfloat16 4.4e-2). The band
# needs 2x; the rest is headroom for towers not sampled (docs/design/performance.md).
MARGINS = {"float32": 5e-6, "float16": 2e-2, "bfloat16": 2e-1}

# Leader gaps (library scores of the band) at or below which the library's full candidate batch
# decides. The decision needs 2x the largest change of a library score with batch composition
# (the same rows scored in a band batch vs in the full batch; `bench_margins.py --batch`).
# float32 on CPU: max 8.9e-8 measured (random towers of widths 32-768), so 1e-6 (11x, 16 ulps
# at 0.5). float16 and bfloat16 weights on CPU: no change measured (0); CUDA's float16 autocast,
# where cuBLAS picks kernels by shape, is not measured here (no GPU): 8 ulps of a score in
# [0.25, 0.5) (2e-3 and 1.6e-2), to be checked by `benchmarks/gpu_check.sh`, which prints it.
TIE_TOLERANCES = {"float32": 1e-6, "float16": 2e-3, "bfloat16": 1.6e-2}


@dataclass
class ChainStats:
    """Per image: chain steps, steps with a near tie, candidates the library rescored, and steps
    whose band leaders were too close for the band's batch (decided on the full batch)."""

    steps: int = 0
    fallbacks: int = 0
    rescored: int = 0
    full_batch: int = 0
    library_steps: int = 0  # whole steps run by the library (unsupported tower, < 2 candidates)

    def as_dict(self) -> dict[str, int]:
        return {
            "chain_steps": self.steps,
            "chain_fallbacks": self.fallbacks,
            "chain_rescored": self.rescored,
            "chain_full_batch": self.full_batch,
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


def span(name: str):
    """A named range in `torch.profiler` traces (benchmarks/gpu_profile.sh splits a step by
    these); costs a few microseconds when no profiler runs."""
    import torch

    return torch.profiler.record_function(name)


def score_precision(model, on_cuda: bool) -> str:
    """The dtype similarities are computed in: the library runs CUDA under autocast (float16
    matmuls whatever the weights), elsewhere in the text tower's own dtype."""
    import torch

    if on_cuda:
        return str(torch.get_autocast_dtype("cuda")).replace("torch.", "")
    return str(model.transformer.get_cast_dtype()).replace("torch.", "")


class FastChain:
    def __init__(self, ci, margin: float | None = None, tie_tolerance: float | None = None):
        check_private_apis()
        self.ci = ci
        self.supported = _supported(ci.clip_model)
        self._margin = margin
        self._tie_tolerance = tie_tolerance
        self._tokens: ChainTokens | None = None

    @property
    def precision(self) -> str:
        return score_precision(self.ci.clip_model, str(self.ci.device).startswith("cuda"))

    @property
    def margin(self) -> float:
        if self._margin is not None:
            return self._margin
        return MARGINS.get(self.precision, max(MARGINS.values()))

    @property
    def tie_tolerance(self) -> float:
        if self._tie_tolerance is not None:
            return self._tie_tolerance
        return TIE_TOLERANCES.get(self.precision, max(TIE_TOLERANCES.values()))

    @property
    def tokens(self) -> ChainTokens:
        """The candidate-row builder of the current `ci.tokenize` (a new one, with an empty
        cache, whenever the tokenizer is replaced)."""
        if self._tokens is None or self._tokens.tokenize is not self.ci.tokenize:
            self._tokens = ChainTokens(self.ci.tokenize)
        return self._tokens

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
        with span("chain.host"):
            groups = [self._candidates(r.job, None, list(r.phrases)) for r in fresh]
        firsts = self._rank(groups)
        sims = self._similarities_of(groups, firsts)
        for r, first, sim in zip(fresh, firsts, sims, strict=True):
            r.job.best_prompt, r.job.best_sim = first, sim
            r.phrases.remove(first)
        for r in runs:
            r.curr, r.curr_sim = r.job.best_prompt, r.job.best_sim
        active = [r for r in runs if r.job.max_count > 0]
        while active:
            with span("chain.host"):
                groups = [self._candidates(r.job, r.curr, list(r.phrases)) for r in active]
            tops = self._rank(groups)
            # The chosen candidate is `"<curr>, <flave>"`: the library's next prompt.
            sims = self._similarities_of(groups, tops)
            still = []
            for r, prompt, sim, group in zip(active, tops, sims, groups, strict=True):
                job = r.job
                flave = prompt[len(r.curr) + 2 :]
                if job.reverse:
                    sim = -sim
                if sim > job.best_sim:
                    job.best_prompt, job.best_sim = prompt, sim
                if not (sim > r.curr_sim or r.idx < job.min_count):
                    continue  # the library's `break`: this chain is done
                r.curr, r.curr_sim = prompt, sim
                _, candidates, rows = group
                if rows is None:
                    at_max_len = _prompt_at_max_len(prompt, ci.tokenize)
                else:  # the library's test, on the tokenizer's row of the prompt
                    at_max_len = bool(rows[candidates.index(prompt)][-1] != 0)
                if at_max_len:
                    continue
                r.phrases.remove(flave)
                r.idx += 1
                if r.idx < job.max_count:
                    still.append(r)
            active = still
        return [r.job.best_prompt for r in runs]

    def _similarities_of(self, groups: list[tuple], texts: list[str]) -> list[float]:
        """`ci.similarity(job.features, text)` per (group, chosen text): computed on the chosen
        candidate's token row where the step built one (the tokenizer's row of the text: no
        tokenizing), each in a batch of one as the library computes it, all moved to the host
        in one transfer."""
        import torch

        with span("chain.single_prompt"):
            out: list = []
            for (job, candidates, rows), text in zip(groups, texts, strict=True):
                if rows is None:
                    out.append(self.ci.similarity(job.features, text))
                else:
                    row = rows[candidates.index(text)]
                    out.append(self._library_similarity(job.features, row[None]))
            on_device = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
            if on_device:
                with span("chain.transfer"):
                    values = torch.stack([out[i] for i in on_device]).cpu().tolist()
                for i, v in zip(on_device, values, strict=True):
                    out[i] = v
            return out

    def library_similarity(self, image_features, tokens) -> float:
        """clip-interrogator 0.6.0's `Interrogator.similarity(image_features, text)` given
        `tokens = ci.tokenize([text])`."""
        return self._library_similarity(image_features, tokens).item()

    def _library_similarity(self, image_features, tokens):
        """`Interrogator.similarity`'s value, left on the device (in float64: exact, and its
        `.item()` is the library's float). Its body after the tokenize line is `rank_top`'s
        without the negation, here on a batch of one row, as the library computes it."""
        return self.library_similarities(image_features, tokens)[0].double()

    def _candidates(self, job: ChainJob, prompt: str | None, phrases: list[str]):
        """(job, texts, token rows) of one chain step: `"<prompt>, <phrase>"` per phrase (the
        bare phrases without a prompt), rows from the token cache where the tower is ours."""
        texts = phrases if prompt is None else [f"{prompt}, {f}" for f in phrases]
        if not (self.supported and len(texts) >= 2):
            return job, texts, None
        return job, texts, self.tokens(prompt, phrases)

    # -- ranking --------------------------------------------------------------------------------

    def rank_top(self, image_features, text_array: list[str], reverse: bool = False) -> str:
        """`Interrogator.rank_top` for one image."""
        return self.rank_many([(ChainJob(image_features, [], reverse=reverse), text_array)])[0]

    def rank_many(self, groups: list[tuple[ChainJob, list[str]]]) -> list[str]:
        """`Interrogator.rank_top` for each (image, candidates) pair, scored in one forward."""
        return self._rank([(job, texts, None) for job, texts in groups])

    def _rank(self, groups: list[tuple]) -> list[str]:
        """`rank_many` of (job, texts, token rows of the texts or None: tokenized here)."""
        import torch

        ci = self.ci
        fast = [
            (job, texts, ci.tokenize(texts) if tokens is None else tokens)
            for job, texts, tokens in groups
            if self.supported and len(texts) >= 2
        ]
        scores = []
        if fast:
            with span("chain.forward"):
                sims = self.similarities([t for *_, t in fast], [job.features for job, *_ in fast])
            # One transfer (one host sync) for every image's scores.
            with span("chain.transfer"):
                scores = torch.cat(sims).float().cpu().split([len(s) for s in sims])
        scored = iter(zip(fast, scores, strict=True))
        result: list[str | None] = []
        near_ties = []
        for job, texts, _ in groups:
            job.stats.steps += 1
            if not (self.supported and len(texts) >= 2):
                job.stats.library_steps += 1
                result.append(ci.rank_top(job.features, texts, reverse=job.reverse))
                continue
            (_, _, tokens), s = next(scored)
            if job.reverse:
                s = -s
            band = _band(s, self.margin)
            result.append(texts[band[0]] if len(band) == 1 else None)
            if len(band) > 1:
                near_ties.append((len(result) - 1, job, tokens, texts, band))
        if near_ties:
            with span("chain.band"):
                for i, text in zip(
                    (t[0] for t in near_ties), self._decide_bands(near_ties), strict=True
                ):
                    result[i] = text
        return result

    def _decide_bands(self, near_ties: list[tuple]) -> list[str]:
        """The library's choice among each image's near-tied candidates. The library's
        computation scores each band in a batch of its own (in list order, so its first-index
        tie rule holds; all bands launched before one transfer); where a band's two leaders are
        within `tie_tolerance`, a band batch's scores cannot say what the library's full batch
        gives, and the library's computation over all candidates decides."""
        import torch

        sims = [
            self.library_similarities(job.features, tokens[band], job.reverse)
            for _, job, tokens, _, band in near_ties
        ]
        with span("chain.transfer"):
            sims = torch.cat(sims).float().cpu().split([len(s) for s in sims])
        chosen = []
        for (_, job, tokens, texts, band), s in zip(near_ties, sims, strict=True):
            job.stats.fallbacks += 1
            job.stats.rescored += len(band)
            top = int(s.argmax())
            runner_up = float(s[torch.arange(len(s)) != top].max())
            if float(s[top]) - runner_up > self.tie_tolerance:
                chosen.append(texts[band[top]])
                continue
            job.stats.full_batch += 1
            with span("chain.full_batch"):
                chosen.append(self.library_rank_top(job.features, tokens, texts, job.reverse))
        return chosen

    def library_rank_top(self, image_features, tokens, texts: list[str], reverse: bool = False):
        """clip-interrogator 0.6.0's `Interrogator.rank_top(image_features, texts, reverse)`
        given `tokens = ci.tokenize(texts)`."""
        return texts[self.library_similarities(image_features, tokens, reverse).argmax().item()]

    def library_similarities(self, image_features, tokens, reverse: bool = False):
        """The similarities clip-interrogator 0.6.0's `rank_top` takes its argmax of, given
        `tokens = ci.tokenize(texts)`: its body after the tokenize line, verbatim but for
        `torch.cuda.amp.autocast()`, written as the `torch.autocast` it stands for."""
        import torch

        ci = self.ci
        ci._prepare_clip()
        text_tokens = tokens.to(ci.device)
        with torch.no_grad(), torch.autocast("cuda", enabled=torch.cuda.is_available()):
            text_features = ci.clip_model.encode_text(text_tokens)
            text_features /= text_features.norm(dim=-1, keepdim=True)
            similarity = text_features @ image_features.T
            if reverse:
                similarity = -similarity
        return similarity[:, 0]

    def similarities(self, tokens: list, image_features: list) -> list:
        """Per group: cosine similarity of each token row's text features with that group's
        image features, as `encode_text` + normalise + `@ image_features.T` gives them."""
        import torch

        model = self.ci.clip_model
        on_cuda = model.positional_embedding.is_cuda
        autocast = torch.autocast("cuda") if on_cuda else nullcontext()
        with torch.no_grad(), autocast:
            features = encode_text_grouped(model, tokens)
            features = features / features.norm(dim=-1, keepdim=True)
            out, start = [], 0
            for t, image in zip(tokens, image_features, strict=True):
                out.append((features[start : start + len(t)] @ image.T)[:, 0])
                start += len(t)
            return out


class ChainTokens:
    """`tokenize([f"{prompt}, {phrase}" for phrase in phrases])` without tokenizing every
    string: the phrases' ids come from a cache filled once per phrase, the prompt is tokenized
    once per call.

    Why the rows are equal (open_clip's `SimpleTokenizer`, `lower` or `whitespace` cleaning, no
    reduction): a row is `[sot] + bpe(findall(clean(text))) + [eot]`, truncated to the context
    with its last token set to `eot`. No token of its regex contains whitespace, so when
    `clean(prompt + ", " + phrase) == clean(prompt + ",") + " " + clean(phrase)` the ids are
    `encode(prompt + ",") + encode(phrase)`. For printable ASCII without `&` that equality holds
    by construction: ftfy leaves such text unchanged (its mojibake fixer returns ASCII as is; its
    other fixers act on non-ASCII, control characters and HTML entities), `html.unescape` needs
    an `&`, and whitespace cleaning joins the words `str.split` gives, which split at the added
    space. Any other candidate is checked: its full string is cleaned (the tokenizer's own
    `clean_fn`) and compared, and tokenized whole where it differs.
    Other tokenizers: every string is tokenized."""

    def __init__(self, tokenize):
        self.tokenize = tokenize
        self.supported = _concatenable(tokenize)
        # phrase -> (its ids, its cleaned text, whether it is printable ASCII without "&")
        self._phrases: dict[str, tuple[list[int], str, bool]] = {}

    def phrase(self, text: str) -> tuple[list[int], str, bool]:
        entry = self._phrases.get(text)
        if entry is None:
            tok = self.tokenize
            entry = (tok.encode(text), tok.clean_fn(text), _plain(text))
            self._phrases[text] = entry
        return entry

    def __call__(self, prompt: str | None, phrases: list[str]):
        """Token rows (CPU, long) of `"<prompt>, <phrase>"` per phrase; `prompt=None`: of the
        bare phrases."""
        import torch

        tok = self.tokenize
        if not self.supported:
            texts = phrases if prompt is None else [f"{prompt}, {f}" for f in phrases]
            return tok(texts)
        entries = [self.phrase(f) for f in phrases]
        head = [tok.sot_token_id]
        if prompt is not None:
            head += tok.encode(prompt + ",")
        n, context = len(phrases), tok.context_length
        lengths = torch.tensor([len(ids) for ids, _, _ in entries], dtype=torch.long)
        flat = torch.tensor([i for ids, _, _ in entries for i in ids], dtype=torch.long)
        rows = torch.repeat_interleave(torch.arange(n), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        cols = len(head) + torch.arange(len(flat)) - starts[rows]
        keep = cols < context  # truncation
        out = torch.zeros(n, context, dtype=torch.long)
        out[:, : min(len(head), context)] = torch.tensor(head[:context])
        out[rows[keep], cols[keep]] = flat[keep]
        eot = (len(head) + lengths).clamp(max=context - 1)  # truncated rows end in eot too
        out[torch.arange(n), eot] = tok.eot_token_id
        if prompt is not None:
            self._check(out, prompt, phrases, entries)
        return out

    def _check(self, out, prompt: str, phrases: list[str], entries) -> None:
        """Rows of candidates not provably concatenable: compare the cleaned texts, and
        tokenize whole the strings where they differ."""
        tok = self.tokenize
        plain_prompt = _plain(prompt)
        head_clean = None
        whole = []
        for i, (f, (_, clean, plain)) in enumerate(zip(phrases, entries, strict=True)):
            if plain and plain_prompt:
                continue
            if head_clean is None:
                head_clean = tok.clean_fn(prompt + ",")
            text = f"{prompt}, {f}"
            if tok.clean_fn(text) != head_clean + " " + clean:
                whole.append((i, text))
        if whole:
            index, texts = zip(*whole, strict=True)
            out[list(index)] = tok(list(texts))


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


def _band(scores, margin: float) -> list[int]:
    """Indices (in list order) of the CPU `scores` within `margin` of the best."""
    import torch

    return torch.nonzero(scores >= scores.max() - margin).flatten().tolist()


def _plain(text: str) -> bool:
    """Printable ASCII without `&`: text the tokenizer's cleaning leaves as it is, but for
    whitespace and case (see `ChainTokens`)."""
    return text.isascii() and text.isprintable() and "&" not in text


def _concatenable(tokenize) -> bool:
    """open_clip's `SimpleTokenizer` with the cleaning `ChainTokens` reasons about."""
    try:
        from open_clip import tokenizer as oct

        return (
            type(tokenize) is oct.SimpleTokenizer
            and tokenize.reduction_fn is None
            and tokenize.clean_fn in (oct._clean_lower, oct._clean_whitespace)
            and bool(tokenize.context_length)
        )
    except (ImportError, AttributeError):
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
    padding work); only attention sees them padded per row. The layout (prefix lengths, where
    each suffix token goes) is computed on the CPU tokens and moved once: no host syncs."""
    import torch

    cast = model.transformer.get_cast_dtype()
    pos = model.positional_embedding.to(cast)
    device = pos.device
    with span("chain.host"):
        groups = [t.cpu() for t in groups]
        prefix_lens, tokens, lengths, width, rows, cols, at = _layout(groups)

    def dev(t):
        return t.to(device, non_blocking=True)

    prefix_kv = []
    width_p = max(prefix_lens)
    if width_p > 0:  # pads after a shorter prefix never reach its real positions (causal)
        x = model.token_embedding(dev(torch.stack([t[0, :width_p] for t in groups]))).to(cast)
        x = x + pos[:width_p]
        causal_p = torch.ones(width_p, width_p, dtype=torch.bool, device=device).tril()
        for block in model.transformer.resblocks:
            x, kv = _block(block, x, causal_p)
            prefix_kv.append(kv)
    x = model.token_embedding(dev(tokens[rows, at])).to(cast)
    x = x + pos[dev(at)]
    future = torch.ones(width, width, dtype=torch.bool, device=device).triu(1)
    layout = (dev(rows), dev(cols), (len(tokens), width), future, [len(t) for t in groups],
              prefix_lens)  # fmt: skip
    for i, block in enumerate(model.transformer.resblocks):
        x = _packed_block(block, x, prefix_kv[i] if prefix_kv else None, layout)
    last = torch.cumsum(lengths, 0) - 1  # each row's end-of-text in the packed sequence
    pooled = model.ln_final(x[dev(last)])
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            pooled = model.text_projection(pooled)
        else:
            pooled = pooled @ model.text_projection
    return pooled


def _layout(groups: list):
    """Host side of `encode_text_grouped`, on CPU tokens: each group's prefix length, the rows,
    each row's suffix length (to its end-of-text), the widest suffix, and the packed tokens'
    (row, suffix column, position in the row)."""
    import torch

    prefix_lens = [common_prefix_length(t) for t in groups]
    tokens = torch.cat(groups)
    group_of_row = torch.repeat_interleave(torch.tensor([len(t) for t in groups]))
    plen = torch.tensor(prefix_lens)[group_of_row]
    eot = tokens.argmax(dim=-1)  # open_clip pools at argmax: the end-of-text token
    lengths = eot - plen + 1
    width = int(lengths.max())
    valid = torch.arange(width)[None, :] < lengths[:, None]  # (n, width): real suffix positions
    rows, cols = valid.nonzero(as_tuple=True)  # packed order: row-major
    return prefix_lens, tokens, lengths, width, rows, cols, plen[rows] + cols


def _packed_block(block, x, prefix_kv, layout):
    """One `ResidualAttentionBlock` on packed suffix tokens `x` (T, D): linear layers on the
    packed tokens, attention per group on a (rows, width) padded view. Pads sit after each row's
    real tokens, so the causal mask alone keeps them out of every real position. A group's
    prefix keys/values meet its rows as one matmul per head, never copied per row."""
    import torch
    import torch.nn.functional as F

    rows, cols, (n, width), future, group_sizes, prefix_lens = layout
    attn = block.attn
    d = x.shape[1]
    h = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    padded = qkv.new_zeros((n, width, 3 * d))
    padded[rows, cols] = qkv
    q, k, v = (u.view(n, width, h, d // h).transpose(1, 2) for u in padded.chunk(3, dim=-1))
    scale = (d // h) ** -0.5
    out = torch.empty_like(q)
    start = 0
    for g, size in enumerate(group_sizes):
        sl = slice(start, start + size)
        start += size
        own = (q[sl] @ k[sl].transpose(-1, -2)) * scale
        own = own.masked_fill(future, float("-inf"))
        p = prefix_lens[g]
        if prefix_kv is None or p == 0:
            out[sl] = own.float().softmax(-1).to(q.dtype) @ v[sl]
            continue
        # The group's prefix keys/values (h, p, d/h) meet all its rows' queries as one matmul per
        # head: a broadcast (size, h, ...) @ (1, h, ...) matmul would copy them once per row.
        pk, pv = (t[g, :, :p] for t in prefix_kv)
        flat_q = q[sl].transpose(0, 1).reshape(h, size * width, d // h)
        pre = (flat_q @ pk.transpose(-1, -2)).view(h, size, width, p).transpose(0, 1) * scale
        weights = torch.cat([pre, own], dim=-1).float().softmax(-1).to(q.dtype)
        flat_w = weights[..., :p].transpose(0, 1).reshape(h, size * width, p)
        from_prefix = (flat_w @ pv).view(h, size, width, d // h).transpose(0, 1)
        out[sl] = from_prefix + weights[..., p:] @ v[sl]
    out = out.transpose(1, 2).reshape(n, width, d)[rows, cols]
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _block(block, x, causal):
    """One `ResidualAttentionBlock` on whole prefixes `x` (G, S, D), causal. Returns the new
    hidden states and their keys/values (G, H, S, d)."""
    import torch.nn.functional as F

    attn = block.attn
    b, s, d = x.shape
    h = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(b, s, h, d // h).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
    out = out.transpose(1, 2).reshape(b, s, d)
    x = x + block.ls_1(attn.out_proj(out))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, (k, v)
