"""Model weights (alien_hotels.modelhub): checks that read only the disk, the minimal download
plan against a Hugging Face Hub stand-in on 127.0.0.1 (real huggingface_hub client code), one
device/dtype rule, torch threads, and the provenance captions.csv records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from alien_hotels import modelhub
from alien_hotels.common import StageError
from alien_hotels.modelhub import ModelRef
from alien_hotels.stages import edit as edit_stage
from alien_hotels.testing.diffusion import tiny_edit_overrides
from alien_hotels.testing.fakehub import FakeHub
from conftest import compose, run

pytestmark = [pytest.mark.ml, pytest.mark.filterwarnings("ignore::FutureWarning")]

# Hub ids the stand-in serves the tiny models under (the caption ones are the real ids that
# caption_model_name=blip-base and clip_model_name=ViT-B-32/openai resolve to).
BLIP_REPO = "Salesforce/blip-image-captioning-base"
OPEN_CLIP_REPO = "timm/vit_base_patch32_clip_224.openai"
LABEL_REPO = "pharma/ci-preprocess"
EDIT_REPOS = {k: f"tiny/{k}" for k in ("img2img", "inpaint", "instruct_pix2pix", "clipseg", "clip")}


@pytest.fixture(scope="session")
def tiny_edit(tmp_path_factory) -> dict[str, Path]:
    import torch

    from alien_hotels.testing.diffusion import save_tiny_models

    torch.set_num_threads(1)
    return save_tiny_models(tmp_path_factory.mktemp("tiny_edit"))


@pytest.fixture(scope="session")
def tiny_caption(tmp_path_factory):
    from alien_hotels.testing.interrogator import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny_caption"))


def _junk(path: Path, size: int = 2048) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)


@pytest.fixture(scope="session")
def hub_repos(tmp_path_factory, tiny_edit, tiny_caption) -> tuple[dict[str, Path], dict]:
    """(repo id -> folder, repo id -> the files a minimal download fetches). Every repo also
    holds what real ones do and no loader here reads: other precisions and formats, a
    single-file checkpoint, a safety checker, an ONNX export."""
    from alien_hotels.captioning.models import LABEL_TABLES

    root = tmp_path_factory.mktemp("hub")
    repos, wanted = {}, {}
    for kind, repo in EDIT_REPOS.items():
        folder = root / repo
        shutil.copytree(tiny_edit[kind], folder)
        wanted[repo] = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        repos[repo] = folder
    for kind in ("img2img", "inpaint", "instruct_pix2pix"):
        folder = repos[EDIT_REPOS[kind]]
        _junk(folder / "v1-5-pruned.ckpt")
        _junk(folder / "unet/diffusion_pytorch_model.fp16.safetensors")
        _junk(folder / "unet/diffusion_pytorch_model.bin")
        _junk(folder / "vae/diffusion_flax_model.msgpack")
        _junk(folder / "safety_checker/model.safetensors")
        (folder / "safety_checker/config.json").write_text("{}")
        _junk(folder / "onnx/unet/model.onnx")
        (folder / "onnx/unet/config.json").write_text("{}")
    blip = root / BLIP_REPO
    shutil.copytree(tiny_caption.blip, blip)
    wanted[BLIP_REPO] = {p.name for p in blip.iterdir()}
    for name in ("tf_model.h5", "flax_model.msgpack", "pytorch_model.bin", "rust_model.ot"):
        _junk(blip / name)
    repos[BLIP_REPO] = blip
    for kind in ("clipseg", "clip"):
        _junk(repos[EDIT_REPOS[kind]] / "pytorch_model.bin")
        _junk(repos[EDIT_REPOS[kind]] / "tf_model.h5")
    open_clip_repo = root / OPEN_CLIP_REPO
    open_clip_repo.mkdir(parents=True)
    shutil.copy(tiny_caption.clip / "open_clip_model.safetensors", open_clip_repo)
    _junk(open_clip_repo / "open_clip_pytorch_model.bin")
    repos[OPEN_CLIP_REPO], wanted[OPEN_CLIP_REPO] = open_clip_repo, {"open_clip_model.safetensors"}
    labels = root / LABEL_REPO
    wanted[LABEL_REPO] = {f"ViT-B-32_openai_{t}.safetensors" for t in LABEL_TABLES}
    for name in [*wanted[LABEL_REPO], "ViT-L-14_openai_flavors.safetensors"]:
        _junk(labels / name, 512)
    repos[LABEL_REPO] = labels
    return repos, wanted


def hub_overrides() -> list[str]:
    """Both halves configured with hub ids only (nothing local)."""
    return [
        *tiny_edit_overrides(EDIT_REPOS),
        "caption=clip_interrogator",
        "caption.caption_model_name=blip-base",
        "caption.clip_model_name=ViT-B-32/openai",
        "caption.device=cpu",
    ]


def project(root: Path, *overrides: str) -> Path:
    """params.yaml, one image in the sample and the images manifest."""
    (root / "data/interim").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (0, 200, 0)).save(root / "a.png")
    pd.DataFrame({"image_id": ["a"], "hotel_id": [1], "hotel_name": ["h"]}).to_csv(
        root / "data/interim/sample.csv", index=False
    )
    pd.DataFrame([{"image_id": "a", "path": "a.png", "status": "ok", "reason": ""}]).to_csv(
        root / "data/interim/images.csv", index=False
    )
    params = compose(*overrides).model_dump(mode="json")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def hub_env(hub: FakeHub, root: Path, offline: bool = False) -> dict[str, str]:
    flag = "1" if offline else "0"
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(root / "hf"),
        "XDG_CACHE_HOME": str(root / "xdg"),
        "HF_HUB_OFFLINE": flag,
        "TRANSFORMERS_OFFLINE": flag,
    }


# -- the minimal file set -----------------------------------------------------------------------

SD15 = {  # stable-diffusion-v1-5/stable-diffusion-v1-5, abridged (sizes in bytes)
    "model_index.json": 541,
    "v1-5-pruned.ckpt": 7_703_807_346,
    "v1-5-pruned-emaonly.safetensors": 4_265_146_304,
    "feature_extractor/preprocessor_config.json": 342,
    "safety_checker/config.json": 4_723,
    "safety_checker/model.safetensors": 1_215_981_830,
    "scheduler/scheduler_config.json": 308,
    "text_encoder/config.json": 617,
    "text_encoder/model.safetensors": 492_265_168,
    "text_encoder/model.fp16.safetensors": 246_144_152,
    "text_encoder/pytorch_model.bin": 492_305_335,
    "text_encoder/flax_model.msgpack": 492_249_263,
    "tokenizer/merges.txt": 524_619,
    "tokenizer/special_tokens_map.json": 472,
    "tokenizer/tokenizer_config.json": 806,
    "tokenizer/vocab.json": 1_059_962,
    "unet/config.json": 743,
    "unet/diffusion_pytorch_model.safetensors": 3_438_167_540,
    "unet/diffusion_pytorch_model.fp16.safetensors": 1_719_125_304,
    "unet/diffusion_pytorch_model.non_ema.safetensors": 3_438_167_536,
    "unet/diffusion_pytorch_model.bin": 3_438_375_973,
    "unet/diffusion_flax_model.msgpack": 3_438_110_013,
    "vae/config.json": 547,
    "vae/diffusion_pytorch_model.safetensors": 334_643_268,
    "vae/diffusion_pytorch_model.fp16.safetensors": 167_335_342,
    "onnx/unet/model.onnx": 1_000,
}


def test_download_selects_one_weights_set_per_component():
    chosen = modelhub.select_files(ModelRef("k", "sd", "diffusers"), SD15)
    assert chosen == [
        "feature_extractor/preprocessor_config.json",
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert sum(SD15[f] for f in chosen) < 4.3e9 and sum(SD15.values()) > 30e9  # of 30.9 GB
    # .bin only where no safetensors exist; sharded weights: the index and every shard
    blip2 = {
        "config.json": 1,
        "preprocessor_config.json": 1,
        "tokenizer.json": 1,
        "pytorch_model.bin.index.json": 1,
        "pytorch_model-00001-of-00002.bin": 1,
        "pytorch_model-00002-of-00002.bin": 1,
        "model.safetensors.index.json": 1,
        "model-00001-of-00002.safetensors": 1,
        "model-00002-of-00002.safetensors": 1,
        "tf_model.h5": 1,
    }
    chosen = modelhub.select_files(ModelRef("k", "b", "transformers"), blip2)
    assert chosen == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "tokenizer.json",
    ]
    only_bin = {"config.json": 1, "pytorch_model.bin": 1, "flax_model.msgpack": 1}
    chosen = modelhub.select_files(ModelRef("k", "c", "transformers"), only_bin)
    assert chosen == ["config.json", "pytorch_model.bin"]


# -- one device and dtype rule ------------------------------------------------------------------


def test_caption_and_edit_share_one_device_and_dtype_rule():
    import torch

    from alien_hotels.captioning.models import resolve_device as caption_device
    from alien_hotels.editing.models import resolve_device as edit_device

    params = compose("caption=clip_interrogator")
    for section, cfg, resolve in (
        ("caption", params.caption, caption_device),
        ("edit", params.edit, edit_device),
    ):
        with pytest.raises(StageError, match=rf"{section}\.dtype=float16 needs a GPU"):
            resolve(cfg.updated(device="cpu", dtype="float16"))
        device, dtype = resolve(cfg.updated(device="cpu", dtype="auto"))
        assert (device, str(dtype).removeprefix("torch.")) == ("cpu", "float32")
        if not torch.cuda.is_available():
            with pytest.raises(StageError, match=rf"{section}\.device=cuda but torch sees no"):
                resolve(cfg.updated(device="cuda"))


# -- incomplete folders fail before any image, with the exit code and the path ----------------


def _without(folder: Path, dest: Path, *patterns: str) -> Path:
    shutil.copytree(folder, dest)
    for pattern in patterns:
        for path in dest.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return dest


def test_clip_folder_without_weights_fails_before_any_image(tiny_caption, tmp_path):
    """The folder open_clip would silently fill with random weights: exit 2, path named."""
    from alien_hotels.testing.interrogator import tiny_overrides

    broken = _without(tiny_caption.clip, tmp_path / "broken", "*.safetensors")
    assert (broken / "open_clip_config.json").is_file()
    root = project(
        tmp_path / "proj", *tiny_overrides(tiny_caption), f"caption.clip_model_path={broken}"
    )
    result = run(["alien-hotels", "caption"], root, check=False, HF_HOME=str(tmp_path / "hf"))
    assert result.returncode == 2, result.stderr
    expected = f"caption.clip_model_path={broken}: {broken.resolve()}: no weights file"
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (root / "data/checkpoints").exists()  # no image was touched
    assert not (root / "data/processed").exists()


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        (["model.safetensors"], "no weights file (expected model.safetensors or model.bin)"),
        (["tokenizer*", "vocab.txt"], "no tokenizer files"),
        (["*processor_config.json"], "(the image processor)"),
    ],
)
def test_incomplete_caption_model_fails_before_any_image(tiny_caption, tmp_path, patterns, message):
    from alien_hotels.captioning.run import caption_images
    from alien_hotels.testing.interrogator import tiny_overrides

    broken = _without(tiny_caption.blip, tmp_path / "broken", *patterns)
    root = project(tmp_path / "proj")
    cfg = compose(
        *tiny_overrides(tiny_caption),
        f"caption.caption_model_path={broken}",
        f"caption.checkpoint_dir={root / 'ckpt'}",
    ).caption
    with pytest.raises(StageError) as error:
        caption_images(pd.read_csv(root / "data/interim/images.csv"), cfg, root)
    assert f"caption.caption_model_path={broken}: {broken.resolve()}" in str(error.value)
    assert message in str(error.value)
    assert not (root / "ckpt").exists()


@pytest.mark.parametrize(
    ("kind", "key", "patterns", "message"),
    [
        ("img2img", "edit.recipes.neon.model_id", ["unet/*.safetensors"], "unet: no weights"),
        ("img2img", "edit.recipes.neon.model_id", ["vae"], "component folder vae/ is missing"),
        ("clipseg", "edit.recipes.neon.mask.model_id", ["model.safetensors"], "no weights file"),
        ("clip", "edit.scores.clip_model_id", ["*processor_config.json"], "image processor"),
    ],
)
def test_incomplete_edit_weights_fail_before_any_image(
    tiny_edit, tmp_path, monkeypatch, kind, key, patterns, message
):
    broken = _without(tiny_edit[kind], tmp_path / "broken", *patterns)
    root = project(tmp_path / "proj")
    monkeypatch.chdir(root)
    mask = ["edit.recipes.neon.mask.source=text", "edit.recipes.neon.mask.prompt=bed"]
    params = compose(*tiny_edit_overrides(tiny_edit), *mask, f"{key}={broken}")
    with pytest.raises(StageError) as error:
        edit_stage.run(params, "neon")
    assert f"{key}={broken}: " in str(error.value) and message in str(error.value)
    assert not Path("data/edited").exists() and not Path("metrics").exists()


# -- no network unless asked; the download fetches the minimal set --------------------------


def test_presence_checks_make_no_network_call_and_downloads_need_consent(hub_repos, tmp_path):
    repos, wanted = hub_repos
    root = project(tmp_path, *hub_overrides())
    with FakeHub(repos) as hub:
        env = hub_env(hub, tmp_path)  # online, the hub serves every model, downloads not allowed
        for stage in (["edit", "neon"], ["caption"]):
            result = run(["alien-hotels", *stage], root, check=False, **env)
            assert result.returncode == 2, result.stdout + result.stderr
            assert "not in the Hugging Face cache" in result.stderr
            assert "alien-hotels models download" in result.stderr
        assert hub.requests == []
        assert not any((tmp_path / "hf").glob("hub/models--*"))
        # allowed: the stage fetches the minimal set of what this recipe needs, then runs
        project(tmp_path, *hub_overrides(), "edit.allow_download=true")
        run(["alien-hotels", "edit", "neon"], root, **env)
    fetched = set(hub.downloads())
    needed = ("tiny/img2img", "tiny/clipseg", "tiny/clip")
    assert fetched == {f"{repo}/{name}" for repo in needed for name in wanted[repo]}
    assert json.loads((root / "metrics/edits/neon.json").read_text())["n_edited"] == 1


def test_models_download_dry_run_lists_files_and_sizes(hub_repos, tmp_path):
    repos, wanted = hub_repos
    root = project(tmp_path, *hub_overrides())
    with FakeHub(repos) as hub:
        dry_run = ["alien-hotels", "models", "download", "--dry-run"]
        result = run(dry_run, root, **hub_env(hub, root))
        assert hub.downloads() == []  # listings only
    out = result.stdout
    assert "edit.recipes.neon.model_id, edit.recipes.green.model_id: tiny/img2img" in out
    unet = (repos["tiny/img2img"] / "unet/diffusion_pytorch_model.safetensors").stat().st_size
    assert f"    unet/diffusion_pytorch_model.safetensors  {modelhub.human_size(unet)}" in out
    assert f"caption.caption_model_name: {BLIP_REPO}" in out
    assert f"caption.clip_model_name: {OPEN_CLIP_REPO}" in out
    assert f"caption.label_cache_dir: {LABEL_REPO} -> {root / 'xdg/alien-hotels/labels'}" in out
    total = sum((repos[r] / f).stat().st_size for r, files in wanted.items() for f in files)
    n_files = sum(len(files) for files in wanted.values())
    assert f"total: {len(wanted)} model(s) to fetch, {n_files} files, " in out
    assert f"{modelhub.human_size(total)} (0 already complete)" in out
    for junk in ("ckpt", "fp16", "safety_checker", "onnx", "flax", "tf_model", ".bin"):
        assert junk not in out
    assert not any((root / "hf").glob("hub/models--*/snapshots/*"))


def test_models_download_names_unknown_models_and_parts(tmp_path):
    from typer.testing import CliRunner

    from alien_hotels.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(compose().model_dump(mode="json")))
    download = ["models", "download", "--dry-run", "--params", str(params)]
    for option, value, message in (
        ("--caption-model", "blip-huge", "'blip-base', 'blip-large'"),
        ("--clip-model", "ViT-Q-99/nowhere", "is not an open_clip pretrained model"),
        ("--only", "text", "--only text: choose from caption, edit"),
    ):
        bad = CliRunner().invoke(app, [*download, option, value])
        assert bad.exit_code == 2 and message in bad.output, bad.output


@pytest.mark.slow
def test_models_download_fetches_the_minimal_set_then_stages_run_offline(
    hub_repos, tmp_path, monkeypatch
):
    repos, wanted = hub_repos
    root = project(tmp_path, *hub_overrides(), "edit.max_images=1")
    with FakeHub(repos) as hub:
        run(["alien-hotels", "models", "download"], root, **hub_env(hub, root))
        fetched: dict[str, set[str]] = {}
        for item in hub.downloads():
            repo = next(r for r in repos if item.startswith(r + "/"))
            fetched.setdefault(repo, set()).add(item[len(repo) + 1 :])
        assert fetched == wanted
        again = run(["alien-hotels", "models", "download"], root, **hub_env(hub, root))
        assert "total: 0 model(s) to fetch" in again.stdout
        assert len(hub.downloads()) == sum(len(f) for f in wanted.values())  # nothing twice
    # offline, the stages find everything they need in the caches
    with FakeHub({}) as gone:
        run(["alien-hotels", "edit", "neon"], root, **hub_env(gone, root, offline=True))
    metrics = json.loads((root / "metrics/edits/neon.json").read_text())
    assert metrics["n_edited"] == 1
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from alien_hotels.captioning.models import check_models

    weights = check_models(compose(*hub_overrides()).caption)
    assert weights.caption.label.startswith(f"{BLIP_REPO}@") and len(weights.caption.label) == 78
    assert weights.clip.label.startswith(f"{OPEN_CLIP_REPO}@")
    assert weights.clip.path.name == "open_clip_model.safetensors"


# -- what ran is recorded; threads are applied -----------------------------------------------


def test_captions_record_the_weights_that_ran_and_threads_apply(tiny_caption, tmp_path):
    import torch

    from alien_hotels.captioning.run import caption_images
    from alien_hotels.testing.interrogator import tiny_overrides

    root = project(tmp_path)
    cfg = compose(
        *tiny_overrides(tiny_caption),
        "caption.mode=fast",
        "caption.min_flavors=1",
        "caption.max_flavors=2",
        "caption.n_jobs=2",
        f"caption.checkpoint_dir={tmp_path / 'ckpt'}",
    ).caption
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        result = caption_images(pd.read_csv(root / "data/interim/images.csv"), cfg, root)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    row = result.captions.iloc[0]
    assert row["caption_model"] == str(tiny_caption.blip.resolve())
    assert row["clip_model"] == str(tiny_caption.clip.resolve())
    assert result.metrics["caption_weights"] == row["caption_model"]


def test_edit_threads_apply(tiny_edit, tmp_path, monkeypatch):
    import torch

    from alien_hotels.editing import runner

    params = compose(*tiny_edit_overrides(tiny_edit), "edit.n_jobs=2")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        runner.load_models("neon", params.edit.recipes["neon"], params.edit)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
