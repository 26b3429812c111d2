"""A learned token in edit recipes: which recipes use it, is it there, load it into a pipeline.

The `textual_inversion` stage (`alien_hotels.methods.textual_inversion`) writes the token's
embedding to `tables.EMBEDDING_PATH`; a recipe whose prompt names
`edit.textual_inversion.placeholder_token` needs it (docs/editing.md, "Textual Inversion").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alien_hotels.common import StageError
from alien_hotels.editing.config import EditConfig, RecipeConfig


def uses_token(recipe: RecipeConfig, cfg: EditConfig) -> bool:
    token = cfg.textual_inversion.placeholder_token
    return token in recipe.prompt or token in recipe.negative_prompt


def check_embedding(name: str, path: Path, cfg: EditConfig) -> None:
    """A recipe using the token needs a learned embedding (checked before any image is edited)."""
    token = cfg.textual_inversion.placeholder_token
    if not path.is_file() or _is_empty(path):
        raise StageError(
            f"edit.recipes.{name}: the prompt uses {token!r} but {path} holds no learned "
            "embedding; set edit.textual_inversion.reference_dir and run "
            "`dvc repro textual_inversion` first"
        )


def _is_empty(path: Path) -> bool:
    import json
    import struct

    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else 0
    header = json.loads(raw[8 : 8 + size] or b"{}")
    return not [k for k in header if k != "__metadata__"]


def attach(pipe: Any, path: Path, cfg: EditConfig) -> None:
    """Load the learned token into an edit pipeline (its tokenizer and text encoder)."""
    pipe.load_textual_inversion(str(path), token=cfg.textual_inversion.placeholder_token)
