"""FastChain (prefix-cached flavor chain) returns the library's strings, on tiny random models.

References are `clip_interrogator.Interrogator.interrogate` / `interrogate_negative` /
`rank_top` / `encode_text` themselves, on the same models."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from alien_hotels.captioning import libcompat
from alien_hotels.captioning.fastchain import (
    MARGINS,
    TIE_TOLERANCES,
    ChainJob,
    ChainTokens,
    FastChain,
    common_prefix_length,
    encode_text_grouped,
    encode_text_shared_prefix,
    score_precision,
)
from alien_hotels.captioning.interrogate import BatchInterrogator
from alien_hotels.common import StageError
from alien_hotels.testing.interrogator import library_interrogator, save_tiny_models
from conftest import compose

pytestmark = [pytest.mark.ml, pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def ci(request, tmp_path_factory):
    torch.set_num_threads(1)
    paths = save_tiny_models(tmp_path_factory.mktemp(f"tiny{request.param}"), seed=request.param)
    return library_interrogator(paths, flavor_intermediate_count=64)


@pytest.fixture(scope="module")
def ci0(tmp_path_factory):
    torch.set_num_threads(1)
    paths = save_tiny_models(tmp_path_factory.mktemp("tiny0"), seed=0)
    return library_interrogator(paths, flavor_intermediate_count=64)


def images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)) for _ in range(n)]


def engine(ci, chain: str, **cfg) -> BatchInterrogator:
    config = compose("caption=clip_interrogator").caption.updated(chain=chain, **cfg)
    return BatchInterrogator(ci, config)


def in_precision(ci, dtype):
    """The same interrogator with its CLIP model cast to `dtype` (the library on CPU then
    computes every similarity in that dtype)."""
    low = copy.copy(ci)
    low.clip_model = copy.deepcopy(ci.clip_model).to(dtype)
    return low


def test_shared_prefix_encoding_equals_encode_text(ci):
    flavors = ci.flavors.labels[:40]
    long_prompt = ", ".join(ci.flavors.labels[100:118])  # candidates truncated at 77 tokens
    prompts = ["", "a bed", "a hotel room with two beds, by an artist", long_prompt]
    groups = []
    for prompt in prompts:
        texts = [f"{prompt}, {f}" if prompt else f for f in flavors]
        tokens = ci.tokenize(texts)
        groups.append(tokens)
        with torch.no_grad():
            expected = ci.clip_model.encode_text(tokens)
            got = encode_text_shared_prefix(ci.clip_model, tokens)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Several images' candidates (different prefixes) in one packed forward.
    with torch.no_grad():
        expected = ci.clip_model.encode_text(torch.cat(groups))
        got = encode_text_grouped(ci.clip_model, groups)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert common_prefix_length(ci.tokenize(["a b", "a b"])) == 3  # stops before end-of-text


def test_rank_top_matches_library_without_fallbacks(ci):
    fast = FastChain(ci)
    feats = engine(ci, "fast").image_features(images(6, 7))
    jobs, expected = [], []
    for i in range(len(feats)):
        f = feats[i : i + 1]
        texts = [f"room, {x}" for x in ci.flavors.labels[i * 20 : i * 20 + 60]]
        for reverse in (False, True):
            jobs.append((ChainJob(f, [], reverse=reverse), texts))
            expected.append(ci.rank_top(f, texts, reverse))
    assert fast.rank_many(jobs) == expected
    assert sum(job.stats.fallbacks for job, _ in jobs) == 0
    assert all(job.stats.steps == 1 for job, _ in jobs)


def spy_band_rescoring(monkeypatch, ci, fast, texts: list[str]) -> list[list[str]]:
    """Record the candidates (of `texts`) whose token rows the library's `rank_top` computation
    is asked to score; check those rows are the tokenizer's."""
    calls: list[list[str]] = []
    original = fast.library_similarities
    rows = ci.tokenize(texts)

    def recording(image_features, tokens, reverse=False):
        same = (tokens[:, None, :] == rows[None, :, :]).all(-1)
        assert same.any(1).all()
        calls.append([texts[int(i)] for i in same.float().argmax(1)])
        return original(image_features, tokens, reverse=reverse)

    monkeypatch.setattr(fast, "library_similarities", recording)
    return calls


