"""`dvc repro` of the edit stages in a fresh copy of the repo: tiny models on generated images,
and the bundled sample's zero-image case (no model may be loaded, no weights exist)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alien_hotels.testing.diffusion import RECIPE_KIND, tiny_edit_overrides
from conftest import run

pytestmark = [pytest.mark.slow, pytest.mark.ml]


def write_manifest(repo: Path, ok_ids: list[str]) -> list[str]:
    """Manifest over the sampled images: `ok_ids` get generated images, the rest are missing."""
    sample = pd.read_csv(repo / "data/interim/sample.csv")
    rows = []
    for i, image_id in enumerate(sample["image_id"].astype(str)):
        if image_id in ok_ids:
            rel = f"data/images/{image_id}.jpg"
            arr = np.random.default_rng(i).integers(0, 256, (40 + i % 3 * 7, 56, 3), np.uint8)
            arr[:10] = (0, 255, 0)
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(repo / rel)
            rows.append((image_id, rel, "ok", ""))
        else:
            rows.append((image_id, "", "missing", "no local image"))
    (repo / "data/images").mkdir(parents=True, exist_ok=True)  # the images stage's output
    frame = pd.DataFrame(rows, columns=["image_id", "path", "status", "reason"])
    frame.to_csv(repo / "data/interim/images.csv", index=False)
    return ok_ids


def test_dvc_repro_edits_with_tiny_models(project: Path, tmp_path: Path):
    from alien_hotels.testing.diffusion import save_tiny_models

    models = save_tiny_models(tmp_path / "models")
    run(["dvc", "repro", "-q", "sample"], project)
    sample = pd.read_csv(project / "data/interim/sample.csv")
    # two images of one hotel, one of another
    first, second = sample["hotel_id"].unique()[:2]
    ids = [*sample.loc[sample.hotel_id == first, "image_id"].astype(str)[:2]]
    ids.append(str(sample.loc[sample.hotel_id == second, "image_id"].iloc[0]))
    write_manifest(project, ids)

    overrides = [
        *tiny_edit_overrides(models, steps=3, resolution=64),
        "edit.sweep.grid={strength: [0.5, 1.0], guidance_scale: [1.0, 7.5]}",
        "edit.sweep.max_images=2",
    ]
    overrides.append("edit.recipes.window_view.mask.threshold=1.0")  # nothing to inpaint
    params = run(["alien-hotels", "compose", *overrides], project).stdout
    (project / "params.yaml").write_text(params)

    # -s: only the edit stages (the images manifest above stands in for the images stage)
    run(["dvc", "repro", "-s", "edit"], project)
    run(["dvc", "repro", "-s", "edit_report", "edit_sweep"], project)

    metrics = json.loads((project / "metrics/editing.json").read_text())
    assert set(metrics["recipes"]) == set(RECIPE_KIND)
    for name in RECIPE_KIND:
        m = metrics["recipes"][name]
        assert m["n_images"] == 3 and m["n_failed"] == 0, name
        assert sorted(p.stem for p in (project / f"data/edited/{name}").glob("*.png")) == sorted(
            ids
        )
        assert (project / f"reports/edits/{name}.jpg").stat().st_size > 0
    assert metrics["recipes"]["window_view"]["n_unchanged"] == 3
    assert metrics["recipes"]["window_view"]["ssim"] == 1.0
    assert metrics["recipes"]["neon"]["n_edited"] == 3
    assert metrics["n_hotels_ranked"] == 2
    ranking = (project / "reports/alien_ranking.md").read_text()
    assert "| rank | hotel_id | hotel_name |" in ranking
    sweep = pd.read_csv(project / "plots/edit_tradeoff.csv")
    assert len(sweep) == 4 and sweep["ssim"].notna().all()
    assert json.loads((project / "metrics/edit_sweep.json").read_text())["points"] == 4

    # nothing changed: nothing reruns; the stages are up to date
    again = run(["dvc", "repro", "-s", "edit"], project)
    assert "didn't change" in again.stdout or "up to date" in again.stdout
    status = run(["dvc", "status", "edit@neon", "edit@no_towels"], project).stdout
    assert "changed" not in status

    # `dvc exp run -S` changes one recipe's strength over the whole graph (no -s): only that
    # recipe's stage and the two that read every recipe rerun. exp run checks the committed
    # outputs out first, so record the stand-in manifest as the images stage's.
    run(["dvc", "commit", "-f", "-q", "images"], project)
    run(["dvc", "repro", "-q"], project)  # the text half, so the whole graph is up to date
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    run([*git, "add", "-A"], project)
    run([*git, "commit", "-qm", "edited"], project)
    before = {
        name: (project / f"data/edited/{name}" / f"{ids[0]}.png").read_bytes()
        for name in RECIPE_KIND
    }
    # -S recomposes params.yaml from conf/: every tiny-model override again, plus the change
    sets = [arg for o in [*overrides, "edit.recipes.neon.strength=1.0"] for arg in ("-S", o)]
    exp = run(["dvc", "exp", "run", *sets], project).stdout
    for stage in ("edit@neon", "edit_report", "edit_sweep"):
        assert f"Running stage '{stage}'" in exp, exp
    for name in set(RECIPE_KIND) - {"neon"}:
        assert f"Stage 'edit@{name}' didn't change, skipping" in exp, name
        after = (project / f"data/edited/{name}" / f"{ids[0]}.png").read_bytes()
        assert after == before[name], name
    assert "Running stage 'cluster'" not in exp
    assert (project / "data/edited/neon" / f"{ids[0]}.png").read_bytes() != before["neon"]
    composed = (project / "params.yaml").read_text()
    assert "strength: 1.0" in composed


def test_bundled_sample_without_images_edits_nothing_offline(project: Path, tmp_path: Path):
    run(["dvc", "repro", "-q", "sample"], project)
    write_manifest(project, [])
    env = {"HF_HOME": str(tmp_path / "empty_hf_home"), "HF_HUB_OFFLINE": "1"}
    run(["dvc", "repro", "-s", "edit"], project, **env)
    run(["dvc", "repro", "-s", "edit_report", "edit_sweep"], project, **env)
    metrics = json.loads((project / "metrics/editing.json").read_text())
    assert all(m["n_images"] == 0 for m in metrics["recipes"].values())
    assert metrics["best_hotel"] is None
    assert pd.read_csv(project / "plots/edit_tradeoff.csv").empty
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "editing.json" in shown
