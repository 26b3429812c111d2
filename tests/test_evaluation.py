"""The finding measured: chance-corrected scores, intervals, seed spread and retrieval, on data
where the answer is known."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from alien_hotels import evaluation
from alien_hotels.features import on_grid
from alien_hotels.reports import finding_sentence
from alien_hotels.stages.cluster import duplicate_representatives
from alien_hotels.stages.paths import StagePaths
from conftest import compose

SETTINGS = dict(n_permutations=200, n_bootstrap=200, confidence=0.95, sample=None, random_state=0)


def planted(n_per_class=60, classes=5, flipped=0.0, seed=0):
    """A reference partition and a clustering that agrees with it except for `flipped` rows."""
    rng = np.random.default_rng(seed)
    reference = np.repeat(np.arange(classes), n_per_class)
    labels = (reference + 3) % classes  # other names, same partition
    move = rng.random(len(labels)) < flipped
    labels[move] = rng.integers(0, classes, move.sum())
    return reference, labels


def test_identical_partitions_score_one_far_above_chance():
    reference, labels = planted()
    found = evaluation.agreement(reference, labels, **SETTINGS)
    assert found.nmi == pytest.approx(1.0) and found.ami == pytest.approx(1.0)
    assert found.ari == pytest.approx(1.0)
    assert found.nmi_chance < found.nmi_chance_p99 < 0.1
    assert found.ami_low == pytest.approx(1.0) and found.ami_high == pytest.approx(1.0)


def test_independent_labels_have_ami_near_zero_and_nmi_at_the_chance_level():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 10, 400)
    labels = rng.integers(0, 9, 400)
    found = evaluation.agreement(reference, labels, **SETTINGS)
    assert abs(found.ami) < 0.02
    assert found.ami_low < 0 < found.ami_high  # the interval holds "no agreement"
    # NMI is biased upward by the number of labels: its chance level is where it lands
    assert found.nmi > 0.03
    assert found.nmi == pytest.approx(found.nmi_chance, abs=0.02)
    assert found.nmi < found.nmi_chance_p99


def test_the_interval_holds_the_estimate_and_narrows_with_more_documents():
    widths = []
    for n in (40, 400):
        reference, labels = planted(n_per_class=n, flipped=0.4, seed=2)
        found = evaluation.agreement(reference, labels, **SETTINGS)
        assert found.ami_low <= found.ami <= found.ami_high
        widths.append(found.ami_high - found.ami_low)
    assert widths[1] < widths[0] / 2


def test_known_nmi_matches_scikit_learn_and_unlabelled_rows_are_left_out():
    reference, labels = planted(flipped=0.3, seed=3)
    ref = reference.astype(object)
    ref[:7] = None
    ref[7:9] = "  "
    found = evaluation.agreement(list(ref), labels, **SETTINGS)
    assert found.n == len(ref) - 9
    assert found.nmi == pytest.approx(normalized_mutual_info_score(reference[9:], labels[9:]))
    assert found.ami == pytest.approx(adjusted_mutual_info_score(reference[9:], labels[9:]))
    assert evaluation.agreement([None, "a", None], [0, 1, 1], **SETTINGS) is None


def test_fast_nmi_equals_scikit_learn():
    rng = np.random.default_rng(4)
    for _ in range(20):
        a, b = rng.integers(0, 7, 300), rng.integers(0, 4, 300)
        assert evaluation.nmi_from_codes(a, b) == pytest.approx(normalized_mutual_info_score(a, b))


def test_fast_ami_equals_scikit_learn_bit_for_bit():
    """The interval's AMI must be scikit-learn's exactly: the tracked metrics' bytes rest on it.
    Codes with gaps (a half-sample lacks some labels), single-label sides, near-perfect and
    random agreement."""
    rng = np.random.default_rng(5)
    cases = [
        (np.zeros(5, int), np.zeros(5, int)),  # one label each: 1.0
        (np.zeros(6, int), np.arange(6) % 3),  # one side single: 0.0
        (np.array([0, 0, 5, 5, 9]), np.array([2, 2, 0, 0, 7])),  # gaps, a perfect match
    ]
    for i in range(300):
        n, ka, kb = int(rng.integers(2, 300)), int(rng.integers(1, 50)), int(rng.integers(1, 12))
        a, b = rng.integers(0, ka, n), rng.integers(0, kb, n)
        if i % 3 == 0:
            b = (a + rng.integers(0, 2, n)) % kb
        cases.append((a, b))
    for a, b in cases:
        assert evaluation.ami_from_codes(a, b) == adjusted_mutual_info_score(a, b), (a, b)


def test_results_are_the_same_for_the_same_seed_and_differ_for_another():
    reference, labels = planted(flipped=0.5, seed=5)
    one = evaluation.agreement(reference, labels, **SETTINGS)
    assert one == evaluation.agreement(reference, labels, **SETTINGS)
    other = evaluation.agreement(reference, labels, **{**SETTINGS, "random_state": 9})
    assert (other.ami_low, other.nmi_chance) != (one.ami_low, one.nmi_chance)


def test_a_sample_caps_the_resampling_work():
    reference, labels = planted(n_per_class=400, flipped=0.5, seed=6)
    full = evaluation.agreement(reference, labels, **SETTINGS)
    sampled = evaluation.agreement(reference, labels, **{**SETTINGS, "sample": 200})
    assert sampled.ami == full.ami  # the estimate is always on every row
    assert (sampled.ami_high - sampled.ami_low) > (full.ami_high - full.ami_low)


def test_overlapping_intervals_read_not_distinguishable():
    def metrics(room, hotel):
        return {
            "room_type_source": "captions",
            "n_docs": 100,
            "ami_room_type_captions": room[1],
            "ami_hotel": hotel[1],
            "uncertainty": {
                "room_type_captions": {"ami_low": room[0], "ami_high": room[2], "nmi_chance": 0.1},
                "hotel": {"ami_low": hotel[0], "ami_high": hotel[2], "nmi_chance": 0.1},
            },
        }

    clear = finding_sentence(metrics((0.4, 0.5, 0.6), (0.1, 0.15, 0.2)))
    assert clear.startswith("Clusters follow **room types from captions (AMI 0.500")
    assert "95% interval 0.400-0.600" in clear and "not distinguishable" not in clear
    reversed_ = finding_sentence(metrics((0.1, 0.15, 0.2), (0.4, 0.5, 0.6)))
    assert reversed_.startswith("Clusters follow **hotels (AMI 0.500")
    overlap = finding_sentence(metrics((0.3, 0.4, 0.5), (0.25, 0.35, 0.45)))
    assert "**not distinguishable**" in overlap


# --- seeds ---------------------------------------------------------------------------------------


def test_separable_blobs_give_the_same_clusters_for_every_seed():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, 6)) * 10
    truth = np.repeat(np.arange(4), 50)
    x = (centres[truth] + rng.normal(size=(200, 6)) * 0.1).astype(np.float32)
    cfg = compose("cluster.n_seeds=4").cluster
    runs = evaluation.seed_reruns(x, None, 4, cfg, None, None)
    assert len(runs) == 4
    mean, sd = evaluation.seed_spread(runs, truth, None)
    assert mean == pytest.approx(1.0) and sd == pytest.approx(0.0)


def test_seed_reruns_refit_the_text_features_on_the_sampled_rows():
    texts = ["bed pillow sheet"] * 30 + ["toilet sink mirror"] * 30 + ["pool ocean beach"] * 30
    truth = np.repeat(np.arange(3), 30)
    params = compose("cluster.n_seeds=3")
    rows = np.arange(0, 90, 2)
    runs = evaluation.seed_reruns(
        np.zeros((90, 2), np.float32), texts, 3, params.cluster, params.features, rows
    )
    assert all(len(run) == len(rows) for run in runs)
    mean, sd = evaluation.seed_spread(runs, truth, rows)
    assert mean == pytest.approx(1.0) and sd == pytest.approx(0.0)


# --- retrieval -----------------------------------------------------------------------------------


def brute_force_ranks(x, ref):
    """Rank of each query's nearest same-label row by (cosine desc, row asc), one by one."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ranks = []
    for q in range(len(x)):
        others = [j for j in range(len(x)) if j != q]
        if not any(ref[j] == ref[q] for j in others):
            continue
        order = sorted(others, key=lambda j: (-round(float(unit[q] @ unit[j]), 12), j))
        ranks.append(next(i for i, j in enumerate(order) if ref[j] == ref[q]))
    return np.array(ranks)


