"""Room types from three sources (captions, CLIP zero-shot on the photo, dataset folders), and
the cluster metrics against each, side by side.

The zero-shot runs a tiny random-weight open_clip CLIP saved in open_clip's `local-dir:` layout
and loaded through the caption stage's model code, on generated images; references come from
open_clip's own loader and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from typer.testing import CliRunner

from alien_hotels import roomtypes
from alien_hotels.common import StageError
from alien_hotels.config import ConfigError, validate_params
from alien_hotels.stages import cluster as cluster_stage
from alien_hotels.stages import room_types as room_types_stage
from alien_hotels.stages.paths import StagePaths
from alien_hotels.text import RoomTypeClassifier
from conftest import ROOT, compose

CAPTIONS = [
    "a bedroom with a large bed and a lamp",
    "a bathroom with a shower and a sink",
    "a hotel lobby with chairs and a front desk",
    "a swimming pool at night with lights",
    "a dining room with tables and chairs",
    "a living room with a couch and a tv",
    "a hotel building at night with a sign",
    "a white room with a window",
]
N_IMAGES = 16


# --- fixtures: a project folder with captions, images and a tiny CLIP ---------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """The tiny CLIP of `alien_hotels.testing.interrogator`, alone, in open_clip's local-dir."""
    import torch
    from safetensors.torch import save_file

    from alien_hotels.testing.interrogator import TINY_CLIP_CFG, TINY_PREPROCESS_CFG, tiny_clip

    torch.set_num_threads(1)
    dest = tmp_path_factory.mktemp("tiny_clip") / "clip"
    dest.mkdir()
    model, _ = tiny_clip(seed=0)
    config = {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": TINY_PREPROCESS_CFG}
    (dest / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dest / "open_clip_model.safetensors"))
    return dest


def clip_overrides(clip: Path, *extra: str) -> tuple[str, ...]:
    return (
        "caption.clip_model_name=alien-tiny/random",
        f"caption.clip_model_path={clip}",
        "caption.device=cpu",
        "caption.n_jobs=1",
        "room_types.image.progress=false",
        "room_types.image.batch_size=5",  # batches of 5, 5, 5 and 1 of the 16 images
        "room_types.image.loader_workers=1",
        *extra,
    )


def write_project(
    root: Path, *, images: bool = True, folders: list | None = None, unreadable: int = 0
) -> pd.DataFrame:
    """sample.csv, captions.csv, images.csv (+ the image files) of N_IMAGES images in 2 hotels.
    `folders`: a room_type_folder column; `unreadable`: the last images are broken files."""
    rng = np.random.default_rng(0)
    ids = np.arange(500, 500 + N_IMAGES)
    sample = pd.DataFrame(
        {
            "image_id": ids,
            "hotel_id": np.where(ids % 2 == 0, 1, 2),
            "hotel_name": np.where(ids % 2 == 0, "Hotel A", "Hotel B"),
        }
    )
    if folders is not None:
        sample["room_type_folder"] = folders
    captions = pd.DataFrame(
        {"image_id": ids, "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(N_IMAGES)]}
    )
    manifest = []
    (root / "data/images").mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ids):
        path = root / f"data/images/{image_id}.png"
        if i >= N_IMAGES - unreadable:
            path.write_bytes(b"not an image")
        else:
            from PIL import Image

            h, w = rng.integers(40, 90, size=2)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        status = "ok" if images else "missing"
        manifest.append(
            {
                "image_id": image_id,
                "path": f"data/images/{image_id}.png" if images else "",
                "status": status,
                "reason": "",
            }
        )
    (root / "data/interim").mkdir(parents=True, exist_ok=True)
    (root / "data/processed").mkdir(parents=True, exist_ok=True)
    sample.to_csv(root / "data/interim/sample.csv", index=False)
    captions.to_csv(root / "data/processed/captions.csv", index=False)
    pd.DataFrame(manifest).to_csv(root / "data/interim/images.csv", index=False)
    return sample


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # manifest paths are relative to the project root
    return tmp_path


