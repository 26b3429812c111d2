"""`alien-hotels exps` (`make exps`) in a 120-column terminal, with three changed params."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import run

pytestmark = pytest.mark.slow  # runs `dvc exp save` (seconds: no stage runs)

EXPERIMENTS = [
    {"text.max_words": 20},
    {"cluster.k": 10, "map.perplexity": 20},
    {"cluster.k": 12, "map.perplexity": 40, "text.max_words": 30},
]


def shown(value) -> str:
    return "-" if value is None else str(value)  # dvc shows null as "-"


def test_changed_params_fit_120_columns(project):
    """Experiments saved as `dvc exp run` leaves them (changed params.yaml and metrics), without
    running the stages: the table's width depends on column names and values only."""
    committed_params = yaml.safe_load((project / "params.yaml").read_text())
    baseline = {}
    for key in ("text.max_words", "cluster.k", "map.perplexity"):
        section, name = key.split(".")
        baseline[key] = committed_params[section][name]
    metrics_path = project / "metrics/clustering.json"
    committed = json.loads(metrics_path.read_text())
    expected = {}
    for i, changed in enumerate(EXPERIMENTS, start=1):
        overrides = [f"{key}={value}" for key, value in changed.items()]
        composed = run(["alien-hotels", "compose", *overrides], project).stdout
        (project / "params.yaml").write_text(composed)
        metrics = {**committed, "k": committed["k"] + i}
        for key in ("silhouette", "nmi_room_type", "nmi_hotel", "ari_room_type", "ari_hotel"):
            metrics[key] = float(f"{committed[key] * (1 - 0.07 * i):.4g}")
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        # `data.dvc` is the one output in this copy: the stages' outputs were never produced.
        saved = run(["dvc", "exp", "save", "data.dvc"], project).stdout
        name = re.search(r"saved as: (\S+)", saved).group(1)  # auto names, as from the queue
        expected[name] = {**baseline, **changed}

    table = run(["alien-hotels", "exps"], project, COLUMNS="120").stdout
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120, table
    assert "…" not in table, table
    header = next(line.split() for line in lines if line.split()[:1] == ["Experiment"])
    for column in ("k", "silhouette", "nmi_room_type", "nmi_hotel", *baseline):
        assert column in header, table
    for name, params in expected.items():
        row = next((line.split() for line in lines if f"[{name}]" in line), None)
        assert row is not None, f"{name} not in\n{table}"
        values = dict(zip(header[1:], row[-(len(header) - 1) :], strict=True))
        assert {key: values[key] for key in params} == {
            key: shown(value) for key, value in params.items()
        }, table
