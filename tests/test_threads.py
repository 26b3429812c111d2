"""Threads: `n_jobs: null` means the cores this process may use, and OpenMP threads sleep (not
spin) between parallel regions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from alien_hotels import common
from alien_hotels.common import _cgroup_cpu_quota, available_cores, beside, resolve_n_jobs
from conftest import ROOT, subprocess_env


def cgroup_tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="ascii")
    return root


def test_cgroup_v2_quota_of_the_process_group_and_its_parents(tmp_path):
    root = cgroup_tree(
        tmp_path / "fs",
        {
            "cpu.max": "max 100000\n",
            "job/cpu.max": "250000 100000\n",
            "job/step/cpu.max": "max 100000\n",
        },
    )
    membership = cgroup_tree(tmp_path, {"cgroup": "0::/job/step\n"}) / "cgroup"
    assert _cgroup_cpu_quota(root, membership) == 2.5
    # a container's namespaced view: its own group is the root of the file system
    (root / "cpu.max").write_text("150000 100000\n", encoding="ascii")
    (membership).write_text("0::/\n", encoding="ascii")
    assert _cgroup_cpu_quota(root, membership) == 1.5


def test_cgroup_v1_cfs_quota(tmp_path):
    root = cgroup_tree(
        tmp_path / "fs",
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    membership = tmp_path / "cgroup"
    membership.write_text("9:name=systemd:/\n2:cpu,cpuacct:/docker/abc\n", encoding="ascii")
    assert _cgroup_cpu_quota(root, membership) == 3.0
    membership.write_text("2:cpu,cpuacct:/\n", encoding="ascii")
    assert _cgroup_cpu_quota(root, membership) is None  # -1: no quota


def test_no_cgroup_file_system_means_no_quota(tmp_path):
    assert _cgroup_cpu_quota(tmp_path / "none", tmp_path / "missing") is None


def test_available_cores_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(common, "_cgroup_cpu_quota", lambda: None)
    assert available_cores() == 4
    monkeypatch.setattr(common, "_cgroup_cpu_quota", lambda: 1.5)
    assert available_cores() == 2  # a fraction of a core counts as one
    monkeypatch.setattr(common, "_cgroup_cpu_quota", lambda: 0.2)
    assert available_cores() == 1
    monkeypatch.setattr(common, "_cgroup_cpu_quota", lambda: 64.0)
    assert available_cores() == 4


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs util-linux's taskset")
def test_available_cores_follows_taskset():
    code = "from alien_hotels.common import available_cores; print(available_cores())"
    result = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "1"


def test_resolve_n_jobs():
    assert resolve_n_jobs(None) == available_cores() >= 1
    assert resolve_n_jobs(3) == 3
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="n_jobs"):
            resolve_n_jobs(bad)


def test_beside_runs_on_a_thread_of_its_own_only_with_two_cores():
    caller = threading.get_ident()
    on_one = beside(threading.get_ident, n_jobs=1)
    assert on_one.done() and on_one.result() == caller  # at once, on the caller's thread
    on_two = beside(threading.get_ident, n_jobs=2)
    assert on_two.result() != caller
    for n_jobs in (1, 2):  # an error reaches the caller at .result()
        failed = beside(int, "not a number", n_jobs=n_jobs)
        with pytest.raises(ValueError, match="not a number"):
            failed.result()


def openmp_spin_count(env: dict[str, str]) -> str:
    """GOMP_SPINCOUNT of the libgomp that scikit-learn loads, in a process that imports the
    CLI first (as every stage command does)."""
    code = "import alien_hotels.cli, sklearn.cluster"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OMP_DISPLAY_ENV": "VERBOSE"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("scikit-learn's OpenMP runtime is not GNU libgomp")
    return lines[0].split("=")[1].strip().strip("'")


def test_openmp_threads_wait_passively():
    """`OMP_WAIT_POLICY=PASSIVE` is set before libgomp loads (it reads it once, at load), so idle
    OpenMP threads sleep instead of spinning 300,000 rounds: on a busy 2-core machine spinning
    threads made a k-means loop several times slower (docs/performance.md)."""
    env = subprocess_env()
    env.pop("OMP_WAIT_POLICY", None)
    assert openmp_spin_count(env) == "0"


def test_a_users_openmp_wait_policy_is_kept():
    assert openmp_spin_count(subprocess_env(OMP_WAIT_POLICY="ACTIVE")) != "0"


def test_the_text_stages_write_the_same_bytes_at_one_and_two_threads(tmp_path, monkeypatch):
    """features, cluster (a sampled sweep, silhouettes, seed reruns) and map at n_jobs 1 and 2:
    byte-identical outputs. k-means sums in per-thread chunks, so the sweep runs several k at
    once with one thread each instead of one k on several threads."""
    import numpy as np

    from alien_hotels.common import write_csv
    from alien_hotels.datagen.captions import synthetic_captions
    from alien_hotels.stages import cluster, features, map
    from alien_hotels.stages.paths import StagePaths
    from conftest import compose

    table = synthetic_captions(6000, seed=3)
    outputs = {}
    for threads in (1, 2):
        root = tmp_path / f"threads{threads}"
        paths = StagePaths().under(root)
        monkeypatch.chdir(tmp_path)
        texts = table.rename(columns={"description": "caption"}).assign(
            room_type=np.where(table.index % 3 == 0, "bedroom", "bathroom"),
            text=table["description"].str.lower(),
        )
        write_csv(
            texts[["image_id", "hotel_id", "hotel_name", "room_type", "caption", "text"]],
            paths.texts,
        )
        write_csv(table.drop(columns=["description"]), paths.sample)
        write_csv(
            texts[["image_id", "room_type"]].assign(
                room_type_source="captions", room_type_captions=texts["room_type"]
            ),
            paths.room_types,
        )
        params = compose(
            f"features.n_jobs={threads}",
            f"cluster.n_jobs={threads}",
            f"map.n_jobs={threads}",
            "cluster.k_max=12",
            "cluster.sweep_sample=3000",
            "cluster.silhouette_sample=500",
            "cluster.uncertainty_sample=500",
            "cluster.n_seeds=3",
            "map.fit_sample=400",
            "map.n_iter=250",
        )
        for stage in (features, cluster, map):
            stage.run(params, paths)
        outputs[threads] = {
            path.relative_to(root): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and path.suffix != ".png"  # the PNG is drawn by matplotlib
        }
    assert outputs[1].keys() == outputs[2].keys()
    assert len(outputs[1]) >= 8
    different = [str(p) for p in outputs[1] if outputs[1][p] != outputs[2][p]]
    assert not different
