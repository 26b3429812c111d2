"""Stage `edit`: diffusion edits that make hotel rooms alien-friendly, scored and ranked.

- `config`: the `edit.*` section (recipes, scores, sweep).
- `imaging`: loading, sizing, masks, compositing, contact sheets (no torch).
- `scores`: colour shares, towel area, CLIP preference, alien-friendliness, SSIM.
- `models`: weight checks and loading of diffusers pipelines, CLIPSeg and CLIP.
- `runner`: a recipe over the images manifest (resumable) and the trade-off sweep.
- `report`: per-recipe means, hotel ranking, the trade-off plot.
"""

from alien_hotels.editing.config import EditConfig, RecipeConfig

__all__ = ["EditConfig", "RecipeConfig"]
