"""Textual Inversion and Imagic: config errors, bad inputs before any work, empty outputs on the
bundled sample (no model), and training with tiny random-weight Stable Diffusion parts (the real
diffusers/transformers classes, saved with save_pretrained and loaded by path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alien_hotels.common import StageError
from alien_hotels.config import ConfigError
from alien_hotels.stages import imagic as imagic_stage
from alien_hotels.stages import textual_inversion as ti_stage
from conftest import ROOT, compose, subprocess_env

# Small settings: 64-pixel images, a few steps.
TI_TINY = [
    "edit.textual_inversion.reference_dir=data/references/alien",
    "edit.textual_inversion.initializer_token=a",
    "edit.textual_inversion.resolution=64",
    "edit.textual_inversion.batch_size=2",
    "edit.textual_inversion.gradient_accumulation=2",
    "edit.textual_inversion.learning_rate=0.5",
    "edit.textual_inversion.steps=12",
    "edit.textual_inversion.checkpoint_interval=4",
    "edit.device=cpu",
]


def write_references(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.zeros((40 + 8 * i, 48, 3), np.uint8)
        arr[..., 1] = 200
        arr[:: 4 + i] = (255, 0, 255)
        Image.fromarray(arr).save(folder / f"ref{i}.png")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- no models -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("edit.imagic.alphas=[0.0,1.5]", "edit.imagic.alphas", "alpha must lie in [0, 1]"),
        ("edit.imagic.alphas=[]", "edit.imagic.alphas", "at least 1 item"),
        ("edit.imagic.finetune=adapter", "edit.imagic.finetune", "'lora' or 'full'"),
        (
            "edit.textual_inversion.reference_dir=/tmp/refs",
            "edit.textual_inversion.reference_dir",
            "inside data/references/",
        ),
        (
            "edit.textual_inversion.templates=[a photo]",
            "edit.textual_inversion.templates",
            "{} slot",
        ),
        (
            "edit.textual_inversion.mixed_precision=fp8",
            "edit.textual_inversion.mixed_precision",
            "'auto', 'no', 'fp16' or 'bf16'",
        ),
        ("edit.textual_inversion.resolution=100", "edit.textual_inversion.resolution", "8"),
    ],
)
def test_bad_method_params_name_the_key(override: str, key: str, message: str):
    with pytest.raises(ConfigError) as err:
        compose(override)
    assert key in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable"])
def test_bad_reference_folder_fails_before_any_model_is_loaded(workdir: Path, case: str):
    folder = workdir / "data/references/alien"
    if case != "missing":
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("not an image")
    if case == "unreadable":
        write_references(folder, 1)
        (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    # a model that does not exist: reaching the loader would fail with another message
    params = compose(*TI_TINY, "edit.textual_inversion.model_id=./no_such_model")
    with pytest.raises(StageError) as err:
        ti_stage.run(params)
    text = str(err.value)
    assert "edit.textual_inversion.reference_dir" in text
    expected = {"missing": "is not a folder", "empty": "holds no images", "unreadable": "broken"}
    assert expected[case] in text
    assert not Path("data/textual_inversion").exists()
    assert not Path("metrics/textual_inversion.json").exists()


def test_bundled_sample_writes_valid_empty_outputs_without_models(workdir: Path):
    """reference_dir null and a manifest without images: no torch, no weights, valid outputs."""
    Path("data/interim").mkdir(parents=True)
    pd.DataFrame(
        {"image_id": ["1", "2"], "path": ["", ""], "status": "missing", "reason": ""}
    ).to_csv("data/interim/images.csv", index=False)
    params = compose("edit.imagic.model_id=./no_such_model")
    ti = ti_stage.run(params)
    assert ti["steps"] == 0 and ti["final_loss"] is None
    raw = Path("data/textual_inversion/learned_embeds.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    assert set(header) == {"__metadata__"} and header["__metadata__"]["status"] == "empty"
    assert list(pd.read_csv("plots/textual_inversion_loss.csv").columns) == ["step", "loss"]
    metrics = imagic_stage.run(params)
    assert metrics["n_images"] == 0 and metrics["per_alpha"] == {}
    assert pd.read_csv("plots/imagic_alpha.csv").empty
    assert "ssim" in pd.read_csv("data/processed/imagic.csv").columns
    assert Path("reports/imagic").is_dir() and Path("data/imagic").is_dir()
    assert json.loads(Path("metrics/imagic.json").read_text())["alphas"] == [
        0.0,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        1.0,
    ]


# --- tiny models ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny StableDiffusionPipeline saved to disk; VAE latents scaled to unit variance as in
    Stable Diffusion (so the denoising objective sees a real signal)."""
    import torch

    from alien_hotels.testing.diffusion import tiny_pipeline

    torch.set_num_threads(1)
    pipe = tiny_pipeline("img2img")
    probe = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        std = float(pipe.vae.encode(probe).latent_dist.mean.std())
    pipe.vae.register_to_config(scaling_factor=1.0 / std)
    path = tmp_path_factory.mktemp("tiny_sd") / "sd"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ti_reference_run(tiny_sd: Path, tmp_path_factory) -> Path:
    """One uninterrupted Textual Inversion run (12 steps), shared by the tests below."""
    root = tmp_path_factory.mktemp("ti_full")
    write_references(root / "data/references/alien")
    result = subprocess.run(
        [sys.executable, "-c", RUN_TI, str(root), str(tiny_sd), ""],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


# Runs the stage in `root`; with a kill step, SIGKILLs itself right after that optimizer step.
RUN_TI = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
os.chdir(sys.argv[1])
from conftest import compose
from alien_hotels.stages import textual_inversion as ti_stage
from test_edit_methods import TI_TINY
kill = int(sys.argv[3]) if sys.argv[3] else None
def on_step(step):
    if step == kill:
        os.kill(os.getpid(), signal.SIGKILL)
params = compose(*TI_TINY, "edit.textual_inversion.model_id=" + sys.argv[2])
ti_stage.run(params, on_step=on_step)
"""


@pytest.mark.ml
def test_textual_inversion_lowers_the_loss_and_the_token_changes_the_output(
    ti_reference_run: Path, tiny_sd: Path
):
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    metrics = json.loads((ti_reference_run / "metrics/textual_inversion.json").read_text())
    assert metrics["steps"] == 12 and metrics["n_references"] == 3
    # the same fixed probe (images, prompts, noise, timesteps) before and after training
    assert metrics["probe_loss_end"] < metrics["probe_loss_start"]
    curve = pd.read_csv(ti_reference_run / "plots/textual_inversion_loss.csv")
    assert curve["step"].tolist() == list(range(1, 13)) and curve["loss"].notna().all()
    embedding_file = ti_reference_run / "data/textual_inversion/learned_embeds.safetensors"
    learned = load_file(str(embedding_file))
    assert list(learned) == ["<alien-style>"] and learned["<alien-style>"].shape == (1, 32)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    initial = (
        pipe.text_encoder.get_input_embeddings()
        .weight[pipe.tokenizer.convert_tokens_to_ids("a</w>")]
        .detach()
    )
    assert not torch.allclose(learned["<alien-style>"][0], initial)  # it was trained
    pipe.load_textual_inversion(str(embedding_file), token="<alien-style>")

    def render(prompt: str) -> np.ndarray:
        gen = torch.Generator().manual_seed(0)
        out = pipe(prompt, num_inference_steps=2, height=64, width=64, generator=gen)
        return np.asarray(out.images[0], dtype=np.float64)

    with_token = render("a photo in the style of <alien-style>")
    with_initializer = render("a photo in the style of a")
    assert np.abs(with_token - with_initializer).mean() > 0.0


@pytest.mark.ml
@pytest.mark.slow
def test_textual_inversion_killed_and_rerun_ends_identical(
    ti_reference_run: Path, tiny_sd: Path, tmp_path: Path
):
    from safetensors.torch import load_file

    write_references(tmp_path / "data/references/alien")
    run = [sys.executable, "-c", RUN_TI, str(tmp_path), str(tiny_sd)]
    killed = subprocess.run([*run, "6"], env=subprocess_env(), capture_output=True, timeout=600)
    assert killed.returncode == -9  # SIGKILL after step 6; the last checkpoint is step 4
    assert not (tmp_path / "data/textual_inversion/learned_embeds.safetensors").exists()
    resumed = subprocess.run([*run, ""], env=subprocess_env(), capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics/textual_inversion.json").read_text())
    assert metrics["resumed_from_step"] == 4
    full = json.loads((ti_reference_run / "metrics/textual_inversion.json").read_text())
    assert metrics["final_loss"] == full["final_loss"]
    got = load_file(str(tmp_path / "data/textual_inversion/learned_embeds.safetensors"))
    want = load_file(str(ti_reference_run / "data/textual_inversion/learned_embeds.safetensors"))
    assert got["<alien-style>"].equal(want["<alien-style>"])
    loss = pd.read_csv(tmp_path / "plots/textual_inversion_loss.csv")
    assert loss.equals(pd.read_csv(ti_reference_run / "plots/textual_inversion_loss.csv"))


@pytest.mark.ml
def test_placeholder_already_in_vocabulary_fails_before_training(workdir: Path, tiny_sd: Path):
    write_references(workdir / "data/references/alien")
    params = compose(
        *TI_TINY,
        f"edit.textual_inversion.model_id={tiny_sd}",
        "edit.textual_inversion.placeholder_token=a",  # "a</w>" is a token of the vocabulary
    )
    with pytest.raises(StageError, match="placeholder_token: 'a' is already in the vocabulary"):
        ti_stage.run(params)
    assert not Path("data/checkpoints/textual_inversion/checkpoint.pt").exists()
    assert not Path("data/textual_inversion").exists()


@pytest.mark.ml
def test_recipe_using_the_token_needs_a_learned_embedding(workdir: Path, tiny_sd: Path):
    from alien_hotels.editing import runner

    Path("data/textual_inversion").mkdir(parents=True)
    ti_stage.run(compose())  # reference_dir null: an empty embedding file
    params = compose(
        f"edit.recipes.neon.model_id={tiny_sd}",
        "edit.recipes.neon.prompt='a room in the style of <alien-style>'",
    )
    with pytest.raises(StageError, match="edit.recipes.neon: the prompt uses '<alien-style>'"):
        runner.check_weights("neon", params.edit.recipes["neon"], params.edit)


@pytest.mark.ml
@pytest.mark.ray
def test_ray_edit_worker_keys_token_recipes_like_the_local_loop(
    ti_reference_run: Path, tiny_sd: Path, workdir: Path
):
    """A recipe whose prompt uses the learned token: the Ray worker's resume key is the local
    loop's (it covers the embedding), so a retrained embedding is never served stale outputs."""
    import shutil

    from safetensors.torch import load_file, save_file

    from alien_hotels.distributed.edit import EditWorker
    from alien_hotels.editing import runner

    embedding = workdir / "data/textual_inversion/learned_embeds.safetensors"
    embedding.parent.mkdir(parents=True)
    shutil.copy(ti_reference_run / "data/textual_inversion/learned_embeds.safetensors", embedding)
    cfg = compose(
        f"edit.recipes.neon.model_id={tiny_sd}",
        "edit.recipes.neon.prompt='a room in the style of <alien-style>'",
        "edit.scores.clipseg_model_id=null",
        "edit.scores.clip_model_id=null",
        "edit.device=cpu",
    ).edit
    recipe = cfg.recipes["neon"]
    local = runner.loaded_key(recipe, runner.load_models("neon", recipe, cfg))
    assert EditWorker("neon", cfg).load()["base_key"] == local
    learned = load_file(str(embedding))
    save_file({k: v + 1 for k, v in learned.items()}, str(embedding))  # retrained
    assert EditWorker("neon", cfg).load()["base_key"] != local


IMAGIC_TINY = [
    "edit.imagic.resolution=64",
    "edit.imagic.embedding_steps=3",
    "edit.imagic.unet_steps=3",
    "edit.imagic.lora_rank=4",
    "edit.imagic.lora_alpha=4",
    "edit.imagic.inference_steps=2",
    "edit.imagic.alphas=[0.0,0.5,1.0]",
    "edit.scores.clipseg_model_id=null",
    "edit.scores.clip_model_id=null",
    "edit.device=cpu",
]


@pytest.mark.ml
def test_imagic_outputs_per_alpha_and_alpha_changes_reuse_the_trained_state(
    workdir: Path, tiny_sd: Path
):
    rows = []
    for i, size in enumerate([(72, 48), (40, 56)]):
        arr = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), np.uint8)
        arr[:10] = (0, 255, 0)
        Path("data/images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(f"data/images/img{i}.png")
        rows.append((f"img{i}", f"data/images/img{i}.png", "ok"))
    Path("data/images/broken.png").write_bytes(b"not a png")
    rows += [("broken", "data/images/broken.png", "ok"), ("gone", "", "missing")]
    Path("data/interim").mkdir(parents=True)
    frame = pd.DataFrame(rows, columns=["image_id", "path", "status"]).assign(reason="")
    frame.to_csv("data/interim/images.csv", index=False)

    params = compose(*IMAGIC_TINY, f"edit.imagic.model_id={tiny_sd}")
    metrics = imagic_stage.run(params)
    assert (metrics["n_images"], metrics["n_failed"], metrics["n_trained"]) == (3, 1, 2)
    table = pd.read_csv("data/processed/imagic.csv")
    assert "cannot read" in table.loc[table.image_id == "broken", "reason"].iloc[0]
    done = table[table.status == "edited"]
    assert sorted(done.alpha.unique()) == [0.0, 0.5, 1.0] and done.ssim.notna().all()
    for image_id, size in (("img0", (72, 48)), ("img1", (40, 56))):
        names = sorted(p.name for p in Path(f"data/imagic/images/{image_id}").glob("*.png"))
        assert names == ["alpha_0.000.png", "alpha_0.500.png", "alpha_1.000.png"]
        assert Image.open(f"data/imagic/images/{image_id}/alpha_0.500.png").size == size
        assert Path(f"reports/imagic/{image_id}.jpg").is_file()
    state = Path("data/imagic/state/img0.safetensors")
    assert state.stat().st_size < 1_000_000  # LoRA weights and two embeddings, not a UNet
    curve = pd.read_csv("plots/imagic_alpha.csv")
    assert curve.alpha.tolist() == [0.0, 0.5, 1.0] and (curve.n_images == 2).all()
    # alpha 0 and 1 condition on different embeddings: different images
    a0 = np.asarray(Image.open("data/imagic/images/img0/alpha_0.000.png"), dtype=float)
    a1 = np.asarray(Image.open("data/imagic/images/img0/alpha_1.000.png"), dtype=float)
    assert np.abs(a0 - a1).mean() > 0
    kept = Path("data/imagic/images/img0/alpha_0.500.png").read_bytes()

    # only the alphas change: nothing is retrained, the kept alpha is not regenerated
    state_before = state.read_bytes()
    params = compose(
        *IMAGIC_TINY, f"edit.imagic.model_id={tiny_sd}", "edit.imagic.alphas=[0.5,0.7]"
    )
    metrics = imagic_stage.run(params)
    assert metrics["n_trained"] == 0 and state.read_bytes() == state_before
    names = sorted(p.name for p in Path("data/imagic/images/img0").glob("*.png"))
    assert names == ["alpha_0.500.png", "alpha_0.700.png"]
    assert Path("data/imagic/images/img0/alpha_0.500.png").read_bytes() == kept
    # the same alpha generated from the cached state equals a fresh generation
    Path("data/imagic/images/img0/alpha_0.500.png").unlink()
    imagic_stage.run(params)
    assert Path("data/imagic/images/img0/alpha_0.500.png").read_bytes() == kept


# --- a tiny model that has learned its text ------------------------------------------------


@pytest.fixture(scope="session")
def trained_sd(tmp_path_factory) -> Path:
    """`testing.trained_sd`: a tiny Stable Diffusion trained on "a red room" / "a green room"
    (about half a minute), saved to disk."""
    import torch

    from alien_hotels.testing.trained_sd import trained_tiny_sd

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("trained_sd") / "sd"
    trained_tiny_sd().save_pretrained(path)
    return path


@pytest.mark.ml
def test_trained_fixture_draws_what_its_text_says(trained_sd: Path):
    """The premise of the Imagic test below: this model's text decides the picture."""
    import torch
    from diffusers import StableDiffusionPipeline

    from alien_hotels.editing.scores import ssim
    from alien_hotels.testing.trained_sd import caption, room

    pipe = StableDiffusionPipeline.from_pretrained(trained_sd, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for colour, other in (("red", "green"), ("green", "red")):
        out = pipe(
            caption(colour),
            height=64,
            width=64,
            num_inference_steps=10,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
        ).images[0]
        assert ssim(room(colour), out) > ssim(room(other), out) + 0.1


@pytest.mark.ml
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_imagic_alpha_0_reconstructs_the_source_and_alpha_1_follows_the_target(
    workdir: Path, trained_sd: Path, finetune: str
):
    """Source: a red room whose window the model never saw lower down; target: "a green room".
    alpha 0 (the optimised embedding on the tuned model) must be closer to the source by the
    stage's own SSIM, alpha 1 greener by the stage's own success score (goal: green)."""
    from alien_hotels.testing.trained_sd import caption, room

    Path("data/images").mkdir(parents=True)
    room("red", window=(0.5, 0.75)).save("data/images/src.png")
    Path("data/interim").mkdir(parents=True)
    pd.DataFrame(
        [("src", "data/images/src.png", "ok", "")], columns=["image_id", "path", "status", "reason"]
    ).to_csv("data/interim/images.csv", index=False)
    params = compose(
        *IMAGIC_TINY,
        f"edit.imagic.model_id={trained_sd}",
        f"edit.imagic.target_text='{caption('green')}'",
        "edit.imagic.goal=green",
        f"edit.imagic.finetune={finetune}",
        "edit.imagic.embedding_steps=50",
        "edit.imagic.embedding_lr=5e-2",
        "edit.imagic.unet_steps=30",
        "edit.imagic.unet_lr=1e-3",
        "edit.imagic.inference_steps=10",
        "edit.imagic.guidance_scale=3.0",
        "edit.imagic.alphas=[0.0,0.5,1.0]",
    )
    imagic_stage.run(params)
    table = pd.read_csv("data/processed/imagic.csv").set_index("alpha")
    assert (table.status == "edited").all()
    ssim, success = table["ssim"], table["success"]
    assert ssim[0.0] > ssim[1.0] + 0.1, ssim.to_dict()
    assert success[1.0] > success[0.0] + 0.3, success.to_dict()
    curve = pd.read_csv("plots/imagic_alpha.csv").set_index("alpha")
    assert curve.loc[0.0, "ssim"] == pytest.approx(ssim[0.0])