@pytest.mark.parametrize("band", [2, 5, 17])
def test_near_tie_rescores_only_the_band_and_takes_the_library_choice(ci0, monkeypatch, band):
    ci = ci0
    feats = engine(ci, "fast").image_features(images(4, 21))
    texts = [f"a room, {x}" for x in ci.flavors.labels[:80]]
    for i in range(len(feats)):
        f = feats[i : i + 1]
        expected = ci.rank_top(f, texts)
        probe = FastChain(ci)
        fast_sims = probe.similarities([ci.tokenize(texts)], [f])[0].float()
        ordered = fast_sims.sort(descending=True).values
        # A margin that puts exactly the top `band` candidates within reach of the leader.
        margin = float(ordered[0] - (ordered[band - 1] + ordered[band]) / 2)
        forced = FastChain(ci, margin=margin)
        calls = spy_band_rescoring(monkeypatch, ci, forced, texts)
        job = ChainJob(f, [])
        assert forced.rank_many([(job, texts)]) == [expected]
        assert (job.stats.fallbacks, job.stats.rescored, job.stats.full_batch) == (1, band, 0)
        assert len(calls) == 1 and len(calls[0]) == band
        assert calls[0] == [t for t in texts if t in calls[0]]  # the library's list order
        monkeypatch.undo()


def test_band_holds_the_library_choice_despite_score_noise(ci0, monkeypatch):
    """Fast scores that deviate from the library's by up to margin/2 (the contract) still give
    the library's choice: the band always contains it."""
    ci = ci0
    margin = 0.02
    fast = FastChain(ci, margin=margin)
    exact = fast.similarities
    rng = torch.Generator().manual_seed(0)

    def noisy(tokens, feats):
        return [
            s + (torch.rand(s.shape, generator=rng) - 0.5) * margin for s in exact(tokens, feats)
        ]

    monkeypatch.setattr(fast, "similarities", noisy)
    feats = engine(ci, "fast").image_features(images(8, 22))
    labels = ci.flavors.labels
    fallbacks = 0
    for i in range(len(feats)):
        f = feats[i : i + 1]
        for start in range(0, 240, 40):
            texts = [f"a bed, {x}" for x in labels[start : start + 40]]
            job = ChainJob(f, [])
            assert fast.rank_many([(job, texts)]) == [ci.rank_top(f, texts)]
            fallbacks += job.stats.fallbacks
    assert fallbacks > 0  # the noise did make near ties


def test_exact_ties_keep_the_library_tie_order(ci0):
    ci = ci0
    f = engine(ci, "fast").image_features(images(1, 23))
    tie = ["room, a", "room, b", "room, a", "room, b"]  # equal strings: a tie up to the batch
    job = ChainJob(f, [])
    assert FastChain(ci).rank_many([(job, tie)]) == [ci.rank_top(f, tie)]
    assert job.stats.rescored == 2  # only the two copies of the leader
    assert job.stats.full_batch == 1  # too close for the band's batch: the full batch decides


# -- near-exact ties: the library's full batch decides -------------------------------------


def library_features(ci, texts: list[str]):
    """Unit text features of `texts` as the library's `rank_top` computes them (one batch)."""
    with torch.no_grad():
        feats = ci.clip_model.encode_text(ci.tokenize(texts))
        return feats / feats.norm(dim=-1, keepdim=True)


def midpoint(a, b):
    """An image feature exactly between two text features: the two score equal but for the
    last bits of rounding, which the batch they are computed in decides."""
    m = a + b
    return (m / m.norm())[None]


LONG_PROMPT = (
    "a hotel room with a large bed and a television, interior design, highly detailed, "
    "by ricardo bofill, trending on unsplash, soft light, warm colors"
)


@pytest.mark.parametrize("prompt", [None, "a room", LONG_PROMPT], ids=["bare", "short", "long"])
def test_midpoint_ties_take_the_library_full_batch_choice(ci0, prompt):
    """The image midway between two candidates (at several prefix lengths): the library decides
    on rounding alone, and the chain must return what `rank_top` over all candidates returns."""
    ci = ci0
    labels = ci.flavors.labels[:96]
    texts = labels if prompt is None else [f"{prompt}, {x}" for x in labels]
    feats = library_features(ci, texts)
    rng = np.random.default_rng(len(texts[0]))
    fast = FastChain(ci)
    decided, pairs = 0, 0
    for a in rng.choice(len(texts), 16, replace=False).tolist():
        b = int((feats @ feats[a]).topk(2).indices[1])  # its nearest neighbour: the other leader
        image = midpoint(feats[a], feats[b])
        expected = ci.rank_top(image, texts)
        if expected not in (texts[a], texts[b]):
            continue  # a third candidate leads: not a tie between a and b
        pairs += 1
        job = ChainJob(image, [])
        assert fast.rank_many([(job, texts)]) == [expected], (texts[a], texts[b])
        decided += job.stats.full_batch
    assert pairs >= 8
    assert decided == pairs  # every midpoint is within the batch tolerance


