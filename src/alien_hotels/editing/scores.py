"""Scores that judge an image for alien guests, and how much of the source an edit preserved.

Weight-free (always available): `green_share` and `neon_share` from HSV thresholds, SSIM.
With weights: `towel_fraction` (CLIPSeg area of "towel"), `clip_preference` (CLIP zero-shot
probability of the preference prompts against the aversion prompts), `clip_similarity` (CLIP
image-image cosine, source vs edited).

Alien-friendliness of an image is the weighted mean, over the components that are available,
of: green = min(1, green_share / green_target), neon = min(1, neon_share / neon_target),
towels = max(0, 1 - towel_fraction / towel_tolerance), clip = clip_preference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alien_hotels.editing.config import ScoresConfig

GOAL_COLUMN = {
    "neon": "neon_share",
    "green": "green_share",
    "no_towels": "towel_free",
    "alien": "alien_score",
}


def colour_scores(image, cfg: ScoresConfig) -> dict[str, float]:
    """Share of saturated green pixels and of bright high-saturation ("neon") pixels."""
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float64) / 255.0
    hue = hsv[..., 0] * 360.0
    sat, val = hsv[..., 1], hsv[..., 2]
    green = (
        (hue >= cfg.green_hue_min)
        & (hue <= cfg.green_hue_max)
        & (sat >= cfg.green_min_saturation)
        & (val >= cfg.green_min_value)
    )
    neon = (sat >= cfg.neon_min_saturation) & (val >= cfg.neon_min_value)
    return {"green_share": float(green.mean()), "neon_share": float(neon.mean())}


def _present(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def alien_components(scores: dict[str, Any], cfg: ScoresConfig) -> dict[str, float | None]:
    towel = scores.get("towel_fraction")
    clip = scores.get("clip_preference")
    return {
        "green": min(1.0, scores["green_share"] / cfg.green_target),
        "neon": min(1.0, scores["neon_share"] / cfg.neon_target),
        "towels": max(0.0, 1.0 - towel / cfg.towel_tolerance) if _present(towel) else None,
        "clip": float(clip) if _present(clip) else None,
    }


def alien_score(scores: dict[str, Any], cfg: ScoresConfig) -> float:
    """Weighted mean of the available components (see the module docstring), in [0, 1]."""
    parts = alien_components(scores, cfg)
    weights = cfg.combine.model_dump()
    used = {k: v for k, v in parts.items() if v is not None and weights[k] > 0}
    total = sum(weights[k] for k in used)
    if total == 0:
        return float("nan")
    return sum(weights[k] * v for k, v in used.items()) / total


def ssim(source, edited) -> float:
    """Structural similarity of two same-size RGB images (1 = identical)."""
    from skimage.metrics import structural_similarity

    a = np.asarray(source.convert("RGB"))
    b = np.asarray(edited.convert("RGB"))
    side = min(a.shape[:2])
    if side < 3:
        return float(np.all(a == b))
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win))


class Scorer:
    """All scores of one image; the model-backed ones only where their models were loaded."""

    def __init__(self, cfg: ScoresConfig, segmenter=None, clip=None) -> None:
        self.cfg = cfg
        self.segmenter = segmenter
        self.clip = clip

    def score(self, image) -> tuple[dict[str, float | None], Any]:
        """(scores, CLIP image embedding or None)."""
        out: dict[str, float | None] = dict(colour_scores(image, self.cfg))
        out["towel_fraction"] = None
        out["clip_preference"] = None
        emb = None
        if self.segmenter is not None:
            probs = self.segmenter.probs(image, self.cfg.towel_prompt)
            out["towel_fraction"] = float((probs > self.cfg.towel_threshold).mean())
        if self.clip is not None:
            emb = self.clip.image_embedding(image)
            out["clip_preference"] = self.clip.preference(
                emb, self.cfg.preference_prompts, self.cfg.aversion_prompts
            )
        comps = alien_components(out, self.cfg)
        out["towel_free"] = comps["towels"]
        out["alien_score"] = alien_score(out, self.cfg)
        return out, emb

    def compare(self, source, edited) -> dict[str, float | None]:
        """Before/after scores, preservation and the deltas, as one flat row."""
        before, emb_before = self.score(source)
        after, emb_after = self.score(edited)
        row: dict[str, float | None] = {}
        for key in before:
            row[f"{key}_before"] = before[key]
            row[f"{key}_after"] = after[key]
        row["ssim"] = ssim(source, edited)
        row["clip_similarity"] = float(emb_before @ emb_after) if emb_before is not None else None
        return row


def success(row: dict[str, Any], goal: str) -> float | None:
    """Edit success: how much the recipe's goal score rose (after - before)."""
    col = GOAL_COLUMN[goal]
    before, after = row.get(f"{col}_before"), row.get(f"{col}_after")
    if not (_present(before) and _present(after)):
        return None
    return float(after) - float(before)
