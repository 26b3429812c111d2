"""Same bytes on every CPU (issue 24 §6): the saved features, and the map drawn from them, do not
depend on the BLAS kernel's last bits.

The kernel itself is not switched here (tests and CI leave `OPENBLAS_CORETYPE` alone; that check
is `python -m benchmarks.check_bytes`): its effect is simulated by perturbing the SVD's result,
and the t-SNE start, by far less than the grid they are rounded to, as a different kernel's
summation order does (about 1e-13 in float64 on the bundled sample).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import TruncatedSVD

from alien_hotels import features, mapping
from conftest import ROOT, compose


@pytest.fixture(scope="module")
def texts() -> list[str]:
    captions = pd.read_csv(ROOT / "data/bundled/hotels_sample.csv", usecols=["description"])
    return captions["description"].dropna().astype(str).tolist()  # the demo's 313


def saved_bytes(embedding: np.ndarray, tmp_path) -> bytes:
    target = tmp_path / "features.npz"
    features.save_features(target, embedding, np.arange(len(embedding)))
    return target.read_bytes()


def test_saved_features_ignore_noise_below_the_grid(texts, tmp_path, monkeypatch):
    """Noise of 1e-11 (100 times what the kernels differ by) leaves the saved bytes as they are;
    before the grid, float32 features changed with it."""
    cfg = compose().features
    clean = features.fit_features(texts, cfg).embedding
    fit_transform = TruncatedSVD.fit_transform
    rng = np.random.default_rng(0)

    def noisy(self, X, y=None):  # another kernel: the same values but for the last bits
        out = fit_transform(self, X, y)
        return out + rng.normal(scale=1e-11, size=out.shape)

    monkeypatch.setattr(TruncatedSVD, "fit_transform", noisy)
    perturbed = features.fit_features(texts, cfg).embedding
    assert clean.shape == (len(texts), 50)
    assert saved_bytes(perturbed, tmp_path) == saved_bytes(clean, tmp_path)


def test_features_lie_on_the_grid_as_exact_float32(texts):
    embedding = features.fit_features(texts, compose().features).embedding
    assert embedding.dtype == np.float32
    scaled = embedding.astype(np.float64) / features.GRID
    np.testing.assert_array_equal(scaled, np.round(scaled))
    # -0.0 and 0.0 are different bytes: a value that rounds to zero is always +0.0
    assert not np.signbit(features.on_grid(np.array([-1e-12, 1e-12]))).any()


def test_thread_count_does_not_change_the_bytes(texts, tmp_path):
    one = features.fit_features(texts, compose().features.updated(n_jobs=1)).embedding
    two = features.fit_features(texts, compose().features.updated(n_jobs=2)).embedding
    assert saved_bytes(one, tmp_path) == saved_bytes(two, tmp_path)


def test_map_ignores_noise_in_the_pca_start(texts, monkeypatch):
    """The t-SNE start (openTSNE's PCA, std 1e-4) is rounded to 2^-36 before the optimisation,
    which is itself exact across kernels: noise in the PCA does not reach the coordinates (without
    the rounding, 1e-18 moves points of the demo's map by ~2 units)."""
    from openTSNE import initialization

    embedding = features.fit_features(texts, compose().features).embedding
    cfg = compose().map  # fewer rows or iterations can hide the sensitivity
    clean = mapping.embed_2d(embedding, cfg)
    pca = initialization.pca
    rng = np.random.default_rng(1)

    def noisy(*args, **kwargs):
        start = pca(*args, **kwargs)
        return start + rng.normal(scale=1e-18, size=start.shape)

    monkeypatch.setattr(initialization, "pca", noisy)
    perturbed = mapping.embed_2d(embedding, cfg)
    buffers = [io.BytesIO(), io.BytesIO()]
    np.save(buffers[0], clean)
    np.save(buffers[1], perturbed)
    assert buffers[0].getvalue() == buffers[1].getvalue()
