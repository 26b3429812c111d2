"""The `ray` config group and the executor keys (no Ray instance needed), and the shipped KubeRay
manifest."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from alien_hotels.config import ConfigError
from alien_hotels.distributed.caption import SCRATCH_PREFIX, scratch_path, sweep_stale_scratch
from conftest import ROOT, compose


def test_executors_default_to_local_and_ray_has_its_section():
    params = compose()
    assert params.caption.executor == "local" and params.edit.executor == "local"
    assert params.ray is not None and params.ray.address is None
    assert compose("caption=clip_interrogator").caption.executor == "local"
    ray = compose("ray.address=ray://head:10001", "ray.num_gpus_per_worker=1").ray
    assert ray.address == "ray://head:10001" and ray.num_gpus_per_worker == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("caption.executor=dask", r"caption\.executor = 'dask'.*'local' or 'ray'"),
        ("edit.executor=slurm", r"edit\.executor = 'slurm'"),
        ("ray.address=http://head", r"ray\.address = 'http://head'"),
        ("ray.min_workers=5", r"ray\.min_workers \(5\) must not exceed ray\.num_workers \(2\)"),
        ("ray.num_gpus_per_worker=-1", r"ray\.num_gpus_per_worker"),
    ],
)
def test_bad_ray_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose(override)


def test_checkpoint_key_does_not_depend_on_the_executor():
    from alien_hotels.captioning.checkpoint import config_key

    local = compose("caption=clip_interrogator").caption
    ray = compose("caption=clip_interrogator", "caption.executor=ray").caption
    assert config_key(local, "cpu", "float32") == config_key(ray, "cpu", "float32")


def test_scratch_paths_stay_inside_the_scratch_folder():
    assert scratch_path("data/images/a.jpg") == "data/images/a.jpg"
    for outside in ("/etc/passwd", "../x.jpg", "a/../../b.png"):
        got = scratch_path(outside)
        assert got.startswith("_outside/") and ".." not in got.split("/"), got


def test_scratch_of_dead_workers_is_swept_and_live_ones_kept(tmp_path):
    """A worker SIGKILLed mid-task leaves its scratch folder (with the shipped images): the next
    task on that node removes it, and only it."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)  # exited: no such process now
    dead = tmp_path / f"{SCRATCH_PREFIX}{dead_pid}-abc123"
    (dead / "data/images").mkdir(parents=True)
    (dead / "data/images/photo.jpg").write_bytes(b"jpeg")
    alive = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def456"  # this process: running
    alive.mkdir()
    unnamed = tmp_path / f"{SCRATCH_PREFIX}x-ghi789"  # no pid in the name: not ours to judge
    unnamed.mkdir()
    other = tmp_path / f"other-{dead_pid}-jkl"
    other.mkdir()
    assert sweep_stale_scratch(tmp_path) == [dead]
    assert not dead.exists() and alive.is_dir() and unnamed.is_dir() and other.is_dir()
    assert sweep_stale_scratch(tmp_path) == []


def test_kuberay_manifest_has_a_gpu_worker_group_and_the_model_cache():
    docs = list(yaml.safe_load_all((ROOT / "deploy/kuberay-raycluster.yaml").read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    (group,) = cluster["spec"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "model-cache", "mountPath": "/cache", "readOnly": True} in container[
        "volumeMounts"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HOME"] == "/cache/huggingface" and env["HF_HUB_OFFLINE"] == "1"
    # token authentication: head and workers take the one token from the same Secret
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for pod in (head, container):
        pod_env = {e["name"]: e for e in pod["env"]}
        assert pod_env["RAY_AUTH_MODE"]["value"] == "token"
        secret = pod_env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "alien-hotels-ray-token", "key": "token"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert "alien-hotels-models" in claims