def no_model(monkeypatch) -> None:
    """Fail the test if anything constructs the zero-shot model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the CLIP zero-shot model was loaded")

    monkeypatch.setattr(roomtypes.ZeroShotRoomTypes, "__init__", refuse)


def reference_probs(clip: Path, image_ids, names: list[str]) -> np.ndarray:
    """open_clip's own zero-shot recipe on the same files: its loader, tokenizer, transforms."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip}")
    prompts = compose().room_types.prompts()
    with torch.no_grad():
        text_features = model.encode_text(tokenizer([prompts[n] for n in names]))
        text_features /= text_features.norm(dim=-1, keepdim=True)
        images = torch.stack(
            [preprocess(Image.open(f"data/images/{i}.png").convert("RGB")) for i in image_ids]
        )
        image_features = model.encode_image(images)
        image_features /= image_features.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        return logits.softmax(dim=-1).numpy()


# --- source resolution --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "folder_share", "has_images", "method", "chosen", "computed"),
    [
        # auto: folder (enough of them), else image (when the caption stage runs CLIP anyway),
        # else captions
        ("auto", 1.0, True, "clip_interrogator", "folder", ("captions", "image", "folder")),
        ("auto", 0.5, False, "clip_interrogator", "folder", ("captions", "folder")),
        ("auto", 0.0, True, "clip_interrogator", "image", ("captions", "image")),
        ("auto", 0.0, True, "precomputed", "captions", ("captions",)),
        ("auto", 1.0, True, "precomputed", "folder", ("captions", "folder")),
        ("auto", 0.0, False, "clip_interrogator", "captions", ("captions",)),
        # a few folders: not enough to score on, still scored beside the chosen source
        ("auto", 0.3, True, "clip_interrogator", "image", ("captions", "image", "folder")),
        ("auto", 0.3, True, "precomputed", "captions", ("captions", "folder")),
        # explicit: that source; the model only for `image`, free sources kept beside it
        ("captions", 1.0, True, "clip_interrogator", "captions", ("captions", "folder")),
        ("image", 0.0, True, "precomputed", "image", ("captions", "image")),
        ("folder", 0.1, True, "clip_interrogator", "folder", ("captions", "folder")),
    ],
)
def test_source_resolution(source, folder_share, has_images, method, chosen, computed):
    cfg = compose().room_types.updated(source=source)
    got = roomtypes.resolve_sources(
        cfg, folder_share=folder_share, has_images=has_images, caption_method=method
    )
    assert (got.chosen, got.computed) == (chosen, computed)


def test_auto_says_why_it_passes_over_a_few_folders(caplog):
    cfg = compose().room_types
    roomtypes.resolve_sources(
        cfg, folder_share=4 / 12, has_images=False, caption_method="precomputed"
    )
    assert "only 33% of the images have a room-type folder" in caplog.text
    assert "auto_folder_share=0.5" in caplog.text


@pytest.mark.parametrize(
    ("source", "message"),
    [("folder", "no room-type folder names"), ("image", "no usable image")],
)
def test_an_explicit_source_the_run_lacks_is_an_error(source, message):
    cfg = compose().room_types.updated(source=source)
    with pytest.raises(StageError, match=message):
        roomtypes.resolve_sources(
            cfg, folder_share=0.0, has_images=False, caption_method="clip_interrogator"
        )


def test_config_checks_template_phrases_and_default():
    raw = compose().model_dump()
    for template in ("a photo of a hotel room", "a photo of a {{room_type}}"):
        raw["room_types"]["image"]["template"] = template  # the same prompt for every type
        with pytest.raises(ConfigError, match=r"room_types.image.template.*\{room_type\}"):
            validate_params(raw)
    raw["room_types"]["image"]["template"] = "a {room_type} in {city}"
    with pytest.raises(ConfigError, match="only {room_type} may be a placeholder"):
        validate_params(raw)
    raw = compose().model_dump()
    raw["room_types"]["image"]["phrases"] = {"sauna": "a sauna"}
    with pytest.raises(ConfigError, match="sauna is not a room type"):
        validate_params(raw)
    raw = compose().model_dump()
    raw["room_types"]["default"] = "bedroom"
    with pytest.raises(ConfigError, match="also a rule name"):
        validate_params(raw)
    prompts = compose().room_types.prompts()
    assert list(prompts) == list(compose().room_types.rules)
    assert prompts["bathroom"] == "a photo of a hotel bathroom"
    assert prompts["dining"] == "a photo of a hotel restaurant or dining room"


# --- the stage without a model ------------------------------------------------------------------


