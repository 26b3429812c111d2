"""CLIP Interrogator on batches of images, with the library's own per-image logic.

`BatchInterrogator` splits `Interrogator.interrogate*` into the part that batches across images
(caption generation, CLIP image features) and the per-image prompt search, which is the
library's code with the image features passed in: `prompt()` returns exactly what
`Interrogator.interrogate` (best), `interrogate_classic`, `interrogate_fast` and
`interrogate_negative` return for the same image (tests compare them).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from alien_hotels.captioning import CaptionConfig


class BatchInterrogator:
    def __init__(self, ci, cfg: CaptionConfig):
        from clip_interrogator.clip_interrogator import _merge_tables

        self.ci = ci
        self.cfg = cfg
        # The same table `interrogate` and `interrogate_fast` merge on every call, merged once.
        self.merged = _merge_tables(
            [ci.artists, ci.flavors, ci.mediums, ci.movements, ci.trendings], ci
        )
        if cfg.chain == "fast":
            from alien_hotels.captioning.fastchain import FastChain

            self.chain = FastChain(ci)
        else:
            self.chain = ci.chain

    def _autocast(self):
        import torch

        return torch.autocast("cuda") if self.ci.device == "cuda" else nullcontext()

    def captions(self, images: list) -> list[str]:
        """`Interrogator.generate_caption` for a batch of images."""
        import torch

        ci = self.ci
        if not images:
            return []
        ci._prepare_caption()
        inputs = ci.caption_processor(images=images, return_tensors="pt").to(ci.device)
        if not ci.config.caption_model_name.startswith("git-"):
            inputs = inputs.to(ci.dtype)
        with torch.no_grad():
            tokens = ci.caption_model.generate(
                **inputs, max_new_tokens=ci.config.caption_max_length
            )
        return [
            t.strip() for t in ci.caption_processor.batch_decode(tokens, skip_special_tokens=True)
        ]

    def image_features(self, images: list):
        """`Interrogator.image_to_features` for a batch: one normalised row per image."""
        import torch

        ci = self.ci
        ci._prepare_clip()
        batch = torch.stack([ci.clip_preprocess(image) for image in images]).to(ci.device)
        with torch.no_grad(), self._autocast():
            features = ci.clip_model.encode_image(batch)
            features /= features.norm(dim=-1, keepdim=True)
        return features

    # -- per image: the library's methods with `image_features` given -------------------------

    def prompt(self, features, caption: str, mode: str) -> str:
        cfg = self.cfg
        if mode == "best":
            return self.best(features, caption, cfg.min_flavors, cfg.max_flavors)
        if mode == "classic":
            return self.classic(features, caption, cfg.max_flavors)
        if mode == "fast":
            return self.fast(features, caption, cfg.max_flavors)
        return self.negative(features, cfg.max_flavors)

    def best(self, features, caption: str, min_flavors: int = 8, max_flavors: int = 32) -> str:
        ci = self.ci
        flaves = self.merged.rank(features, ci.config.flavor_intermediate_count)
        best_prompt, best_sim = caption, ci.similarity(features, caption)
        best_prompt = self.chain(
            features,
            flaves,
            best_prompt,
            best_sim,
            min_count=min_flavors,
            max_count=max_flavors,
            desc="Flavor chain",
        )
        fast_prompt = self.fast(features, caption, max_flavors)
        classic_prompt = self.classic(features, caption, max_flavors)
        candidates = [caption, classic_prompt, fast_prompt, best_prompt]
        return candidates[np.argmax(ci.similarities(features, candidates))]

    def classic(self, features, caption: str, max_flavors: int = 3) -> str:
        from clip_interrogator.clip_interrogator import _truncate_to_fit

        ci = self.ci
        medium = ci.mediums.rank(features, 1)[0]
        artist = ci.artists.rank(features, 1)[0]
        trending = ci.trendings.rank(features, 1)[0]
        movement = ci.movements.rank(features, 1)[0]
        flaves = ", ".join(ci.flavors.rank(features, max_flavors))
        if caption.startswith(medium):
            prompt = f"{caption} {artist}, {trending}, {movement}, {flaves}"
        else:
            prompt = f"{caption}, {medium} {artist}, {trending}, {movement}, {flaves}"
        return _truncate_to_fit(prompt, ci.tokenize)

    def fast(self, features, caption: str, max_flavors: int = 32) -> str:
        from clip_interrogator.clip_interrogator import _truncate_to_fit

        tops = self.merged.rank(features, max_flavors)
        return _truncate_to_fit(caption + ", " + ", ".join(tops), self.ci.tokenize)

    def negative(self, features, max_flavors: int = 32) -> str:
        ci = self.ci
        flaves = ci.flavors.rank(features, ci.config.flavor_intermediate_count, reverse=True)
        flaves = flaves + ci.negative.labels
        return self.chain(
            features, flaves, max_count=max_flavors, reverse=True, desc="Negative chain"
        )
