import numpy as np
import pytest

from alien_hotels.common import StageError
from alien_hotels.features import fit_features
from conftest import compose

TEXTS = [
    "bathroom sink mirror shower",
    "bathroom toilet towel sink",
    "bedroom bed lamp pillow",
    "bed pillow sheet lamp",
    "pool water lounge chair",
    "pool ocean view lounge",
]


def test_tfidf_svd_shapes_and_variance():
    fitted = fit_features(TEXTS, compose().features.updated(n_components=3))
    assert fitted.embedding.shape == (6, 3)
    assert fitted.embedding.dtype == np.float32
    assert fitted.n_terms == 17
    assert 0 < fitted.explained_variance <= 1
    # documents about the same room are closer to each other than to other rooms
    emb = fitted.embedding / np.linalg.norm(fitted.embedding, axis=1, keepdims=True)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[2, 4]


def test_deterministic():
    a = fit_features(TEXTS, compose().features.updated(n_components=3)).embedding
    b = fit_features(TEXTS, compose().features.updated(n_components=3)).embedding
    np.testing.assert_array_equal(a, b)


def test_tfidf_params_are_applied():
    fitted = fit_features(
        TEXTS,
        compose().features.updated(
            n_components=2, tfidf=compose().features.tfidf.updated(min_df=2)
        ),
    )
    assert set(fitted.vectorizer.vocabulary_) == {
        "bathroom",
        "sink",
        "bed",
        "lamp",
        "pillow",
        "pool",
        "lounge",
    }


def test_n_components_is_lowered_below_terms_and_documents_with_a_warning(caplog):
    """Six captions of 17 terms and the default 50 components: 5 (below both), and a warning."""
    with caplog.at_level("WARNING"):
        fitted = fit_features(TEXTS, compose().features.updated(n_components=50))
    assert fitted.embedding.shape == (6, 5) and fitted.n_components_used == 5
    assert "features.n_components=50 does not fit 6 documents with 17 TF-IDF terms: using 5" in (
        caplog.text
    )
    few_terms = ["pool pool", "bed pool", "bed", "pool bed", "bed bed", "pool"]  # 2 terms
    assert fit_features(few_terms, compose().features).n_components_used == 1


def test_no_component_fits_is_an_error_naming_the_parameter():
    with pytest.raises(StageError, match=r"features.n_components: no SVD component fits 3"):
        fit_features(["pool", "pool", "pool"], compose().features)  # one term
    with pytest.raises(StageError, match=r"features.n_components: .*\(features.algorithm=arpack"):
        fit_features(["bed pool"], compose().features.updated(algorithm="arpack"))


def test_empty_input_and_empty_vocabulary():
    with pytest.raises(StageError, match="no documents"):
        fit_features([], compose().features)
    with pytest.raises(StageError, match="features.tfidf"):
        fit_features(["a", "b"], compose().features.updated(n_components=1))
