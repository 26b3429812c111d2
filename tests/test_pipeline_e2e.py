"""The whole DVC graph in a fresh copy of the repository, as a user runs it."""

import ast
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, copy_project, run

pytestmark = pytest.mark.slow

CONTRACT_KEYS = {
    "n_docs",
    "k",
    "silhouette",
    "ari_hotel",
    "nmi_hotel",
    "ari_room_type",
    "nmi_room_type",
    "ami_hotel",
    "ami_room_type",
    "uncertainty",
    "retrieval",
    "inertia_at_k",
    "k_swept",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """One reproduced copy for this module's tests, which run in file order."""
    repo = copy_project(tmp_path_factory.mktemp("e2e") / "repo")
    run(["dvc", "pull", "-q", "-r", "bundled", "data.dvc"], repo)
    repro = run(["dvc", "repro"], repo)
    assert "Running stage 'map'" in repro.stdout
    return repo


def test_repro_contract(project):
    metrics = json.loads((project / "metrics/clustering.json").read_text())
    assert set(metrics) >= CONTRACT_KEYS
    assert metrics["n_docs"] == 313
    elbow = pd.read_csv(project / "plots/elbow.csv")
    assert elbow["k"].tolist() == list(range(1, 30)) and metrics["k_swept"] == "1..29"
    assert 6 <= metrics["k"] <= 14, metrics["k"]
    assert metrics["nmi_room_type"] > metrics["nmi_hotel"]
    # the finding beyond its noise: the room-type interval lies above the hotel one
    room, hotel = metrics["uncertainty"]["room_type_captions"], metrics["uncertainty"]["hotel"]
    assert room["ami_low"] > hotel["ami_high"] and hotel["nmi_chance"] < metrics["nmi_hotel"]

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


def test_rerun_leaves_tracked_results_unchanged(project):
    """A fresh clone's run reproduces the committed metrics, plots and reports byte for byte."""
    for name in run(["git", "ls-files", "metrics", "plots", "reports"], ROOT).stdout.split():
        assert (project / name).read_bytes() == (ROOT / name).read_bytes(), name


def stage_modules() -> dict[str, set[str]]:
    """Stage name -> the source files its stage module runs (static import closure).

    `alien_hotels.config` is a leaf: it imports every section's config model to validate
    params.yaml, but runs none of their stage code.
    """
    src = ROOT / "src"

    def file_of(module: str) -> Path | None:
        base = src.joinpath(*module.split("."))
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None

    def imported(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                parts = name.split(".")
                found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        return {m for m in found if m.startswith("alien_hotels") and file_of(m)}

    out = {}
    for stage_file in sorted((src / "alien_hotels/stages").glob("[!_]*.py")):
        if stage_file.stem == "paths":
            continue
        seen, todo = set(), [f"alien_hotels.stages.{stage_file.stem}", "alien_hotels.cli"]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            if module not in ("alien_hotels.config", "alien_hotels.cli"):
                todo.extend(imported(file_of(module)))
        out[stage_file.stem] = {str(file_of(m).relative_to(ROOT)) for m in seen}
    return out


def declared_code_deps(repo: Path) -> dict[str, list[str]]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {
        name: [d for d in (spec.get("do", spec)).get("deps", []) if d.startswith("src/")]
        for name, spec in stages.items()
    }


def test_every_stage_depends_on_all_the_code_it_runs():
    modules = stage_modules()
    declared = declared_code_deps(ROOT)
    assert set(declared) == set(modules), "a DVC stage per stages/<name>.py module"
    for stage, files in modules.items():
        missing = [f for f in files if not any(f.startswith(d) for d in declared[stage])]
        assert not missing, f"{stage} runs {missing} but dvc.yaml does not list them"


def test_editing_a_stages_code_makes_exactly_that_stage_stale(project):
    """Touch each source file in turn: `dvc status` names exactly the stages that run it."""
    modules = stage_modules()
    listed = run(["dvc", "stage", "list", "--name-only"], project).stdout.split()
    files = sorted({f for fs in modules.values() for f in fs})
    for name in files:
        path = project / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n# touched\n")
        try:
            status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
        finally:
            path.write_bytes(original)
        stale = {s for s, changes in status.items() if _code_changed(changes, name)}
        expected = {s for s in listed if name in modules[s.split("@")[0]]}
        assert stale == expected, name
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}


def test_bytecode_makes_no_stage_stale(project):
    """`__pycache__` in a code folder (any interpreter writes one) changes no stage's deps."""
    written = []
    for folder in ("src/alien_hotels", "src/alien_hotels/datasets"):
        cache = project / folder / "__pycache__"
        cache.mkdir(exist_ok=True)
        written.append(cache / "not_a_module.cpython-399.pyc")
        written[-1].write_bytes(b"bytecode of another interpreter")
    try:
        assert json.loads(run(["dvc", "status", "--json"], project).stdout or "{}") == {}
    finally:
        for path in written:
            path.unlink()


def test_changing_the_downloader_makes_only_the_images_stage_stale(project):
    """The stages that read the images manifest take its format from `tables.py`: one changed
    line of the download code leaves them current; rerun, `images` writes the same outputs, so
    nothing after it runs."""
    fetch = project / "src/alien_hotels/images/fetch.py"
    original = fetch.read_text()
    lines = original.splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if line.startswith("# "))
    lines[n] = "# a changed comment\n"
    fetch.write_text("".join(lines))
    try:
        status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
        assert set(status) == {"images"}, status
        repro = run(["dvc", "repro"], project).stdout
        ran = {line.split("'")[1] for line in repro.splitlines() if line.startswith("Running")}
        assert ran == {"images"}, repro
    finally:
        fetch.write_text(original)
    run(["dvc", "repro", "images"], project)
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}


def _code_changed(changes: list, name: str) -> bool:
    return any(
        name in change.get("changed deps", {})
        or any(name.startswith(dep) for dep in change.get("changed deps", {}))
        for change in changes
        if isinstance(change, dict)
    )


def test_experiment_reruns_only_what_changed(project):
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

    # The readable comparison: changed params and the cluster metrics, within 120 columns.
    table = run(["alien-hotels", "exps"], project, COLUMNS="120").stdout
    lines = table.splitlines()
    assert lines and max(len(line) for line in lines) <= 120, table
    header = " ".join(lines[:4])
    for column in ("Experiment", "ami_room_type", "ami_hotel", "silhouette", "text.max_words"):
        assert column in header, table
    assert "cluster.k_max" not in table and "src/alien_hotels" not in table  # unchanged, deps
    csv = [row.split(",") for row in run(["alien-hotels", "exps", "--csv"], project).stdout.split()]
    assert csv[0][0] == "Experiment" and "k" in csv[0] and "ami_room_type" in csv[0], csv
    max_words = csv[0].index("text.max_words")
    assert {row[max_words] for row in csv[1:]} == {"14", "20"}, csv


def test_bad_parameter_through_dvc_exp_run_fails_clearly(project):
    result = run(["dvc", "exp", "run", "-S", "cluster.k=400"], project, check=False)
    assert result.returncode != 0
    assert "cluster.k=400 is larger than the number of documents (313)" in (
        result.stdout + result.stderr
    )
