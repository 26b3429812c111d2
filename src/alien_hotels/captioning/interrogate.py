"""CLIP Interrogator on batches of images, with the library's own per-image logic.

`BatchInterrogator` splits `Interrogator.interrogate*` into the part that batches across images
(caption generation, CLIP image features) and the per-image prompt search, which is the
library's code with the image features passed in: `prompt()` returns exactly what
`Interrogator.interrogate` (best), `interrogate_classic`, `interrogate_fast` and
`interrogate_negative` return for the same image (tests compare them). `prompts()` does the same
for a batch; with `chain=fast` the flavor chains of the batch's images advance together.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from alien_hotels.captioning.config import CaptionConfig
from alien_hotels.captioning.fastchain import ChainJob, ChainStats, FastChain
from alien_hotels.captioning.libcompat import check_private_apis


@dataclass
class Prompted:
    """One image's prompt and what its flavor chain cost (zeros without a fast chain)."""

    prompt: str
    stats: ChainStats


class BatchInterrogator:
    def __init__(self, ci, cfg: CaptionConfig):
        check_private_apis()
        from clip_interrogator.clip_interrogator import _merge_tables

        self.ci = ci
        self.cfg = cfg
        # The same table `interrogate` and `interrogate_fast` merge on every call, merged once.
        self.merged = _merge_tables(
            [ci.artists, ci.flavors, ci.mediums, ci.movements, ci.trendings], ci
        )
        self.chain = FastChain(ci) if cfg.chain == "fast" else ci.chain

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
        return self.prompts(features, [caption], mode)[0].prompt

    def prompts(self, features, captions: list[str], mode: str) -> list[Prompted]:
        """The prompt of each image (`features` row i, `captions[i]`) in `mode`."""
        cfg = self.cfg
        if mode == "best":
            return self.best_many(features, captions, cfg.min_flavors, cfg.max_flavors)
        if mode == "negative":
            return self.negative_many(features, cfg.max_flavors)
        single = self.classic if mode == "classic" else self.fast
        return [
            Prompted(single(features[i : i + 1], c, cfg.max_flavors), ChainStats())
            for i, c in enumerate(captions)
        ]

    def _chains(self, jobs: list[ChainJob]) -> list[str]:
        if isinstance(self.chain, FastChain):
            return self.chain.chains(jobs)
        return [
            self.chain(
                job.features,
                job.phrases,
                job.best_prompt,
                job.best_sim,
                min_count=job.min_count,
                max_count=job.max_count,
                reverse=job.reverse,
            )
            for job in jobs
        ]

    def best(self, features, caption: str, min_flavors: int = 8, max_flavors: int = 32) -> str:
        return self.best_many(features, [caption], min_flavors, max_flavors)[0].prompt

    def best_many(
        self, features, captions: list[str], min_flavors: int = 8, max_flavors: int = 32
    ) -> list[Prompted]:
        ci = self.ci
        jobs = []
        for i, caption in enumerate(captions):
            f = features[i : i + 1]
            flaves = self.merged.rank(f, ci.config.flavor_intermediate_count)
            best_sim = ci.similarity(f, caption)
            jobs.append(ChainJob(f, flaves, caption, best_sim, min_flavors, max_flavors))
        results = []
        for job, caption, best_prompt in zip(jobs, captions, self._chains(jobs), strict=True):
            fast_prompt = self.fast(job.features, caption, max_flavors)
            classic_prompt = self.classic(job.features, caption, max_flavors)
            candidates = [caption, classic_prompt, fast_prompt, best_prompt]
            sims = ci.similarities(job.features, candidates)
            results.append(Prompted(candidates[np.argmax(sims)], job.stats))
        return results

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
        return self.negative_many(features, max_flavors)[0].prompt

    def negative_many(self, features, max_flavors: int = 32) -> list[Prompted]:
        ci = self.ci
        jobs = []
        for i in range(len(features)):
            f = features[i : i + 1]
            flaves = ci.flavors.rank(f, ci.config.flavor_intermediate_count, reverse=True)
            flaves = flaves + ci.negative.labels
            jobs.append(ChainJob(f, flaves, max_count=max_flavors, reverse=True))
        return [Prompted(p, job.stats) for p, job in zip(self._chains(jobs), jobs, strict=True)]
