"""caption=clip_interrogator on tiny random-weight models: the library's real code paths.

Reference outputs come from `clip_interrogator.Interrogator` itself, built around the same tiny
models and called one image at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from alien_hotels.captioning.checkpoint import Checkpoint, config_key
from alien_hotels.captioning.config import CAPTION_MODELS, CaptionConfig
from alien_hotels.captioning.images import load_row
from alien_hotels.config import ConfigError
from alien_hotels.images.collect import relative_image_path
from alien_hotels.testing.interrogator import (
    library_interrogator,
    save_tiny_models,
    tiny_overrides,
)
from conftest import compose, run, subprocess_env

pytestmark = [pytest.mark.ml, pytest.mark.filterwarnings("ignore::FutureWarning")]

FAST = [
    "caption.flavor_intermediate_count=48",
    "caption.max_flavors=6",
    "caption.min_flavors=2",
    "caption.progress=false",
    "caption.loader_workers=1",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return save_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)


def random_images(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    (root / "data/images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        h, w = rng.integers(24, 80, size=2)
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"data/images/{i}.png")
        rows.append(
            {"image_id": 1000 + i, "path": f"data/images/{i}.png", "status": "ok", "reason": ""}
        )
    return pd.DataFrame(rows)


def caption_cfg(tiny, *extra: str) -> CaptionConfig:
    return compose(*tiny_overrides(tiny), *FAST, *extra).caption


def run_stage(manifest, cfg, root):
    from alien_hotels.captioning.run import caption_images

    return caption_images(manifest, cfg, root)


def test_caption_models_are_the_library_ones():
    import clip_interrogator.clip_interrogator as lib

    assert CAPTION_MODELS == lib.CAPTION_MODELS


def test_config_errors_name_key_and_choices():
    with pytest.raises(ConfigError, match=r"caption.caption_model_name.*blip-base"):
        compose("caption=clip_interrogator", "caption.caption_model_name=blip-huge")
    with pytest.raises(ConfigError, match=r"caption\.min_flavors"):
        compose("caption=clip_interrogator", "caption.min_flavors=9", "caption.max_flavors=4")
    with pytest.raises(ConfigError, match=r"caption\.mode"):
        compose("caption=clip_interrogator", "caption.mode=slow")


@pytest.mark.parametrize("mode", ["best", "classic", "fast", "negative"])
def test_modes_match_the_library_one_image_at_a_time(tiny, tmp_path, mode):
    manifest = random_images(tmp_path, 4, seed=1)
    cfg = caption_cfg(
        tiny,
        f"caption.mode={mode}",
        "caption.batch_size=3",
        f"caption.checkpoint_dir={tmp_path / 'ckpt'}",
    )
    result = run_stage(manifest, cfg, tmp_path)
    assert result.metrics["ok"] == 4 and result.failures.empty
    ci = library_interrogator(tiny, flavor_intermediate_count=48)
    expected = []
    for path in manifest["path"]:
        image = Image.open(tmp_path / path).convert("RGB")
        if mode == "best":
            expected.append(ci.interrogate(image, min_flavors=2, max_flavors=6))
        elif mode == "classic":
            expected.append(ci.interrogate_classic(image, max_flavors=6))
        elif mode == "fast":
            expected.append(ci.interrogate_fast(image, max_flavors=6))
        else:
            expected.append(ci.interrogate_negative(image, max_flavors=6))
    assert result.captions["caption"].tolist() == expected
    assert set(result.captions["caption_mode"]) == {mode}
    assert result.captions["image_id"].tolist() == manifest["image_id"].tolist()


def test_batched_equals_one_at_a_time(tiny, tmp_path):
    manifest = random_images(tmp_path, 7, seed=2)
    outs = []
    for batch in (1, 4):
        cfg = caption_cfg(
            tiny,
            "caption.mode=best",
            f"caption.batch_size={batch}",
            f"caption.checkpoint_dir={tmp_path / f'ckpt{batch}'}",
        )
        outs.append(run_stage(manifest, cfg, tmp_path).captions)
    pd.testing.assert_frame_equal(outs[0], outs[1])


# -- bad images --------------------------------------------------------------------------------


def write_bad_images(root: Path) -> dict[str, str | None]:
    """name -> expected failure reason (None: normalised and captioned)."""
    d = root / "data/images"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "good.jpg", quality=95)
    full = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (d / "garbage.jpg").write_bytes(
        b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 255, 500, dtype=np.uint8))
    )
    (d / "empty.png").write_bytes(b"")
    (d / "notes.png").write_text("this is not an image\n")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rgb).convert("L").save(d / "gray.png")
    Image.fromarray((rng.integers(0, 65535, (40, 60))).astype(np.uint16)).save(d / "gray16.png")
    rgba = np.dstack([rgb, rng.integers(0, 255, (40, 60), dtype=np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(d / "alpha.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(rgb).save(d / "rotated.jpg", exif=exif)
    Image.new("RGB", (6000, 4000), (200, 120, 40)).save(d / "huge.png")
    return {
        "good.jpg": None,
        "truncated.jpg": "corrupt_image",
        "garbage.jpg": "corrupt_image",
        "empty.png": "empty_file",
        "notes.png": "not_an_image",
        "cmyk.jpg": None,
        "gray.png": None,
        "gray16.png": None,
        "alpha.png": None,
        "palette.gif": None,
        "rotated.jpg": None,
        "huge.png": None,
        "absent.jpg": "missing_file",
    }


def test_caption_rows_use_the_image_loader(tmp_path):
    write_bad_images(tmp_path)

    def load(name: str):
        return load_row(tmp_path, name, f"data/images/{name}", 1536, 10**9).image

    for name in ("cmyk.jpg", "gray.png", "gray16.png", "alpha.png", "palette.gif"):
        assert load(name).mode == "RGB"
    assert load("rotated.jpg").size == (40, 60)  # EXIF applied
    assert load("huge.png").size == (1536, 1024)
    gray16 = np.asarray(load("gray16.png"))
    assert 60 < gray16.mean() < 200 and gray16.std() > 30  # scaled, not clipped to white
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "data/images/clear.png")
    assert np.asarray(load("clear.png")).min() == 255  # on white


def test_bad_images_never_stop_the_run(tiny, tmp_path):
    expected = write_bad_images(tmp_path)
    manifest = pd.DataFrame(
        [
            {"image_id": i, "path": f"data/images/{name}", "status": "ok", "reason": ""}
            for i, name in enumerate(expected)
        ]
        + [{"image_id": 99, "path": "", "status": "missing", "reason": "no url"}]
    )
    cfg = caption_cfg(
        tiny,
        "caption.mode=fast",
        "caption.batch_size=4",
        f"caption.checkpoint_dir={tmp_path / 'ckpt'}",
    )
    result = run_stage(manifest, cfg, tmp_path)
    names = list(expected)
    ok_names = {names[i] for i in result.captions["image_id"]}
    assert ok_names == {n for n, r in expected.items() if r is None}
    got = {
        names[i]: r
        for i, r in zip(result.failures["image_id"], result.failures["reason"], strict=True)
    }
    assert got == {n: r for n, r in expected.items() if r is not None}
    assert result.metrics["failed_by_reason"] == {
        "corrupt_image": 2,
        "empty_file": 1,
        "missing_file": 1,
        "not_an_image": 1,
    }
    assert result.metrics["not_in_manifest_as_ok"] == {"missing": 1}
    assert (result.captions["caption"].str.len() > 0).all()

    small = caption_cfg(
        tiny,
        "caption.mode=fast",
        "caption.max_image_pixels=1000000",
        f"caption.checkpoint_dir={tmp_path / 'ckpt2'}",
    )
    again = run_stage(manifest, small, tmp_path)
    assert (
        dict(zip(again.failures["image_id"], again.failures["reason"], strict=True))[
            names.index("huge.png")
        ]
        == "too_many_pixels"
    )


# -- checkpoint and resume ---------------------------------------------------------------------


def test_checkpoint_drops_a_cut_line_and_keys_on_config(tmp_path):
    cfg = compose().caption.updated(method="clip_interrogator")
    key = config_key(cfg, "cpu", "float32")
    assert key != config_key(cfg.model_copy(update={"max_flavors": 31}), "cpu", "float32")
    assert key == config_key(cfg.model_copy(update={"loader_workers": 7}), "cpu", "float32")
    ckpt = Checkpoint(tmp_path, key)
    ckpt.add({"image_id": 1, "path": "a.jpg", "status": "ok", "caption": "x"})
    ckpt.add({"image_id": 1, "path": "a.jpg", "status": "ok", "caption": "dup"})
    with ckpt.path.open("a") as fh:
        fh.write('{"key": "' + key + '", "image_id": "2", "path": "b.jp')  # killed mid-write
    reopened = Checkpoint(tmp_path, key)
    assert list(reopened.rows) == ["1"] and reopened.rows["1"]["caption"] == "x"
    reopened.add({"image_id": 2, "path": "b.jpg", "status": "ok", "caption": "y"})
    lines = [json.loads(x) for x in reopened.path.read_text().splitlines()]
    assert [x["image_id"] for x in lines] == ["1", "2"]
    assert Checkpoint(tmp_path, "other-config").rows == {}


def stage_project(root: Path, tiny, n: int, *extra: str) -> Path:
    manifest = random_images(root, n, seed=4)
    (root / "data/interim").mkdir(parents=True, exist_ok=True)
    manifest.to_csv(root / "data/interim/images.csv", index=False)
    params = compose(*tiny_overrides(tiny), *FAST, *extra).model_dump(mode="json")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.mark.slow
def test_resume_after_kill_loses_and_duplicates_nothing(tiny, tmp_path):
    extra = ("caption.mode=best", "caption.batch_size=3", "caption.max_flavors=12")
    clean = stage_project(tmp_path / "clean", tiny, 10, *extra)
    run(["alien-hotels", "caption"], clean)

    killed = stage_project(tmp_path / "killed", tiny, 10, *extra)
    proc = subprocess.Popen(
        ["alien-hotels", "caption"],
        cwd=killed,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpt_dir = killed / "data/checkpoints/caption"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(ckpt_dir.glob("*.jsonl"))
            if files and files[0].read_text().count("\n") >= 4:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = next(ckpt_dir.glob("*.jsonl")).read_text().count("\n")
    assert 4 <= lines < 10, "the run was not killed mid-way"
    assert not (killed / "data/processed/captions.csv").exists()

    run(["alien-hotels", "caption"], killed)
    for name in ("data/processed/captions.csv", "data/processed/caption_failures.csv"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes()
    captions = pd.read_csv(killed / "data/processed/captions.csv")
    assert len(captions) == 10 and captions["image_id"].is_unique
    metrics = json.loads((killed / "metrics/captioning.json").read_text())
    assert metrics["resumed_from_checkpoint"] == lines
    assert metrics["computed_this_run"] == 10 - lines

    # Changing a captioning parameter invalidates the checkpoint: everything is recomputed.
    params = yaml.safe_load((killed / "params.yaml").read_text())
    params["caption"]["max_flavors"] = 11
    (killed / "params.yaml").write_text(yaml.safe_dump(params))
    run(["alien-hotels", "caption"], killed)
    metrics = json.loads((killed / "metrics/captioning.json").read_text())
    assert metrics["resumed_from_checkpoint"] == 0 and metrics["computed_this_run"] == 10


# -- missing weights and downloads -------------------------------------------------------------


def test_missing_weights_fail_before_any_work(tmp_path):
    root = tmp_path / "proj"
    manifest = random_images(root, 2)
    (root / "data/interim").mkdir(parents=True, exist_ok=True)
    manifest.to_csv(root / "data/interim/images.csv", index=False)
    params = compose("caption=clip_interrogator", "caption.device=cpu").model_dump(mode="json")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    result = run(
        ["alien-hotels", "caption"],
        root,
        check=False,
        HF_HOME=str(tmp_path / "empty_hf"),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
    )
    assert result.returncode == 2
    err = result.stderr
    cache = tmp_path / "empty_hf" / "hub"
    assert (
        "caption.caption_model_name=Salesforce/blip-image-captioning-large: "
        f"not in the Hugging Face cache {cache}"
    ) in err
    assert "caption.clip_model_name=timm/vit_large_patch14_clip_224.openai: " in err
    assert "HF_HUB_OFFLINE" in err
    assert "alien-hotels models download" in err and "caption.allow_download=true" in err
    assert not (root / "data/checkpoints").exists()  # no image was touched
    assert not (root / "data/processed").exists()


# -- the whole graph ---------------------------------------------------------------------------


@pytest.mark.slow
def test_dvc_repro_with_clip_interrogator(tiny, project):
    bundled = pd.read_csv(project / "data/bundled/hotels_sample.csv")
    photos = bundled[bundled["downloaded"]].head(12)  # rows the study had images for
    rng = np.random.default_rng(5)
    # A dozen photos in the dataset's local image tree, where the images stage looks for them.
    tree = project / "data/raw/hotels50k/images/train"
    for _, row in photos.iterrows():
        path = tree / relative_image_path(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    run(["dvc", "commit", "-f", "-q", "data.dvc"], project)
    overrides = [
        *tiny_overrides(tiny),
        *FAST,
        "features.n_components=2",
        "cluster.k_min=1",
        "cluster.k_max=4",
        "map.perplexity=2",
    ]
    composed = run(["alien-hotels", "compose", *overrides], project).stdout
    (project / "params.yaml").write_text(composed)
    # Up to the map: the edit stages would need Stable Diffusion weights for these photos.
    run(["dvc", "repro", "-q", "map"], project)
    captions = pd.read_csv(project / "data/processed/captions.csv")
    assert sorted(captions["image_id"]) == sorted(photos["image_id"])
    assert set(captions["clip_model"]) == {str(tiny.clip.resolve())}  # the weights that ran
    assert set(captions["caption_model"]) == {str(tiny.blip.resolve())}
    metrics = json.loads((project / "metrics/captioning.json").read_text())
    assert metrics["ok"] == 12 and metrics["not_in_manifest_as_ok"] == {"missing": 313 - 12}
    assert len(pd.read_csv(project / "data/processed/clusters.csv")) > 0
    status = run(["dvc", "status", "--with-deps", "map"], project)
    assert "up to date" in status.stdout, status.stdout


def test_precomputed_captions_on_photos_without_captions_point_to_the_model():
    from alien_hotels.captioning import precomputed_captions
    from alien_hotels.common import StageError

    params = compose("data=folder")  # caption=precomputed stays the default
    sample = pd.DataFrame({"image_id": [1, 2], "hotel_id": [7, 7]})
    with pytest.raises(StageError) as err:
        precomputed_captions(sample, params.data.caption_column, params.caption)
    message = str(err.value)
    assert "data.caption_column" in message and "models download --only caption" in message
    assert "-S caption=clip_interrogator" in message