def test_retrieval_is_perfect_when_each_hotel_has_its_own_direction():
    rng = np.random.default_rng(8)
    hotels = np.repeat(np.arange(12), 8)
    directions = rng.normal(size=(12, 16))
    x = on_grid(directions[hotels] + rng.normal(size=(len(hotels), 16)) * 0.05)
    found = evaluation.retrieval(x, hotels, queries=None, random_state=0)
    assert found.queries == len(hotels)
    assert found.top1 == 1.0 and found.top10 == 1.0
    assert found.top1_chance == pytest.approx(7 / 95)


def test_retrieval_of_random_features_sits_at_chance():
    rng = np.random.default_rng(9)
    hotels = np.repeat(np.arange(20), 30)
    x = on_grid(rng.normal(size=(len(hotels), 8)) / 3)
    found = evaluation.retrieval(x, hotels, queries=None, random_state=0)
    assert found.top1 == pytest.approx(found.top1_chance, abs=0.03)
    assert found.top10 == pytest.approx(found.top10_chance, abs=0.06)


@pytest.mark.parametrize("score_buffer", [None, 1, 7 * 60])
def test_retrieval_ranks_equal_a_brute_force_ranking_with_ties_by_row(score_buffer, monkeypatch):
    """Also with a score buffer of one query (or 7) at a time: the blocks reuse one buffer."""
    if score_buffer is not None:
        monkeypatch.setattr(evaluation, "SCORE_BUFFER", score_buffer)
    rng = np.random.default_rng(10)
    ref = rng.integers(0, 5, 60)
    x = on_grid(rng.integers(-2, 3, size=(60, 3)).astype(float) / 2)  # many exact ties
    x[np.abs(x).sum(axis=1) == 0] = 0.5
    ranks = brute_force_ranks(x.astype(np.float64), ref)
    found = evaluation.retrieval(x, ref, queries=None, random_state=0)
    assert found.top1 == pytest.approx((ranks < 1).mean())
    assert found.top10 == pytest.approx((ranks < 10).mean())


