"""The whole DVC graph in a fresh copy of the repository, as a user runs it."""

import json

import pandas as pd
import pytest

from conftest import run

pytestmark = pytest.mark.slow

CONTRACT_KEYS = {
    "n_docs",
    "k",
    "silhouette",
    "ari_hotel",
    "nmi_hotel",
    "ari_room_type",
    "nmi_room_type",
    "inertia",
}


def test_repro_contract_then_experiment(project):
    repro = run(["dvc", "repro"], project)
    assert "Running stage 'map'" in repro.stdout

    metrics = json.loads((project / "metrics/clustering.json").read_text())
    assert set(metrics) >= CONTRACT_KEYS
    assert metrics["n_docs"] == 313
    assert list(metrics["inertia"]) == [str(k) for k in range(1, 30)]
    assert 6 <= metrics["k"] <= 14, metrics["k"]
    assert metrics["nmi_room_type"] > metrics["nmi_hotel"]

    clusters = pd.read_csv(project / "data/processed/clusters.csv")
    assert list(clusters.columns[:8]) == [
        "image_id",
        "hotel_id",
        "room_type",
        "cluster",
        "x",
        "y",
        "caption",
        "text",
    ]
    assert len(clusters) == 313 and clusters["cluster"].nunique() == metrics["k"]
    for report in ("cluster_map.html", "cluster_map.png", "clusters.md"):
        assert (project / "reports" / report).stat().st_size > 0

    status = run(["dvc", "status", "--json"], project)
    assert json.loads(status.stdout) == {}

    plots = run(["dvc", "plots", "show", "--json"], project)
    assert "elbow" in plots.stdout

    exp = run(["dvc", "exp", "run", "-S", "text.max_words=20"], project)
    assert "Stage 'sample' didn't change, skipping" in exp.stdout
    assert "Stage 'caption' didn't change, skipping" in exp.stdout
    assert "Running stage 'preprocess'" in exp.stdout

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    experiments = [e for row in shown for e in (row.get("experiments") or []) for e in e["revs"]]
    assert experiments, shown
    data = experiments[0]["data"]
    assert data["params"]["params.yaml"]["data"]["text"]["max_words"] == 20
    assert "k" in data["metrics"]["metrics/clustering.json"]["data"]


def test_bad_parameter_through_dvc_exp_run_fails_clearly(project):
    run(["dvc", "repro"], project)
    result = run(["dvc", "exp", "run", "-S", "cluster.k_max=400"], project, check=False)
    assert result.returncode != 0
    assert "cluster.k_max=400 is larger than the number of documents (313)" in (
        result.stdout + result.stderr
    )
