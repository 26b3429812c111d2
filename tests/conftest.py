"""Shared fixtures: composed configs (as lightning-hydra-template does) and repo copies."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alien_hotels.config import Params, compose_params, validate_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@functools.cache
def compose(*overrides: str) -> Params:
    """`conf/` composed with Hydra overrides and validated, exactly as a stage would see it.

    `conf/` is the only source of defaults (section models hold none), so a unit test takes its
    config from here and changes what it needs with `Section.updated`, e.g.
    `compose().cluster.updated(k_max=10)`. Cached: configs are immutable.
    """
    return validate_params(compose_params(list(overrides), ROOT / "conf"))


@pytest.fixture
def params() -> Params:
    return compose()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for CLI/DVC subprocesses: this venv first, no hub access, this source tree."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT / "src")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1")
    # `dvc exp run` commits: a git identity for the temporary repos, whatever ~/.gitconfig has
    # (CI runs with an empty HOME)
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "alien-hotels tests")
        env.setdefault(f"GIT_{role}_EMAIL", "tests@alien-hotels.invalid")
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str):
    """Run a command, returning CompletedProcess; on failure show its output."""
    result = subprocess.run(
        cmd, cwd=cwd, env=subprocess_env(**env), capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def copy_project(dest: Path) -> Path:
    """Copy the committed-or-not project files (what `git ls-files` would clone) into a new repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if not src.is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    run(["git", "init", "-q"], dest)
    run([*git, "add", "-A"], dest)
    run([*git, "commit", "-qm", "copy"], dest)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh git+DVC copy of this repository, with data/raw pulled from the bundled remote."""
    repo = copy_project(tmp_path / "repo")
    run(["dvc", "pull", "-q", "-r", "bundled", "data.dvc"], repo)
    return repo


def url_sample(urls: list[str]):
    """A sample table for the images stage: one hotel (7, chain 3), ids from 100, one row per URL,
    each stored name with its URL path's extension."""
    import pandas as pd

    def name(i: int, url: str) -> str:
        return f"{100 + i}.{url.split('?')[0].rsplit('.', 1)[-1]}"

    return pd.DataFrame(
        {
            "image_id": range(100, 100 + len(urls)),
            "hotel_id": 7,
            "url": urls,
            "source": "travel_website",
            "chain_id": 3,
            "image_name": [name(i, u) for i, u in enumerate(urls)],
        }
    )
