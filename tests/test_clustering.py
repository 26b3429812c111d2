import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_score

from alien_hotels import clustering
from alien_hotels.common import StageError
from conftest import compose


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=300, centers=4, n_features=8, cluster_std=0.6, random_state=0)
    return X.astype(np.float32), y


def test_sweep_records_inertia_for_every_k(blobs):
    X, _ = blobs
    sweep = clustering.sweep_kmeans(X, compose().cluster.updated(k_min=1, k_max=10), progress=False)
    assert list(sweep.inertia) == list(range(1, 11))
    values = list(sweep.inertia.values())
    assert values[0] > values[3] > values[-1]
    assert {len(np.unique(labels)) for labels in sweep.labels.values()} == set(range(1, 11))


def test_elbow_finds_the_true_number_of_blobs(blobs):
    X, _ = blobs
    cfg = compose().cluster.updated(k_min=1, k_max=12)
    sweep = clustering.sweep_kmeans(X, cfg, progress=False)
    assert clustering.choose_k(sweep.inertia, cfg) == 4


def test_given_k_overrides_the_elbow(blobs):
    cfg = compose().cluster.updated(k_min=1, k_max=6, k=9)
    X, _ = blobs
    sweep = clustering.sweep_kmeans(X, cfg, progress=False)
    assert clustering.choose_k(sweep.inertia, cfg) == 9
    labels = clustering.final_clustering(X, sweep, 9, cfg).labels
    assert len(np.unique(labels)) == 9


def test_k_max_above_the_documents_is_clamped_with_a_warning(caplog):
    """Ten captioned images and the default k_max=29: sweep k=1..10 and say so."""
    X = np.random.default_rng(0).normal(size=(10, 5))
    with caplog.at_level("WARNING"):
        sweep = clustering.sweep_kmeans(X, compose().cluster.updated(k_max=29), progress=False)
    assert sorted(sweep.inertia) == list(range(1, 11))
    assert "cluster.k_max=29 exceeds the 10 documents: sweeping k=1..10" in caplog.text


@pytest.mark.parametrize(
    ("n_docs", "updates", "message"),
    [
        (1, {"k_max": 29}, r"cluster: 1 document\(s\) cannot be clustered"),
        (5, {"k_min": 6, "k_max": 29}, r"cluster.k_min=6 is larger than .* \(5\)"),
        (5, {"k_max": 4, "k": 6}, r"cluster.k=6 is larger than .* \(5\)"),
    ],
)
def test_no_possible_k_is_an_error(n_docs, updates, message):
    X = np.random.default_rng(0).normal(size=(n_docs, 3))
    with pytest.raises(StageError, match=message):
        clustering.sweep_kmeans(X, compose().cluster.updated(**updates), progress=False)


def test_flat_curve_has_no_elbow():
    inertia = {k: 10.0 - 0.0 * k for k in range(1, 8)}
    with pytest.raises(clustering.NoElbow, match="flat"):
        clustering.choose_k(inertia, compose().cluster.updated(k_max=7))


def test_silhouette_of_separated_blobs_and_of_one_cluster(blobs):
    X, y = blobs
    score = clustering.silhouette(X, y)
    assert score == pytest.approx(silhouette_score(X, y)) and score > 0.5
    assert clustering.silhouette(X, np.zeros(len(y), dtype=int)) is None  # one cluster
    assert clustering.silhouette(X[:3], np.arange(3)) is None  # as many clusters as rows


def test_class_tfidf_prefers_terms_specific_to_a_cluster():
    texts = [
        "hotel room with sink mirror",
        "hotel room with sink shower",
        "hotel room with bed pillow",
        "hotel room with bed lamp",
    ]
    labels = np.array([0, 0, 1, 1])
    top = clustering.class_tfidf_terms(texts, labels, top_n=2)
    assert top[0][0] == "sink" and top[1][0] == "bed"
    names = clustering.cluster_labels(top, ["bathroom"] * 2 + ["bedroom"] * 2, labels, 2)
    assert names[0].startswith("bathroom: sink") and names[1].startswith("bedroom: bed")


def test_elbow_needs_three_swept_values():
    with pytest.raises(ValueError, match="cluster.k=null"):
        compose().cluster.updated(k_min=2, k_max=3)


def test_elbow_table_marks_the_chosen_k():
    inertia = {1: 10.123456, 2: 6.0, 3: 5.0}
    table = clustering.elbow_table(inertia, 2)
    assert table.to_dict("list") == {
        "k": [1, 2, 3],
        "inertia": [10.12, 6.0, 5.0],
        "chosen": [0, 1, 0],
    }
    # a given k outside the sweep: the curve, nothing marked
    assert clustering.elbow_table(inertia, 7)["chosen"].tolist() == [0, 0, 0]
