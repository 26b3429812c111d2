"""caption.executor=ray and edit.executor=ray on a real Ray cluster on this machine.

One Ray head (`ray start --head --block` on 127.0.0.1, 2 CPUs) serves the whole module; stages
connect to it by address, in this process or as `alien-hotels` subprocesses, and run the tiny
random-weight models through the same code as the local executor. Faults are real: worker
processes and drivers are SIGKILLed by PID, and a node of a multi-node cluster
(`ray.cluster_utils.Cluster`) is removed mid-run. Every cluster uses token authentication with a
token made here (a temporary file): nothing reads or writes ~/.ray."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from alien_hotels.common import StageError
from alien_hotels.distributed.caption import SCRATCH_PREFIX
from alien_hotels.stages import caption as caption_stage
from alien_hotels.stages import edit as edit_stage
from alien_hotels.stages.paths import StagePaths
from alien_hotels.testing.diffusion import tiny_edit_overrides
from alien_hotels.testing.interrogator import tiny_overrides
from conftest import BIN, compose, subprocess_env

pytestmark = [
    pytest.mark.ml,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

CAPTION = [
    "caption.flavor_intermediate_count=48",
    "caption.max_flavors=6",
    "caption.min_flavors=2",
    "caption.progress=false",
    "caption.loader_workers=1",
    "caption.mode=best",
    "caption.batch_size=2",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def worker_tmp(tmp_path_factory):
    """TMPDIR of the module's Ray nodes, so of their workers: the caption scratch folder that a
    killed worker leaves (removed only by a later task on the node) lands in pytest's tmp, not
    in the machine's /tmp. Ray's own session folder stays where it was (RAY_TMPDIR, which Ray
    prefers to TMPDIR): its socket paths must stay short."""
    folder = tmp_path_factory.mktemp("worker_tmp")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())
        env.setenv("TMPDIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def ray_token(tmp_path_factory):
    """A cluster token in a temporary file, set for this process and every subprocess (the heads,
    nodes and drivers) for the module: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH. A fresh machine
    has no ~/.ray/auth_token, and the tests must not read or write the user's."""
    home_token = Path.home() / ".ray" / "auth_token"
    had_home_token = home_token.exists()
    path = tmp_path_factory.mktemp("ray_auth") / "auth_token"
    path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    path.chmod(0o600)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN_PATH", str(path))
        env.delenv("RAY_AUTH_TOKEN", raising=False)  # Ray prefers it over the file
        yield path
    assert had_home_token or not home_token.exists(), "a test wrote ~/.ray/auth_token"


@pytest.fixture(scope="module")
def ray_address(ray_token, tmp_path_factory):
    """host:port of a Ray head started for this module (stopped, with its workers, after), with
    token authentication (`ray_token`), as a cluster's users run it."""
    yield from _ray_head(tmp_path_factory)


