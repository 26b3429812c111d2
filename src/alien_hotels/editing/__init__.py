"""Stage `edit`: diffusion edits that make hotel rooms alien-friendly, scored and ranked.

- `config`: the `edit.*` section (recipes, scores, sweep, the trained methods' sections).
- `embedding`: a learned token in recipes (uses it? is it there? load it into a pipeline).
- `imaging`: loading, sizing, masks, compositing, contact sheets (no torch).
- `scores`: colour shares, towel area, CLIP preference, alien-friendliness, SSIM.
- `models`: weight checks and loading of diffusers pipelines, CLIPSeg and CLIP.
- `runner`: a recipe over the images manifest (resumable) and the trade-off sweep.
- `report`: per-recipe means, hotel ranking, the trade-off plot.

Nothing here imports `alien_hotels.methods`: the trained methods build on this package, never
the reverse (tests/test_imports.py).
"""

from alien_hotels.editing.config import EditConfig, RecipeConfig

__all__ = ["EditConfig", "RecipeConfig"]