def test_rows_equal_after_truncation_take_the_library_choice(ci0):
    """Candidates that differ only after open_clip's 77-token truncation have equal token rows:
    an exact tie, decided as the library's batch decides it."""
    ci = ci0
    prompt = ", ".join(ci.flavors.labels[200:240])
    assert ci.tokenize([prompt]).argmax(-1).item() == 76  # the prompt alone fills the context
    phrases = ci.flavors.labels[:40]
    texts = [f"{prompt}, {x}" for x in phrases]
    rows = ci.tokenize(texts)
    assert (rows == rows[:1]).all()  # every candidate truncated to the same row
    fast = FastChain(ci)
    for i, image in enumerate(engine(ci, "fast").image_features(images(3, 46))):
        job = ChainJob(image[None], [], reverse=bool(i % 2))
        assert fast.rank_many([(job, texts)]) == [ci.rank_top(image[None], texts, job.reverse)]
        assert job.stats.full_batch == 1


def test_chain_through_midpoint_ties_equals_library(ci0):
    """Whole chains whose image sits midway between two flavors of the first step."""
    ci = ci0
    phrases = ci.flavors.labels[:64]
    feats = library_features(ci, phrases)
    jobs = []
    for a in (3, 17, 40):
        b = int((feats @ feats[a]).topk(2).indices[1])
        jobs.append(ChainJob(midpoint(feats[a], feats[b]), phrases, min_count=2, max_count=6))
    expected = [ci.chain(j.features, j.phrases, min_count=2, max_count=6) for j in jobs]
    assert FastChain(ci).chains(jobs) == expected
    assert sum(j.stats.full_batch for j in jobs) >= 1


@pytest.mark.parametrize("image_seed", [11, 12])
def test_best_mode_batched_equals_one_by_one_equals_library(ci, image_seed):
    fast = engine(ci, "fast", min_flavors=4, max_flavors=32)
    imgs = images(4, image_seed)
    captions = fast.captions(imgs)
    feats = fast.image_features(imgs)
    batched = fast.prompts(feats, captions, "best")
    one_by_one = [fast.best(feats[i : i + 1], captions[i], 4, 32) for i in range(len(imgs))]
    library = [ci.interrogate(image, min_flavors=4, max_flavors=32) for image in imgs]
    assert [p.prompt for p in batched] == one_by_one == library
    assert all(p.stats.steps >= 4 for p in batched)  # min_flavors steps per image at least


def test_negative_mode_batched_same_strings_as_library(ci):
    fast = engine(ci, "fast", max_flavors=16)
    imgs = images(4, 13)
    feats = fast.image_features(imgs)
    batched = [p.prompt for p in fast.prompts(feats, [""] * len(imgs), "negative")]
    assert batched == [ci.interrogate_negative(image, 16) for image in imgs]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_deviation_within_half_margin_and_same_choices(ci0, dtype):
    """The measured margins hold on these towers: fast-vs-library deviation below margin/2, and
    rank_top and whole flavor chains give the library's strings, computed in `dtype`."""
    ci = in_precision(ci0, dtype)
    precision = score_precision(ci.clip_model, on_cuda=False)
    assert precision == str(dtype).replace("torch.", "")
    fast = FastChain(ci)
    assert fast.margin == MARGINS[precision]
    # Image features from the float32 tower (a half-precision conv on CPU needs a half input).
    feats = engine(ci0, "fast").image_features(images(4, 31)).to(dtype)
    labels = ci.flavors.labels
    worst = 0.0
    jobs = []
    for i in range(len(feats)):
        f = feats[i : i + 1]
        for prompt in ["a room", ", ".join(labels[i * 7 : i * 7 + 6])]:
            texts = [f"{prompt}, {x}" for x in labels[:120]]
            tokens = ci.tokenize(texts)
            with torch.no_grad():
                ref = ci.clip_model.encode_text(tokens)
                ref = ((ref / ref.norm(dim=-1, keepdim=True)) @ f.T)[:, 0]
            got = fast.similarities([tokens], [f])[0]
            worst = max(worst, float((got.float() - ref.float()).abs().max()))
            assert fast.rank_top(f, texts) == ci.rank_top(f, texts)
        flaves = labels[i * 40 : i * 40 + 64]
        jobs.append(ChainJob(f, flaves, "a room", ci.similarity(f, "a room"), 3, 8))
    assert worst < fast.margin / 2
    expected = [ci.chain(j.features, j.phrases, j.best_prompt, j.best_sim, 3, 8) for j in jobs]
    assert fast.chains(jobs) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_band_batch_moves_library_scores_by_under_half_the_tie_tolerance(ci0, dtype):
    """Contract condition of the band's decision: a library score computed in a band's batch
    differs from the same row's score in the full batch by less than `tie_tolerance / 2`, so a
    band leader ahead by more than the tolerance is the full batch's leader too."""
    ci = in_precision(ci0, dtype)
    fast = FastChain(ci)
    assert fast.tie_tolerance == TIE_TOLERANCES[str(dtype).replace("torch.", "")]
    tokens = ci0.tokenize([f"a room, {x}" for x in ci0.flavors.labels[:150]])
    worst = 0.0
    for image in engine(ci0, "fast").image_features(images(2, 45)).to(dtype):
        full = fast.library_similarities(image[None], tokens).float()
        for k in (1, 2, 3, 8, 33):
            band = sorted(np.random.default_rng(k).choice(150, k, replace=False).tolist())
            part = fast.library_similarities(image[None], tokens[band]).float()
            worst = max(worst, float((part - full[band]).abs().max()))
    assert worst < fast.tie_tolerance / 2


