"""A command or stage that needs the `ml` or `ray` extra, run without it (issue 24, item 1).

`make demo` installs the base only. There `alien-hotels models download` was a 45-line traceback
and `dvc exp run -S data=folder -S caption=clip_interrogator` failed on `No module named 'torch'`
after sample and images had run. Now it is one line naming the extra, the install command and its
cost (exit 2), before any stage does any work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from alien_hotels import cli, preflight
from alien_hotels.config import ConfigError
from conftest import ROOT, compose, run


def test_extras_needed_by_stage(tmp_path, monkeypatch):
    base = compose()
    assert all(
        not preflight.extras_needed(s, base) for s in ("sample", "images", "caption", "cluster")
    )
    clip = compose("caption=clip_interrogator")
    # every run goes through sample and images: they answer for caption and room_types
    for stage in ("sample", "images", "caption", "room_types"):
        assert "ml" in preflight.extras_needed(stage, clip), stage
    assert not preflight.extras_needed("preprocess", clip)  # captions pulled from elsewhere: fine
    ray = compose("caption=clip_interrogator", "caption.executor=ray")
    assert set(preflight.extras_needed("caption", ray)) == {"ray"}
    image = compose("room_types.source=image")
    assert preflight.extras_needed("sample", image) == {"ml": "room_types.source=image"}
    assert not preflight.extras_needed("caption", image)

    # the edit stages: only for the images the manifest has (none on the bundled sample)
    monkeypatch.chdir(tmp_path)
    assert not preflight.extras_needed("edit", base)
    manifest = tmp_path / "data/interim/images.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("image_id,path,status,reason,url\n1,,missing,not found,\n")
    assert not preflight.extras_needed("edit", base)
    manifest.write_text("image_id,path,status,reason,url\n1,data/images/1.jpg,ok,,\n")
    assert "ml" in preflight.extras_needed("edit", base) and "ml" in preflight.extras_needed(
        "imagic", base
    )
    ray_edit = base.model_copy(update={"edit": base.edit.updated(executor="ray")})
    assert set(preflight.extras_needed("edit", ray_edit)) == {"ray"}


def test_missing_extra_is_one_line(monkeypatch):
    from importlib import util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "torch" else real(name))
    with pytest.raises(ConfigError) as err:
        preflight.require_extras({"ml": "caption.method=clip_interrogator"})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("caption.method=clip_interrogator needs the `ml` extra")
    assert "(no torch)" in message and "`make setup-full`" in message
    assert 'pip install -e ".[ml]"' in message and "GB" in message and "min" in message


def test_unforeseen_import_of_an_extra_is_one_line(tmp_path, monkeypatch, capsys):
    """A stage that imports an extra's module the check did not foresee: still one line."""
    import types

    import typer
    import yaml

    from alien_hotels.config import compose_params

    def run_stage(params):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    stage = types.ModuleType("alien_hotels.stages.needs_torch")
    stage.run = run_stage
    monkeypatch.setitem(sys.modules, stage.__name__, stage)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(compose_params([], ROOT / "conf")))
    with pytest.raises(typer.Exit) as exited:
        cli._run("needs_torch", params)
    assert exited.value.exit_code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the needs-torch stage needs the `ml` extra") and "\n" not in err


# -- a venv with the base install only (what `make setup` / `make demo` make) -----------------


@pytest.fixture(scope="session")
def base_venv(tmp_path_factory) -> Path:
    """`pip install -e .` without extras into a new venv (about 1 min from a warm pip cache or a
    local mirror)."""
    venv = tmp_path_factory.mktemp("base") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "-e", str(ROOT)]
    subprocess.run(pip, check=True, capture_output=True, timeout=900)
    probe = "import importlib.util as u; print(u.find_spec('torch') is None)"
    found = subprocess.run([venv / "bin/python", "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "True", "the base venv has torch"
    return venv


def base_env(venv: Path) -> dict[str, str]:
    return {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


def assert_one_line(result, extra: str = "ml") -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(err.splitlines()) == 1, err
    assert f"needs the `{extra}` extra" in err and "make setup-full" in err and "GB" in err, err
    return err


@pytest.mark.slow  # builds a venv with the base install (about a minute)
def test_models_download_without_ml(base_venv, tmp_path):
    result = run(["alien-hotels", "models", "download"], ROOT, check=False, **base_env(base_venv))
    assert_one_line(result)


@pytest.mark.slow
def test_photo_run_without_ml_stops_before_sample(base_venv, project):
    """The README's photo run in the environment `make demo` makes: refused by `sample`, the
    first stage, before it reads a photo; nothing written, git shows only params.yaml."""
    env = base_env(base_venv)
    # outside data/raw: `dvc exp run` would record a change of data.dvc
    photos = project / "photos/Sea View Inn/bedroom"
    photos.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 48), (40 * i, 90, 160)).save(photos / f"IMG_{i}.jpg")
    before = run(["git", "status", "--porcelain"], project).stdout

    cmd = ["dvc", "exp", "run", "-S", "data=folder", "-S", "data.path=photos"]
    cmd += ["-S", "caption=clip_interrogator"]
    result = run(cmd, project, check=False, **env)
    assert result.returncode != 0
    line = next(x for x in result.stderr.splitlines() if "needs the `ml` extra" in x)
    assert line.startswith("error: caption.method=clip_interrogator needs the `ml` extra"), line
    assert "No module named" not in result.stdout + result.stderr
    assert not (project / "data/interim/sample.csv").exists()
    assert not (project / "data/interim/images.csv").exists()
    after = run(["git", "status", "--porcelain"], project).stdout.splitlines()
    assert sorted(after) == sorted([*before.splitlines(), " M params.yaml"]), after

    # the stage command itself: one line, exit 2
    single = run(["alien-hotels", "sample"], project, check=False, **env)
    assert_one_line(single)
    # the bundled demo's params need no extra: the base install runs them
    run(["git", "checkout", "params.yaml"], project)
    run(["alien-hotels", "sample"], project, **env)
