"""Stages on the bundled sample, run in a scratch directory: outputs, and bad input handling."""

import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from alien_hotels.common import StageError
from alien_hotels.stages import features as features_stage
from conftest import ROOT, compose, run

BUNDLED = ROOT / "data/bundled/hotels_sample.csv"


def write_params(workdir: Path, *overrides: str, data_path: Path = BUNDLED) -> Path:
    raw = compose(*overrides).model_dump()
    raw["data"]["path"] = str(data_path)
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_text_half(*overrides: str, until: str = "map"):
    params = compose(*overrides).model_copy(
        update={"data": compose().data.model_copy(update={"path": str(BUNDLED)})}
    )
    order = ["sample", "caption", "preprocess", "room_types", "features", "cluster", "map"]
    for name in order[: order.index(until) + 1]:
        importlib.import_module(f"alien_hotels.stages.{name}").run(params)
    return params


def test_text_half_outputs(workdir):
    run_text_half("cluster.k_max=12")
    texts = pd.read_csv("data/processed/texts.csv")
    assert len(texts) == 313
    assert texts["text"].str.split().str.len().max() <= 14
    clusters = pd.read_csv("data/processed/clusters.csv")
    expected = ["image_id", "hotel_id", "room_type", "cluster", "x", "y", "caption", "text"]
    assert list(clusters.columns[:8]) == expected
    assert len(clusters) == 313 and clusters["image_id"].is_unique
    report = Path("reports/clusters.md").read_text()
    assert "| cluster | size | label | top terms | room types | hotels |" in report


def few_captions(workdir: Path, n: int) -> Path:
    """The first `n` captioned images of one bundled hotel, as a dataset of their own."""
    rows = pd.read_csv(BUNDLED)
    rows = rows[rows["hotel_id"] == rows["hotel_id"].iloc[0]].head(n)
    path = workdir / f"few_{n}.csv"
    rows.to_csv(path, index=False)
    return path


def test_cluster_sweep_is_clamped_to_few_documents(workdir):
    """A first real run on 10 captioned images with k_max=29: k=1..10, said in the metrics."""
    overrides = ("data.n_hotels=1", "data.min_images=1", "features.n_components=5")
    write_params(workdir, *overrides, data_path=few_captions(workdir, 10))
    for stage in ("sample", "caption", "preprocess", "room-types", "features"):
        run(["alien-hotels", stage], workdir)
    n_docs = len(pd.read_csv("data/processed/texts.csv"))  # rows without a photo are dropped
    assert 3 <= n_docs <= 10
    result = run(["alien-hotels", "cluster"], workdir)
    assert f"cluster.k_max=29 exceeds the {n_docs} documents: sweeping k=1..{n_docs}" in (
        result.stderr
    )
    metrics = json.loads(Path("metrics/clustering.json").read_text())
    assert metrics["k_swept"] == f"1..{n_docs}" and metrics["k_max_clamped"] is True
    assert 1 <= metrics["k"] <= n_docs
    elbow = pd.read_csv("plots/elbow.csv")
    assert elbow["k"].tolist() == list(range(1, n_docs + 1))
    # the plot marks the chosen k from this column (and `dvc plots diff` tells runs apart by it)
    assert elbow.loc[elbow["chosen"] == 1, "k"].tolist() == [metrics["k"]]
    assert set(elbow["chosen"]) <= {0, 1}


def test_no_possible_k_leaves_no_cluster_outputs(workdir):
    """One document: nothing to cluster (two or more take a k, see test_small_folders.py)."""
    one = few_captions(workdir, 1)
    write_params(workdir, "data.n_hotels=1", "data.min_images=1", data_path=one)
    for stage in ("sample", "caption", "preprocess", "room-types", "features"):
        run(["alien-hotels", stage], workdir)
    result = run(["alien-hotels", "cluster"], workdir, check=False)
    assert result.returncode == 2
    assert "cluster: 1 document(s) cannot be clustered" in result.stderr
    assert not Path("metrics/clustering.json").exists()
    assert not Path("data/processed/cluster_labels.csv").exists()


def test_features_that_fit_no_data_fail_cleanly(workdir):
    run_text_half(until="preprocess")
    bad = compose("features.tfidf.min_df=1000")  # more documents than there are
    with pytest.raises(StageError, match=r"features.tfidf: max_df corresponds to < documents"):
        features_stage.run(bad)
    assert not Path("data/processed/features.npz").exists()
    assert not list(Path("data/processed").glob(".*tmp"))


def test_unknown_lemmatizer_fails_before_any_work(workdir):
    path = write_params(workdir)
    raw = yaml.safe_load(path.read_text())
    raw["text"]["lemmatizer"] = "stemmer"
    path.write_text(yaml.safe_dump(raw))
    result = run(["alien-hotels", "sample"], workdir, check=False)
    assert result.returncode == 2
    assert "text.lemmatizer = 'stemmer'" in result.stderr and "simplemma" in result.stderr
    assert not Path("data/interim/sample.csv").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("image_id,hotel_id,description\n", "has no rows"),
        ("image_id,hotel_id,url\n1,2,http://x\n", "lacks column(s) description"),
    ],
)
def test_bad_dataset_exits_nonzero_without_outputs(workdir, content, message):
    data = workdir / "bad.csv"
    data.write_text(content)
    write_params(workdir, data_path=data)
    result = run(["alien-hotels", "sample"], workdir, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert not Path("data/interim/sample.csv").exists()
    assert not Path("metrics/sample.json").exists()


def test_failed_rerun_keeps_previous_outputs(workdir):
    """A stage that fails leaves what an earlier successful run wrote untouched."""
    run_text_half(until="features")
    before = Path("data/processed/features.npz").read_bytes()
    with pytest.raises(StageError):
        features_stage.run(compose("features.tfidf.min_df=1000"))
    assert Path("data/processed/features.npz").read_bytes() == before


def test_outputs_get_the_usual_permissions(tmp_path):
    import os

    from alien_hotels.common import write_json

    umask = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "m.json")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