def test_margin_follows_the_precision_scores_are_computed_in(ci0):
    assert score_precision(ci0.clip_model, on_cuda=False) == "float32"
    assert FastChain(ci0).margin == MARGINS["float32"]
    # CUDA runs under autocast: float16 matmuls whatever the weights' dtype.
    assert score_precision(ci0.clip_model, on_cuda=True) == "float16"


def test_unsupported_text_tower_uses_library_path(ci0):
    ci = ci0
    fast = FastChain(ci)
    assert fast.supported
    ci.clip_model.text_pool_type = "last"
    try:
        slow = FastChain(ci)
        assert not slow.supported
        f = engine(ci, "fast").image_features(images(1, 5))
        texts = [f"room, {x}" for x in ci.flavors.labels[:10]]
        job = ChainJob(f, [])
        assert slow.rank_many([(job, texts)]) == [ci.rank_top(f, texts)]
        assert job.stats.library_steps == 1
    finally:
        ci.clip_model.text_pool_type = "argmax"


@pytest.mark.parametrize("distribution", sorted(libcompat.TESTED_VERSIONS))
def test_untested_library_version_fails_loudly(ci0, monkeypatch, distribution):
    real = libcompat.installed_version

    def fake(name):
        return "99.0.0" if name == distribution else real(name)

    monkeypatch.setattr(libcompat, "installed_version", fake)
    for build in (lambda: engine(ci0, "library"), lambda: FastChain(ci0)):
        with pytest.raises(StageError, match=f"{distribution} 99.0.0 is not a version") as err:
            build()
        assert "_prompt_at_max_len" in str(err.value) and "TESTED_VERSIONS" in str(err.value)


def test_installed_versions_are_the_tested_ones():
    libcompat.check_private_apis()  # the pinned versions pass


def test_stage_records_chain_fallbacks_per_image(tmp_path, monkeypatch):
    """Every step forced into a near tie: the stage's strings stay the library's and
    metrics/captioning.json counts the fallbacks and rescored candidates per image."""
    from alien_hotels.captioning import fastchain
    from alien_hotels.captioning.run import caption_images
    from alien_hotels.testing.interrogator import tiny_overrides

    paths = save_tiny_models(tmp_path / "tiny", seed=0)
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(3):
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"img/{i}.png")
        rows.append({"image_id": i, "path": f"img/{i}.png", "status": "ok", "reason": ""})
    cfg = compose(
        *tiny_overrides(paths),
        "caption.flavor_intermediate_count=32",
        "caption.min_flavors=2",
        "caption.max_flavors=4",
        "caption.batch_size=3",
        "caption.progress=false",
        f"caption.checkpoint_dir={tmp_path / 'ckpt'}",
    ).caption
    monkeypatch.setitem(fastchain.MARGINS, "float32", 10.0)  # every candidate in the band
    result = caption_images(pd.DataFrame(rows), cfg, tmp_path)
    m = result.metrics
    assert m["chain_steps_per_image_max"] >= 2
    assert m["chain_fallbacks_total"] == m["chain_steps_total"]
    assert m["chain_fallbacks_per_image_mean"] == m["chain_steps_per_image_mean"]
    assert m["chain_rescored_per_image_max"] > 2 * m["chain_fallbacks_per_image_max"]
    assert 0 <= m["chain_full_batch_total"] <= m["chain_fallbacks_total"]
    ci = library_interrogator(paths, flavor_intermediate_count=32)
    expected = [ci.interrogate(Image.open(tmp_path / r["path"]).convert("RGB"), 2, 4) for r in rows]
    assert result.captions["caption"].tolist() == expected