def test_bundled_sample_uses_captions_and_loads_no_model(tmp_path, monkeypatch):
    import importlib

    no_model(monkeypatch)
    monkeypatch.chdir(ROOT)  # data.path is relative to the project root
    paths = StagePaths().under(tmp_path)
    params = compose()
    for name in ("sample", "images", "caption", "preprocess", "room_types"):
        importlib.import_module(f"alien_hotels.stages.{name}").run(params, paths)
    table = pd.read_csv(paths.room_types)
    texts = pd.read_csv(paths.texts)
    assert list(table.columns) == roomtypes.ROOM_TYPE_COLUMNS
    assert set(texts["image_id"]) <= set(table["image_id"]) and len(table) == 313
    assert (table["room_type_source"] == "captions").all()
    assert table["room_type_image"].isna().all() and table["room_type_folder"].isna().all()
    merged = texts.merge(table, on="image_id")
    # the caption keyword rules, applied to each caption; texts.csv leaves room types to this stage
    classify = RoomTypeClassifier(params.room_types)
    assert (merged["room_type_captions"] == merged["caption"].map(classify)).all()
    assert (merged["room_type"] == merged["room_type_captions"]).all()
    assert "room_type" not in texts.columns
    metrics = json.loads(paths.room_types_metrics.read_text())
    assert metrics == {
        "source": "captions",
        "computed": "captions",
        "n_images": 313,
        "labelled_captions": 313,
    }