def _ray_head(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                "--num-cpus=2",
                "--num-gpus=0",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            env=subprocess_env(OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stops the raylet, GCS and workers it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.fixture(scope="module")
def caption_models(tmp_path_factory):
    import torch

    from alien_hotels.testing.interrogator import save_tiny_models

    torch.set_num_threads(1)
    return save_tiny_models(tmp_path_factory.mktemp("tiny_caption"), seed=0)


@pytest.fixture(scope="module")
def edit_models(tmp_path_factory):
    from alien_hotels.testing.diffusion import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny_edit"))


class WorkerKiller(threading.Thread):
    """SIGKILLs the first process found running `ray::<actor>.run` (a worker mid-task)."""

    def __init__(self, actor: str):
        super().__init__(daemon=True)
        self.title = f"ray::{actor}.run"
        self.killed: int | None = None
        self.environ: dict[str, str] = {}  # the killed worker's environment
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if cmdline and cmdline[0].startswith(self.title):
                    self.environ = proc.environ()
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    self.killed = proc.info["pid"]
                    return
            time.sleep(0.02)


def hash_under_seed_0(text: str) -> int:
    probe = subprocess.run(
        [sys.executable, "-c", f"print(hash({text!r}))"],
        env=subprocess_env(PYTHONHASHSEED="0"),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(probe.stdout)


def write_params(root: Path, *overrides: str):
    params = compose(*overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return params


def caption_paths(prefix: str) -> StagePaths:
    return StagePaths(
        captions=Path(f"{prefix}/captions.csv"),
        caption_failures=Path(f"{prefix}/caption_failures.csv"),
        caption_metrics=Path(f"{prefix}/captioning.json"),
    )


def random_images(root: Path, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = rng.integers(24, 80, size=2)
        path = f"data/images/r{i}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / path)
        rows.append({"image_id": 2000 + i, "path": path, "status": "ok", "reason": ""})
    return rows


def write_manifest(root: Path, rows: list[dict]) -> None:
    (root / "data/interim").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "data/interim/images.csv", index=False)


# -- caption ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caption_project(tmp_path_factory, caption_models):
    """Bad and good images, their manifest, and the local executor's outputs (`local/`)."""
    from test_captioning import write_bad_images

    root = tmp_path_factory.mktemp("caption_project")
    expected = write_bad_images(root)
    rows = [
        {"image_id": i, "path": f"data/images/{name}", "status": "ok", "reason": ""}
        for i, name in enumerate(expected)
    ]
    write_manifest(root, [*rows, *random_images(root, 9, seed=1)])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        local = compose(*tiny_overrides(caption_models), *CAPTION, "caption.checkpoint_dir=ckpt")
        caption_stage.run(local, caption_paths("local"))
    return root


def kill_driver_when(root: Path, command: list[str], ready, timeout: float = 300) -> None:
    """Run a stage driver in `root` and SIGKILL its process group once `ready()` holds (or it
    exits, or `timeout` passes): a driver killed mid-run."""
    driver = subprocess.Popen(
        command,
        cwd=root,
        env=subprocess_env(OMP_NUM_THREADS="1"),  # the token: ray_token's environment
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and driver.poll() is None and not ready():
            time.sleep(0.02)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def checkpoint_rows(directory: Path) -> list[dict]:
    return [json.loads(x) for x in next(directory.glob("*.jsonl")).read_text().splitlines()]


def test_caption_on_ray_equals_local_with_bad_images_and_a_killed_worker(
    ray_address, caption_models, caption_project, worker_tmp, monkeypatch
):
    monkeypatch.chdir(caption_project)
    on_ray = compose(
        *tiny_overrides(caption_models),
        *CAPTION,
        "caption.checkpoint_dir=ckpt_ray",
        "caption.executor=ray",
        f"ray.address={ray_address}",
    )
    killer = WorkerKiller("CaptionWorker")
    killer.start()
    try:
        caption_stage.run(on_ray, caption_paths("ray"))
    finally:
        killer.stop.set()
    assert killer.killed is not None, "no worker was killed mid-task"
    # the killed worker's scratch folder (its images) was removed by a task after it
    assert killer.environ.get("TMPDIR") == str(worker_tmp)
    assert list(worker_tmp.glob(f"{SCRATCH_PREFIX}{killer.killed}-*")) == []
    for name in ("captions.csv", "caption_failures.csv"):
        assert Path(f"ray/{name}").read_bytes() == Path(f"local/{name}").read_bytes(), name
    failures = pd.read_csv("ray/caption_failures.csv")
    assert set(failures["reason"]) == {
        "corrupt_image",
        "empty_file",
        "missing_file",
        "not_an_image",
    }
    metrics = json.loads(Path("ray/captioning.json").read_text())
    assert metrics["executor"] == "ray"
    assert metrics["ray_workers_lost"] >= 1 and metrics["ray_tasks_retried"] >= 1
    # the workers (the replacement too) iterate sets of strings as `alien-hotels caption` does
    assert metrics["ray_string_hash"] == hash_under_seed_0("alien-hotels")
    # every image exactly once in the checkpoint, though a task was computed twice
    ids = [row["image_id"] for row in checkpoint_rows(Path("ckpt_ray"))]
    assert len(ids) == len(set(ids)) == 22


def test_caption_driver_killed_resumes_from_the_checkpoint(
    ray_address, caption_models, caption_project, monkeypatch
):
    root = caption_project
    # one worker: the resume is under test here, parallelism in the test above
    overrides = [
        *tiny_overrides(caption_models),
        *CAPTION,
        "caption.executor=ray",
        "ray.num_workers=1",
    ]
    write_params(root, *overrides, f"ray.address={ray_address}")
    ckpt_dir = root / "data/checkpoints/caption"

    def four_rows() -> bool:
        files = list(ckpt_dir.glob("*.jsonl"))
        return bool(files) and files[0].read_text().count("\n") >= 4

    kill_driver_when(root, ["alien-hotels", "caption"], four_rows)
    done = checkpoint_rows(ckpt_dir)
    assert 4 <= len(done) < 22, "the driver was not killed mid-run"
    assert not (root / "data/processed").exists()

    monkeypatch.chdir(root)  # the rerun: the same stage, here in this process
    caption_stage.run(compose(*overrides, f"ray.address={ray_address}"))
    for name in ("captions.csv", "caption_failures.csv"):
        assert (root / "data/processed" / name).read_bytes() == (root / "local" / name).read_bytes()
    metrics = json.loads((root / "metrics/captioning.json").read_text())
    assert metrics["resumed_from_checkpoint"] == len(done)
    ok_done = sum(row["status"] == "ok" for row in done)
    assert metrics["computed_this_run"] == metrics["ok"] - ok_done
    assert len(checkpoint_rows(ckpt_dir)) == 22


class NodeRemover(threading.Thread):
    """Once the run has checkpointed 4 rows, removes a worker node whose raylet runs
    `ray::<actor>.run` (a node lost mid-task, as a preempted spot instance is), noting how many
    rows the run had by then."""

    def __init__(self, cluster, actor: str, checkpoint_dir: Path):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.title = f"ray::{actor}.run"
        self.checkpoint_dir = checkpoint_dir
        self.rows_before: int | None = None
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def rows(self) -> int:
        files = list(self.checkpoint_dir.glob("*.jsonl"))
        return files[0].read_text().count("\n") if files else 0

    def run(self) -> None:
        import psutil
        from ray._private import ray_constants

        try:
            # a worker process is a child of its node's raylet
            raylets = {
                node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: node
                for node in self.cluster.worker_nodes
            }
            while not self.stop.is_set():
                rows = self.rows()
                for proc in psutil.process_iter(["ppid", "cmdline"]) if rows >= 4 else []:
                    node = raylets.get(proc.info["ppid"])
                    cmdline = proc.info["cmdline"] or []
                    if node is not None and cmdline and cmdline[0].startswith(self.title):
                        self.rows_before = rows
                        # no graceful drain: the node's processes are SIGKILLed
                        self.cluster.remove_node(node, allow_graceful=False)
                        return
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test, not lost in this thread
            self.error = exc


@pytest.fixture
def ray_cluster(ray_token):
    """Ray's multi-node test cluster on this machine: a head with no CPUs (the driver's node, so
    no worker lands there) and two 1-CPU worker nodes, one caption worker each; token auth from
    `ray_token` (the nodes inherit this process's environment)."""
    from ray.cluster_utils import Cluster

    # a removed node is declared dead after ~1.5 s (health checks every 0.5 s, 3 misses), not
    # after Ray's default 5 misses 3 s apart: the test stays short
    fast_death = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "_system_config": fast_death,
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_caption_on_ray_equals_local_when_a_node_is_lost_mid_run(
    ray_cluster, caption_models, caption_project, monkeypatch
):
    monkeypatch.chdir(caption_project)
    on_ray = compose(
        *tiny_overrides(caption_models),
        *CAPTION,
        "caption.checkpoint_dir=ckpt_node",
        "caption.executor=ray",
        f"ray.address={ray_cluster.address}",
        "ray.num_workers=2",
        "ray.min_workers=2",  # one on each worker node before work starts
    )
    remover = NodeRemover(ray_cluster, "CaptionWorker", Path("ckpt_node"))
    remover.start()
    try:
        caption_stage.run(on_ray, caption_paths("node"))
    finally:
        remover.stop.set()
        remover.join()
    assert remover.error is None, remover.error
    assert remover.rows_before is not None, "no node was removed"
    assert 4 <= remover.rows_before < 22, "the node was not removed mid-run"
    assert len(ray_cluster.worker_nodes) == 1
    for name in ("captions.csv", "caption_failures.csv"):
        assert Path(f"node/{name}").read_bytes() == Path(f"local/{name}").read_bytes(), name
    metrics = json.loads(Path("node/captioning.json").read_text())
    assert metrics["ray_workers_lost"] >= 1 and metrics["ray_tasks_retried"] >= 1
    ids = [row["image_id"] for row in checkpoint_rows(Path("ckpt_node"))]
    assert len(ids) == len(set(ids)) == 22


def test_worker_without_the_model_fails_naming_node_and_model(
    ray_address, caption_models, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path, random_images(tmp_path, 2, seed=3))
    params = compose(
        *tiny_overrides(caption_models),
        *CAPTION,
        "caption.caption_model_path=/nowhere/blip",
        "caption.executor=ray",
        f"ray.address={ray_address}",
        "ray.num_workers=1",
    )
    with pytest.raises(StageError) as err:
        caption_stage.run(params)
    message = str(err.value)
    assert f"the Ray worker on node {socket.gethostname()} (" in message
    assert "caption.caption_model_path=/nowhere/blip" in message
    assert not Path("data/checkpoints").exists() and not Path("data/processed").exists()


@pytest.mark.parametrize("stage", ["caption", "edit"])
def test_unreachable_address_fails_before_any_work(stage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path, random_images(tmp_path, 2, seed=4))
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    params = compose(
        "caption=clip_interrogator",
        f"{stage}.executor=ray",
        f"ray.address={address}",
        "ray.connect_timeout_s=2",
    )
    started = time.monotonic()
    with pytest.raises(StageError, match=rf"ray.address={address}: cannot reach"):
        if stage == "caption":
            caption_stage.run(params)
        else:
            edit_stage.run(params, "neon")
    assert time.monotonic() - started < 30
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert all(p.startswith(("data/images/", "data/interim/")) for p in left), left


def test_missing_token_names_the_fix(ray_address, caption_models, tmp_path):
    """A driver with RAY_AUTH_MODE=token and no token (none in the environment, no
    ~/.ray/auth_token) connecting to a token-auth head: what a user runs and sees."""
    write_manifest(tmp_path, random_images(tmp_path, 2, seed=5))
    overrides = [*tiny_overrides(caption_models), *CAPTION, "caption.executor=ray"]
    write_params(tmp_path, *overrides, f"ray.address={ray_address}")
    env = subprocess_env(HOME=str(tmp_path / "home"))  # an empty home: no ~/.ray
    env.pop("RAY_AUTH_TOKEN_PATH")
    result = subprocess.run(
        ["alien-hotels", "caption"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.split("error: ", 1)[1]
    assert message.startswith(
        f"ray.address={ray_address}: Token authentication is enabled but no authentication token "
        "was found (RAY_AUTH_MODE=token). Print the cluster's token on the head node with "
        "`ray get-auth-token`, save it in a file on this machine and set RAY_AUTH_TOKEN_PATH"
    ), message
    assert 'see docs/scale.md, "Authentication". Nothing was computed or written.' in message
    assert (
        not (tmp_path / "data/processed").exists() and not (tmp_path / "data/checkpoints").exists()
    )
    assert not (tmp_path / "home/.ray").exists()


# -- edit ---------------------------------------------------------------------------------------


def edit_images(root: Path) -> list[dict]:
    rows = []
    for i, (w, h) in enumerate([(70, 50), (37, 53), (33, 33), (48, 40), (64, 30), (40, 64)]):
        rng = np.random.default_rng(10 + i)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 3] = (0, 255, 0)
        path = f"data/images/e{i}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / path)
        rows.append({"image_id": f"e{i}", "path": path, "status": "ok", "reason": ""})
    (root / "data/images/broken.png").write_bytes(b"not a png")
    rows.insert(2, {"image_id": "broken", "path": "data/images/broken.png", "status": "ok"})
    return rows


def edit_paths(prefix: str) -> StagePaths:
    return StagePaths(
        edited_dir=Path(f"{prefix}/edited"),
        edit_tables=Path(f"{prefix}/tables"),
        edit_sheets=Path(f"{prefix}/sheets"),
        edit_recipe_metrics=Path(f"{prefix}/metrics"),
    )


def assert_same_edits(got: Path, want: Path, recipe: str) -> pd.DataFrame:
    pngs = sorted(p.name for p in (want / "edited" / recipe).glob("*.png"))
    assert pngs and sorted(p.name for p in (got / "edited" / recipe).glob("*.png")) == pngs
    for name in pngs:
        assert (got / "edited" / recipe / name).read_bytes() == (
            want / "edited" / recipe / name
        ).read_bytes(), name
    table = pd.read_csv(got / "tables" / f"{recipe}.csv")
    expected = pd.read_csv(want / "tables" / f"{recipe}.csv")
    timing = ["seconds", "resumed"]
    pd.testing.assert_frame_equal(table.drop(columns=timing), expected.drop(columns=timing))
    return table


@pytest.fixture(scope="module")
def edit_project(tmp_path_factory, edit_models):
    """Images (one unreadable), their manifest, and recipe aliens by the local executor."""
    root = tmp_path_factory.mktemp("edit_project")
    write_manifest(root, edit_images(root))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        edit_stage.run(compose(*tiny_edit_overrides(edit_models)), "aliens", edit_paths("local"))
    return root


def test_edit_on_ray_equals_local_with_a_bad_image_and_a_killed_worker(
    ray_address, edit_models, edit_project, monkeypatch
):
    monkeypatch.chdir(edit_project)
    on_ray = compose(
        *tiny_edit_overrides(edit_models), "edit.executor=ray", f"ray.address={ray_address}"
    )
    killer = WorkerKiller("EditWorker")
    killer.start()
    try:
        metrics = edit_stage.run(on_ray, "aliens", edit_paths("ray"))["aliens"]
    finally:
        killer.stop.set()
    assert killer.killed is not None, "no worker was killed mid-task"
    table = assert_same_edits(edit_project / "ray", edit_project / "local", "aliens")
    assert table.set_index("image_id").loc["broken", "status"] == "failed"
    assert metrics["n_failed"] == 1 and metrics["n_images"] == 7
    assert metrics["ray_workers_lost"] >= 1 and metrics["ray_tasks_retried"] >= 1
    sheet = Path("ray/sheets/aliens.jpg").read_bytes()
    assert sheet == Path("local/sheets/aliens.jpg").read_bytes()


def test_edit_driver_killed_resumes_what_is_missing(
    ray_address, edit_models, edit_project, monkeypatch
):
    root = edit_project
    overrides = [*tiny_edit_overrides(edit_models), "edit.executor=ray", "ray.num_workers=1"]
    write_params(root, *overrides, f"ray.address={ray_address}")
    edited = root / "data/edited/aliens"
    kill_driver_when(
        root, ["alien-hotels", "edit", "aliens"], lambda: len(list(edited.glob("*.png"))) >= 2
    )
    done = len(list(edited.glob("*.png")))
    assert 2 <= done < 6, "the driver was not killed mid-run"

    monkeypatch.chdir(root)  # the rerun: the same stage, here in this process
    paths = edit_paths("data")
    metrics = edit_stage.run(compose(*overrides, f"ray.address={ray_address}"), "aliens", paths)
    assert metrics["aliens"]["n_resumed"] == done
    assert_same_edits(root / "data", root / "local", "aliens")