# -- host side: cached candidate tokens, band rescoring on those rows ------------------------


def library_phrases() -> list[str]:
    """clip-interrogator's own phrases where concatenation is hardest (non-ASCII, `&`, ending in
    punctuation, as the merged table spells artists), and a sample of the rest."""
    from pathlib import Path

    import clip_interrogator

    data = Path(clip_interrogator.__file__).parent / "data"

    def lines(name):
        return data.joinpath(name).read_text(encoding="utf-8", errors="replace").splitlines()

    flavors, artists = lines("flavors.txt"), [f"by {a}" for a in lines("artists.txt")]
    hard = [
        p
        for p in flavors + artists + lines("movements.txt") + lines("negative.txt")
        if not (p.isascii() and p.isprintable()) or "&" in p or (p and not p[-1].isalnum())
    ]
    return hard + flavors[::200] + artists[::40] + lines("mediums.txt")


EDGE_PHRASES = [
    "", " ", "  padded  ", "UPPER Case", "&amp;", "amp; x", "&#39;s", "'s", "!", "(1937)",
    "Ã© mojibake", "sÃ³", "\u00a0nbsp", "ﬁne ligature", "ＷＩＤＥ", "x\ny", "tab\tx", "İstanbul",
    "ΣΑΣ", "Σ x", "é", "a \u2019quote\u2019", "<b>bold</b> &amp; more", "3", "a3", "ツ",
    "&EACUTE;", "<b>",  # ftfy unescapes that entity unless a "<" is in the whole string
]  # fmt: skip
EDGE_PROMPTS = [
    "a hotel room with a large bed", "a room, dragon!", "symmetry!!", "a <b> tag", "it's",
    "by Zdzisław Beksiński", "café &amp; bar", "x &", "trailing space ", "  double  spaces",
    "line\nbreak", "sÃ³", "ΣΑΣ", "ﬁ", "a 3", "UPPER", "", "&EACUTE; room",
]  # fmt: skip


def test_chain_tokens_equal_the_tokenizer_rows(ci0):
    """Rows built from cached phrase ids equal `ci.tokenize` of the full strings, for prompts
    and phrases where concatenating token ids is wrong (punctuation that merges with the comma,
    HTML entities, mojibake, case that lowers differently in context) and a long prompt that
    truncates at 77 tokens."""
    tokenize = ci0.tokenize
    chain_tokens = ChainTokens(tokenize)
    assert chain_tokens.supported
    phrases = library_phrases() + EDGE_PHRASES
    long_prompt = ", ".join(ci0.flavors.labels[100:140])  # past the context
    for prompt in [*EDGE_PROMPTS, long_prompt, None]:
        texts = phrases if prompt is None else [f"{prompt}, {f}" for f in phrases]
        assert torch.equal(chain_tokens(prompt, phrases), tokenize(texts)), prompt


def test_chain_tokens_other_tokenizers_tokenize_every_string(ci0):
    calls = []

    def tokenize(texts):
        calls.append(list(texts))
        return ci0.tokenize(texts)

    chain_tokens = ChainTokens(tokenize)
    assert not chain_tokens.supported
    out = chain_tokens("a room", ["bed", "lamp"])
    assert calls == [["a room, bed", "a room, lamp"]]
    assert torch.equal(out, ci0.tokenize(calls[0]))


