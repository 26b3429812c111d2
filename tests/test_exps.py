"""`alien-hotels exps` (`make exps`): its own table from `dvc exp show --json`, fitted to an
80-column terminal with three changed params (dvc's own table hid every param behind `…`)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import run

EXPERIMENTS = [
    {"text.max_words": 20},
    {"cluster.k": 10, "map.perplexity": 20},
    {"cluster.k": 12, "map.perplexity": 40, "text.max_words": 30},
]
# the headers of those params in 80 columns: the last key, unless it is also a metric's name
HEADERS = {"text.max_words": "max_words", "cluster.k": "cluster.k", "map.perplexity": "perplexity"}


def shown(value) -> str:
    return "-" if value is None else str(value)  # dvc shows null as "-"


def entry(name, rev, params, metrics, experiments=None):
    """One row as `dvc exp show --json` writes it (dvc 3)."""
    data = {
        "rev": rev,
        "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics/clustering.json": {"data": metrics}},
    }
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": experiments}


def fake_report(names: list[str]) -> list[dict]:
    base = {
        "cluster": {"k": None, "k_max": 29},
        "map": {"perplexity": 30.0},
        "text": {"max_words": None, "lemmatizer": "simplemma"},
        "ray": {"n": 1},
    }
    metrics = {"k": 9, "silhouette": 0.1134, "ami_room_type": 0.5052, "ami_hotel": 0.1551}
    experiments = []
    for i, name in enumerate(names, start=1):
        params = {**base, "cluster": {"k": 8 + i, "k_max": 29}, "ray": {"n": i}}
        params["map"] = {"perplexity": 10.0 * i}
        params["text"] = {"max_words": 20 + i, "lemmatizer": "simplemma"}
        row = entry(
            name, f"{i:040x}", params, {**metrics, "k": 8 + i, "ami_hotel": round(0.1 * i, 4)}
        )
        experiments.append({"revs": [row], "executor": None, "name": name})
    return [
        entry(None, "workspace", base, metrics),
        entry("main", "a" * 40, base, metrics, experiments),
    ]


def test_table_fits_and_names_the_changed_params():
    from alien_hotels import exps  # imported here: without the module only these tests fail

    report = fake_report(["crack-hums", "sural-gape", "a-rather-long-experiment-name"])
    for width in (120, 80, 70):
        table = exps.table(report, width)
        lines = table.splitlines()
        assert max(map(len, lines)) <= width, table
    wide = exps.table(report, 120).splitlines()
    # full paths when they fit; `ray` (where work runs) is no result's cause and is left out
    assert wide[0].split() == [
        "Experiment",
        "cluster.k",
        "map.perplexity",
        "text.max_words",
        *exps.METRICS,
    ]
    assert wide[1].split() == ["workspace", "-", "30.0", "-", "9", "0.1134", "0.5052", "0.1551"]
    assert wide[3].split()[:3] == ["├──", "crack-hums", "9"] and wide[5].startswith("└── a-rather")
    narrow = exps.table(report, 80).splitlines()
    assert narrow[0].split()[1:4] == ["cluster.k", "perplexity", "max_words"], narrow
    assert narrow[0].split()[4:] == ["k", "silh", "ami_room", "ami_hotel"]
    assert any(line.startswith("silh: silhouette") for line in narrow)


def test_sort_and_hide_workspace():
    from alien_hotels import exps  # imported here: without the module only these tests fail

    report = fake_report(["one", "two", "three"])
    table = exps.table(report, 100, ["--sort-by", "ami_hotel", "--sort-order=desc"])
    names = [line.split()[1] for line in table.splitlines() if line.startswith(("├", "└"))]
    assert names == ["three", "two", "one"]
    assert exps.split_args(["-A", "--sort-by", "k", "--hide-workspace", "-n", "2"]) == (
        ["-A", "-n", "2"],
        "k",
        "asc",
        True,
    )
    hidden = exps.table(report, 100, ["--hide-workspace"])
    assert "workspace" not in hidden and hidden.splitlines()[1].startswith("main")


def test_short_names_keep_a_metric_name_whole():
    from alien_hotels import exps  # imported here: without the module only these tests fail

    keys = ["cluster.k", "map.perplexity", "text.max_words", "features.k", "edit.sweep.k"]
    assert exps.short_names(keys, exps.METRICS) == [
        "cluster.k",
        "perplexity",
        "max_words",
        "features.k",
        "sweep.k",
    ]


@pytest.mark.slow  # runs `dvc exp save` (seconds: no stage runs)
def test_changed_params_fit_80_columns(project):
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
        for key in ("silhouette", "ami_room_type", "ami_hotel", "ari_room_type", "ari_hotel"):
            metrics[key] = float(f"{committed[key] * (1 - 0.07 * i):.4g}")
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        # `data.dvc` is the one output in this copy: the stages' outputs were never produced.
        saved = run(["dvc", "exp", "save", "data.dvc"], project).stdout
        name = re.search(r"saved as: (\S+)", saved).group(1)  # auto names, as from the queue
        expected[name] = ({**baseline, **changed}, metrics)

    table = run(["alien-hotels", "exps"], project, COLUMNS="80").stdout
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 80, table
    assert "…" not in table, table
    header = lines[0].split()
    assert header[0] == "Experiment", table
    params = [HEADERS[key] for key in baseline]
    assert sorted(header[1:4]) == sorted(params) and header[4:] == [
        "k",
        "silh",
        "ami_room",
        "ami_hotel",
    ], table
    for name, (params, metrics) in expected.items():
        row = next((line.split() for line in lines if line[4:].split()[:1] == [name]), None)
        assert row is not None, f"{name} not in\n{table}"
        values = dict(zip(header[1:], row[-(len(header) - 1) :], strict=True))
        assert {HEADERS[key]: values[HEADERS[key]] for key in params} == {
            HEADERS[key]: shown(value) for key, value in params.items()
        }, table
        assert values["k"] == str(metrics["k"]) and values["silh"] == str(metrics["silhouette"])

    # machine-readable output stays dvc's own, every column whole
    csv = run(["alien-hotels", "exps", "--csv"], project).stdout.splitlines()
    assert {"ami_room_type", "cluster.k", "text.max_words"} <= set(csv[0].split(",")), csv[0]
    assert sum(name in line for line in csv for name in expected) == len(expected)
