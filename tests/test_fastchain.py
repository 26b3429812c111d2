"""FastChain (prefix-cached flavor chain) returns the library's strings, on tiny random models.

References are `clip_interrogator.Interrogator.interrogate` / `interrogate_negative` /
`rank_top` / `encode_text` themselves, on the same models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.ml, pytest.mark.filterwarnings("ignore::FutureWarning")]
torch = pytest.importorskip("torch")
pytest.importorskip("clip_interrogator")

from alien_hotels.captioning.fastchain import (  # noqa: E402
    FastChain,
    common_prefix_length,
    encode_text_shared_prefix,
)
from alien_hotels.captioning.interrogate import BatchInterrogator  # noqa: E402
from alien_hotels.testing.interrogator import library_interrogator, save_tiny_models  # noqa: E402
from conftest import compose  # noqa: E402


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def ci(request, tmp_path_factory):
    torch.set_num_threads(1)
    paths = save_tiny_models(tmp_path_factory.mktemp(f"tiny{request.param}"), seed=request.param)
    return library_interrogator(paths, flavor_intermediate_count=64)


def images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)) for _ in range(n)]


def engine(ci, chain: str, **cfg) -> BatchInterrogator:
    config = compose("caption=clip_interrogator").caption.updated(chain=chain, **cfg)
    return BatchInterrogator(ci, config)


def test_shared_prefix_encoding_equals_encode_text(ci):
    flavors = ci.flavors.labels[:40]
    long_prompt = ", ".join(ci.flavors.labels[100:118])  # candidates truncated at 77 tokens
    for prompt in ["", "a bed", "a hotel room with two beds, by an artist", long_prompt]:
        texts = [f"{prompt}, {f}" if prompt else f for f in flavors]
        tokens = ci.tokenize(texts)
        with torch.no_grad():
            expected = ci.clip_model.encode_text(tokens)
            got = encode_text_shared_prefix(ci.clip_model, tokens)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert common_prefix_length(ci.tokenize(["a b", "a b"])) == 3  # stops before end-of-text


def test_rank_top_matches_library_and_falls_back_near_ties(ci):
    fast = FastChain(ci)
    feats = engine(ci, "fast").image_features(images(6, 7))
    for i in range(len(feats)):
        f = feats[i : i + 1]
        texts = [f"room, {x}" for x in ci.flavors.labels[i * 20 : i * 20 + 60]]
        for reverse in (False, True):
            assert fast.rank_top(f, texts, reverse) == ci.rank_top(f, texts, reverse)
    assert fast.stats["fallback"] == 0
    # Identical candidates tie exactly: the library decides (its first index wins).
    tie = ["room, a", "room, a", "room, b"]
    f = feats[:1]
    assert fast.rank_top(f, tie) == ci.rank_top(f, tie)
    forced = FastChain(ci, margin=10.0)  # every decision too close to call: library path
    assert forced.rank_top(f, texts) == ci.rank_top(f, texts) and forced.stats["fallback"] == 1


@pytest.mark.parametrize("image_seed", [11, 12])
def test_best_mode_same_strings_as_library_interrogate(ci, image_seed):
    fast = engine(ci, "fast", min_flavors=4, max_flavors=32)
    imgs = images(4, image_seed)
    captions = fast.captions(imgs)
    feats = fast.image_features(imgs)
    for i, image in enumerate(imgs):
        expected = ci.interrogate(image, min_flavors=4, max_flavors=32)
        assert fast.best(feats[i : i + 1], captions[i], 4, 32) == expected
    assert fast.chain.stats["steps"] >= 4 * 4  # min_flavors steps per image at least


def test_negative_mode_same_strings_as_library(ci):
    fast = engine(ci, "fast")
    imgs = images(4, 13)
    feats = fast.image_features(imgs)
    for i, image in enumerate(imgs):
        assert fast.negative(feats[i : i + 1], 16) == ci.interrogate_negative(image, 16)


def test_unsupported_text_tower_uses_library_path(ci):
    fast = FastChain(ci)
    assert fast.supported
    ci.clip_model.text_pool_type = "last"
    try:
        assert not FastChain(ci).supported
    finally:
        ci.clip_model.text_pool_type = "argmax"