def test_chain_steps_score_the_tokenizer_rows_and_encode_each_phrase_once(ci0, monkeypatch):
    """Over whole chains of several images (one FastChain, reused: its phrase cache carries
    over), every step scores exactly `ci.tokenize(texts)` and the strings are the library's;
    the tokenizer encodes each phrase once, not every candidate string of every step."""
    ci = ci0
    fast = FastChain(ci)
    feats = engine(ci, "fast").image_features(images(3, 41))
    labels = ci.flavors.labels
    steps = []
    candidates = fast._candidates
    reference = copy.copy(ci.tokenize)  # not counted below

    def checking(job, prompt, phrases):
        out = candidates(job, prompt, phrases)
        _, texts, tokens = out
        assert torch.equal(tokens, reference(texts))
        steps.append(len(texts))
        return out

    encoded = []
    encode = ci.tokenize.encode

    def counting(text):
        encoded.append(text)
        return encode(text)

    seen: set[str] = set()
    for offset in (0, 30):  # the second round's phrases overlap the first's
        jobs = []
        for i in range(len(feats)):
            f = feats[i : i + 1]
            flaves = labels[offset + i * 25 : offset + i * 25 + 70]
            jobs.append(ChainJob(f, flaves, "a room", ci.similarity(f, "a room"), 3, 6))
        expected = [ci.chain(j.features, j.phrases, j.best_prompt, j.best_sim, 3, 6) for j in jobs]
        new = {p for j in jobs for p in j.phrases} - seen
        seen |= new
        steps.clear()
        encoded.clear()
        monkeypatch.setattr(fast, "_candidates", checking)
        monkeypatch.setattr(ci.tokenize, "encode", counting)
        got = fast.chains(jobs)
        monkeypatch.undo()
        assert got == expected
        assert len(steps) >= 3 * 3
        # New phrases once each, plus per image and step the prompt: the library's similarity
        # and max-length checks read the chosen candidate's row, tokenizing nothing.
        assert len(encoded) <= len(new) + len(steps)
        assert len(encoded) < sum(steps) / 2


def test_similarity_on_rows_equals_library_similarity(ci0):
    """`library_similarity` on `ci.tokenize([text])` is the library's `similarity(text)` to the
    last bit (the chain's stopping rule compares these values), in each precision."""
    labels = ci0.flavors.labels
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        ci = in_precision(ci0, dtype)
        fast = FastChain(ci)
        feats = engine(ci0, "fast").image_features(images(2, 47)).to(dtype)
        for i in range(len(feats)):
            f = feats[i : i + 1]
            for text in ["a room", ", ".join(labels[i : i + 30]), ", ".join(labels[:90])]:
                assert fast.library_similarity(f, ci.tokenize([text])) == ci.similarity(f, text)


def test_replaced_tokenizer_gets_a_fresh_phrase_cache(ci0, monkeypatch):
    """The phrase cache belongs to one tokenizer: after `ci.tokenize` is replaced (here by a
    case-sensitive one, whose ids differ), rows and strings follow the new tokenizer."""
    import open_clip

    ci = ci0
    fast = FastChain(ci)
    f = engine(ci, "fast").image_features(images(1, 43))
    phrases = [f"{x} Hotel Lobby" for x in ci.flavors.labels[:40]]
    sim = ci.similarity(f, "A Room")
    job = ChainJob(f, phrases, "A Room", sim, 2, 3)
    assert fast.chains([job]) == [ci.chain(f, phrases, "A Room", sim, 2, 3)]
    old_rows = fast.tokens("A Room", phrases)
    cased = open_clip.tokenizer.SimpleTokenizer(clean="whitespace")
    monkeypatch.setattr(ci, "tokenize", cased)
    rows = fast.tokens("A Room", phrases)
    texts = [f"A Room, {x}" for x in phrases]
    assert torch.equal(rows, cased(texts)) and not torch.equal(rows, old_rows)
    sim = ci.similarity(f, "A Room")
    job = ChainJob(f, phrases, "A Room", sim, 2, 3)
    assert fast.chains([job]) == [ci.chain(f, phrases, "A Room", sim, 2, 3)]


def test_band_rescoring_on_rows_equals_library_rank_top(ci0):
    """`library_rank_top` on `ci.tokenize(texts)` is the library's `rank_top(texts)`, in each
    precision, either direction, with exact ties (first index wins)."""
    rng = np.random.default_rng(5)
    labels = ci0.flavors.labels
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        ci = in_precision(ci0, dtype)
        fast = FastChain(ci)
        feats = engine(ci0, "fast").image_features(images(3, 44)).to(dtype)
        for i in range(len(feats)):
            f = feats[i : i + 1]
            pick = rng.choice(200, 30, replace=False).tolist()
            texts = [f"a room, {labels[j]}" for j in pick]
            texts += texts[:5]  # exact ties
            for reverse in (False, True):
                got = fast.library_rank_top(f, ci.tokenize(texts), texts, reverse)
                assert got == ci.rank_top(f, texts, reverse)
