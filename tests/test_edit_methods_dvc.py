"""`dvc repro` / `dvc exp run -S` of the textual_inversion and imagic stages in a fresh copy of
the repo, on the bundled sample (no images, no reference folder): offline, no model loaded, and
a changed parameter reruns only its own stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run

pytestmark = pytest.mark.slow


def test_methods_offline_on_bundled_sample_and_exp_run_reruns_only_what_changed(
    project: Path, tmp_path: Path
):
    env = {"HF_HOME": str(tmp_path / "empty_hf_home"), "HF_HUB_OFFLINE": "1"}
    targets = ["textual_inversion", "imagic", "edit@neon"]
    run(["dvc", "repro", "-q", *targets], project, **env)
    assert json.loads((project / "metrics/textual_inversion.json").read_text())["steps"] == 0
    assert json.loads((project / "metrics/imagic.json").read_text())["n_images"] == 0
    assert (project / "data/textual_inversion/learned_embeds.safetensors").is_file()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    run([*git, "add", "-A"], project)
    run([*git, "commit", "-q", "--allow-empty", "-m", "methods"], project)  # lock may be current

    def ran(*overrides: str) -> set[str]:
        sets = [arg for o in overrides for arg in ("-S", o)]
        out = run(["dvc", "exp", "run", *sets, *targets], project, **env).stdout
        # exp run applies its results to the workspace: back to the committed baseline
        run(["git", "checkout", "-q", "--", "."], project)
        return {name for name in targets if f"Running stage '{name}'" in out}

    assert ran("edit.imagic.alphas=[0.5,0.7]") == {"imagic"}
    # the embedding it writes is unchanged (nothing to learn), so no edit stage reruns
    assert ran("edit.textual_inversion.steps=10") == {"textual_inversion"}
    assert ran("edit.textual_inversion.placeholder_token='<alien-glow>'") == {
        "textual_inversion",
        "edit@neon",
    }
