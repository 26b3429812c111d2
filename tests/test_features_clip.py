"""features=clip_image / clip_text: the caption stage's CLIP (here the project's tiny random-weight
open_clip model, loaded through the real loader) embeds photos or captions; cluster and map run
on them; the vectors are cached and a rerun computes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import test_room_types
from alien_hotels import embeddings
from alien_hotels.common import StageError
from alien_hotels.features import GRID, load_features
from alien_hotels.stages import cluster as cluster_stage
from alien_hotels.stages import features as features_stage
from alien_hotels.stages import map as map_stage
from alien_hotels.stages import preprocess as preprocess_stage
from alien_hotels.stages import room_types as room_types_stage
from conftest import compose
from test_room_types import N_IMAGES, clip_overrides, write_project

# The room-type tests' fixtures: a project folder, and the tiny CLIP in open_clip's local-dir.
project = test_room_types.project
tiny_clip = test_room_types.tiny_clip

pytestmark = pytest.mark.ml


def params_for(clip: Path, kind: str, *extra: str):
    return compose(
        *clip_overrides(clip),
        f"features={kind}",
        "features.clip.batch_size=5",
        "cluster.k=3",
        "cluster.k_max=5",
        "cluster.n_seeds=2",
        "cluster.n_bootstrap=20",
        "cluster.n_permutations=20",
        *extra,
    )


def reference_vectors(clip: Path, *, images=(), texts=()) -> np.ndarray:
    """open_clip's own loader, transforms and tokenizer on the same inputs."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip}")
    model.eval()
    with torch.no_grad():
        if texts:
            out = model.encode_text(open_clip.get_tokenizer(f"local-dir:{clip}")(list(texts)))
        else:
            batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
            out = model.encode_image(batch)
    return (out / out.norm(dim=-1, keepdim=True)).numpy()


def run_text_half(params) -> None:
    preprocess_stage.run(params)
    room_types_stage.run(params.updated(room_types=params.room_types.updated(source="captions")))


def test_clip_image_features_are_open_clips_image_embeddings(project, tiny_clip):
    write_project(project, unreadable=2)
    params = params_for(tiny_clip, "clip_image")
    run_text_half(params)
    features_stage.run(params)
    embedding, ids = load_features(Path("data/processed/features.npz"))
    assert list(ids) == list(range(500, 500 + N_IMAGES - 2))  # the broken files are left out
    expected = reference_vectors(tiny_clip, images=[f"data/images/{i}.png" for i in ids])
    assert embedding.shape == expected.shape
    assert np.abs(embedding - expected).max() < 1e-4
    assert np.all(np.round(embedding / GRID) * GRID == embedding)  # on the grid
    metrics = json.loads(Path("metrics/features.json").read_text())
    assert metrics["kind"] == "clip_image"
    assert metrics["n_docs"] == N_IMAGES - 2 and metrics["n_docs_left_out"] == 2

    # cluster and map run on them, and score what they cover
    scores = cluster_stage.run(params)
    assert scores["n_docs"] == N_IMAGES - 2 and scores["k"] == 3
    assert "hotel" in scores["uncertainty"] and scores["retrieval"]["hotel"]["queries"] > 0
    table = map_stage.run(params)
    assert len(table) == N_IMAGES - 2


def test_a_rerun_takes_the_vectors_from_the_cache(project, tiny_clip, monkeypatch):
    write_project(project)
    params = params_for(tiny_clip, "clip_image")
    run_text_half(params)
    features_stage.run(params)
    first = Path("data/processed/features.npz").read_bytes()
    assert list(Path("data/checkpoints/embeddings").glob("image-*.npz"))

    def refuse(self, images):
        raise AssertionError("an image was embedded again")

    monkeypatch.setattr(embeddings.ClipEncoder, "images", refuse)
    features_stage.run(params)
    assert Path("data/processed/features.npz").read_bytes() == first


def test_clip_text_features_are_the_captions_through_the_text_tower(project, tiny_clip):
    write_project(project)
    params = params_for(tiny_clip, "clip_text")
    run_text_half(params)
    features_stage.run(params)
    embedding, ids = load_features(Path("data/processed/features.npz"))
    captions = pd.read_csv("data/processed/captions.csv").set_index("image_id").loc[ids, "caption"]
    expected = reference_vectors(tiny_clip, texts=captions.tolist())
    assert np.abs(embedding - expected).max() < 1e-4
    # identical captions, identical vectors (encoded once)
    repeated = captions.duplicated(keep=False).to_numpy()
    assert repeated.any()
    first = captions.tolist().index(captions[repeated].iloc[0])
    same = [i for i, c in enumerate(captions) if c == captions.iloc[first]]
    assert all((embedding[i] == embedding[first]).all() for i in same)
    assert cluster_stage.run(params)["n_docs"] == N_IMAGES


def test_clip_image_without_photos_says_so(project, tiny_clip):
    write_project(project, images=False)
    params = params_for(tiny_clip, "clip_image")
    run_text_half(params)
    with pytest.raises(StageError, match="the bundled sample is captions only.*features=tfidf"):
        features_stage.run(params)


def test_missing_clip_weights_name_the_model(project, tmp_path, monkeypatch):
    write_project(project)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = compose("features=clip_text", "caption.clip_model_name=ViT-B-32/openai")
    run_text_half(params)
    with pytest.raises(StageError) as err:
        features_stage.run(params)
    message = str(err.value)
    assert "features.kind=clip_text uses the caption stage's CLIP model" in message
    assert "timm/vit_base_patch32_clip_224.openai" in message
    assert not Path("data/processed/features.npz").exists()
