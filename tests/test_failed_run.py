"""A failed `dvc exp run -S <bad value>` leaves the workspace usable (issue 24, item 3).

DVC deletes a stage's outputs before running it; without `persist: true` on the git-tracked ones
(metrics, plot CSVs, reports) a failing stage left git showing them deleted, `alien-hotels
summary` said "run `dvc repro` first" and `dvc repro` failed the same way. Now the tracked results
stay, the error and `summary` say what params.yaml holds and how to go back, and that advice works.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alien_hotels.preflight import params_drift, way_back
from conftest import run


def porcelain(repo: Path) -> list[str]:
    return run(["git", "status", "--porcelain"], repo).stdout.splitlines()


def commit_all(repo: Path, message: str) -> None:
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    run([*git, "add", "-A"], repo)
    run([*git, "commit", "-qm", message, "--allow-empty"], repo)


def test_drift_names_keys_and_the_way_back(tmp_path):
    params = {"features": {"n_components": 0, "min_df": 1}, "cluster": {"k": None}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    features = {"n_components": 50, "min_df": 1}
    lock = {
        "schema": "2.0",
        "stages": {
            "features": {"params": {"params.yaml": {"features": features}}},
            "cluster": {"params": {"params.yaml": {"cluster": {"k": 10}}}},
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    drift = params_drift(tmp_path / "params.yaml", tmp_path / "dvc.lock")
    assert drift == {"cluster.k": (None, 10), "features.n_components": (0, 50)}
    hint = way_back(tmp_path / "params.yaml", tmp_path / "dvc.lock")
    assert "features.n_components=0 (results: 50)" in hint
    assert "git checkout" in hint and "params.yaml && dvc repro" in hint
    assert "`dvc exp run -S cluster.k=10 -S features.n_components=50`" in hint
    # agreeing files, a missing lock: nothing to say
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"features": {"n_components": 50, "min_df": 1}, "cluster": {"k": 10}})
    )
    assert way_back(tmp_path / "params.yaml", tmp_path / "dvc.lock") is None
    assert way_back(tmp_path / "params.yaml", tmp_path / "absent.lock") is None


@pytest.mark.slow  # dvc repro of the text half, a failing experiment, the recovery
def test_failed_experiment_keeps_results_and_the_advice_works(project):
    # A consistent committed state first (this tree's code may be newer than its dvc.lock).
    run(["dvc", "repro", "-q"], project)
    commit_all(project, "reproduced")
    assert porcelain(project) == []
    tracked = ["metrics/clustering.json", "metrics/features.json", "plots/elbow.csv"]
    tracked.append("reports/clusters.md")
    before = {name: (project / name).read_bytes() for name in tracked}

    failed = run(["dvc", "exp", "run", "-S", "features.n_components=0"], project, check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "features.n_components" in output, output
    # the error says what params.yaml holds and how to go back
    assert "features.n_components=0 (results: 50)" in output, output
    assert "git checkout params.yaml && dvc repro" in output, output
    # only params.yaml changed: the tracked results are still there, unchanged
    assert porcelain(project) == [" M params.yaml"], porcelain(project)
    assert {name: (project / name).read_bytes() for name in tracked} == before

    summary = run(["alien-hotels", "summary"], project)
    assert "documents" in summary.stdout
    assert "features.n_components=0 (results: 50)" in summary.stderr, summary.stderr
    assert "git checkout params.yaml" in summary.stderr

    # `make demo` would run `dvc repro` with the bad value: it fails the same way, with the hint
    repro = run(["dvc", "repro"], project, check=False)
    assert repro.returncode != 0
    assert "git checkout params.yaml && dvc repro" in repro.stdout + repro.stderr

    # the advice: back to the committed params, then `dvc repro` (what `make demo` runs)
    run(["git", "checkout", "params.yaml"], project)
    run(["dvc", "repro"], project)
    assert porcelain(project) == [], porcelain(project)
    assert {name: (project / name).read_bytes() for name in tracked} == before
    assert "changed" not in run(["dvc", "status"], project).stdout
    clean = run(["alien-hotels", "summary"], project)
    assert clean.stderr == "" and json.loads((project / tracked[0]).read_text())["k"] > 0
