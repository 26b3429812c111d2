"""Small folders work with the defaults (issue 24 §2): every limit that depends on how much data
there is adapts, with a logged warning and a metric, as `cluster.k_max` does:

* `features.n_components` (50) to below the number of TF-IDF terms and documents
  (`n_components_used`, `n_components_clamped` in metrics/features.json);
* `map.perplexity` (30) to (rows - 1) / 3 below 91 rows (`perplexity_used`,
  `perplexity_clamped` in metrics/map.json);
* the elbow: where the inertia curve has no knee (too few k, flat, Kneedle finds none), the
  swept k with the best silhouette (`k_source: silhouette`), or the smallest swept k where no k
  has one (`k_source: k_min`).

Only nothing to work on stays an error naming the parameter: no documents (features), one
document (cluster). End to end: folders of 5, 10, 15, 22 and 40 photos through the real stages,
sample to map, captioned by the tiny CLIP Interrogator models, default params otherwise.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import make_blobs

from alien_hotels import clustering
from alien_hotels.common import StageError
from conftest import compose

STAGES = ["sample", "images", "caption", "preprocess", "room_types", "features", "cluster", "map"]
ROOMS = ["Chambre", "Salle de bain", "Lobby", "Piscine"]


def photo_tree(root: Path, n: int) -> Path:
    """`n` photos in up to 3 hotels and 4 room-type folders: flat colours, gradients, stripes and
    noise in seeded colours, so that the tiny captioner's captions differ."""
    rng = np.random.default_rng(n)
    for i in range(n):
        h, w = 48, 64
        colour = rng.integers(0, 256, 3)
        kind = i % 4
        if kind == 0:
            pixels = np.broadcast_to(colour, (h, w, 3))
        elif kind == 1:
            pixels = np.linspace(0.0, 1.0, w)[None, :, None] * colour * np.ones((h, 1, 1))
        elif kind == 2:
            pixels = (np.arange(w)[None, :, None] // 8 % 2) * colour * np.ones((h, 1, 1))
        else:
            pixels = rng.integers(0, 256, (h, w, 3))
        path = root / f"Hotel {i % 3}" / ROOMS[i % 4] / f"IMG_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path, quality=90)
    return root


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The tiny CLIP Interrogator models, built once for every folder size."""
    torch = pytest.importorskip("torch")
    from alien_hotels.testing import interrogator

    torch.set_num_threads(1)
    return interrogator.save_tiny_models(tmp_path_factory.mktemp("caption_models"), seed=0)


@pytest.mark.slow
@pytest.mark.ml
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("n_photos", [5, 10, 15, 22, 40])
def test_a_small_folder_runs_sample_to_map_with_the_defaults(
    n_photos, tiny_models, tmp_path, monkeypatch, caplog
):
    from alien_hotels.testing import interrogator

    monkeypatch.chdir(tmp_path)
    photo_tree(tmp_path / "photos", n_photos)
    params = compose(
        "data=folder",
        "data.path=photos",
        *interrogator.tiny_overrides(tiny_models),
        "caption.progress=false",
        "caption.loader_workers=1",
    )
    with caplog.at_level(logging.WARNING):
        for stage in STAGES:
            importlib.import_module(f"alien_hotels.stages.{stage}").run(params)

    captions = pd.read_csv("data/processed/captions.csv")
    assert len(captions) == n_photos and captions["caption"].nunique() > 1
    clusters = pd.read_csv("data/processed/clusters.csv")
    assert len(clusters) == n_photos and np.isfinite(clusters[["x", "y"]].to_numpy()).all()
    assert Path("reports/cluster_map.html").stat().st_size > 0
    assert Path("reports/cluster_map.png").stat().st_size > 0

    feats = json.loads(Path("metrics/features.json").read_text())
    assert feats["n_components"] == 50 and feats["n_components_clamped"] is True
    assert feats["n_components_used"] == min(feats["n_terms"], feats["n_docs"]) - 1
    assert f"features.n_components=50 does not fit {n_photos} documents" in caplog.text

    mapped = json.loads(Path("metrics/map.json").read_text())
    assert mapped["perplexity_clamped"] is True
    assert mapped["perplexity_used"] == pytest.approx((n_photos - 1) / 3, rel=1e-3)
    assert f"map.perplexity=30 is too large for {n_photos} documents" in caplog.text

    cluster = json.loads(Path("metrics/clustering.json").read_text())
    assert cluster["k_source"] in {"elbow", "silhouette", "k_min"}
    assert cluster["k_max_clamped"] is (n_photos <= 29)
    assert 1 <= cluster["k"] <= int(cluster["k_swept"].split("..")[1])
    if cluster["k_source"] != "elbow":  # the fallback says so, and why
        assert f"cluster.k_source={cluster['k_source']}" in caplog.text
    assert len(set(clusters["cluster"])) == cluster["k"]


def test_no_knee_falls_back_to_the_best_silhouette(caplog):
    """An inertia curve without a knee (a straight line) over three clear blobs: k=3."""
    X, _ = make_blobs(n_samples=60, centers=3, n_features=4, cluster_std=0.5, random_state=0)
    cfg = compose().cluster.updated(k_max=8)
    sweep = clustering.sweep_kmeans(X, cfg, progress=False)
    sweep.inertia = {k: 100.0 - 10.0 * k for k in sweep.inertia}  # no knee anywhere
    with pytest.raises(clustering.NoElbow):
        clustering.choose_k(sweep.inertia, cfg)
    with caplog.at_level(logging.WARNING):
        assert clustering.select_k(X, sweep, cfg) == (3, "silhouette")
    assert "no elbow found in the inertia curve; k=3 instead (cluster.k_source=silhouette" in (
        caplog.text
    )


def test_a_flat_curve_and_two_documents_take_the_smallest_k():
    cfg = compose().cluster
    same = np.ones((6, 3))  # identical captions: one distinct document
    sweep = clustering.sweep_kmeans(same, cfg, progress=False)
    assert list(sweep.inertia) == [1]
    assert clustering.select_k(same, sweep, cfg) == (1, "k_min")
    two = np.array([[0.0, 1.0], [1.0, 0.0]])
    sweep = clustering.sweep_kmeans(two, cfg, progress=False)
    assert list(sweep.inertia) == [1, 2]
    assert clustering.select_k(two, sweep, cfg) == (1, "k_min")
    flat = {k: 5.0 for k in range(1, 6)}
    with pytest.raises(clustering.NoElbow, match="flat"):
        clustering.choose_k(flat, cfg.updated(k_max=5))


def test_given_k_and_a_found_elbow_are_kept():
    X, _ = make_blobs(n_samples=300, centers=4, n_features=8, cluster_std=0.6, random_state=0)
    cfg = compose().cluster.updated(k_max=12)
    sweep = clustering.sweep_kmeans(X, cfg, progress=False)
    assert clustering.select_k(X, sweep, cfg) == (4, "elbow")
    assert clustering.select_k(X, sweep, cfg.updated(k=6)) == (6, "given")


def test_one_document_cannot_be_clustered():
    with pytest.raises(StageError, match=r"cluster: 1 document\(s\) cannot be clustered"):
        clustering.sweep_kmeans(np.ones((1, 3)), compose().cluster, progress=False)
