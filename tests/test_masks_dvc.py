"""Mask files are DVC dependencies of the edit stage of the recipe that uses them, in a fresh
copy of the repo. No model is needed: the manifest has no image to edit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import run

pytestmark = pytest.mark.slow

EDIT_STAGES = ["edit@neon", "edit@window_view", "edit@no_towels"]  # no, file, text masks


def changed(repo: Path) -> dict[str, dict[str, str]]:
    """`dvc status` of the edit stages: stage -> {path: how it changed}."""
    status = json.loads(run(["dvc", "status", "--json", *EDIT_STAGES], repo).stdout or "{}")
    out: dict[str, dict[str, str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):
                out.setdefault(stage, {})[str(entry)] = str(entry)
                continue
            for kind in ("changed deps", "changed outs"):
                out.setdefault(stage, {}).update(entry.get(kind, {}))
    return out


def test_mask_files_are_dependencies_of_their_recipe_only(project: Path):
    run(["dvc", "repro", "-q", "sample"], project)
    sample = pd.read_csv(project / "data/interim/sample.csv")
    pd.DataFrame(
        {"image_id": sample["image_id"], "path": "", "status": "missing", "reason": ""}
    ).to_csv(project / "data/interim/images.csv", index=False)
    (project / "data/images").mkdir(parents=True)
    masks = project / "data/masks/window_view"
    masks.mkdir(parents=True)
    first = str(sample["image_id"].iloc[0])
    Image.new("L", (64, 48), 0).save(masks / f"{first}.png")
    overrides = [
        "edit.recipes.window_view.mask.source=files",
        "edit.recipes.window_view.mask.files_dir=data/masks/window_view",
    ]
    params = run(["alien-hotels", "compose", *overrides], project).stdout
    (project / "params.yaml").write_text(params)
    run(["dvc", "repro", "-q", *EDIT_STAGES], project)
    assert changed(project) == {}
    lock = (project / "dvc.lock").read_text()
    assert "path: data/masks/window_view" in lock and "path: data/masks/none" in lock

    # A changed mask file: only its recipe's stage, and for that dependency
    Image.new("L", (64, 48), 255).save(masks / f"{first}.png")
    assert changed(project) == {"edit@window_view": {"data/masks/window_view": "modified"}}
    run(["dvc", "repro", "-q", "edit@window_view"], project)
    assert changed(project) == {}

    # A new mask file too
    Image.new("L", (64, 48), 255).save(masks / "123456.png")
    assert list(changed(project)) == ["edit@window_view"]

    # A SIGKILLed PNG write's leftover in an edit output is neither data nor a change
    (project / "data/edited/neon/.7.png.a1b2c3d4.tmp").write_bytes(b"")
    assert "edit@neon" not in changed(project)
