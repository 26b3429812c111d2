"""Editing without models: colour scores, alien-friendliness, image/mask plumbing, config,
and the empty-manifest path that must not load any model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from alien_hotels.common import StageError
from alien_hotels.config import ConfigError, validate_params
from alien_hotels.editing import imaging, scores
from alien_hotels.editing.runner import TABLE_COLUMNS, recipe_metrics
from alien_hotels.imageio import load_rgb
from alien_hotels.stages import edit as edit_stage
from alien_hotels.stages import edit_report as edit_report_stage
from alien_hotels.stages import edit_sweep as edit_sweep_stage
from alien_hotels.stages.paths import StagePaths
from conftest import compose, run

GREEN, DARK_GREEN, RED, GREY = (0, 255, 0), (0, 100, 0), (255, 0, 0), (128, 128, 128)


def striped(counts: dict[tuple[int, int, int], int], width: int = 10) -> Image.Image:
    """A width-wide image whose pixels, in row-major order, have the given colours."""
    pixels = [colour for colour, n in counts.items() for _ in range(n)]
    arr = np.array(pixels, dtype=np.uint8).reshape(-1, width, 3)
    return Image.fromarray(arr)


def test_colour_scores_are_exact_on_known_regions():
    img = striped({GREEN: 30, DARK_GREEN: 20, RED: 10, GREY: 40})
    got = scores.colour_scores(img, compose().edit.scores)
    # bright green: green and neon; dark green: green only; red: neon only; grey: neither.
    assert got == {"green_share": 0.5, "neon_share": 0.4}


def test_colour_scores_follow_thresholds():
    img = striped({DARK_GREEN: 50, GREY: 50})
    cfg = compose().edit.scores
    assert scores.colour_scores(img, cfg.updated(green_min_value=0.5))["green_share"] == 0.0
    assert scores.colour_scores(img, cfg.updated(green_hue_min=130))["green_share"] == 0.0
    assert scores.colour_scores(img.convert("L"), compose().edit.scores)["green_share"] == 0.0


def test_alien_score_is_weighted_mean_of_available_components():
    cfg = compose().edit.scores.updated(green_target=0.5, neon_target=0.2, towel_tolerance=0.1)
    colour_only = {"green_share": 0.25, "neon_share": 0.4}
    # green 0.25/0.5 = 0.5, neon capped at 1.0; towels and clip unavailable
    assert scores.alien_score(colour_only, cfg) == pytest.approx(0.75)
    full = {**colour_only, "towel_fraction": 0.05, "clip_preference": 0.2}
    # towels 1 - 0.05/0.1 = 0.5
    assert scores.alien_score(full, cfg) == pytest.approx((0.5 + 1.0 + 0.5 + 0.2) / 4)
    weighted = cfg.model_copy(update={"combine": cfg.combine.model_copy(update={"neon": 3.0})})
    assert scores.alien_score(full, weighted) == pytest.approx((0.5 + 3.0 + 0.5 + 0.2) / 6)
    lots_of_towels = {**full, "towel_fraction": 0.5}
    assert scores.alien_components(lots_of_towels, cfg)["towels"] == 0.0


def test_success_is_goal_delta():
    row = {"green_share_before": 0.1, "green_share_after": 0.4}
    assert scores.success(row, "green") == pytest.approx(0.3)
    assert scores.success({"towel_free_before": None, "towel_free_after": 1.0}, "no_towels") is None


@pytest.mark.parametrize(
    ("size", "resolution", "expected"),
    [((640, 480), 512, (512, 384)), ((333, 1000), 512, (168, 512)), ((7, 5), 64, (64, 40))],
)
def test_model_size_is_multiple_of_8_with_longest_side_at_resolution(size, resolution, expected):
    got = imaging.model_size(size, resolution)
    assert got == expected
    assert all(side % 8 == 0 for side in got)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "I;16", "1", "LA"])
def test_load_rgb_accepts_any_mode(tmp_path: Path, mode: str):
    img = Image.new("RGB", (37, 21), (10, 200, 30)).convert(mode)
    path = tmp_path / ("x.tiff" if mode in {"CMYK", "I;16"} else "x.png")
    img.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (37, 21)
    prepared = imaging.prepare(out, 64)
    assert prepared.size == (64, 32)
    assert imaging.restore(prepared, out.size).size == (37, 21)


def test_transparent_pixels_become_white(tmp_path: Path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.save(tmp_path / "t.png")
    assert load_rgb(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_dilate_grows_by_a_disk():
    mask = np.zeros((9, 9), dtype=bool)
    mask[4, 4] = True
    grown = imaging.dilate(mask, 2)
    assert grown.sum() == 13  # lattice points within distance 2
    assert grown[4, 2] and grown[2, 4] and not grown[2, 2]
    assert imaging.dilate(mask, 0) is mask


def test_mask_from_probs_resizes_thresholds_and_dilates():
    probs = np.zeros((8, 8), dtype=np.float32)
    probs[:, :4] = 0.9
    mask = imaging.mask_from_probs(probs, (16, 4), threshold=0.5, pixels=0)
    assert mask.shape == (4, 16)
    assert mask[:, :7].all() and not mask[:, 9:].any()
    assert not imaging.mask_from_probs(probs, (16, 4), threshold=0.95, pixels=3).any()


def test_mask_from_file_accepts_any_size(tmp_path: Path):
    m = Image.new("L", (10, 10), 0)
    m.paste(255, (0, 0, 5, 10))
    m.save(tmp_path / "m.png")
    mask = imaging.mask_from_file(tmp_path / "m.png", (20, 6), pixels=0)
    assert mask.shape == (6, 20) and mask[:, :10].all() and not mask[:, 10:].any()


def test_composite_keeps_source_outside_mask_exactly():
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8))
    edited = Image.new("RGB", (9, 12), (1, 2, 3))
    mask = np.zeros((12, 9), dtype=bool)
    mask[3:7, 2:5] = True
    out = np.asarray(imaging.composite(src, edited, mask))
    assert np.array_equal(out[~mask], np.asarray(src)[~mask])
    assert (out[mask] == (1, 2, 3)).all()


def test_png_key_round_trip(tmp_path: Path):
    target = tmp_path / "a.png"
    imaging.save_png(Image.new("RGB", (3, 3)), target, "abc123")
    assert imaging.saved_key(target) == "abc123"
    assert imaging.saved_key(tmp_path / "missing.png") is None


def test_shipped_recipes_compose():
    recipes = compose().edit.recipes
    assert {"neon", "green", "window_view", "aliens", "no_towels", "neon_pix2pix"} <= set(recipes)
    assert recipes["neon"].model_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert recipes["neon"].pipeline == "img2img"
    towels = recipes["no_towels"]
    assert towels.pipeline == "inpaint"
    assert towels.model_id == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert (towels.mask.source, towels.mask.prompt) == ("text", "towel") and towels.mask.dilate > 0
    assert recipes["window_view"].mask.prompt == "window"
    assert recipes["neon_pix2pix"].model_id == "timbrooks/instruct-pix2pix"


def test_recipe_overrides_and_additions_compose():
    params = compose(
        "edit.recipes.neon.strength=0.3",
        "~edit/recipes@edit.recipes.aliens",
        "+edit/recipes@edit.recipes.neon_strong=neon",
        "edit.recipes.neon_strong.strength=0.9",
    )
    assert params.edit.recipes["neon"].strength == 0.3
    assert params.edit.recipes["neon_strong"].strength == 0.9
    assert "aliens" not in params.edit.recipes


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("edit.recipes.neon.pipeline=inpaint", "pipeline=inpaint needs a mask"),
        ("edit.recipes.neon.strength=1.5", "edit.recipes.neon.strength"),
        ("edit.recipes.neon.steps=1", "no denoising step"),
        ("edit.recipes.no_towels.mask.source=files", "mask.files_dir"),
        ("edit.recipes.neon.mask.files_dir=null", "mask.files_dir is empty"),
        ("edit.sweep.recipe=nope", "sweep.recipe='nope'"),
        ("edit.recipes.neon.scheduler=magic", "'default', 'ddim'"),
    ],
)
def test_bad_recipe_config_names_the_key(override: str, message: str):
    from alien_hotels.config import compose_params

    with pytest.raises(ConfigError, match="edit") as err:
        validate_params(compose_params([override], Path(__file__).parents[1] / "conf"))
    assert message in str(err.value)


def test_image_guidance_scale_only_on_instruct_pix2pix():
    recipes = compose().edit.recipes
    assert recipes["neon_pix2pix"].image_guidance_scale == 1.5
    with pytest.raises(ValidationError, match="instruct_pix2pix only"):
        recipes["neon"].updated(image_guidance_scale=1.5)
    with pytest.raises(ValidationError, match="needs image_guidance_scale"):
        recipes["neon_pix2pix"].updated(image_guidance_scale=None)


def write_manifest(root: Path, rows: list[dict]) -> StagePaths:
    paths = StagePaths().under(root)
    paths.images_manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["image_id", "path", "status", "reason"]).to_csv(
        paths.images_manifest, index=False
    )
    return paths


def test_no_images_writes_valid_empty_outputs_without_models(tmp_path: Path):
    """The bundled sample has no images: nothing is loaded (hub ids would fail offline)."""
    paths = write_manifest(
        tmp_path, [{"image_id": 1, "path": "", "status": "missing", "reason": "not local"}]
    )
    pd.DataFrame({"image_id": [1], "hotel_id": [7], "hotel_name": ["H"]}).to_csv(
        paths.sample, index=False
    )
    params = compose()
    metrics = edit_stage.run(params, paths=paths)
    assert set(metrics) == set(params.edit.recipes)
    for name in params.edit.recipes:
        table = pd.read_csv(paths.edit_tables / f"{name}.csv")
        assert table.empty and list(table.columns) == TABLE_COLUMNS
        assert json.loads((paths.edit_recipe_metrics / f"{name}.json").read_text())["n_images"] == 0
        assert (paths.edited_dir / name).is_dir()
        assert Image.open(paths.edit_sheets / f"{name}.jpg").size[0] > 0
    report = edit_report_stage.run(params, paths)
    assert report["n_hotels_ranked"] == 0 and report["best_hotel"] is None
    assert json.loads(paths.edit_metrics.read_text())["recipes"]["neon"]["n_images"] == 0
    assert "No images were edited" in paths.alien_ranking.read_text()
    sweep = edit_sweep_stage.run(params, paths)
    assert sweep.empty
    assert list(pd.read_csv(paths.sweep_table).columns)[:2] == ["strength", "guidance_scale"]
    assert Image.open(paths.sweep_plot).size[0] > 0


def test_unknown_recipe_is_a_stage_error(tmp_path: Path):
    paths = write_manifest(tmp_path, [])
    with pytest.raises(StageError, match="unknown recipe 'nope'"):
        edit_stage.run(compose(), "nope", paths)


def test_missing_weights_fail_before_any_work(tmp_path: Path):
    """A hub id that is not cached, offline: the CLI names the model id, writes nothing."""
    repo = Path(__file__).resolve().parents[1]
    Image.new("RGB", (16, 16), GREEN).save(tmp_path / "a.png")
    write_manifest(tmp_path, [{"image_id": "a", "path": "a.png", "status": "ok", "reason": ""}])
    params = tmp_path / "params.yaml"
    composed = run(["alien-hotels", "compose", "--conf-dir", str(repo / "conf")], tmp_path)
    params.write_text(composed.stdout)
    result = run(
        ["alien-hotels", "edit", "no_towels"],
        tmp_path,
        check=False,
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 2
    model = "edit.recipes.no_towels.model_id=stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert model in result.stderr
    assert "alien-hotels models download" in result.stderr
    assert not (tmp_path / "data/edited").exists()
    assert not (tmp_path / "metrics").exists()


def test_missing_local_model_dir_is_named(tmp_path: Path):
    from alien_hotels.editing import models

    with pytest.raises(StageError, match="nowhere does not exist"):
        models.require_weights(str(tmp_path / "nowhere"), "edit.recipes.x.model_id")


@pytest.mark.parametrize(
    "resumed",
    [
        [True, False, True],
        pd.Series([True, None, True], dtype=object),  # a failed row has no value
        [1.0, np.nan, 1.0],  # read back from a CSV with a missing cell
    ],
)
def test_resumed_rows_are_counted_whatever_the_column_type(resumed):
    table = pd.DataFrame({column: [np.nan] * 3 for column in TABLE_COLUMNS})
    table["status"] = ["edited", "failed", "unchanged"]
    table["resumed"] = resumed
    assert recipe_metrics(table)["n_resumed"] == 2
