"""A mistyped key in an override: Hydra (and so `dvc exp run -S`) advises `+key=value`, which
adds the typo; `alien-hotels compose` names the closest key of the config instead."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from alien_hotels.cli import app
from conftest import ROOT, run


@pytest.mark.parametrize(
    ("override", "meant"),
    [
        ("cluster.kk=8", "cluster.k=8"),
        ("clustr.k=8", "cluster.k=8"),
        ("map.perplexty=20", "map.perplexity=20"),
        ("edit.recipes.neon.strenght=0.5", "edit.recipes.neon.strength=0.5"),
    ],
)
def test_compose_names_the_closest_key(override, meant):
    result = CliRunner().invoke(app, ["compose", override, "--conf-dir", str(ROOT / "conf")])
    assert result.exit_code == 2, result.output
    key = override.split("=")[0]
    assert f"did you mean {meant}?" in result.output, result.output
    assert f"+{key}" not in result.output  # Hydra's advice, wrong for a typo


def test_no_close_key_says_where_keys_are():
    result = CliRunner().invoke(app, ["compose", "zzz.qq=1", "--conf-dir", str(ROOT / "conf")])
    assert result.exit_code == 2
    assert "zzz.qq is not a key of the config" in result.output and "+zzz" not in result.output


@pytest.mark.slow
def test_dvc_exp_run_typo_is_hydras_message(project):
    """DVC composes params.yaml itself (dvc.utils.hydra), before any stage: its message is
    Hydra's, out of the project's reach (README "When a run fails" points to `compose`)."""
    failed = run(["dvc", "exp", "run", "-S", "cluster.kk=8"], project, check=False)
    assert failed.returncode != 0
    assert "Could not override 'cluster.kk'" in failed.stderr + failed.stdout
    hint = run(["alien-hotels", "compose", "cluster.kk=8"], project, check=False)
    assert hint.returncode == 2 and "did you mean cluster.k=8?" in hint.stderr
