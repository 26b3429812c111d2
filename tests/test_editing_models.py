"""Editing with tiny random-weight models: the real diffusers/CLIPSeg/CLIP classes and code
paths, loaded from local directories written with save_pretrained (as a user's model_id may be)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alien_hotels.editing import imaging, runner
from alien_hotels.imageio import load_rgb
from alien_hotels.stages import edit as edit_stage
from alien_hotels.stages import edit_report as edit_report_stage
from alien_hotels.stages import edit_sweep as edit_sweep_stage
from alien_hotels.testing.diffusion import RECIPE_KIND, tiny_edit_overrides
from conftest import compose

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    import torch

    from alien_hotels.testing.diffusion import save_tiny_models

    torch.set_num_threads(1)
    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def synthetic_images(root: Path) -> list[dict]:
    """Odd sizes and modes, with known coloured regions."""
    specs = [("wide", (70, 50), "RGB"), ("tall", (37, 53), "RGBA"), ("grey", (33, 33), "L")]
    rows = []
    for i, (image_id, size, mode) in enumerate(specs):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        arr[: size[1] // 3] = (0, 255, 0)  # a green band on top
        path = root / "data/images" / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).convert(mode).save(path)
        rows.append({"image_id": image_id, "path": f"data/images/{image_id}.png", "status": "ok"})
    rows.append({"image_id": "gone", "path": "", "status": "missing"})
    return rows


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    rows = synthetic_images(tmp_path)
    Path("data/interim").mkdir(parents=True)
    pd.DataFrame(rows).assign(reason="").to_csv("data/interim/images.csv", index=False)
    pd.DataFrame(
        {"image_id": [r["image_id"] for r in rows], "hotel_id": [1, 1, 2, 2], "hotel_name": "h"}
    ).to_csv("data/interim/sample.csv", index=False)
    return tmp_path


def manifest() -> pd.DataFrame:
    return pd.read_csv("data/interim/images.csv")


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_every_shipped_recipe_runs_and_keeps_source_size(workdir, tiny_models):
    params = compose(*tiny_edit_overrides(tiny_models))
    metrics = edit_stage.run(params)
    for name in RECIPE_KIND:
        assert metrics[name]["n_images"] == 3, name
        assert metrics[name]["n_failed"] == 0, name
        for image_id in ("wide", "tall", "grey"):
            source = load_rgb(f"data/images/{image_id}.png")
            edited = Image.open(f"data/edited/{name}/{image_id}.png")
            assert edited.size == source.size and edited.mode == "RGB"
        table = pd.read_csv(f"data/processed/edits/{name}.csv")
        assert table["towel_fraction_before"].between(0, 1).all()
        assert table["clip_preference_after"].between(0, 1).all()
        assert table["alien_score_before"].between(0, 1).all()
        assert Image.open(f"reports/edits/{name}.jpg").height > 3 * 64
    # the green band is a third of each source: colour scores see it exactly
    table = pd.read_csv("data/processed/edits/neon.csv").set_index("image_id")
    assert table.loc["grey", "green_share_before"] == 0.0
    assert table.loc["wide", "green_share_before"] >= 16 / 50
    report = edit_report_stage.run(params)
    assert set(report["recipes"]) == set(RECIPE_KIND)
    ranking = pd.read_csv("plots/alien_hotels.csv").set_index("hotel_id")
    # hotel 1: wide + tall; hotel 2: grey (its other image is missing)
    assert ranking["n_images"].to_dict() == {1: 2, 2: 1}
    assert report["n_hotels_ranked"] == 2
    assert ranking["rank"].tolist() == [1, 2]
    assert ranking["alien_score"].is_monotonic_decreasing
    expected = table.loc[["wide", "tall"], "alien_score_before"].mean()
    assert ranking.loc[1, "alien_score"] == pytest.approx(expected)
    assert set(RECIPE_KIND) <= set(ranking.columns)


def test_edits_are_deterministic_and_seeded(workdir, tiny_models):
    params = compose(*tiny_edit_overrides(tiny_models))
    first = runner.edit_recipe("neon", params.edit, manifest(), Path("a"))
    second = runner.edit_recipe("neon", params.edit, manifest(), Path("b"))
    assert (first.table["status"] == "edited").all()
    assert first.table["ssim"].tolist() == second.table["ssim"].tolist()
    for image_id in ("wide", "tall", "grey"):
        assert np.array_equal(pixels(Path(f"a/{image_id}.png")), pixels(Path(f"b/{image_id}.png")))
    reseeded = compose(*tiny_edit_overrides(tiny_models), "edit.recipes.neon.seed=7")
    runner.edit_recipe("neon", reseeded.edit, manifest(), Path("c"))
    assert not np.array_equal(pixels(Path("a/wide.png")), pixels(Path("c/wide.png")))


def test_inpainting_preserves_pixels_outside_the_mask_exactly(workdir, tiny_models):
    masks = Path("masks")
    masks.mkdir()
    for image_id, (w, h) in {"wide": (70, 50), "tall": (37, 53)}.items():
        m = Image.new("L", (w, h), 0)
        m.paste(255, (5, 5, w // 2, h // 2))
        m.save(masks / f"{image_id}.png")
    params = compose(
        *tiny_edit_overrides(tiny_models),
        "edit.recipes.no_towels.mask.source=files",
        f"edit.recipes.no_towels.mask.files_dir={masks}",
        "edit.recipes.no_towels.mask.dilate=2",
    )
    result = runner.edit_recipe("no_towels", params.edit, manifest(), Path("out"))
    table = result.table.set_index("image_id")
    for image_id in ("wide", "tall"):
        source = np.asarray(load_rgb(f"data/images/{image_id}.png"))
        edited = pixels(Path(f"out/{image_id}.png"))
        mask = imaging.mask_from_file(masks / f"{image_id}.png", source.shape[1::-1], 2)
        assert np.array_equal(edited[~mask], source[~mask])
        assert not np.array_equal(edited[mask], source[mask])
        assert table.loc[image_id, "mask_fraction"] == pytest.approx(mask.mean())
        assert table.loc[image_id, "status"] == "edited"
    # no mask file: copied unchanged and recorded, not an error
    assert table.loc["grey", "status"] == "unchanged"
    assert "no mask file" in table.loc["grey", "reason"]
    assert np.array_equal(
        pixels(Path("out/grey.png")), np.asarray(load_rgb("data/images/grey.png"))
    )


def test_text_masks_threshold_controls_the_edited_region(workdir, tiny_models):
    everything = compose(
        *tiny_edit_overrides(tiny_models), "edit.recipes.no_towels.mask.threshold=0.0"
    )
    result = runner.edit_recipe("no_towels", everything.edit, manifest(), Path("all"))
    assert (result.table["mask_fraction"] == 1.0).all()
    assert (result.table["status"] == "edited").all()
    nothing = compose(
        *tiny_edit_overrides(tiny_models), "edit.recipes.no_towels.mask.threshold=1.0"
    )
    result = runner.edit_recipe("no_towels", nothing.edit, manifest(), Path("none"))
    assert (result.table["status"] == "unchanged").all()
    assert (result.table["reason"] == "empty mask: copied unchanged").all()
    assert (result.table["ssim"] == 1.0).all()
    for image_id in ("wide", "tall", "grey"):
        source = np.asarray(load_rgb(f"data/images/{image_id}.png"))
        assert np.array_equal(pixels(Path(f"none/{image_id}.png")), source)


def test_resume_skips_done_images_and_redoes_changed_configs(workdir, tiny_models):
    params = compose(*tiny_edit_overrides(tiny_models))
    runner.edit_recipe("green", params.edit, manifest(), Path("out"))
    stamps = {p.name: p.stat().st_mtime_ns for p in Path("out").glob("*.png")}
    loaded = runner.load_models("green", params.edit.recipes["green"], params.edit)
    loaded.loader = lambda: pytest.fail("the pipeline was loaded although every image is done")
    again = runner.edit_recipe("green", params.edit, manifest(), Path("out"), loaded=loaded)
    assert again.table["resumed"].all()
    assert {p.name: p.stat().st_mtime_ns for p in Path("out").glob("*.png")} == stamps
    before = pixels(Path("out/wide.png"))
    stronger = compose(*tiny_edit_overrides(tiny_models), "edit.recipes.green.strength=0.9")
    redone = runner.edit_recipe("green", stronger.edit, manifest(), Path("out"))
    assert not redone.table["resumed"].any()
    assert not np.array_equal(pixels(Path("out/wide.png")), before)
    # an image that left the manifest loses its stale output
    runner.edit_recipe("green", stronger.edit, manifest().iloc[1:], Path("out"))
    assert not Path("out/wide.png").exists() and Path("out/tall.png").exists()


def test_unreadable_image_is_a_failed_row_not_a_crash(workdir, tiny_models):
    Path("data/images/wide.png").write_bytes(b"not a png")
    params = compose(*tiny_edit_overrides(tiny_models))
    result = runner.edit_recipe("neon", params.edit, manifest(), Path("out"))
    table = result.table.set_index("image_id")
    assert table.loc["wide", "status"] == "failed" and "cannot read" in table.loc["wide", "reason"]
    assert (table.loc[["tall", "grey"], "status"] == "edited").all()


def test_16bit_and_transparent_sources_go_through_the_image_loader(workdir, tiny_models):
    deep = Image.new("I;16", (40, 30), 16448)  # 16448 / 257 = 64
    deep.paste(65535, (20, 0, 40, 30))
    deep.save("data/images/deep.png")
    clear = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # black under a transparent half
    clear.paste((0, 0, 0, 255), (0, 0, 20, 30))
    clear.save("data/images/clear.png")
    rows = pd.DataFrame(
        {"image_id": ["deep", "clear"], "path": ["data/images/deep.png", "data/images/clear.png"]}
    ).assign(status="ok")
    nothing = compose(
        *tiny_edit_overrides(tiny_models), "edit.recipes.window_view.mask.threshold=1.0"
    )
    result = runner.edit_recipe("window_view", nothing.edit, rows, Path("out"))
    assert (result.table["status"] == "unchanged").all()  # copies of the decoded sources
    for image_id, left in (("deep", 64), ("clear", 0)):
        out = pixels(Path(f"out/{image_id}.png"))
        assert (out[:, :20] == left).all() and (out[:, 20:] == 255).all(), image_id


def test_sweep_produces_the_tradeoff_table(workdir, tiny_models):
    params = compose(
        *tiny_edit_overrides(tiny_models),
        "edit.sweep.grid={strength: [0.4, 1.0], guidance_scale: [1.0, 9.0]}",
        "edit.sweep.max_images=2",
    )
    table = edit_sweep_stage.run(params)
    assert len(table) == 4
    assert table[["strength", "guidance_scale"]].values.tolist() == [
        [0.4, 1.0],
        [0.4, 9.0],
        [1.0, 1.0],
        [1.0, 9.0],
    ]
    assert (table["n_images"] == 2).all()
    assert table["ssim"].between(-1, 1).all() and table["clip_similarity"].between(-1, 1).all()
    assert table["success"].notna().all()
    assert pd.read_csv("plots/edit_tradeoff.csv").shape == (4, table.shape[1])
    assert Image.open("reports/edit_tradeoff.png").size[0] > 100


def test_score_models_are_optional(workdir, tiny_models, tmp_path):
    params = compose(
        *tiny_edit_overrides(tiny_models),
        "edit.scores.on_missing_weights=skip",
        f"edit.scores.clip_model_id={tmp_path / 'no_clip_here'}",
        "edit.scores.clipseg_model_id=null",
    )
    table = runner.edit_recipe("neon", params.edit, manifest(), Path("out")).table
    assert (
        table["clip_preference_after"].isna().all() and table["towel_fraction_after"].isna().all()
    )
    assert table["alien_score_after"].between(0, 1).all()  # colour components only
