"""Stages on the bundled sample, run in a scratch directory: outputs, and bad input handling."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from alien_hotels import stages
from alien_hotels.common import StageError
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
    order = ["sample", "caption", "preprocess", "features", "cluster", "map"]
    for name in order[: order.index(until) + 1]:
        getattr(stages, f"run_{name}")(params)
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


def test_k_max_larger_than_documents_leaves_no_cluster_outputs(workdir):
    write_params(workdir, "cluster.k_max=400")
    for stage in ("sample", "caption", "preprocess", "features"):
        run(["alien-hotels", stage], workdir)
    result = run(["alien-hotels", "cluster"], workdir, check=False)
    assert result.returncode == 2
    assert "cluster.k_max=400 is larger than the number of documents (313)" in result.stderr
    assert not Path("metrics/clustering.json").exists()
    assert not Path("data/processed/cluster_labels.csv").exists()
    assert not Path("plots/elbow.csv").exists()


def test_n_components_not_below_terms_fails_cleanly(workdir):
    run_text_half(until="preprocess")
    bad = compose("features.n_components=5000")
    with pytest.raises(StageError, match=r"features.n_components=5000 must be below"):
        stages.run_features(bad)
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
        stages.run_features(compose("features.n_components=5000"))
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