def test_folder_names_from_the_sample(project, monkeypatch):
    no_model(monkeypatch)  # caption.method=precomputed: auto never runs the zero-shot
    folders = ["Bathroom ", "bedroom", None, ""] * (N_IMAGES // 4)
    write_project(project, folders=folders)
    out = room_types_stage.run(compose())
    assert (out["room_type_source"] == "folder").all()
    folder = [x if isinstance(x, str) else None for x in out["room_type_folder"]]
    assert folder == ["Bathroom", "bedroom", None, None] * 4
    assert out["room_type"].tolist() == ["Bathroom", "bedroom", "unlabelled", "unlabelled"] * 4
    assert out["room_type_captions"].tolist()[:2] == ["bedroom", "bathroom"]
    assert out["room_type_image"].isna().all()
    metrics = json.loads(Path("metrics/room_types.json").read_text())
    assert metrics["computed"] == "captions,folder" and metrics["labelled_folder"] == 8


def test_folder_names_pandas_would_read_as_missing_or_numbers_stay_names(project, monkeypatch):
    no_model(monkeypatch)
    folders = ["NA", "None", "101", "null"] * (N_IMAGES // 4)
    write_project(project, folders=folders)
    out = room_types_stage.run(compose())
    assert out["room_type_folder"].tolist() == folders
    assert out["room_type"].tolist() == folders
    table = pd.read_csv("data/processed/room_types.csv", dtype=str, keep_default_na=False)
    assert table["room_type"].tolist() == folders


def test_without_room_type_folders_auto_falls_back_to_captions(project, monkeypatch):
    no_model(monkeypatch)
    write_project(project, folders=[None] * N_IMAGES)  # data=folder on a tree without them
    out = room_types_stage.run(compose())
    assert (out["room_type_source"] == "captions").all()
    assert (out["room_type"] == out["room_type_captions"]).all()
    with pytest.raises(StageError, match="room_types.source=folder"):
        room_types_stage.run(compose("room_types.source=folder"))


def test_missing_clip_weights_name_the_model_and_the_way_out(project, tmp_path, monkeypatch):
    write_project(project)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = compose("room_types.source=image", "caption.clip_model_name=ViT-B-32/openai")
    with pytest.raises(StageError) as err:
        room_types_stage.run(params)
    message = str(err.value)
    assert "caption.clip_model_name=timm/vit_base_patch32_clip_224.openai" in message
    assert "HF_HUB_OFFLINE is set" in message and "room_types.source=captions" in message
    assert not Path("data/processed/room_types.csv").exists()


# --- CLIP zero-shot -----------------------------------------------------------------------------


@pytest.mark.ml
def test_zero_shot_records_label_and_probability(project, tiny_clip):
    write_project(project, unreadable=1)
    out = room_types_stage.run(compose(*clip_overrides(tiny_clip, "room_types.source=image")))
    names = list(compose().room_types.rules)
    readable = out.iloc[:-1]
    probs = reference_probs(tiny_clip, readable["image_id"], names)
    np.testing.assert_allclose(readable["room_type_image_prob"], probs.max(axis=1), atol=2e-4)
    expected = [
        names[i] if p >= 0.3 else "other"
        for i, p in zip(probs.argmax(axis=1), probs.max(axis=1), strict=True)
    ]
    assert readable["room_type_image"].tolist() == expected
    assert len(set(expected)) > 1  # the model, not a constant, decides
    assert (out["room_type_source"] == "image").all()
    assert readable["room_type"].tolist() == expected
    # the unreadable file: no image label, shown as unlabelled, counted in the metrics
    last = out.iloc[-1]
    assert pd.isna(last["room_type_image"]) and last["room_type"] == "unlabelled"
    assert last["room_type_captions"] == "other"  # "a white room ...": the rules still ran
    metrics = json.loads(Path("metrics/room_types.json").read_text())
    assert metrics["image_failed"] == 1 and metrics["labelled_image"] == N_IMAGES - 1
    assert metrics["computed"] == "captions,image"


@pytest.mark.ml
def test_below_the_threshold_the_label_is_other(project, tiny_clip):
    write_project(project)
    low = room_types_stage.run(
        compose(
            *clip_overrides(tiny_clip, "room_types.source=image", "room_types.image.other_below=0")
        )
    )
    assert "other" not in set(low["room_type_image"])
    threshold = float(np.median(low["room_type_image_prob"]))
    high = room_types_stage.run(
        compose(
            *clip_overrides(
                tiny_clip, "room_types.source=image", f"room_types.image.other_below={threshold}"
            )
        )
    )
    below = low["room_type_image_prob"] < threshold
    assert below.any() and (~below).any()
    assert (high.loc[below, "room_type_image"] == "other").all()
    assert (high.loc[~below, "room_type_image"] == low.loc[~below, "room_type_image"]).all()
    # the probability recorded is the best prompt's, whatever the label
    np.testing.assert_array_equal(high["room_type_image_prob"], low["room_type_image_prob"])


@pytest.mark.ml
def test_nonfinite_scores_give_no_label_not_other(project, tiny_clip, tmp_path):
    """A model that overflows (here: an infinite logit scale) yields NaN probabilities: those
    images are unlabelled and counted as failed, never labelled `other`."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken_clip"
    shutil.copytree(tiny_clip, broken)
    state = load_file(broken / "open_clip_model.safetensors")
    state["logit_scale"] = torch.full_like(state["logit_scale"], float("inf"))
    save_file(state, str(broken / "open_clip_model.safetensors"))
    write_project(project)
    out = room_types_stage.run(compose(*clip_overrides(broken, "room_types.source=image")))
    assert out["room_type_image"].isna().all() and out["room_type_image_prob"].isna().all()
    assert (out["room_type"] == roomtypes.UNLABELLED).all()
    metrics = json.loads(Path("metrics/room_types.json").read_text())
    assert metrics["image_failed"] == N_IMAGES and metrics["labelled_image"] == 0


@pytest.mark.ml
def test_auto_runs_the_zero_shot_when_the_caption_stage_runs_clip(project, tiny_clip):
    write_project(project)
    out = room_types_stage.run(compose(*clip_overrides(tiny_clip, "caption=clip_interrogator")))
    assert (out["room_type_source"] == "image").all()
    assert out["room_type_image"].notna().all()
    assert (out["room_type"] == out["room_type_image"]).all()


# --- the cluster metrics against every source ---------------------------------------------------


@pytest.mark.ml
def test_cluster_metrics_report_every_source_side_by_side(project, tiny_clip):
    import importlib

    folders = ["bathroom", "bedroom", "lobby", "pool"] * (N_IMAGES // 4)
    write_project(project, folders=folders)
    params = compose(
        *clip_overrides(tiny_clip, "caption=clip_interrogator"),
        "features.n_components=4",
        "cluster.k=3",
        "cluster.k_max=5",
    )
    for name in ("preprocess", "room_types", "features"):
        importlib.import_module(f"alien_hotels.stages.{name}").run(params)
    metrics = cluster_stage.run(params)
    saved = json.loads(Path("metrics/clustering.json").read_text())
    assert saved == metrics

    labels = pd.read_csv("data/processed/cluster_labels.csv")
    table = pd.read_csv("data/processed/room_types.csv").set_index("image_id")
    table = table.loc[labels["image_id"]]
    assert metrics["room_type_source"] == "folder"  # auto: folders first
    for source in ("captions", "image", "folder"):
        reference = table[f"room_type_{source}"].astype(str)
        nmi = normalized_mutual_info_score(reference, labels["cluster"])
        ari = adjusted_rand_score(reference, labels["cluster"])
        assert metrics[f"nmi_room_type_{source}"] == pytest.approx(nmi, rel=1e-3, abs=1e-6)
        assert metrics[f"ari_room_type_{source}"] == pytest.approx(ari, rel=1e-3, abs=1e-6)
    assert metrics["nmi_room_type"] == metrics["nmi_room_type_folder"]
    assert metrics["ari_room_type"] == metrics["ari_room_type_folder"]
    # the clusters' room types (map colours, report mixes) are the chosen source's
    assert (labels["room_type"] == table["room_type_folder"].to_numpy()).all()
    report = Path("reports/clusters.md").read_text()
    assert "| folder (used above) |" in report and "| image |" in report
    assert "| captions |" in report

    result = CliRunner().invoke(__import__("alien_hotels.cli").cli.app, ["summary"])
    assert result.exit_code == 0, result.output
    assert "(room types from folder)" in result.output
    for source in ("captions", "image", "folder"):
        assert f"from {source}" in result.output


def test_cluster_stage_needs_the_room_types_table(project):
    import importlib

    write_project(project, images=False)
    params = compose("features.n_components=4", "cluster.k=3", "cluster.k_max=5")
    for name in ("preprocess", "features"):
        importlib.import_module(f"alien_hotels.stages.{name}").run(params)
    with pytest.raises(StageError, match="room types table"):
        cluster_stage.run(params)
    room_types_stage.run(params)
    table = pd.read_csv("data/processed/room_types.csv")
    table.iloc[1:].to_csv("data/processed/room_types.csv", index=False)
    with pytest.raises(StageError, match="no room type for 1 clustered images"):
        cluster_stage.run(params)


def test_headline_agreement_leaves_unlabelled_rows_out():
    """`ari_room_type`/`nmi_room_type` are the chosen source's, over the rows it labelled (None,
    NaN and blanks are unlabelled); `n_room_type_<source>` says how many when not all."""
    from alien_hotels import evaluation

    labels = np.repeat([0, 1, 2], 4)
    embedding = np.random.default_rng(0).normal(size=(12, 5)) + labels[:, None] * 5
    yardsticks = {
        "hotel": list(np.arange(12) % 3),  # independent of the clusters
        "chain": [None] * 12,
        "room_type_captions": list(np.repeat(list("abc"), 4)),
        "room_type_image": ["a"] * 4 + ["b"] * 4 + [None, float("nan"), "", " "],
        "room_type_folder": [None] * 11 + ["a"],  # one labelled row: nothing to score
    }
    scored = np.ones(12, dtype=bool)
    cfg = compose().cluster.updated(n_permutations=0, n_bootstrap=0, n_seeds=0)
    finding = evaluation.measure(embedding, labels, scored, 3, yardsticks, "image", cfg)
    out = evaluation.headline(finding, yardsticks, scored, "image")
    assert list(out)[:5] == [
        "ari_hotel",
        "nmi_hotel",
        "ari_room_type",
        "nmi_room_type",
        "room_type_source",
    ]
    assert out["room_type_source"] == "image"
    assert out["nmi_room_type"] == out["nmi_room_type_image"] == pytest.approx(1.0)
    assert out["ari_room_type"] == out["ari_room_type_image"] == pytest.approx(1.0)
    assert out["n_room_type_image"] == 8 and "n_room_type_captions" not in out
    assert out["nmi_room_type_captions"] == pytest.approx(1.0)
    assert out["nmi_hotel"] < 0.1 and out["ari_hotel"] < 0
    assert out["ari_room_type_folder"] is None and out["nmi_room_type_folder"] is None
    assert out["n_room_type_folder"] == 1
    # leaving a scored row out (a dropped duplicate) changes the count
    scored[0] = False
    finding = evaluation.measure(embedding, labels, scored, 3, yardsticks, "image", cfg)
    assert evaluation.headline(finding, yardsticks, scored, "image")["n_room_type_image"] == 7


def test_headline_says_how_few_images_the_chosen_source_labelled():
    from alien_hotels.reports import chosen_source

    metrics = {"n_docs": 12, "room_type_source": "folder", "n_room_type_folder": 8}
    assert chosen_source(metrics) == "folder, 8 of 12 images labelled"
    assert chosen_source({"n_docs": 12, "room_type_source": "captions"}) == "captions"
    assert chosen_source({**metrics, "n_room_type_folder": 12}) == "folder"


def test_other_columns_keep_pandas_own_missing_values():
    from pandas._libs.parsers import STR_NA_VALUES

    from alien_hotels.common import PANDAS_NA_VALUES

    assert set(PANDAS_NA_VALUES) == STR_NA_VALUES