def test_retrieval_leaves_out_unlabelled_rows_and_singletons():
    x = on_grid(np.eye(5))
    assert evaluation.retrieval(x, ["a", "b", "c", None, "d"], queries=None, random_state=0) is None
    found = evaluation.retrieval(x, ["a", "a", "b", None, None], queries=None, random_state=0)
    assert found.queries == 2 and found.top1_chance == 0.5  # one of the two other labelled rows


def test_retrieval_queries_are_a_seeded_sample():
    rng = np.random.default_rng(11)
    hotels = np.repeat(np.arange(10), 20)
    x = on_grid(rng.normal(size=(200, 4)) / 3)
    found = evaluation.retrieval(x, hotels, queries=50, random_state=3)
    assert found.queries == 50
    assert found == evaluation.retrieval(x, hotels, queries=50, random_state=3)


@pytest.mark.parametrize(("candidates", "positives", "k"), [(5, 1, 2), (9, 3, 4), (6, 0, 3)])
def test_hit_chance_is_the_hypergeometric_probability(candidates, positives, k):
    pool = [1] * positives + [0] * (candidates - positives)
    draws = list(itertools.combinations(range(candidates), k))
    expected = sum(any(pool[i] for i in d) for d in draws) / math.comb(candidates, k)
    got = evaluation.hit_chance(candidates, np.array([positives]), k)[0]
    assert got == pytest.approx(expected)


# --- duplicates in the cluster stage -------------------------------------------------------------


def test_duplicate_groups_of_every_kind_join_into_one_representative(tmp_path):
    paths = StagePaths().under(tmp_path)
    paths.duplicates.parent.mkdir(parents=True)
    pd.DataFrame(
        {
            "image_id": [11, 12, 12, 13, 20, 21, 99],
            "group": [11, 11, 12, 12, 20, 20, 99],
            "kind": ["exact", "exact", "perceptual", "perceptual", "text", "text", "text"],
            "distance": [0, 0, 3, 3, 0, 0, 0],
        }
    ).to_csv(paths.duplicates, index=False)
    ids = pd.Series([13, 12, 11, 20, 30, 21])
    assert duplicate_representatives(ids, paths).tolist() == [0, 0, 0, 3, 4, 3]
    missing = StagePaths().under(tmp_path / "none")
    assert duplicate_representatives(ids, missing).tolist() == list(range(6))


def test_drop_duplicates_clusters_one_per_group_and_reports_both_views(tmp_path, monkeypatch):
    """16 photos whose 8 captions each appear twice: 8 text-duplicate groups (the duplicates
    stage), then the cluster stage with and without `cluster.drop_duplicates`."""
    import json
    from pathlib import Path

    from alien_hotels.stages import cluster as cluster_stage
    from alien_hotels.stages import duplicates as duplicates_stage
    from alien_hotels.stages import features as features_stage
    from alien_hotels.stages import preprocess as preprocess_stage
    from alien_hotels.stages import room_types as room_types_stage
    from test_room_types import write_project

    monkeypatch.chdir(tmp_path)
    write_project(tmp_path)
    common = ("room_types.source=captions", "features.n_components=4", "cluster.k=3")
    common += ("cluster.k_max=5", "cluster.n_seeds=2", "duplicates.progress=false")
    params = compose(*common)
    for stage in (preprocess_stage, room_types_stage, duplicates_stage, features_stage):
        stage.run(params)
    table = pd.read_csv("data/processed/duplicates.csv")
    assert (table["kind"] == "text").sum() == 16 and table["group"].nunique() == 8

    kept = cluster_stage.run(params)
    assert kept["duplicates_dropped"] == 0 and kept["n_docs"] == 16
    assert kept["without_duplicates"]["n_docs"] == 8
    assert "Without the duplicates (8 documents)" in Path("reports/clusters.md").read_text()

    dropped = cluster_stage.run(compose(*common, "cluster.drop_duplicates=true"))
    assert dropped["duplicates_dropped"] == 8 and dropped["n_docs"] == 16
    assert dropped["with_duplicates"]["n_docs"] == 16
    assert dropped["uncertainty"]["hotel"]["n"] == 8  # scored on the representatives
    labels = pd.read_csv("data/processed/cluster_labels.csv").set_index("image_id")["cluster"]
    for _, group in table.groupby("group"):
        assert labels.loc[group["image_id"]].nunique() == 1  # a copy has its original's cluster
    assert json.loads(Path("metrics/clustering.json").read_text()) == dropped
